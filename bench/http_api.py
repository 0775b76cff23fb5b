"""Throughput and latency of ``learn`` and ``predict`` through the real HTTP service (uvicorn +
Redis), against the in-process ``OnlineLearner`` rate measured in the same run.

One run starts a real ``redis-server`` (``service.redis.embedded.EmbeddedRedis``, AOF in a temporary
folder) and ONE uvicorn process (``service.api.app:create_app``, uvloop + httptools, one torch
thread), creates one LSTM per norm over ``POST /models`` (hidden 32, window 8, 6 features,
regression, Adam) and warms each up with 100 learns. Then, in every round and for every norm:

- in-process (this process, one torch thread): a fresh ``OnlineLearner(spec)`` learns 100 events
  untimed, then ``learn_one(x, y, stream=...)`` is timed on the configuration's count of events,
  then ``predict_one(x, stream=...)`` on as many;
- HTTP: ``learn`` and ``predict`` at concurrency 1, 8 and 32: that many asyncio workers send
  requests back to back, each over a keep-alive connection of its own, until the
  configuration's count is reached, after 2 untimed requests per worker. The load generator is
  a minimal HTTP/1.1 client (``RawConnection``: pre-encoded POSTs, replies read by their
  Content-Length) that costs ~0.03 ms of CPU per request; httpx costs ~0.7 ms, as much as the
  server's whole learn, taken from the server on 2 cores (``--httpx`` measures with one
  ``httpx.AsyncClient`` per worker instead). This process's garbage collector is frozen before
  each configuration: a full collection of its torch-sized heap stalls every worker for
  ~80 ms, which would read as server latency.

Bodies are ``{"stream": "s{k % 4}", "x": [6 floats], "y": float}`` (predict: no ``y``), encoded
before the clock starts; the events are an AR(1) stream. Rates are medians over rounds; p50/p99
are medians of the per-round percentiles and ``max`` the largest latency of any round; a ratio is
the median of the per-round ratios HTTP rate / in-process rate (learn rows: ``learn_one``;
predict rows: ``predict_one``). The CPU columns are each process's CPU time over the timed
requests divided by their count (from ``/proc``, Linux only): they show how the 2 cores are shared.

Targets (the HTTP service issue): ``learn`` at concurrency 8 ≥ 0.6× the in-process ``learn_one``
rate; ``predict`` p99 ≤ 10 ms at concurrency 8; ``streamnorm_state_loads_total`` = 1 per model
after the run (a hot model is not deserialized per request); no non-200 responses.

Run from the repository root::

    .venv/bin/python bench/http_api.py                            # ~2.5 min on 2 cores
    .venv/bin/python bench/http_api.py --quick                    # ~30 s
    .venv/bin/python bench/http_api.py --learn 2000 --predict 3000 --norms streaming
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from functools import partial
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402
from httpload import (  # noqa: E402  (bench/ is sys.path[0])
    WARMUP_PER_WORKER,
    LoadResult,
    Poster,
    RawConnection,
    httpx_post,
    percentile,
    run_load,
    uvicorn_server,
)
from learner import synthetic_stream as named_stream  # noqa: E402

import models  # noqa: E402
from models import ModelSpec, OnlineLearner  # noqa: E402
from service.redis.embedded import EmbeddedRedis  # noqa: E402

HIDDEN, WINDOW, N_FEATURES, STREAMS = 32, 8, 6, 4
NORMS = ("layer", "streaming")
OPS = ("learn", "predict")
CONCURRENCY = (1, 8, 32)
LEARN_TARGET, TARGET_CONCURRENCY, PREDICT_P99_MS = 0.6, 8, 10.0
WARMUP_LEARNS = 100
Event = tuple[list[float], float]

CAVEAT = (
    "> Caveat: this machine has {cpus} CPU(s). The load generator (this process), the "
    "uvicorn process and redis-server share them, so the HTTP rates are lower "
    "bounds for a server with cores of its own; the CPU columns show who used what. The "
    "in-process rate runs alone (the server idle).")


# -- the workload -----------------------------------------------------------------------------
def synthetic_stream(n: int, n_features: int = N_FEATURES, seed: int = 0) -> list[Event]:
    """bench/learner.py's stream, with each event's features as a list (the request body)."""
    return [(list(x.values()), y) for x, y in named_stream(n, n_features, seed)]


def spec_body(norm: str) -> dict[str, Any]:
    """The model under test, as ``POST /models`` takes it (also the in-process spec)."""
    return {"name": f"bench-{norm}", "task": "regression", "n_features": N_FEATURES,
            "cell": "lstm", "hidden_size": HIDDEN, "window": WINDOW, "norm": norm, "seed": 0,
            "optimizer": {"name": "adam", "lr": 0.005}}


def encode_bodies(events: list[Event], op: str) -> list[bytes]:
    """JSON request bodies, event ``k`` on stream ``s{k % 4}`` (predict bodies carry no y)."""
    out = []
    for k, (x, y) in enumerate(events):
        body: dict[str, Any] = {"stream": f"s{k % STREAMS}", "x": x}
        if op == "learn":
            body["y"] = y
        out.append(json.dumps(body, separators=(",", ":")).encode())
    return out


def run_in_process(norm: str, events: list[Event], n: int) -> tuple[float, float]:
    """Events/s of ``learn_one`` then of ``predict_one`` on a fresh learner, after
    ``WARMUP_LEARNS`` untimed learns (same streams as the HTTP bodies)."""
    spec = ModelSpec.model_validate({**spec_body(norm), "name": "inproc"})
    learner = OnlineLearner(spec)
    learn, predict = learner.learn_one, learner.predict_one
    streams = [f"s{k % STREAMS}" for k in range(len(events))]
    for k in range(WARMUP_LEARNS):
        x, y = events[k]
        learn(x, y, stream=streams[k])
    clock = time.perf_counter
    start = clock()
    for k in range(WARMUP_LEARNS, WARMUP_LEARNS + n):
        x, y = events[k % len(events)]
        learn(x, y, stream=streams[k % len(events)])
    learn_rate = n / (clock() - start)
    start = clock()
    for k in range(WARMUP_LEARNS, WARMUP_LEARNS + n):
        predict(events[k % len(events)][0], stream=streams[k % len(events)])
    return learn_rate, n / (clock() - start)


def parse_metric(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one Prometheus metric in exposition text."""
    out: dict[str, float] = {}
    for m in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.MULTILINE):
        out[m.group(1) or ""] = float(m.group(2))
    return out


