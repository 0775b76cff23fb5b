"""The HTTP load generator of ``bench/http_api.py`` (also used by ``bench/stream.py``): a uvicorn
process of the service, a minimal keep-alive HTTP/1.1 client, the concurrent load loop, and the
CPU time of a process from ``/proc``."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
WARMUP_PER_WORKER = 2  # untimed requests per load worker before the clock starts


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` (``nan`` where ``/proc`` is missing)."""
    if pid is None:
        return math.nan
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def uvicorn_server(redis_url: str, log_path: Path, timeout: float = 90.0, root: Path = ROOT,
                   **env_extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """One uvicorn process serving ``service.api.app:create_app`` over ``redis_url`` (from the
    checkout ``root``, with ``env_extra``); yields its base URL and process once ``GET
    /healthz`` answers, and stops it on exit (also on error)."""
    port = free_port()
    env = {**os.environ, "STREAMNORM_REDIS_URL": redis_url, "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **env_extra}
    for var in ("STREAMNORM_API_KEYS", "STREAMNORM_READ_KEYS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(var, None)  # no auth, one process's metrics
    cmd = [sys.executable, "-m", "uvicorn", "service.api.app:create_app", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
           "--http", "httptools", "--log-level", "warning"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=base, timeout=2.0) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"uvicorn exited with {proc.returncode}:\n"
                                       f"{log_path.read_text(errors='replace')[-3000:]}")
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn did not answer /healthz in {timeout:.0f} s")
                time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class LoadResult:
    """One configuration: rate and latencies of the timed requests; statuses, transport errors
    and a few failure messages of all its requests (warm-up included); CPU ms per request."""

    rate: float
    latencies_ms: list[float]
    statuses: Counter[int]
    errors: Counter[str]
    samples: set[str] = field(default_factory=set)
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def non_200(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != 200)


class RawConnection:
    """One keep-alive HTTP/1.1 connection for the load: pre-encoded JSON POSTs out, replies
    read by their Content-Length (the service sends one on every reply)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(),
                                                              len(body), body))
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
            if not head.startswith(b"HTTP/1.1 ") or found is None:
                raise ConnectionError(f"unexpected reply head {head[:80]!r}")
            reply = await self.reader.readexactly(int(found.group(1)))
        except BaseException:
            await self.close()  # the next request reconnects
            raise
        return int(head[9:12]), reply

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


Poster = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]


async def httpx_post(client: httpx.AsyncClient, path: str, body: bytes) -> tuple[int, bytes]:
    r = await client.post(path, content=body, headers={"content-type": "application/json"})
    return r.status_code, r.content


async def run_load(posters: list[Poster], path: str, bodies: list[bytes],
                   offset: int, total: int, pids: dict[str, int | None]) -> LoadResult:
    """One worker per entry of ``posters``; together they send ``total`` POSTs to ``path``
    back to back (bodies taken in order from ``offset``, cycling), after
    ``WARMUP_PER_WORKER`` untimed requests each."""
    gc.collect()
    gc.freeze()  # keep the load generator's own full collections out of the latencies
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    samples: set[str] = set()
    latencies: list[float] = []
    counter = {"next": offset}
    clock = time.perf_counter

    async def one(post: Poster, timed: bool) -> None:
        k = counter["next"]
        counter["next"] = k + 1
        t0 = clock()
        try:
            status, reply = await post(path, bodies[k % len(bodies)])
        except (OSError, asyncio.IncompleteReadError, httpx.HTTPError) as exc:
            errors[type(exc).__name__] += 1
            if len(samples) < 5:
                samples.add(f"{type(exc).__name__}: {exc}"[:160])
            return
        elapsed = clock() - t0
        statuses[status] += 1  # warm-up requests count too
        if status != 200 and len(samples) < 5:
            samples.add(f"{status}: {reply.decode(errors='replace')}"[:160])
        if timed:
            latencies.append(1e3 * elapsed)

    async def warm(post: Poster) -> None:
        for _ in range(WARMUP_PER_WORKER):
            await one(post, False)

    await asyncio.gather(*(warm(post) for post in posters))
    left = {"n": total}

    async def worker(post: Poster) -> None:
        while left["n"] > 0:
            left["n"] -= 1
            await one(post, True)

    before = {who: cpu_seconds(pid) for who, pid in pids.items()}
    start = clock()
    await asyncio.gather(*(worker(post) for post in posters))
    seconds = clock() - start
    after = {who: cpu_seconds(pid) for who, pid in pids.items()}
    cpu = {who: 1e3 * (after[who] - before[who]) / total for who in pids}
    return LoadResult(total / seconds, latencies, statuses, errors, samples, cpu)
