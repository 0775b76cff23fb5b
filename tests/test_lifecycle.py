"""Process lifecycle of ``streamnorm serve`` (embedded Redis + stream worker) and ``worker``:
clean stops on SIGTERM / SIGINT, no child outliving a killed parent, one Redis per data folder,
and no acknowledged update lost across a crash and restart (design.md, "Process lifecycle")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.redis.keys import model_key
from tests.test_processes import ROOT, SPEC, Server, event, fire, free_port, wait_healthy
from tests.test_stream_processes import FAST, WorkerProcess
from tests.test_stream_processes import SPEC as STREAM_SPEC
from tests.test_stream_processes import event as stream_event


def redis_servers_on(folder: Path) -> list[int]:
    """Pids of the ``redis-server`` processes working in ``folder`` (Redis rewrites its
    command line, so it is found by its working directory, where ``--dir`` puts it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"redis-server" in (proc / "cmdline").read_bytes() and \
                    (proc / "stat").read_text().split(")")[-1].split()[0] != "Z" and \
                    Path(os.readlink(proc / "cwd")).resolve() == folder.resolve():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def children_of(pid: int) -> list[int]:
    """Live processes whose command line names ``serve``'s worker prefix (``serve-{pid}-``)."""
    out = subprocess.run(["pgrep", "-f", f"worker --name serve-{pid}-"], capture_output=True)
    return [int(p) for p in out.stdout.split()]


class Serve:
    """``streamnorm serve`` with its embedded Redis in ``folder`` (and one stream worker)."""

    def __init__(self, folder: Path, **env: str) -> None:
        self.port, self.folder = free_port(), folder
        self.url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMNORM_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port),
             "--log-level", "warning"], cwd=ROOT,
            env={**clean, "STREAMNORM_DATA_DIR": str(folder), **env})

    def ready(self, timeout: float = 90.0) -> Serve:
        wait_healthy(self.url, self.proc, timeout)
        return self

    def redis_url(self) -> str:
        port = json.loads((self.folder / "redis" / "redis.json").read_text())["port"]
        return f"redis://127.0.0.1:{port}/0"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for pid in redis_servers_on(tmp_path / "redis"):  # never leave a server behind
        os.kill(pid, signal.SIGKILL)


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_serve_its_worker_and_redis_and_exits_0(folder: Path, sig: int) -> None:
    """Finding 1 (SIGTERM): uvicorn re-raised the signal after its shutdown, so `serve` died
    before its clean-up: the stream worker and the embedded Redis stayed up. Now the API
    finishes, snapshots what is ahead, the worker and Redis stop, and `serve` exits 0."""
    server = Serve(folder).ready()
    assert httpx.post(f"{server.url}/models", json={"name": "m", **SPEC}).status_code == 201
    for i in range(5):
        assert httpx.post(f"{server.url}/models/m/learn", json=event(i)).status_code == 200
    workers = children_of(server.proc.pid)
    assert len(workers) == 1 and redis_servers_on(folder / "redis")
    r = redis.Redis.from_url(server.redis_url())
    assert int(r.hget(model_key("m", "meta"), "snapshot_version")) == 0
    assert server.stop(sig) == 0
    assert redis_servers_on(folder / "redis") == []
    assert children_of(server.proc.pid) == []
    assert not (folder / "redis" / "redis.json").exists()
    again = Serve(folder).ready()  # the exit snapshotted the learner ahead of its snapshot
    try:
        r = redis.Redis.from_url(again.redis_url())
        assert r.hmget(model_key("m", "meta"), "version", "snapshot_version") == [b"5", b"5"]
    finally:
        assert again.stop() == 0


def test_serve_killed_outright_leaves_no_child_running(folder: Path) -> None:
    """Finding 1 (kill -9): the embedded Redis and the stream worker outlived `serve`. Now
    each child gets SIGTERM from the kernel when its parent dies, and stops cleanly."""
    server = Serve(folder).ready()
    workers, servers = children_of(server.proc.pid), redis_servers_on(folder / "redis")
    assert len(workers) == 1 and len(servers) == 1
    server.stop(signal.SIGKILL)
    wait_until(lambda: not redis_servers_on(folder / "redis")
               and not children_of(server.proc.pid), 20, "a child outlived serve")


_BUSY = """local t0 = redis.call('TIME')
repeat local t = redis.call('TIME') until (t[1] - t0[1]) * 1e6 + t[2] - t0[2] > tonumber(ARGV[1])
"""