# -- the run ----------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--learn", type=int, default=None,
                   help="timed learn requests per configuration (default 1500)")
    p.add_argument("--predict", type=int, default=None,
                   help="timed predict requests per configuration (default 2000)")
    p.add_argument("--repeats", type=int, default=None, help="rounds (default 3)")
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY),
                   help="concurrent workers (default 1 8 32)")
    p.add_argument("--norms", nargs="+", default=list(NORMS), choices=list(models.NORMS),
                   help="norms (default layer streaming)")
    p.add_argument("--httpx", action="store_true",
                   help="load with one httpx.AsyncClient per worker (default: RawConnection)")
    p.add_argument("--quick", action="store_true",
                   help="300 requests per configuration, 2 rounds, unless given")
    args = p.parse_args(argv)
    q = args.quick
    args.learn = args.learn or (300 if q else 1500)
    args.predict = args.predict or (300 if q else 2000)
    args.repeats = args.repeats or (2 if q else 3)
    return args


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop for the load generator when installed (less client CPU)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def main(argv: list[str] | None = None, emit: Callable[[str], Any] = print) -> int:
    """Run the benchmark; print the tables and the targets."""
    args = parse(argv)
    torch.set_num_threads(1)
    cpus = os.cpu_count()
    wall = time.perf_counter()
    events = synthetic_stream(WARMUP_LEARNS + max(args.learn, args.predict) + 1000)
    bodies = {op: encode_bodies(events, op) for op in OPS}
    counts = {"learn": args.learn, "predict": args.predict}
    configs = [(op, c) for op in OPS for c in args.concurrency]
    http: dict[tuple[str, str, int], list[LoadResult]] = {
        (n, op, c): [] for n in args.norms for op, c in configs}
    inproc: dict[tuple[str, str], list[float]] = {(n, op): [] for n in args.norms for op in OPS}

    with ExitStack() as stack, asyncio.Runner(loop_factory=loop_factory()) as runner:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamnorm-http-")))
        log_path = tmp / "uvicorn.log"
        server_log: list[str] = []
        stack.callback(lambda: server_log.extend(  # once the server has stopped
            log_path.read_text(errors="replace").splitlines() if log_path.exists() else []))
        redis = stack.enter_context(EmbeddedRedis(tmp / "redis"))
        base, server = stack.enter_context(uvicorn_server(redis.url, log_path))
        redis_version = redis_info_version(redis.port)
        port = int(base.rsplit(":", 1)[1])
        load = f"httpx {pkg_version('httpx')}" if args.httpx else "RawConnection"
        emit(f"# bench/http_api.py — torch {torch.__version__}, "
             f"Python {platform.python_version()}, "
             f"{cpus} CPUs, 1 torch thread (server and in-process); uvicorn "
             f"{pkg_version('uvicorn')} (uvloop, httptools, 1 process), "
             f"redis-server {redis_version} (embedded, AOF everysec); "
             f"LSTM hidden {HIDDEN}, window {WINDOW}, {N_FEATURES} features, regression, Adam; "
             f"{args.learn} learn / {args.predict} predict requests per configuration, "
             f"load: {load}, one connection per worker, "
             f"{STREAMS} streams, {args.repeats} rounds")
        emit("\n" + CAVEAT.format(cpus=cpus))
        pids = {"client": os.getpid(), "server": server.pid,
                "redis": redis.process.pid if redis.process else None}
        offsets = {n: 0 for n in args.norms}

        async def setup() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:
                for norm in args.norms:
                    r = await client.post("/models", json=spec_body(norm))
                    if r.status_code != 201:
                        raise RuntimeError(f"POST /models ({norm}): {r.status_code} {r.text}")
                    for k in range(WARMUP_LEARNS):
                        r = await client.post(f"/models/bench-{norm}/learn",
                                              content=bodies["learn"][k],
                                              headers={"content-type": "application/json"})
                        if r.status_code != 200:
                            raise RuntimeError(f"warm-up learn ({norm}): {r.status_code} "
                                               f"{r.text}")
                    offsets[norm] = WARMUP_LEARNS

        async def measure(norm: str, op: str, c: int) -> LoadResult:
            async with AsyncExitStack() as stack:
                posters: list[Poster] = []
                for _ in range(c):
                    if args.httpx:
                        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
                        client = await stack.enter_async_context(
                            httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits))
                        posters.append(partial(httpx_post, client))
                    else:
                        raw = RawConnection("127.0.0.1", port)
                        stack.push_async_callback(raw.close)
                        posters.append(raw.post)
                res = await run_load(posters, f"/models/bench-{norm}/{op}", bodies[op],
                                     offsets[norm], counts[op], pids)
            if op == "learn":  # keep feeding the model new events, in order
                offsets[norm] += counts[op] + WARMUP_PER_WORKER * c
            return res

        runner.run(setup())
        for rnd in range(args.repeats):
            k = rnd % len(args.norms)
            for norm in args.norms[k:] + args.norms[:k]:
                learn_rate, predict_rate = run_in_process(norm, events, args.learn)
                inproc[(norm, "learn")].append(learn_rate)
                inproc[(norm, "predict")].append(predict_rate)
                for op, c in configs:
                    http[(norm, op, c)].append(runner.run(measure(norm, op, c)))
        metrics_text = httpx.get(f"{base}/metrics", timeout=10.0).text

    report(args, http, inproc, metrics_text, emit)
    emit(f"\nuvicorn's output (log level warning): {len(server_log)} line(s)"
         + "".join(f"\n    {line}" for line in server_log[-20:]))
    emit(f"\n(wall time {time.perf_counter() - wall:.0f} s)")
    return 0


