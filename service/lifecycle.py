"""Process lifecycle: children that do not outlive their parent, and clean exits on signals.

``streamnorm serve`` starts children (the embedded ``redis-server``, stream workers, and with
``--workers N`` uvicorn's worker processes). A clean stop (SIGTERM / SIGINT) stops them in order
(API first, then workers, then Redis); a parent killed outright (``kill -9``) cannot, so each
child asks the kernel for a *parent-death signal* (Linux ``prctl(PR_SET_PDEATHSIG)``): SIGTERM
the moment its parent dies, which every child answers with its own clean shutdown. Elsewhere
(no ``prctl``) these calls do nothing and the data-directory lock (``service.redis.embedded``) still
keeps a second Redis off an orphan's AOF.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
from collections.abc import Callable

__all__ = ["SUPERVISOR_ENV", "die_with_parent", "follow_supervisor", "preexec_child",
           "stop_child"]

SUPERVISOR_ENV = "STREAMNORM_SUPERVISOR_PID"  # set by `serve` for the processes it starts
_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    if name is None or not hasattr(os, "getppid"):
        return None
    try:
        return ctypes.CDLL(name, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _prctl()  # resolved before any fork: a forked child only calls it


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies; whether it could."""
    return _PRCTL is not None and _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def preexec_child(parent: int) -> Callable[[], None]:
    """A ``Popen(preexec_fn=…)`` that makes the child die with ``parent`` (and exit at once if
    the parent is already gone: the signal is only sent for a death after the call)."""

    def preexec() -> None:
        die_with_parent()
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def follow_supervisor() -> None:
    """In a process started by ``serve`` without a ``preexec_fn`` (uvicorn's worker
    processes): die with the supervisor, as the children ``serve`` starts itself do."""
    pid = os.environ.get(SUPERVISOR_ENV, "")
    if not pid.isdigit() or int(pid) == os.getpid():  # not started by serve, or serve itself
        return
    die_with_parent()
    if os.getppid() != int(pid):  # the supervisor died before the call: stop now
        os.kill(os.getpid(), signal.SIGTERM)


def stop_child(child: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM (each child stops cleanly: Redis writes its AOF, a worker finishes its batch and
    snapshots), then SIGKILL if it is still running after ``grace_s``."""
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