def test_a_restart_after_kill_9_serves_every_acknowledged_update_on_one_redis(
        folder: Path) -> None:
    """Finding 1 (data loss): after `kill -9` of `serve`, a restart on the same data folder
    started a second `redis-server` on the orphan's AOF, and once the orphan rewrote the AOF
    the acknowledged updates were gone. Here the orphan is kept busy (a 3 s script, so it
    cannot act on its SIGTERM at once) and then asked to rewrite its AOF while the new
    `serve` starts: the new one must wait for it, run exactly one server on the folder, and
    have every acknowledged learn."""
    data = folder / "redis"
    first = Serve(folder).ready()
    assert httpx.post(f"{first.url}/models", json={"name": "m", **SPEC}).status_code == 201
    old_url = first.redis_url()
    [orphan] = redis_servers_on(data)
    acked: dict[str, int] = {}

    def burst() -> None:  # learns until the server goes away; keeps the acknowledged ones
        for start in range(0, 10_000, 40):
            reqs = [(f"{first.url}/models/m/learn", event(i)) for i in range(start, start + 40)]
            replies = asyncio.run(fire(reqs))
            for (_, body), r in zip(reqs, replies, strict=True):
                if r is not None and r.status_code == 200:
                    acked[body["event_id"]] = r.json()["version"]
            if any(r is None for r in replies):
                return

    def command(*args: str) -> threading.Thread:  # on the old server, whatever it answers
        def send() -> None:
            with contextlib.suppress(redis.RedisError):
                redis.Redis.from_url(old_url, socket_timeout=30).execute_command(*args)
        thread = threading.Thread(target=send)
        thread.start()
        return thread

    loader = threading.Thread(target=burst)
    loader.start()
    wait_until(lambda: len(acked) >= 200, 60, "no learns acknowledged")
    sleeper = command("EVAL", _BUSY, "0", "3000000")  # it acts on its SIGTERM only after this
    time.sleep(0.3)
    first.stop(signal.SIGKILL)
    loader.join(60)
    assert not loader.is_alive()
    rewriter = command("BGREWRITEAOF")  # queued behind the sleep, before its shutdown
    second = Serve(folder)
    try:
        time.sleep(1.5)  # the new serve finds the folder locked by the orphan, and waits
        assert redis_servers_on(data) == [orphan]
        second.ready()
        for thread in (sleeper, rewriter):
            thread.join(30)
        assert len(redis_servers_on(data)) == 1 and orphan not in redis_servers_on(data)
        info = httpx.get(f"{second.url}/models/m").json()
        assert info["version"] >= max(acked.values()) and len(acked) >= 200
        replies = asyncio_run_learns(second.url, sorted(acked))
        for eid, reply in zip(sorted(acked), replies, strict=True):
            assert reply == {"applied": False, "version": acked[eid]}, eid
    finally:
        assert second.stop() == 0
    assert redis_servers_on(data) == []


def asyncio_run_learns(url: str, event_ids: list[str]) -> list[dict[str, object]]:
    """Send each acknowledged event again: an applied one answers ``applied: false`` with the
    version that applied it."""
    replies = asyncio.run(fire([(f"{url}/models/m/learn", event(int(eid.split("-")[1])))
                                for eid in event_ids]))
    out = []
    for r in replies:
        assert r is not None and r.status_code == 200, r
        body = r.json()
        out.append({"applied": body["applied"], "version": body["version"]})
    return out


def test_a_second_serve_on_a_folder_in_use_refuses_and_starts_no_redis(folder: Path) -> None:
    """Two servers never write one AOF: while a live `serve` runs the folder's Redis, another
    `serve` on the same folder exits 1 naming it, and the first carries on."""
    first = Serve(folder).ready()
    try:
        [running] = redis_servers_on(folder / "redis")
        second = Serve(folder)
        assert second.proc.wait(60) == 1
        assert redis_servers_on(folder / "redis") == [running]
        assert httpx.get(f"{first.url}/readyz").status_code == 200
    finally:
        assert first.stop() == 0


def test_streamnorm_serve_starts_and_stops_an_embedded_redis_that_persists(
        folder: Path) -> None:
    for round_ in range(2):
        server = Serve(folder).ready()
        url = server.url
        try:
            if round_ == 0:
                assert httpx.post(f"{url}/models", json={"name": "embedded", **SPEC}
                                  ).status_code == 201
                assert httpx.post(f"{url}/models/embedded/learn", json=event(1)).json()[
                    "version"] == 1
                # the stream worker `serve` runs beside the embedded Redis applies events
                res = httpx.post(f"{url}/events", json={"model": "embedded", **event(2)})
                assert res.status_code == 202
                deadline = time.monotonic() + 60
                while httpx.get(f"{url}/models/embedded").json()["version"] < 2:
                    assert time.monotonic() < deadline, "the stream worker applied nothing"
                    time.sleep(0.1)
            else:  # the model survived the restart through the AOF
                assert httpx.get(f"{url}/models/embedded").json()["version"] == 2
        finally:
            assert server.stop(signal.SIGINT) == 0
        assert not any(p.name.endswith(".pid") for p in folder.iterdir())
        assert redis_servers_on(folder / "redis") == []  # stopped with the service
    assert any((folder / "redis").rglob("appendonly*"))  # AOF on disk


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_worker_cleanly(db14: str, sig: int) -> None:
    """`streamnorm worker` on SIGTERM or SIGINT: the batch in hand is applied, the learners
    ahead of their snapshot are snapshotted, its partitions and its place in the worker set are
    handed back, and it exits 0."""
    api = Server(db14, **FAST)
    worker = WorkerProcess(db14, "w-signal")
    r = redis.Redis.from_url(db14)
    try:
        assert httpx.post(f"{api.url}/models", json={"name": "m", **STREAM_SPEC}
                          ).status_code == 201
        res = httpx.post(f"{api.url}/events", json=[stream_event("m", i) for i in range(20)])
        assert res.status_code == 202
        wait_until(lambda: r.hget(model_key("m", "meta"), "version") == b"20", 60,
                   "the worker applied nothing")
        assert worker.kill(sig) == 0
        assert r.hget(model_key("m", "meta"), "snapshot_version") == b"20"
        assert r.zcard("sn:workers") == 0
        assert not r.keys("sn:events:*:owner")
    finally:
        worker.kill()
        api.kill(signal.SIGTERM)
