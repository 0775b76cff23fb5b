"""What a race and the learning curves cost, through the real service and Redis.

One run starts a real ``redis-server`` (embedded, AOF) and a uvicorn process (uvloop, httptools,
one torch thread). On it, it creates one model per normalization method (``single-{norm}``) and
a race of the same eight (``bench``); every model is an LSTM, hidden 32, window 8, 6 features,
regression, Adam, warmed up with 50 learns. Then, in every round (the order alternating):

- **singles**: ``learns`` learns of each single model, one at a time (concurrency 1): the mean
  ms per learn of each; their sum is what one event costs as eight separate learns;
- **race**: ``learns`` ``POST /races/bench/learn`` one at a time: ms per race learn;

in blocks of 25 learns, singles and race alternating, so both see the same drift.

Each sends the model(s) new events in order (an AR(1) stream over 4 stream keys; bodies encoded
before the clock starts) through ``httpload.RawConnection``; the ratio is the median of the
per-round ratios.

**Curve points**: two apps in this process (``httpx.ASGITransport``, no uvicorn) over the same
Redis, one writing a point every 10 updates (the default), one none
(``STREAMNORM_CURVE_EVERY=1000000``; it still keeps the running loss in the meta), each with a
``streaming`` and a ``layer`` model, learn in ``learns`` alternating blocks of 25 each: the
cost is the median over block pairs of 1 − (ms without / ms with). Single blocks drift ±20 % on
these VMs; the median of many pairs is the estimate. ``--instructions N`` adds the exact count
of this process's CPU instructions per learn + predict with and without points (callgrind, four
runs of ``bench/instructions.py``; Redis's own work is outside that count).

Targets (issue 13): a race learn with 8 members ≤ 1.1× the sum of the 8 single learns; curve
points cost ≤ 3 % of single-model learn throughput.

Run from the repository root::

    .venv/bin/python bench/race.py                       # ~2 min on 2 cores
    .venv/bin/python bench/race.py --quick               # ~40 s
    .venv/bin/python bench/race.py --instructions 100    # + ~7 min under valgrind
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402
import torch  # noqa: E402
from httpload import (  # noqa: E402  (bench/ is sys.path[0])
    WARMUP_PER_WORKER,
    RawConnection,
    run_load,
    uvicorn_server,
)

from models.norms import NORMS  # noqa: E402
from service.redis.embedded import EmbeddedRedis  # noqa: E402

HIDDEN, WINDOW, N_FEATURES, STREAMS, WARMUP = 32, 8, 6, 4, 50
CURVED = ("streaming", "layer")
BLOCK = 25  # learns per block of the curve comparison
RACE_TARGET, CURVE_TARGET = 1.1, 0.03
SPEC = {"task": "regression", "n_features": N_FEATURES, "cell": "lstm", "hidden_size": HIDDEN,
        "window": WINDOW, "optimizer": {"name": "adam", "lr": 0.005}, "seed": 0}


def bodies(n: int, seed: int = 0) -> list[bytes]:
    """Learn bodies of an AR(1) stream over ``STREAMS`` stream keys, encoded."""
    rng, x, out = random.Random(seed), [0.0] * N_FEATURES, []
    for k in range(n):
        x = [0.8 * v + rng.gauss(0.0, 0.5) for v in x]
        out.append(orjson.dumps({"stream": f"s{k % STREAMS}", "x": x,
                                 "y": sum(x[:3]) - x[3] + rng.gauss(0.0, 0.1)}))
    return out


async def curve_blocks(url: str, data: list[bytes], blocks: int,
                       out: dict[tuple[str, str], list[float]]) -> None:
    """Mean ms per learn, in alternating blocks, of two apps in this process over one Redis:
    one writing a curve point every 10 updates, one writing none."""
    from service.api.app import create_app
    from service.settings import Settings

    apps = {"curve": create_app(Settings(redis_url=url, curve_every=10)),
            "flat": create_app(Settings(redis_url=url, curve_every=1_000_000))}
    async with AsyncExitStack() as stack:
        clients = {}
        for where, app in apps.items():
            await stack.enter_async_context(app.router.lifespan_context(app))
            clients[where] = await stack.enter_async_context(httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench"))
        offsets = dict.fromkeys(apps, 0)
        headers = {"content-type": "application/json"}

        async def block(where: str, norm: str, n: int) -> float:
            path = f"/models/{where}-{norm}/learn"
            start = time.perf_counter()
            for _ in range(n):
                r = await clients[where].post(path, content=data[offsets[where]],
                                              headers=headers)
                offsets[where] += 1
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: {r.status_code} {r.text}")
            return 1e3 * (time.perf_counter() - start) / n

        for norm in CURVED:
            for where in apps:
                r = await clients[where].post("/models", json={**SPEC, "norm": norm,
                                                               "name": f"{where}-{norm}"})
                if r.status_code != 201:
                    raise RuntimeError(f"POST /models: {r.status_code} {r.text}")
                await block(where, norm, WARMUP)
            for k in range(blocks):
                for where in (("curve", "flat") if k % 2 else ("flat", "curve")):
                    out[(norm, where)].append(await block(where, norm, BLOCK))


def instructions(url: str, learns: int) -> dict[str, float]:
    """Instructions per learn + predict of ``bench/instructions.py`` under callgrind, with and
    without curve points (four runs: with ``learns`` and with 0, the difference per learn)."""
    out = {}
    for where, every in (("curve", "10"), ("flat", "1000000")):
        counts = []
        for n in (learns, 0):
            run = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                 sys.executable, str(ROOT / "bench" / "instructions.py"), "--learns", str(n),
                 "--norm", "streaming"], capture_output=True, text=True, check=True,
                env={**os.environ, "PYTHONHASHSEED": "0", "STREAMNORM_CURVE_EVERY": every})
            counts.append(int(re.search(r"Collected : (\d+)", run.stderr).group(1)))
        out[where] = (counts[0] - counts[1]) / learns
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--learns", type=int, default=300, help="timed learns per configuration")
    p.add_argument("--repeats", type=int, default=5, help="rounds")
    p.add_argument("--quick", action="store_true", help="100 learns, 2 rounds")
    p.add_argument("--instructions", type=int, default=0, metavar="N",
                   help="also count instructions under callgrind with N learns (4 runs, "
                        "~2 min each for N=100)")
    args = p.parse_args(argv)
    if args.quick:
        args.learns, args.repeats = 100, 2
    return args


def main(argv: list[str] | None = None, emit: Callable[[str], Any] = print) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    wall = time.perf_counter()
    norms = list(NORMS)
    blocks = max(4, args.learns)
    data = bodies(WARMUP + (args.learns + 2 * args.learns // BLOCK) * args.repeats
                  + len(CURVED) * (WARMUP + blocks * BLOCK) + 100)
    singles: dict[str, list[float]] = {n: [] for n in norms}
    race_ms: list[float] = []
    ratios: list[float] = []
    curves: dict[tuple[str, str], list[float]] = {(n, w): [] for n in CURVED
                                                   for w in ("curve", "flat")}
    offsets: dict[str, int] = {}

    with ExitStack() as stack, asyncio.Runner() as runner:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamnorm-race-")))
        redis = stack.enter_context(EmbeddedRedis(tmp / "redis"))
        a, proc_a = stack.enter_context(uvicorn_server(redis.url, tmp / "a.log"))
        pids = {"client": os.getpid(), "server": proc_a.pid}
        emit(f"# bench/race.py — torch {torch.__version__}, Python "
             f"{platform.python_version()}, {os.cpu_count()} CPUs, 1 torch thread; one uvicorn "
             f"process per setting, embedded redis-server; LSTM hidden {HIDDEN}, window "
             f"{WINDOW}, {N_FEATURES} features, regression, Adam; {args.learns} learns per "
             f"configuration, {args.repeats} rounds")

        def setup() -> None:
            with httpx.Client(timeout=60) as client:
                def ok(r: httpx.Response) -> None:
                    if r.status_code not in (200, 201):
                        raise RuntimeError(f"{r.request.url}: {r.status_code} {r.text}")
                for norm in norms:
                    ok(client.post(f"{a}/models", json={**SPEC, "name": f"single-{norm}",
                                                        "norm": norm}))
                ok(client.post(f"{a}/races", json={"name": "bench", "spec": SPEC, "members": [
                    {"norm": n} for n in norms]}))
                paths = ([(a, f"/models/single-{n}/learn") for n in norms]
                         + [(a, "/races/bench/learn")])
                for base, path in paths:
                    for k in range(WARMUP):
                        ok(client.post(base + path, content=data[k],
                                       headers={"content-type": "application/json"}))
                    offsets[base + path] = WARMUP

        async def load(base: str, path: str, concurrency: int, count: int) -> float:
            """Mean ms per request (concurrency 1) or requests/s (otherwise)."""
            port = int(base.rsplit(":", 1)[1])
            conns = [RawConnection("127.0.0.1", port) for _ in range(concurrency)]
            try:
                res = await run_load([c.post for c in conns], path, data,
                                     offsets[base + path], count, pids)
            finally:
                for c in conns:
                    await c.close()
            offsets[base + path] += count + WARMUP_PER_WORKER * concurrency
            if res.non_200 or res.errors:
                raise RuntimeError(f"{path}: {res.statuses} {res.errors} {res.samples}")
            return statistics.fmean(res.latencies_ms) if concurrency == 1 else res.rate

        setup()
        for rnd in range(args.repeats):  # in blocks, alternating: both see the same drift
            got: dict[str, float] = dict.fromkeys([*norms, "race"], 0.0)
            for k in range(args.learns // BLOCK):
                for part in (("singles", "race") if (rnd + k) % 2 else ("race", "singles")):
                    if part == "singles":
                        for norm in norms:
                            got[norm] += runner.run(load(a, f"/models/single-{norm}/learn", 1,
                                                         BLOCK)) / (args.learns // BLOCK)
                    else:
                        got["race"] += runner.run(load(a, "/races/bench/learn", 1,
                                                       BLOCK)) / (args.learns // BLOCK)
            for norm in norms:
                singles[norm].append(got[norm])
            race_ms.append(got["race"])
            ratios.append(got["race"] / sum(got[n] for n in norms))
        runner.run(curve_blocks(redis.url, data, blocks, curves))
        counted = instructions(redis.url, args.instructions) if args.instructions else None

    med = statistics.median
    emit("\n## A race learn against eight single-model learns (concurrency 1, ms per request)\n")
    emit("| single model | ms per learn |\n|---|---:|")
    for norm in norms:
        emit(f"| `{norm}` | {med(singles[norm]):.2f} |")
    total = sum(med(singles[n]) for n in norms)
    emit(f"| **sum of the 8** | **{total:.2f}** |")
    emit(f"| race of the 8 (`POST /races/bench/learn`) | {med(race_ms):.2f} |")
    ratio = med(ratios)
    emit(f"\nrace / sum of singles: **{ratio:.2f}×** (median of per-round ratios, range "
         f"{min(ratios):.2f}–{max(ratios):.2f}); target ≤ {RACE_TARGET}× — "
         f"{'met' if ratio <= RACE_TARGET else 'NOT met'}")
    emit(f"\n## Learning-curve points: learn ms with a point every 10 updates and with none "
         f"(in this process, {blocks} alternating blocks of {BLOCK} learns per model)\n")
    emit("| norm | a point every 10 updates | no points | cost (median of block pairs) |")
    emit("|---|---:|---:|---:|")
    worst = 0.0
    for norm in CURVED:  # cost in throughput: 1 - rate with / rate without = 1 - flat / curve
        pairs = [1 - f / c for c, f in zip(curves[(norm, "curve")], curves[(norm, "flat")],
                                           strict=True)]
        cost = med(pairs)
        worst = max(worst, cost)
        q1, _, q3 = statistics.quantiles(pairs, n=4)
        emit(f"| `{norm}` | {med(curves[(norm, 'curve')]):.3f} | "
             f"{med(curves[(norm, 'flat')]):.3f} | {100 * cost:+.1f} % (quartiles "
             f"{100 * q1:+.1f}…{100 * q3:+.1f} %) |")
    emit(f"\ncurve cost (the larger): {100 * worst:+.1f} %; target ≤ {100 * CURVE_TARGET:.0f} % — "
         f"{'met' if worst <= CURVE_TARGET else 'NOT met'} (single blocks drift ±20 % on these "
         "VMs: the median of the pairs is the estimate)")
    if counted is not None:
        emit("\nCPU instructions of this process per learn + predict (callgrind, "
             f"`bench/instructions.py --norm streaming`, {args.instructions} learns): with "
             f"points {counted['curve']:,.0f}, without {counted['flat']:,.0f}: "
             f"{100 * (counted['curve'] / counted['flat'] - 1):+.2f} % (Redis's own work, an "
             "XADD per point, is outside the count)")
    emit(f"\n(wall time {time.perf_counter() - wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
