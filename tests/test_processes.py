"""Real processes: two uvicorn servers on one Redis, kill -9, restarts, and ``streamnorm serve``
with its embedded Redis. Exactly-once is checked against an independent replay."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from models import ModelSpec, OnlineLearner
from service.redis.keys import model_key

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become healthy")


class Server:
    """One ``uvicorn service.api.app:create_app`` process (uvloop + httptools)."""

    def __init__(self, redis_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.api.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(self.port), "--loop", "uvloop",
             "--http", "httptools", "--log-level", "warning"],
            cwd=ROOT, env={**os.environ, "STREAMNORM_REDIS_URL": redis_url,
                           "OMP_NUM_THREADS": "1", **env})
        wait_healthy(self.url, self.proc)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)


@pytest.fixture
def servers(redis_url: str) -> Iterator[list[Server]]:
    # a generous lease wait: these tests are about exactly-once, not latency on a busy machine
    env = {"STREAMNORM_LEASE_MS": "1500", "STREAMNORM_LOCK_WAIT_S": "60"}
    started = [Server(redis_url, **env), Server(redis_url, **env)]
    yield started
    for s in started:
        s.kill(signal.SIGTERM)



SPEC = {"task": "regression", "n_features": 3, "cell": "lstm", "hidden_size": 8,
        "norm": {"method": "streaming"}, "window": 4, "seed": 2}


def event(i: int) -> dict[str, Any]:
    x = [((i * 7) % 11) / 11, ((i * 3) % 5) / 5 - 0.5, (i % 2) * 0.3]
    return {"stream": f"s{i % 3}", "x": x, "y": x[0] - x[1], "event_id": f"e-{i}"}


async def fire(requests: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response | None]:
    """Send every (url, body) at once; a dropped connection gives None."""
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        async def one(url: str, body: dict[str, Any]) -> httpx.Response | None:
            try:
                return await client.post(url, json=body)
            except httpx.HTTPError:
                return None
        return list(await asyncio.gather(*(one(u, b) for u, b in requests)))


def replay_in_version_order(r: redis.Redis, name: str, spec: dict[str, Any]) -> bytes:
    """An independent learner fed the applied events in the order their versions record."""
    order = r.zrange(model_key(name, "seen"), 0, -1, withscores=True)
    learner = OnlineLearner(ModelSpec.model_validate({"name": name, **spec}))
    for eid, _version in order:
        ev = event(int(eid.decode().split("-")[1]))
        learner.learn_one(ev["x"], ev["y"], stream=ev["stream"])
    return learner.to_bytes()


def test_two_processes_apply_400_concurrent_learns_exactly_once(
        servers: list[Server], name: str, redis_url: str) -> None:
    a, b = servers
    assert httpx.post(f"{a.url}/models", json={"name": name, **SPEC}).status_code == 201
    n = 400
    reqs = [(f"{(a, b)[i % 2].url}/models/{name}/learn", event(i)) for i in range(n)]
    responses = asyncio.run(fire(reqs))
    assert all(r is not None and r.status_code == 200 for r in responses), \
        [r.text if r is not None else None for r in responses if r is None or r.is_error][:3]
    versions = sorted(r.json()["version"] for r in responses if r is not None)
    assert versions == list(range(1, n + 1))  # every update applied once, in one order
    info = httpx.get(f"{b.url}/models/{name}").json()
    assert info["updates"] == n and info["version"] == n
    rd = redis.Redis.from_url(redis_url)
    assert rd.zcard(model_key(name, "seen")) == n
    want = replay_in_version_order(rd, name, SPEC)
    for server in servers:
        assert httpx.get(f"{server.url}/models/{name}/state").content == want
    # repeats are answered, not applied
    again = asyncio.run(fire(reqs[:20]))
    assert all(r is not None and r.json()["applied"] is False for r in again)
    assert httpx.get(f"{a.url}/models/{name}").json()["updates"] == n


def test_kill_9_during_a_burst_loses_no_acknowledged_update(
        servers: list[Server], name: str, redis_url: str) -> None:
    a, b = servers
    assert httpx.post(f"{a.url}/models", json={"name": name, **SPEC}).status_code == 201
    acked: list[str] = []

    async def burst() -> None:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
            async def one(i: int) -> None:
                server = a if i % 4 else b
                try:
                    r = await client.post(f"{server.url}/models/{name}/learn", json=event(i))
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append(f"e-{i}")

            tasks = [asyncio.create_task(one(i)) for i in range(600)]
            while len(acked) < 60:
                await asyncio.sleep(0.002)
            a.kill()  # SIGKILL while requests are in flight on it
            await asyncio.gather(*tasks)

    asyncio.run(burst())
    assert a.proc.returncode == -signal.SIGKILL
    rd = redis.Redis.from_url(redis_url)
    seen = {eid.decode() for eid in rd.zrange(model_key(name, "seen"), 0, -1)}
    assert set(acked) <= seen  # every 200 is in Redis
    meta = {k.decode(): v.decode() for k, v in rd.hgetall(model_key(name, "meta")).items()}
    version = int(meta["version"])
    assert version == int(meta["updates"]) == len(seen)  # nothing half-written
    log = rd.xrange(model_key(name, "log"))
    ids = [int(eid.decode().split("-")[0]) for eid, _ in log]
    assert ids == list(range(ids[0], version + 1)) and ids[0] <= int(meta["snapshot_version"]) + 1
    # the survivor takes over once the dead lease expires, and the model still loads and learns
    r = httpx.post(f"{b.url}/models/{name}/learn", json=event(10_000), timeout=30.0)
    assert r.status_code == 200 and r.json()["version"] == version + 1
    state = httpx.get(f"{b.url}/models/{name}/state").content
    learner = OnlineLearner.from_bytes(state)
    assert learner.updates == version + 1
    rd.zrem(model_key(name, "seen"), "e-10000")
    replayed = OnlineLearner.from_bytes(replay_in_version_order(rd, name, SPEC))
    ev = event(10_000)
    replayed.learn_one(ev["x"], ev["y"], stream=ev["stream"])
    assert replayed.to_bytes() == state


def test_restart_gives_bit_identical_predictions(redis_url: str, name: str) -> None:
    first = Server(redis_url)
    try:
        assert httpx.post(f"{first.url}/models", json={"name": name, **SPEC}).status_code == 201
        for i in range(30):
            assert httpx.post(f"{first.url}/models/{name}/learn",
                              json=event(i)).status_code == 200
        probes = [event(100 + i) for i in range(6)]
        before = [httpx.post(f"{first.url}/models/{name}/predict",
                             json={"stream": p["stream"], "x": p["x"]}).json() for p in probes]
    finally:
        first.kill(signal.SIGTERM)
    second = Server(redis_url)
    try:
        after = [httpx.post(f"{second.url}/models/{name}/predict",
                            json={"stream": p["stream"], "x": p["x"]}).json() for p in probes]
    finally:
        second.kill(signal.SIGTERM)
    assert after == before and before[0]["version"] == 30


def test_mixed_concurrent_predicts_and_learns_load_the_model_once(
        servers: list[Server], name: str, redis_url: str) -> None:
    """Predicts read the version before waiting for the model's lock; learns committed
    meanwhile must not make them reload the model (it stays loaded once per process)."""
    a, _ = servers
    assert httpx.post(f"{a.url}/models", json={"name": name, **SPEC}).status_code == 201
    reqs = []
    for i in range(300):
        ev = event(i)
        if i % 2:
            reqs.append((f"{a.url}/models/{name}/learn", ev))
        else:
            reqs.append((f"{a.url}/models/{name}/predict", {"stream": ev["stream"],
                                                            "x": ev["x"]}))
    responses = asyncio.run(fire(reqs))
    assert all(r is not None and r.status_code == 200 for r in responses)
    text = httpx.get(f"{a.url}/metrics").text
    assert f'streamnorm_state_loads_total{{model="{name}"}} 1.0' in text
    assert httpx.get(f"{a.url}/models/{name}").json()["version"] == 150
    # the lease goes back after the last learn (a few ms later: it lingers for a next learn),
    # though predicts were still queued then. Released, not expired: if it is still there, it
    # must go well before its 1.5 s lease would run out
    r, key = redis.Redis.from_url(redis_url), model_key(name, "lock")
    ttl_ms, deadline = r.pttl(key), time.monotonic() + 0.3
    assert ttl_ms == -2 or ttl_ms > 500, ttl_ms  # -2: gone already
    while r.exists(key):
        assert time.monotonic() < deadline, r.pttl(key)
        time.sleep(0.01)


def test_a_busy_process_hands_the_lease_to_another_that_waits(
        servers: list[Server], name: str) -> None:
    """Process A has a steady queue of learns for the model; process B's learns must not wait
    for A's queue to drain (the holder yields after its next commit)."""
    a, b = servers
    assert httpx.post(f"{a.url}/models", json={"name": name, **SPEC}).status_code == 201
    waits: list[float] = []

    async def run() -> None:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
            stop = asyncio.Event()

            async def busy(k: int) -> None:  # A: 8 clients back to back
                i = k
                while not stop.is_set():
                    r = await client.post(f"{a.url}/models/{name}/learn", json=event(i))
                    assert r.status_code == 200, r.text
                    i += 8

            tasks = [asyncio.create_task(busy(k)) for k in range(8)]
            await asyncio.sleep(0.3)
            for i in range(10):  # B: one at a time, while A stays busy
                start = time.monotonic()
                r = await client.post(f"{b.url}/models/{name}/learn", json=event(50_000 + i))
                waits.append(time.monotonic() - start)
                assert r.status_code == 200, r.text
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(run())
    assert max(waits) < 2.0, waits  # without yielding, B waited for A to go idle (or 503)
    info = httpx.get(f"{b.url}/models/{name}").json()
    assert info["updates"] == info["version"]
