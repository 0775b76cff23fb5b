"""Where a model's computation runs: on the event loop when it is cheap, on a compute thread when
it is not, so that no request holds the loop (and every other request, ``/healthz`` included)
for long.

Most updates cost ~1 ms: a hop to a thread and back costs a good part of that, and a thread
beside the loop contends for the GIL (measured: −25 % throughput when every learn ran on one),
so work estimated under ``STREAMNORM_INLINE_MS`` stays inline. Heavier work (long sequences,
large models, loading a big state) goes to one compute thread, one job at a time, in order. The
caller holds the model's lock throughout, so a learner is never touched by two threads; a
caller cancelled while its job runs waits for the job to end before it lets go of the lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["Compute"]

_T = TypeVar("_T")


class Compute:
    """Runs ``fn`` inline or on the compute thread, by its estimated cost."""

    def __init__(self, inline_ms: float) -> None:
        self.inline_ms = inline_ms
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="streamnorm-compute")

    def offloaded(self, cost_ms: float) -> bool:
        return cost_ms > self.inline_ms

    async def run(self, cost_ms: float, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)``: inline when ``cost_ms`` is within the inline budget, else on the
        compute thread (the event loop serves other requests meanwhile)."""
        if not self.offloaded(cost_ms):
            return fn(*args)
        job = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        cancelled = False
        while not job.done():
            try:
                await asyncio.wait([job])  # (waiting is cancelled, never the job)
            except asyncio.CancelledError:
                cancelled = True  # the job still uses the learner: wait for it to end
        if cancelled:
            raise asyncio.CancelledError
        return job.result()

    async def close(self) -> None:
        """Let the job in hand finish (off the loop) and stop the thread."""
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
