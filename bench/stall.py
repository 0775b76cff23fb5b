"""Does the most expensive work the limits accept stall the server? ``/healthz`` latency while 8
clients send it back to back.

    python bench/stall.py                    # 30 s of load on this checkout
    python bench/stall.py --root ../other    # the same requests against another checkout

One uvicorn process (uvloop, httptools) on an embedded Redis, the default limits
(``STREAMNORM_MAX_UPDATE_MS`` 2,000, ``MAX_STEPS`` 2,048, ``MAX_STATE_BYTES`` 64 MiB, 1 MiB
bodies). Four kinds of request, sized with ``models.cost`` to just under the limits, two
clients each, each client sending its kind back to back:
- ``gru-learn``: a sequence learn on a GRU with Streaming Norm (the slowest per-step path);
- ``gru-predict``: a sequence prediction on the same model;
- ``big-learn``: a sequence learn on an LSTM whose state is near the 64 MiB limit;
- ``wide-body``: a ~1 MiB sequence learn (128 features) on a small LSTM, so reading and
  validating the values is most of the work.
A ninth client asks ``GET /healthz`` every 20 ms and records how long each answer took. The
table gives those latencies (median, p99, max) and, per kind, what the clients got; the
server's peak RSS comes from ``/proc``. Target: ``/healthz`` p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from httpload import ROOT, RawConnection, percentile, uvicorn_server

from models import ModelSpec, cost
from service.redis.embedded import EmbeddedRedis
from service.settings import Settings

MODELS: dict[str, dict[str, Any]] = {
    "gru": {"task": "regression", "n_features": 2, "cell": "gru", "hidden_size": 16,
            "norm": {"method": "streaming"}, "window": 4},
    "big": {"task": "regression", "n_features": 64, "cell": "lstm", "hidden_size": 960,
            "norm": {"method": "none"}, "window": 16},
    "wide": {"task": "regression", "n_features": 128, "cell": "lstm", "hidden_size": 32,
             "norm": {"method": "layer"}, "window": 8},
}


def longest(spec: ModelSpec, fits: Any, limit: float) -> int:
    """The most steps (≤ MAX_STEPS) whose estimate ``fits(spec, steps)`` stays under ``limit``."""
    steps = 1
    while steps < Settings().max_steps and fits(spec, steps + 1) < limit:
        steps += 1
    return steps


def bodies(limit_ms: float, max_body: int) -> dict[str, tuple[str, bytes]]:
    """(path, body) of each kind of request, sized to just under the limits."""
    specs = {k: ModelSpec.model_validate({"name": k, **v}) for k, v in MODELS.items()}
    under = 0.95 * limit_ms

    def learn(spec: ModelSpec, n: int) -> float:
        return cost.update_ms(spec, [(n, 1)])

    def predict(spec: ModelSpec, n: int) -> float:
        return cost.predict_ms(spec, n)

    def seq(spec: ModelSpec, n: int) -> list[list[float]]:
        return [[round(0.001 * ((t * 7 + f) % 997), 3) for f in range(spec.input_size)]
                for t in range(n)]

    n_wide = longest(specs["wide"], learn, under)
    while len(json.dumps({"sequence": seq(specs["wide"], n_wide), "y": 0.5})) > max_body:
        n_wide -= 16
    out = {
        "gru-learn": ("/models/gru/learn",
                      {"sequence": seq(specs["gru"], longest(specs["gru"], learn, under)),
                       "y": 0.5}),
        "gru-predict": ("/models/gru/predict",
                        {"sequence": seq(specs["gru"], longest(specs["gru"], predict, under))}),
        "big-learn": ("/models/big/learn",
                      {"sequence": seq(specs["big"], longest(specs["big"], learn, under)),
                       "y": 0.5}),
        "wide-body": ("/models/wide/learn", {"sequence": seq(specs["wide"], n_wide), "y": 0.5}),
    }
    return {k: (path, json.dumps(body).encode()) for k, (path, body) in out.items()}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(base: str, kinds: dict[str, tuple[str, bytes]], seconds: float
               ) -> tuple[list[float], dict[str, list[tuple[int, float]]]]:
    host, port = base.rsplit("//", 1)[1].split(":")
    stop = time.monotonic() + seconds
    got: dict[str, list[tuple[int, float]]] = {k: [] for k in kinds}
    probes: list[float] = []

    async def client(kind: str) -> None:
        conn = RawConnection(host, int(port))
        path, body = kinds[kind]
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                status, _ = await conn.post(path, body)
            except (OSError, asyncio.IncompleteReadError):
                status = 0
            got[kind].append((status, time.perf_counter() - start))
        await conn.close()

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30.0) as http:
            await asyncio.sleep(1.0)  # the clients are busy by then
            while time.monotonic() < stop:
                start = time.perf_counter()
                r = await http.get("/healthz")
                assert r.status_code == 200
                probes.append(1e3 * (time.perf_counter() - start))
                await asyncio.sleep(0.02)

    await asyncio.gather(probe(), *(client(k) for k in kinds for _ in range(2)))
    return probes, got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to serve from")
    parser.add_argument("--kinds", default="gru-learn,gru-predict,big-learn,wide-body",
                        help="comma-separated kinds of request to send")
    args = parser.parse_args()
    settings = Settings()
    kinds = {k: v for k, v in bodies(settings.max_update_ms, settings.max_body_bytes).items()
             if k in args.kinds.split(",")}
    with tempfile.TemporaryDirectory(prefix="streamnorm-stall-") as tmp, \
            EmbeddedRedis(Path(tmp) / "redis") as redis, \
            uvicorn_server(redis.url, Path(tmp) / "uvicorn.log", root=args.root) as (base, proc):
        with httpx.Client(base_url=base, timeout=120.0) as http:
            for name, spec in MODELS.items():
                r = http.post("/models", json={"name": name, **spec})
                assert r.status_code == 201, r.text
        probes, got = asyncio.run(load(base, kinds, args.seconds))
        rss = peak_rss_mb(proc.pid)
    print(f"# bench/stall.py — {args.seconds:.0f} s, 8 clients (2 per kind) + a /healthz probe "
          f"every 20 ms; server from {args.root}")
    print("\n| /healthz | answers | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|")
    print(f"| | {len(probes)} | {percentile(probes, 50):.1f} | {percentile(probes, 99):.1f} | "
          f"{max(probes):.1f} |")
    print("\n| kind | body KB | requests | statuses | p50 s | max s |")
    print("|---|---:|---:|---|---:|---:|")
    for kind, results in got.items():
        statuses = Counter(s for s, _ in results)
        times = [t for _, t in results] or [float("nan")]
        print(f"| {kind} | {len(kinds[kind][1]) / 1024:.0f} | {len(results)} | "
              f"{dict(statuses)} | {percentile(times, 50):.2f} | {max(times):.2f} |")
    print(f"\nserver peak RSS {rss:.0f} MB; target /healthz p99 < 100 ms: "
          f"{'met' if percentile(probes, 99) < 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
