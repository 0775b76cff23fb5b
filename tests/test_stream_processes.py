"""The stream worker as real processes: SIGKILL and restart mid-stream, a Redis restart with
AOF, exactly-once checked from what Redis holds and against an independent replay."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from models import ModelSpec, OnlineLearner
from service.redis.embedded import EmbeddedRedis
from service.redis.keys import model_key
from service.redis.streams import GROUP

from .test_processes import ROOT, Server, free_port

SPEC = {"task": "regression", "n_features": 2, "cell": "lstm", "hidden_size": 4,
        "norm": {"method": "streaming"}, "window": 2, "seed": 3}
FAST = {"STREAMNORM_PARTITIONS": "8", "STREAMNORM_HEARTBEAT_S": "0.2",
        "STREAMNORM_PARTITION_LEASE_MS": "1000", "STREAMNORM_LEASE_MS": "1500",
        "STREAMNORM_LOCK_WAIT_S": "60", "STREAMNORM_REDIS_TIMEOUT_S": "1"}


class WorkerProcess:
    """One ``streamnorm worker`` process."""

    def __init__(self, redis_url: str, name: str, **env: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--name", name,
             "--log-level", "warning"], cwd=ROOT,
            env={**os.environ, "STREAMNORM_REDIS_URL": redis_url, "OMP_NUM_THREADS": "1",
                 **FAST, **env})

    def kill(self, sig: int = signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)


def event(model: str, i: int) -> dict[str, Any]:
    x = [((i * 7) % 11) / 11, ((i * 3) % 5) / 5 - 0.5]
    return {"model": model, "stream": f"s{i % 2}", "x": x, "y": x[0] - x[1],
            "event_id": f"{model}:{i}"}


def replay(model: str, events: list[dict[str, Any]]) -> bytes:
    learner = OnlineLearner(ModelSpec.model_validate({"name": model, **SPEC}))
    for ev in events:
        learner.learn_one(ev["x"], ev["y"], stream=ev["stream"])
    return learner.to_bytes()


def wait_drained(r: redis.Redis, partitions: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    keys = [f"sn:events:{{{p}}}" for p in range(partitions)]
    while sum(r.xlen(k) for k in keys) > 0:
        assert time.monotonic() < deadline, {k: r.xlen(k) for k in keys}
        time.sleep(0.1)


def assert_nothing_pending(r: redis.Redis, partitions: int) -> None:
    for p in range(partitions):
        key = f"sn:events:{{{p}}}"
        assert r.xlen(key) == 0 and r.xlen(f"{key}:dead") == 0
        if r.exists(key):
            assert r.xpending(key, GROUP)["pending"] == 0


def test_three_workers_one_killed_and_restarted_apply_every_event_once(db14: str) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    models = [f"m{k:02d}" for k in range(30)]
    events = [event(models[i % 30], i) for i in range(3000)]
    api = Server(db14, **FAST)
    workers = [WorkerProcess(db14, f"w{k}") for k in range(3)]
    r = redis.Redis.from_url(db14)
    try:
        for m in models:
            assert httpx.post(f"{api.url}/models", json={"name": m, **SPEC}).status_code == 201
        victim = rng.randrange(3)
        kill_after = rng.randrange(300, 2400)  # events pushed before the SIGKILL
        for start in range(0, 3000, 100):
            res = httpx.post(f"{api.url}/events", json=events[start:start + 100], timeout=30)
            assert res.status_code == 202, res.text
            if start <= kill_after < start + 100:
                time.sleep(rng.uniform(0.0, 0.5))
                assert workers[victim].kill() == -signal.SIGKILL
            time.sleep(0.02)
        time.sleep(1.0)  # its partitions are taken over, then it comes back
        workers[victim] = WorkerProcess(db14, f"w{victim}-again")
        wait_drained(r, 8, timeout=180)
        for m in models:
            meta = r.hgetall(model_key(m, "meta"))
            assert int(meta[b"updates"]) == 100, (seed, m, meta)
            assert r.zcard(model_key(m, "seen")) == 100  # each event id applied once
        assert_nothing_pending(r, 8)
        for m in rng.sample(models, 3):  # and in the order they were appended
            state = httpx.get(f"{api.url}/models/{m}/state").content
            assert state == replay(m, [e for e in events if e["model"] == m]), seed
        for w in workers:  # SIGTERM: a clean stop, partitions and worker set handed back
            assert w.kill(signal.SIGTERM) == 0
        assert r.zcard("sn:workers") == 0
        assert not any(r.exists(f"sn:events:{{{p}}}:owner") for p in range(8))
        for m in models:  # each snapshotted on the way out: a new holder replays nothing
            assert int(r.hget(model_key(m, "meta"), "snapshot_version")) == 100, m
    finally:
        for w in workers:
            w.kill(signal.SIGTERM)
        api.kill(signal.SIGTERM)


def test_a_redis_restart_loses_nothing_acknowledged(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", port=free_port()).start()
    url = server.url
    api = Server(url, **FAST)
    worker = WorkerProcess(url, "w-restart")
    produced: list[str] = []  # event ids acknowledged to the producer (202)
    learned: dict[str, int] = {}  # event ids acknowledged to a client (200) → version
    try:
        for m in ("streamed", "direct"):
            assert httpx.post(f"{api.url}/models", json={"name": m, **SPEC}).status_code == 201

        async def load() -> None:
            async with httpx.AsyncClient(base_url=api.url, timeout=10.0) as client:
                async def produce(i: int) -> None:
                    ev = event("streamed", i)
                    try:
                        res = await client.post("/events", json=ev)
                    except httpx.HTTPError:
                        return
                    if res.status_code == 202:
                        produced.append(ev["event_id"])

                async def learn(i: int) -> None:
                    ev = event("direct", i)
                    body = {k: v for k, v in ev.items() if k != "model"}
                    try:
                        res = await client.post("/models/direct/learn", json=body)
                    except httpx.HTTPError:
                        return
                    if res.status_code == 200:
                        learned[ev["event_id"]] = res.json()["version"]

                for i in range(400):
                    await asyncio.gather(produce(i), learn(i))
                    if i == 150:
                        server.stop()  # SIGTERM: Redis flushes its AOF and exits
                    if i == 200:
                        server.start()  # same port, same AOF
                    await asyncio.sleep(0.005)

        asyncio.run(load())
        r = redis.Redis.from_url(url)
        wait_drained(r, 8, timeout=120)
        assert 100 < len(produced) < 400 and 100 < len(learned) < 400  # the outage was seen
        streamed = {k.decode() for k in r.zrange(model_key("streamed", "seen"), 0, -1)}
        assert set(produced) <= streamed
        direct = {k.decode(): int(v) for k, v in r.zrange(model_key("direct", "seen"), 0, -1,
                                                          withscores=True)}
        for eid, version in learned.items():
            assert direct[eid] == version
        for m, seen in (("streamed", streamed), ("direct", direct)):
            assert int(r.hget(model_key(m, "meta"), "updates")) == len(seen)
        assert_nothing_pending(r, 8)
    finally:
        worker.kill(signal.SIGTERM)
        api.kill(signal.SIGTERM)
        server.stop()
