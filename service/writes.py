"""The write side of a model in one process: its lease, and the group commit of its updates.

A learn holds the model's lock only while it computes; ``queue`` then hands its update over as a
``Ticket``, and one flusher task per model commits the queued tickets in order, many per Redis
call (``Store.commit``), while the next learn computes. A reply waits for its ticket, so nothing
uncommitted is ever acknowledged. Each commit is fenced on the version it extends: when one fails,
every ticket behind it fails too, and the learner, which holds updates Redis does not, is dropped.
A process keeps the lease ``_LINGER_S`` after its last write (a busy client's next learn then
skips two round trips) and yields it after a commit when another process asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError

from . import metrics as m
from .contexts import ContextWrites
from .errors import ApiError
from .events import Event
from .hot import Hot, Ticket
from .settings import Settings
from .store import LeaseLost, ModelHead, Store

__all__ = ["Writes"]

log = logging.getLogger("streamnorm")
_MAX_BATCH = 64  # queued updates committed per Redis call at most
_LINGER_S = 0.005  # an idle process keeps a model's lease this long before handing it back


class Writes:
    """Leases and commits of this process's writes (``drop`` forgets a cached learner)."""

    def __init__(self, store: Store, settings: Settings,
                 drop: Callable[[str, Hot], None]) -> None:
        self.store, self.settings, self._drop = store, settings, drop
        self._tasks: set[asyncio.Task[None]] = set()
        self._lease_s = 0.8 * settings.lease_ms / 1000  # renew well before Redis expires it

    def snapshot_due(self, hot: Hot) -> bool:
        """Whether the next queued update carries a snapshot (every ``snapshot_every``)."""
        return hot.version + 1 - max(hot.snapshot_version, hot.snapshot_queued) \
            >= self.settings.snapshot_every

    def queue(self, name: str, hot: Hot, event: Event, state: bytes | None) -> Ticket:
        """Queue the commit of ``event``, just applied to ``hot.learner`` (lock held, no
        await), with ``state``, the learner's bytes after it, when ``snapshot_due`` said so."""
        learner = hot.learner
        hot.version += 1
        snapshot = None
        if state is not None:
            snapshot = (state, hot.book.take(learner))
            hot.snapshot_queued = hot.version
        ticket = Ticket(hot.version, event.to_json(), event.event_id, event.digest,
                        learner.updates, learner.samples, json.dumps(learner.metrics.report()),
                        snapshot, asyncio.get_running_loop().create_future())
        ticket.done.add_done_callback(_retrieve)
        hot.pending.append(ticket)
        hot.last = ticket
        if event.event_id is not None:
            hot.ids[event.event_id] = ticket
        if hot.flusher is None:
            hot.flusher = asyncio.create_task(self._flush(name, hot))
        return ticket

    async def _flush(self, name: str, hot: Hot) -> None:
        """Commit the queued tickets in order, a batch per Redis call, until none is left
        (a batch ends at a ticket that carries a snapshot, written right after it)."""
        try:
            while hot.pending and not hot.dead:
                batch = hot.pending[:_MAX_BATCH]
                for i, ticket in enumerate(batch):
                    if ticket.snapshot is not None:
                        del batch[i + 1:]
                        break
                del hot.pending[:len(batch)]
                try:
                    await self._commit(name, hot, batch)
                except Exception:  # the tickets carry the error; the learner is dropped
                    break
                if batch[-1].snapshot is not None:
                    await self._snapshot(name, hot, hot.token, batch[-1].version,
                                         batch[-1].snapshot)
                if hot.wanted and not hot.dead:
                    await self._yield(name, hot)
        finally:
            hot.flusher = None
            if hot.dead:
                _fail(hot.pending, LeaseLost("an earlier update of this model failed to "
                                             "commit; retry (event_id makes retries safe)"))
                hot.pending.clear()
            await self.settle(name, hot)

    async def _commit(self, name: str, hot: Hot, batch: list[Ticket]) -> None:
        last = batch[-1]
        try:
            if hot.token is None:
                raise LeaseLost("the model's lease was given up with updates queued")
            version, hot.wanted = await self.store.commit(
                name, hot.token, batch[0].version - 1,
                [(t.event_json, t.event_id, t.digest) for t in batch], uid=hot.uid,
                updates=last.updates, samples=last.samples, metrics_json=last.metrics_json,
                lease_ms=self.settings.lease_ms)
        except BaseException as exc:
            self.abandon(name, hot)  # the script may still have run and renewed the lease
            _fail(batch, exc)
            raise
        assert version == last.version
        hot.committed = version
        hot.lease_until = time.monotonic() + self._lease_s  # the commit renewed it
        for ticket in batch:
            if ticket.event_id is not None:
                hot.ids.pop(ticket.event_id, None)
            ticket.done.set_result(ticket.version)
        m.UPDATES.labels(name).inc(len(batch))

    async def checkpoint(self, name: str, hot: Hot) -> bool:
        """Snapshot a cached learner that is ahead of its model's snapshot, so the next process
        to load the model replays nothing (on shutdown, and when a worker hands a partition
        over). Best effort: a model whose lease another process holds is left as it is."""
        if hot.flusher is not None:
            await asyncio.wait([hot.flusher])  # its errors are the tickets'
        async with hot.lock:
            if hot.dead or hot.uncommitted() or hot.version <= hot.snapshot_version:
                return False
            token, taken = hot.token, False
            if token is None:
                token = secrets.token_hex(16)
                head, _ = await self.store.acquire(name, token, self.settings.lease_ms)
                if head is None:
                    return False
                taken = True
                if head.uid != hot.uid or head.version != hot.version:
                    await self._release(name, token)
                    return False  # another process moved the model: this learner is behind
            try:
                await self._snapshot(name, hot, token, hot.version,
                                     (hot.snapshot_state(), hot.book.take(hot.learner)))
                return hot.snapshot_version == hot.version
            finally:
                if taken:
                    await self._release(name, token)

    def abandon(self, name: str, hot: Hot) -> None:
        """Drop a learner that holds updates Redis does not (it must never serve again) and
        hand its lease back."""
        token = hot.token
        self._drop(name, hot)
        if token is not None:
            self._background(self._release(name, token))

    async def _snapshot(self, name: str, hot: Hot, token: str | None, version: int,
                        snapshot: tuple[bytes, ContextWrites]) -> None:
        """Write the learner's state at ``version`` (committed already) under lease ``token``."""
        state, contexts = snapshot
        try:
            if token is None:
                raise LeaseLost("no lease held")
            written = await self.store.write_snapshot(name, token, version, state, contexts,
                                                      keep=self.settings.snapshot_every)
        except Exception as exc:  # committed already; a later update snapshots
            log.warning("snapshot of %s at %d failed: %r", name, version, exc)
            written = False
        if written:
            hot.snapshot_version = max(hot.snapshot_version, version)
            m.STATE_BYTES.labels(name).set(len(state))
            m.SNAPSHOTS.labels(name).inc()
        else:  # the next update snapshots again, with every context change this one carried;
            # a snapshot queued meanwhile was taken without them: it is dropped, its changes
            # go back to the book too
            hot.snapshot_queued = 0
            hot.book.restore(contexts)
            for ticket in hot.pending:
                if ticket.snapshot is not None:
                    hot.book.restore(ticket.snapshot[1])
                    ticket.snapshot = None

    async def _yield(self, name: str, hot: Hot) -> None:
        """Another process waits for the lease: hand it over once nothing is queued (the
        lock makes the learns already computing queue first; later ones go back to wait)."""
        await hot.lock.acquire()
        try:
            if not hot.pending and not hot.dead:
                hot.wanted = False
                await self.hand_back(name, hot)
        finally:
            hot.lock.release()

    async def settle(self, name: str, hot: Hot, linger: bool = True) -> None:
        """Give the lease back once this process has had nothing to write to the model for
        ``_LINGER_S`` (the next request of a busy client then finds it still held: two round
        trips saved; a process waiting for it polls at least that often anyway). A learn that
        changed nothing hands it back at once, so a refused request leaves Redis as it was."""
        if hot.writers == 0 and hot.flusher is None and not hot.pending \
                and hot.token is not None:
            if hot.wanted or not linger:
                await self.hand_back(name, hot)
                return
            asyncio.get_running_loop().call_later(_LINGER_S, self._linger_over, name, hot,
                                                  hot.token, hot.learns)

    def _linger_over(self, name: str, hot: Hot, token: str, learns: int) -> None:
        if hot.token == token and hot.learns == learns and hot.writers == 0 \
                and hot.flusher is None and not hot.pending:
            hot.token = None
            self._background(self._release(name, token))

    async def hand_back(self, name: str, hot: Hot) -> None:
        """Give up the lease this process holds on ``name``, if it holds one."""
        if hot.token is not None:
            token, hot.token = hot.token, None
            await self._release(name, token)

    async def _release(self, name: str, token: str) -> None:
        """Hand a lease back; if Redis cannot be reached it simply expires."""
        try:
            await self.store.release(name, token)
        except Exception as exc:  # never turn a committed update into an error
            log.warning("could not release the lease of %s (it will expire): %r", name, exc)

    async def lease(self, name: str, hot: Hot) -> ModelHead | None:
        """Hold the model's lease: ``None`` when this process already holds it (no other
        writer can have moved the model), else the head read when it was taken."""
        async with hot.lease_lock:  # one poller per process; the others then share its lease
            if hot.token is not None and hot.flusher is not None \
                    and time.monotonic() >= hot.lease_until:
                await asyncio.shield(hot.flusher)  # its commits renew the lease (or fail)
            if hot.token is not None and time.monotonic() < hot.lease_until:
                return None
            hot.token = None  # lapsed (no commit renewed it in time): take it afresh
            token = secrets.token_hex(16)
            start = time.perf_counter()
            deadline = start + self.settings.lock_wait_s
            pause = 0.0005
            while True:
                try:
                    head, wait_ms = await self.store.acquire(name, token,
                                                             self.settings.lease_ms)
                except BaseException:
                    # the SET may still land after a timeout: make sure it does not linger
                    self._background(self._release(name, token))
                    raise
                if head is not None:
                    hot.token = token
                    hot.lease_until = time.monotonic() + self._lease_s
                    m.LOCK_WAIT.observe(time.perf_counter() - start)
                    return head
                if wait_ms < 0:
                    raise ApiError(404, f"no model named {name!r}", "name")
                if time.perf_counter() >= deadline:
                    raise ApiError(503, f"model {name!r} is busy: its write lease was not free "
                                        f"within {self.settings.lock_wait_s} s",
                                   headers={"Retry-After": "1"})
                await asyncio.sleep(min(pause, max(wait_ms, 1) / 1000))
                pause = min(pause * 2, 0.005)

    @contextlib.asynccontextmanager
    async def kept(self, name: str, hot: Hot) -> AsyncIterator[None]:
        """Renew the lease this process holds on ``name`` while a long computation runs (or
        waits for the compute thread) under it, so it is still held at the commit."""

        stop = asyncio.Event()

        async def renew() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._lease_s / 4)
                    return
                token = hot.token
                if token is None:
                    return
                try:
                    if not await self.store.renew(name, token, self.settings.lease_ms):
                        return  # gone: the commit's fencing refuses the update
                except (RedisError, OSError) as exc:  # try again at the next tick
                    log.warning("could not renew the lease of %s: %r", name, exc)
                    continue
                if hot.token == token:
                    hot.lease_until = time.monotonic() + self._lease_s

        task = asyncio.create_task(renew())
        try:
            yield
        finally:  # told, not cancelled: a Redis call cut by a cancellation can swallow it
            stop.set()
            with contextlib.suppress(Exception):
                await task

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, hots: dict[str, Hot]) -> None:
        """Commit what is queued, snapshot every learner ahead of its snapshot, and hand back
        every lease this process holds (a restart then waits for nobody, and replays
        nothing)."""
        flushers = [hot.flusher for hot in hots.values() if hot.flusher is not None]
        if flushers:
            await asyncio.wait(flushers, timeout=self.settings.redis_timeout_s)
        for name, hot in list(hots.items()):
            try:
                await asyncio.wait_for(self.checkpoint(name, hot), self.settings.redis_timeout_s)
            except Exception as exc:  # a later load replays instead
                log.warning("no snapshot of %s at shutdown: %r", name, exc)
            await self.hand_back(name, hot)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)


def _retrieve(done: asyncio.Future[int]) -> None:
    """Mark a failed ticket's error as seen (its request may have gone away)."""
    if not done.cancelled():
        done.exception()


def _fail(tickets: list[Ticket], exc: BaseException) -> None:
    for ticket in tickets:
        if not ticket.done.done():
            ticket.done.set_exception(exc if isinstance(exc, Exception)
                                      else LeaseLost(f"commit interrupted: {exc!r}"))
