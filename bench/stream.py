"""Events per second through ``streamnorm worker`` processes, against the in-process
``learn_one`` rate measured in the same run.

One run starts a real ``redis-server`` (``service.redis.embedded.EmbeddedRedis``, AOF everysec in a
temporary folder). Each configuration — 1, 2 or 4 workers × 1 or 30 models (LSTM hidden 32,
window 8, 6 features, regression, Adam; ``--norm`` picks the normalization) — gets fresh models
and a backlog of events appended to their partitions (16) before its workers start, as a
producer would have. The workers (``python -m service.cli worker``, one torch thread each) are
started together; the rate is taken between 10 % and 90 % of the events applied (the sum of the
models' ``updates`` in Redis, sampled every 20 ms), so process start-up, the first model loads
and the tail are left out. Events carry no ``event_id``: the worker derives one from the entry
id, as it does for any producer's events. The in-process rate is a fresh ``OnlineLearner``
learning the same events back to back in this process (one torch thread), measured in every
round. Rates are medians over rounds; a ratio is the median of the per-round ratios.

Targets (the stream issue): one worker ≥ 0.8× the in-process ``learn_one`` rate; 2 workers on 30
models ≥ 1.6× one worker on 30 models (2 cores).

Run from the repository root::

    .venv/bin/python bench/stream.py            # ~3 min on 2 cores
    .venv/bin/python bench/stream.py --quick    # ~1 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import torch  # noqa: E402
from http_api import HIDDEN, N_FEATURES, STREAMS, WINDOW  # noqa: E402
from http_api import spec_body as http_spec_body  # noqa: E402
from httpload import cpu_seconds  # noqa: E402
from learner import synthetic_stream  # noqa: E402  (bench/ is sys.path[0])

from models import ModelSpec, OnlineLearner  # noqa: E402
from service.engine import Engine  # noqa: E402
from service.redis.embedded import EmbeddedRedis  # noqa: E402
from service.redis.store import Store  # noqa: E402
from service.redis.streams import Streams, partition_of  # noqa: E402
from service.settings import Settings  # noqa: E402

PARTITIONS = 16
WORKERS, MODELS = (1, 2, 4), (1, 30)
WORKER_TARGET, SCALE_TARGET = 0.8, 1.6


def spec_body(name: str, norm: str) -> dict[str, Any]:
    """bench/http_api.py's model (LSTM hidden 32, window 8, 6 features, Adam), named ``name``."""
    return {**http_spec_body(norm), "name": name}


