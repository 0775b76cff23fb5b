"""This process's hold on one model's write lease: taken, renewed, kept through long work, given
back. The lease itself (``SET NX PX`` + a token, fenced at every commit) is ``service.redis.store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable

from redis.exceptions import RedisError

from .. import telemetry as m
from ..redis.store import ModelHead
from .errors import Busy, UnknownModel
from .host import Host

__all__ = ["Lease"]

log = logging.getLogger("streamnorm")


class Lease:
    """The token of a model's lease while this process holds it, and until when it surely
    holds (renewed by every commit, and by ``kept`` during long work)."""

    def __init__(self, name: str, host: Host) -> None:
        self.name, self.host = name, host
        self.token: str | None = None
        self.until = 0.0  # monotonic time before which the held lease surely holds
        self.wanted = False  # another process waits for it (the last commit said so)
        self._polling = asyncio.Lock()  # one poller per process; the others share its lease

    def fresh(self) -> bool:
        """Held, and surely still held."""
        return self.token is not None and time.monotonic() < self.until

    def renewed(self) -> None:
        """A commit (or a renewal) under the token extended the lease in Redis."""
        self.until = time.monotonic() + self.host.lease_s

    async def take(self, busy: Callable[[], asyncio.Task[None] | None]) -> ModelHead | None:
        """Hold the lease: ``None`` when this process already holds it (no other writer can
        have moved the model), else the head read when it was taken. ``busy()``: the commits
        in flight under it, which renew it (or fail) — waited for when it may have lapsed."""
        settings = self.host.settings
        async with self._polling:
            flusher = busy()
            if self.token is not None and flusher is not None and not self.fresh():
                await asyncio.shield(flusher)
            if self.fresh():
                return None
            self.token = None  # lapsed (no commit renewed it in time): take it afresh
            token = secrets.token_hex(16)
            start = time.perf_counter()
            deadline = start + settings.lock_wait_s
            pause = 0.0005
            while True:
                try:
                    head, wait_ms = await self.host.store.acquire(self.name, token,
                                                                  settings.lease_ms)
                except BaseException:
                    # the SET may still land after a timeout: make sure it does not linger
                    self.host.background(self.release(token))
                    raise
                if head is not None:
                    self.token = token
                    self.renewed()
                    m.LOCK_WAIT.observe(time.perf_counter() - start)
                    return head
                if wait_ms < 0:
                    raise UnknownModel(self.name)
                if time.perf_counter() >= deadline:
                    raise Busy(f"model {self.name!r} is busy: its write lease was not free "
                               f"within {settings.lock_wait_s} s")
                await asyncio.sleep(min(pause, max(wait_ms, 1) / 1000))
                pause = min(pause * 2, 0.005)

    def give_up(self) -> str | None:
        """Stop using the lease here: its token (to release), if one was held."""
        token, self.token = self.token, None
        return token

    async def hand_back(self) -> None:
        """Give up the lease this process holds, if it holds one."""
        token = self.give_up()
        if token is not None:
            await self.release(token)

    async def release(self, token: str) -> None:
        """Hand a lease back; if Redis cannot be reached it simply expires."""
        try:
            await self.host.store.release(self.name, token)
        except Exception as exc:  # never turn a committed update into an error
            log.warning("could not release the lease of %s (it will expire): %r", self.name,
                        exc)

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[None]:
        """Renew the lease this process holds while a long computation runs (or waits for the
        compute thread) under it, so it is still held at the commit."""
        stop = asyncio.Event()
        store, lease_s = self.host.store, self.host.lease_s

        async def renew() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), lease_s / 4)
                    return
                token = self.token
                if token is None:
                    return
                try:
                    if not await store.renew(self.name, token, self.host.settings.lease_ms):
                        return  # gone: the commit's fencing refuses the update
                except (RedisError, OSError) as exc:  # try again at the next tick
                    log.warning("could not renew the lease of %s: %r", self.name, exc)
                    continue
                if self.token == token:
                    self.renewed()

        task = asyncio.create_task(renew())
        try:
            yield
        finally:  # told, not cancelled: a Redis call cut by a cancellation can swallow it
            stop.set()
            with contextlib.suppress(Exception):
                await task