def redis_info_version(port: int | None) -> str:
    """``redis_version`` of the embedded server."""
    import redis

    client = redis.Redis(port=port or 6379)
    try:
        return str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()


def report(args: argparse.Namespace, http: dict[tuple[str, str, int], list[LoadResult]],
           inproc: dict[tuple[str, str], list[float]], metrics_text: str,
           emit: Callable[[str], Any]) -> None:
    """Print the tables, the server's own counters and the targets."""
    emit("\n## In-process rate (this process alone, 1 torch thread; median, min–max over "
         "rounds)\n")
    emit("| norm | call | events/s |")
    emit("|---|---|---:|")
    for (norm, op), rates in inproc.items():
        call = "learn_one" if op == "learn" else "predict_one"
        emit(f"| {norm} | `{call}` | {fmt_range(rates)} |")

    emit("\n## Through HTTP (one uvicorn process + Redis; median over rounds)\n")
    emit("| norm | op | concurrency | req/s (min–max) | p50 ms | p99 ms | max ms | "
         "× in-process | non-200 | client CPU ms/req | server CPU ms/req | redis CPU ms/req |")
    emit("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    verdicts: list[str] = []
    problems: list[str] = []
    for (norm, op, c), results in http.items():
        rates = [r.rate for r in results]
        ratio = statistics.median(r.rate / b for r, b in zip(results, inproc[(norm, op)],
                                                            strict=True))
        p50 = statistics.median(percentile(r.latencies_ms, 50) for r in results)
        p99 = statistics.median(percentile(r.latencies_ms, 99) for r in results)
        worst = max(max(r.latencies_ms) for r in results)
        non_200 = sum(r.non_200 for r in results)
        failed = sum(sum(r.errors.values()) for r in results)
        cpu = {who: statistics.median(r.cpu_ms[who] for r in results)
               for who in ("client", "server", "redis")}
        emit(f"| {norm} | {op} | {c} | {fmt_range(rates)} | {p50:.2f} | {p99:.2f} | "
             f"{worst:.1f} | {ratio:.2f} | {non_200 + failed} | {fmt_ms(cpu['client'])} | "
             f"{fmt_ms(cpu['server'])} | {fmt_ms(cpu['redis'])} |")
        if non_200 or failed:
            seen = set().union(*(r.samples for r in results))
            problems.append(f"- {norm} {op} c={c}: {non_200} non-200, {failed} transport "
                            f"errors; {', '.join(sorted(seen))[:300]}")
        if c == TARGET_CONCURRENCY and op == "learn":
            ok = ratio >= LEARN_TARGET
            verdicts.append(f"- `{norm}` learn at concurrency {c} ≥ {LEARN_TARGET}× in-process "
                            f"`learn_one`: {ratio:.2f}× → {'PASS' if ok else 'FAIL'}")
        if c == TARGET_CONCURRENCY and op == "predict":
            ok = p99 <= PREDICT_P99_MS
            verdicts.append(f"- `{norm}` predict p99 at concurrency {c} ≤ {PREDICT_P99_MS:g} ms: "
                            f"{p99:.2f} ms → {'PASS' if ok else 'FAIL'}")

    loads = parse_metric(metrics_text, "streamnorm_state_loads_total")
    replayed = parse_metric(metrics_text, "streamnorm_replayed_updates_total")
    snapshots = parse_metric(metrics_text, "streamnorm_snapshots_total")
    applied = parse_metric(metrics_text, "streamnorm_updates_applied_total")
    emit("\n## The server's counters after the run (`GET /metrics`)\n")
    emit("| model | streamnorm_state_loads_total | updates applied | replayed updates | "
         "snapshots written |")
    emit("|---|---:|---:|---:|---:|")
    for norm in args.norms:
        label = f'model="bench-{norm}"'
        emit(f"| bench-{norm} | {fmt_count(loads.get(label))} | "
             f"{fmt_count(applied.get(label))} | {fmt_count(replayed.get(label, 0.0))} | "
             f"{fmt_count(snapshots.get(label))} |")
        got = loads.get(label)
        verdicts.append(f"- `bench-{norm}` streamnorm_state_loads_total = 1: "
                        f"{fmt_count(got)} → {'PASS' if got == 1 else 'FAIL'}")
    requests = parse_metric(metrics_text, "streamnorm_requests_total")
    server_bad = {k: v for k, v in requests.items()
                  if not re.search(r'status="(200|201)"', k) and v}
    emit("\nServer-side requests with a status other than 200/201 (`streamnorm_requests_total`): "
         + (", ".join(f"{{{k}}} {v:g}" for k, v in server_bad.items()) or "none"))

    total_bad = sum(r.non_200 + sum(r.errors.values()) for rs in http.values() for r in rs)
    verdicts.append(f"- no non-200 responses or transport errors: {total_bad} → "
                    f"{'PASS' if total_bad == 0 else 'FAIL'}")
    if problems:
        emit("\n## Failed requests\n")
        emit("\n".join(problems))
    emit("\n## Targets\n")
    emit("\n".join(verdicts))


def fmt_range(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def fmt_ms(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def fmt_count(value: float | None) -> str:
    return "missing" if value is None else f"{value:g}"


if __name__ == "__main__":
    raise SystemExit(main())