def events_for(n: int, models: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """``n`` events over ``models`` round robin, ``STREAMS`` streams per model."""
    stream = synthetic_stream(n, N_FEATURES, seed=1)
    out = []
    for k, (x, y) in enumerate(stream):
        body = {"stream": f"s{(k // len(models)) % STREAMS}", "x": list(x.values()), "y": y}
        out.append((models[k % len(models)], body))
    return out


async def create_models(url: str, specs: list[dict[str, Any]]) -> None:
    """Store the models as ``POST /models`` does (``Engine.create``)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    settings = Settings(redis_url=url)
    engine = Engine(Store.configured(client, settings), Streams(client, settings.partitions),
                    settings)
    try:
        for body in specs:
            await engine.create(ModelSpec.model_validate(body))
    finally:
        await engine.close()
        await client.aclose()


def in_process_rate(norm: str, events: list[tuple[str, dict[str, Any]]]) -> float:
    learner = OnlineLearner(ModelSpec.model_validate(spec_body("inproc", norm)))
    for _, b in events[:100]:
        learner.learn_one(b["x"], b["y"], stream=b["stream"])
    start = time.perf_counter()
    for _, b in events[100:]:
        learner.learn_one(b["x"], b["y"], stream=b["stream"])
    return (len(events) - 100) / (time.perf_counter() - start)


def wait_balanced(r: redis.Redis, n_workers: int, procs: list[subprocess.Popen[bytes]],
                  timeout: float = 60.0) -> None:
    """Until every partition has an owner and each of the ``n_workers`` holds its share (the
    steady state of a running deployment: the start-up handover is not what is measured)."""
    share = -(-PARTITIONS // n_workers)
    deadline = time.monotonic() + timeout
    while True:
        owners = [r.get(f"sn:events:{{{p}}}:owner") for p in range(PARTITIONS)]
        held: dict[bytes, int] = {}
        for owner in owners:
            if owner is not None:
                held[owner.split(b":")[0]] = held.get(owner.split(b":")[0], 0) + 1
        if None not in owners and len(held) == n_workers and max(held.values()) <= share:
            return
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"workers did not share the partitions: {held}")
        time.sleep(0.05)


def run_config(url: str, norm: str, n_workers: int, models: list[str], n: int,
               tag: str) -> dict[str, float]:
    """Start the workers, wait until they share the partitions, append ``n`` events, time
    10 % → 90 % applied."""
    r = redis.Redis.from_url(url)
    asyncio.run(create_models(url, [spec_body(m, norm) for m in models]))
    env = {**os.environ, "STREAMNORM_REDIS_URL": url, "STREAMNORM_PARTITIONS": str(PARTITIONS),
           "STREAMNORM_HEARTBEAT_S": "0.2", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--name",
                               f"{tag}-w{k}", "--log-level", "warning"], cwd=ROOT, env=env,
                              stdin=subprocess.DEVNULL) for k in range(n_workers)]
    wait_balanced(r, n_workers, procs)
    events = events_for(n, models)
    with r.pipeline(transaction=False) as pipe:
        for model, body in events:
            pipe.xadd(f"sn:events:{{{partition_of(model, PARTITIONS)}}}",
                      {"model": model, "event": json.dumps(body)})
        pipe.execute()
    try:
        def applied() -> int:
            with r.pipeline(transaction=False) as pipe:
                for m in models:
                    pipe.hget(f"sn:{{{m}}}:meta", "updates")
                return sum(int(v or 0) for v in pipe.execute())

        marks: dict[str, tuple[float, int, float]] = {}
        deadline = time.monotonic() + 60 + n / 100
        while True:
            done, now = applied(), time.perf_counter()
            cpu = sum(cpu_seconds(p.pid) for p in procs)
            if "start" not in marks and done >= 0.1 * n:
                marks["start"] = (now, done, cpu)
            if done >= 0.9 * n:
                marks["end"] = (now, done, cpu)
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{tag}: {done}/{n} applied, workers "
                                   f"{[p.poll() for p in procs]}")
            time.sleep(0.02)
        (t0, a0, c0), (t1, a1, c1) = marks["start"], marks["end"]
        return {"rate": (a1 - a0) / (t1 - t0), "cpu_ms": 1e3 * (c1 - c0) / (a1 - a0)}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def main(argv: list[str] | None = None, emit: Callable[[str], Any] = print) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=None, help="events per configuration "
                   "(default 6000)")
    p.add_argument("--repeats", type=int, default=None, help="rounds (default 3)")
    p.add_argument("--norm", default="streaming", help="normalization (default streaming)")
    p.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    p.add_argument("--quick", action="store_true", help="2,000 events, 1 round")
    args = p.parse_args(argv)
    n = args.events or (2000 if args.quick else 6000)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(1)
    wall = time.perf_counter()
    rates: dict[tuple[int, int], list[float]] = {}
    cpus: dict[tuple[int, int], list[float]] = {}
    ratios: dict[tuple[int, int], list[float]] = {}
    inproc: list[float] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamnorm-st-")))
        server = stack.enter_context(EmbeddedRedis(tmp / "redis"))
        emit(f"# bench/stream.py — torch {torch.__version__}, Python "
             f"{platform.python_version()}, {os.cpu_count()} CPUs; LSTM hidden {HIDDEN}, "
             f"window {WINDOW}, {N_FEATURES} features, `{args.norm}`, Adam; {n} events per "
             f"configuration, {PARTITIONS} partitions, {repeats} rounds; embedded Redis "
             "(AOF everysec); workers, Redis and this process share the CPUs")
        for rnd in range(repeats):
            base = in_process_rate(args.norm, events_for(2000, ["inproc"]))
            inproc.append(base)
            for m in MODELS:
                for w in args.workers:
                    models = [f"r{rnd}-m{m}-w{w}-{k}" for k in range(m)]
                    res = run_config(server.url, args.norm, w, models, n, f"r{rnd}m{m}w{w}")
                    rates.setdefault((m, w), []).append(res["rate"])
                    cpus.setdefault((m, w), []).append(res["cpu_ms"])
                    ratios.setdefault((m, w), []).append(res["rate"] / base)
    emit(f"\nIn-process `learn_one`: {statistics.median(inproc):,.0f} events/s "
         f"({min(inproc):,.0f}–{max(inproc):,.0f})\n")
    emit("| models | workers | events/s (min–max) | × in-process | × 1 worker | "
         "worker CPU ms/event |")
    emit("|---:|---:|---:|---:|---:|---:|")
    for (m, w), rs in rates.items():
        one = rates.get((m, 1))
        scale = (statistics.median(a / b for a, b in zip(rs, one, strict=True))
                 if one else float("nan"))
        emit(f"| {m} | {w} | {statistics.median(rs):,.0f} ({min(rs):,.0f}–{max(rs):,.0f}) | "
             f"{statistics.median(ratios[(m, w)]):.2f} | {scale:.2f} | "
             f"{statistics.median(cpus[(m, w)]):.2f} |")
    emit("\n## Targets\n")
    for m in MODELS:
        if (m, 1) in ratios:
            ratio = statistics.median(ratios[(m, 1)])
            emit(f"- one worker, {m} model(s) ≥ {WORKER_TARGET}× in-process: {ratio:.2f}× → "
                 f"{'PASS' if ratio >= WORKER_TARGET else 'FAIL'}")
    if (30, 1) in rates and (30, 2) in rates:
        scale = statistics.median(a / b for a, b in zip(rates[(30, 2)], rates[(30, 1)],
                                                        strict=True))
        emit(f"- 2 workers on 30 models ≥ {SCALE_TARGET}× one worker: {scale:.2f}× → "
             f"{'PASS' if scale >= SCALE_TARGET else 'FAIL'}")
    emit(f"\n(wall time {time.perf_counter() - wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
