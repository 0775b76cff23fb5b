"""One hosted model in this process (``Replica``): its learner, lock, lease and commit queue.

Nothing else mutates them. A write takes the model's lease (``Store.acquire``), catches the learner
up with Redis, computes each event under the lock and queues its update as a ``Ticket``; one
flusher task per model commits the queued tickets in order, many per Redis call
(``Store.commit``), while the next write computes. A reply waits for its ticket, so nothing
uncommitted is ever acknowledged. Each commit is fenced on the version it extends: when one
fails, every ticket behind it fails too, and the replica, whose learner holds updates Redis does
not, is dropped. The replica keeps the lease ``_LINGER_S`` after its last write (a busy client's
next learn then skips two round trips) and hands it over after a commit when another process
asks for it.

A replica is in one of four named states (``Phase``): idle (no lease here, nothing in hand),
held (the lease kept a moment after the last write), writing (writes under way, or commits
queued or in flight), dropped (never used again: the engine loads a fresh one).

Keeps, labels and rollbacks (``design.md``, "Delayed labels", "Versions, rollback, fork") are
events of this same write path: a label brings its kept prediction's record, a keep's record
and a label's removal ride in the commit of their update, and a rollback replaces the learner
and carries a snapshot (``service.engine.versions``); the spec's guard may add a rollback after
an event.

(Over 400 lines, for a reason: this is one object's state machine. The lease is its own object
(``service.engine.lease``), what a version holds is ``service.engine.versions``; splitting the
commit queue from the learner and versions it commits would bring back the flags shared by two
classes that this replaced.)
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from redis.exceptions import RedisError

from models import InvalidInput, ModelSpec, OnlineLearner, UpdateRejected
from models.persist import context_from_bytes

from .. import telemetry as m
from ..redis.store import Committed, LeaseLost, ModelHead, Stored
from .budget import estimate_ms, replay_ms
from .contexts import ContextBook
from .errors import (
    Conflict,
    Rejected,
    Unavailable,
    UnknownModel,
    UnknownPrediction,
    UnknownVersion,
)
from .event import Event, LearnOutcome, apply_event, kept_id
from .host import Host, bytes_ms
from .lease import Lease
from .versions import Snapshot, guard_target, restore, retained_of, rolling_loss

__all__ = ["Phase", "Replica", "Ticket", "Written"]

log = logging.getLogger("streamnorm")
_MAX_BATCH = 64  # queued updates committed per Redis call at most
_LINGER_S = 0.005  # an idle process keeps a model's lease this long before handing it back
_T = TypeVar("_T")
Written = LearnOutcome | Exception  # what a write gives back for each of its events


@dataclass
class Ticket:
    """One computed update waiting for its commit; ``done`` resolves to its version."""

    version: int
    event_json: str
    event_id: str | None
    digest: str  # of the event (``Event.digest``): a repeat of its id must match it
    updates: int
    samples: int
    metrics_json: str
    loss: float | None  # for the learning curve (None: a mini-batch)
    rejected: int  # updates rolled back since the previous ticket (counted with this one)
    snapshot: Snapshot | None  # state, context changes, retained version at ``version``
    done: asyncio.Future[int]
    kept: tuple[str, bytes | None] | None = None  # a keep's record to store, a label's to drop

    def committed(self, curve_every: int) -> Committed:
        """What the commit stores for it (the metrics again when it closes a curve point)."""
        point = self.metrics_json if self.version % curve_every == 0 else ""
        return Committed(self.event_json, self.event_id, self.digest, self.loss, point,
                         self.rejected, self.kept)


class Phase(enum.Enum):
    """Where a replica stands (``Replica.phase``)."""

    IDLE = "idle"  # no lease held by this process, nothing in hand: may be evicted
    HELD = "held"  # the lease kept a moment after the last write, nothing in hand
    WRITING = "writing"  # writes under way, or commits queued or in flight
    DROPPED = "dropped"  # forgotten (it may hold an update Redis never got): never used


def _committed(outcome: LearnOutcome | None, version: int, applied: bool) -> LearnOutcome:
    """A write's reply once its update is in Redis at ``version`` (no prediction for a repeat
    of an event still in flight)."""
    if outcome is None:
        return LearnOutcome(None, None, version, applied)
    return LearnOutcome(outcome.prediction, outcome.loss, version, True, outcome.proba)


def _same_event(event: Event, digest: str | None, version: int) -> None:
    """A repeat of an applied ``event_id`` must carry the same event (answering ``applied:
    false`` would tell the client a different update is in)."""
    if digest is not None and digest != event.digest:
        raise Conflict(f"event_id {event.event_id!r} was already used by another event "
                       f"(applied as version {version}); an event_id names one event",
                       "event_id")


def _loaded(snap: Stored) -> tuple[OnlineLearner, ContextBook]:
    """The learner of a snapshot with its contexts, and their book. A state written before
    contexts had keys of their own holds them all: the next snapshot writes each to its key."""
    learner = OnlineLearner.from_bytes(snap.state)
    if learner.contexts:
        now = time.time()
        return learner, ContextBook.loaded([(s, now) for s in learner.streams], learner.streams)
    for stream, _, data in snap.contexts:
        learner.contexts[stream] = context_from_bytes(learner, data)[1]
    return learner, ContextBook.loaded((s, t) for s, t, _ in snap.contexts)


def _retrieve(done: asyncio.Future[int]) -> None:
    """Mark a failed ticket's error as seen (its request may have gone away)."""
    if not done.cancelled():
        done.exception()


def _fail(tickets: list[Ticket], exc: BaseException) -> None:
    for ticket in tickets:
        if not ticket.done.done():
            ticket.done.set_exception(exc if isinstance(exc, Exception)
                                      else LeaseLost(f"commit interrupted: {exc!r}"))


_DROPPED = "the model's cached learner was dropped after a failed commit"


class Replica:
    """A model as this process serves it (see the module docstring)."""

    def __init__(self, name: str, host: Host, learner: OnlineLearner, uid: str, version: int,
                 snapshot_version: int, book: ContextBook) -> None:
        self.name, self.host = name, host
        self.learner, self.uid, self.book = learner, uid, book
        self.version = version  # the learner's, including updates queued but not committed
        self.committed = version  # the latest version this process knows to be in Redis
        self.snapshot_version = snapshot_version
        self.snapshot_queued = 0  # version of the latest snapshot queued with a ticket
        self.rejected = 0  # updates rolled back since the last queued one
        self.in_row = 0  # updates rejected in a row here (the spec's guard counts them)
        self.restored = False  # the learner is a retained version, nothing learned since
        self.lock = asyncio.Lock()
        self.waiting = 0  # requests holding or waiting for the lock
        self.lease = Lease(name, host)
        self.dead = False
        self.writers = 0  # writes of this process in progress (they share the lease)
        self.writes = 0  # writes of this process started so far
        self.pending: list[Ticket] = []  # computed, not yet sent to Redis
        self.last: Ticket | None = None  # the newest ticket (a reply at ``version`` waits)
        self.ids: dict[str, Ticket] = {}  # event ids queued or in flight
        self.flusher: asyncio.Task[None] | None = None

    @classmethod
    async def load(cls, name: str, host: Host, spec: ModelSpec) -> Replica:
        """The model's latest snapshot as a replica (its log tail is replayed on first use)."""
        learner, book, head = await cls._read_snapshot(name, host, spec)
        m.STATE_LOADS.labels(name).inc()
        return cls(name, host, learner, head.uid, head.snapshot_version, head.snapshot_version,
                   book)

    @staticmethod
    async def _read_snapshot(name: str, host: Host, spec: ModelSpec
                             ) -> tuple[OnlineLearner, ContextBook, ModelHead]:
        snap = await host.store.snapshot(name)
        if snap is None:
            raise UnknownModel(name)
        size = len(snap.state) + sum(len(b) for _, _, b in snap.contexts)
        learner, book = await host.compute.run(bytes_ms(size), _loaded, snap)
        if learner.spec != spec:
            raise Unavailable(f"model {name!r} was replaced while loading; retry")
        return learner, book, snap.head

    # -- states --------------------------------------------------------------------------------
    @property
    def phase(self) -> Phase:
        if self.dead:
            return Phase.DROPPED
        if self.writers or self.flusher is not None or self.pending:
            return Phase.WRITING
        return Phase.HELD if self.lease.token is not None else Phase.IDLE

    def evictable(self) -> bool:
        """Idle and nobody waiting for it: the cache may forget it."""
        return self.phase is Phase.IDLE and not self.waiting and not self.lock.locked()

    def uncommitted(self) -> bool:
        return self.version > self.committed

    def in_flight(self) -> Ticket | None:
        """The ticket a reply at ``version`` must wait for, or ``None`` when all is in Redis."""
        return self.last if self.uncommitted() else None

    def snapshot_state(self) -> bytes:
        """The learner as a snapshot stores it: without stream contexts (each has a key of its
        own, written when it moves: ``ContextBook.take``)."""
        return self.learner.to_bytes(contexts=False)

    def _snapshot_bytes(self) -> tuple[bytes, bytes | None]:
        """``snapshot_state``, and the learner with its contexts when the snapshot is also
        kept as a version (``STREAMNORM_KEEP_SNAPSHOTS`` is not 0): on the compute thread, as
        the whole learner costs what its contexts weigh."""
        full = self.learner.to_bytes() if self.host.settings.keep_snapshots > 0 else None
        return self.snapshot_state(), full

    def drop(self) -> None:
        """Never serve again: the engine's cache forgets it at once (and loads a fresh replica
        on the next request)."""
        self.dead = True
        self.lease.give_up()
        self.host.dropped(self.name, self)

    # -- the lock ------------------------------------------------------------------------------
    async def enter(self) -> None:
        """Take the lock; a dropped replica cannot be used (``LeaseLost``: take a fresh one)."""
        self.waiting += 1
        try:
            await self.lock.acquire()
        except BaseException:
            self.waiting -= 1
            raise
        if self.dead:
            self.leave()
            raise LeaseLost(_DROPPED)

    def leave(self) -> None:
        self.waiting -= 1
        self.lock.release()

    # -- reading -------------------------------------------------------------------------------
    async def read(self, head: ModelHead, cost_ms: float, fn: Callable[[Replica], _T]
                   ) -> tuple[_T, int]:
        """``fn(self)`` on the learner as of ``head`` (lock held by the caller, released
        here), and the version it saw, once that version is in Redis."""
        try:
            await self.catch_up(head)
            result = await self.host.compute.run(cost_ms, fn, self)
            version, wait = self.version, self.in_flight()
        finally:
            self.leave()
        if wait is not None:  # seen on updates still in flight: reply once they are in Redis
            await asyncio.shield(wait.done)
        return result, version

    # -- writing -------------------------------------------------------------------------------
    async def write(self, events: list[Event | Exception]) -> list[Written]:
        """Apply ``events`` in order, each exactly once (``event_id``), under one lease and one
        hold of the lock, and reply once they are committed. An event's own error (invalid,
        rejected, a conflict) takes its place in the list; failing to take the lease or to
        commit raises, and the caller retries (event ids make that safe)."""
        out: list[Written | None] = [e if isinstance(e, Exception) else None for e in events]
        self.writers += 1
        self.writes += 1
        queued: list[tuple[int, LearnOutcome | None, Ticket, bool]] = []
        try:
            head = await self._lock_for_write()
            try:
                if head is not None:
                    await self.catch_up(head)
                todo = await self._fitted(events, out)
                inflight = {e.event_id: self.ids[e.event_id] for _, e in todo
                            if e.event_id in self.ids}  # (their commits may land meanwhile)
                done = await self.host.store.seen(self.name, [
                    e.event_id for _, e in todo if e.event_id and e.event_id not in inflight])
                for i, event in todo:
                    eid = event.event_id
                    try:
                        if eid is not None and eid in done:
                            _same_event(event, done[eid].digest, done[eid].version)
                            out[i] = LearnOutcome(None, None, done[eid].version, False)
                            continue
                        ticket = (inflight.get(eid) or self.ids.get(eid)) if eid else None
                        if ticket is not None:
                            _same_event(event, ticket.digest, ticket.version)
                            queued.append((i, None, ticket, False))
                            continue
                        if event.kind == "label":
                            event = await self._labelled(event)
                        elif event.kind == "keep":
                            await self._room_to_keep()
                        outcome, ticket = await self._apply(event)
                    except (Conflict, Rejected, InvalidInput, UnknownPrediction,
                            UnknownVersion) as exc:
                        out[i] = exc
                        if isinstance(exc, Rejected):
                            await self._guard(False)
                        continue
                    if event.kind != "rollback":  # a rollback asked for is not undone
                        await self._guard(ticket.snapshot is not None)
                    queued.append((i, outcome, ticket, True))
                    if eid is not None:  # its commit may land (and leave self.ids) while a
                        inflight[eid] = ticket  # later event of this write computes
            finally:
                self.leave()
            for i, outcome, ticket, applied in queued:
                out[i] = _committed(outcome, await asyncio.shield(ticket.done), applied)
        finally:
            self.writers -= 1
            await self.settle(linger=any(applied for *_, applied in queued))
        return [o if o is not None else LeaseLost("not applied") for o in out]

    async def _fitted(self, events: list[Event | Exception], out: list[Written | None]
                      ) -> list[tuple[int, Event]]:
        """The valid events, validated again for this learner's spec where they were validated
        for another (the name was deleted and re-created meanwhile)."""
        spec, todo = self.learner.spec, []
        for i, event in enumerate(events):
            if isinstance(event, Exception):
                continue
            if event.spec is not spec and event.spec != spec:
                try:
                    event = await self.host.again(spec, event)
                except InvalidInput as exc:  # it no longer fits
                    out[i] = exc
                    continue
            todo.append((i, event))
        return todo

    async def _labelled(self, event: Event) -> Event:
        """A label event with its kept prediction's record (queued here, or in Redis), or
        ``UnknownPrediction`` (counted on ``/metrics``)."""
        pid = event.body["label"]
        queued = self.ids.get(kept_id(pid))  # its keep not committed yet: the record is here
        record = queued.kept[1] if queued is not None and queued.kept is not None \
            else await self.host.store.kept(self.name, pid)
        if record is None:
            expired = await self.host.store.kept_expired(self.name, pid)
            m.LABELS.labels(self.name, "expired" if expired else "unknown").inc()
            raise UnknownPrediction(pid, expired)
        steps = self.learner.kept_from_bytes(record).window.shape[0]
        return event.with_kept(record, steps, estimate_ms(self.learner.spec, [(steps, 1)],
                                                          True))

    async def _room_to_keep(self) -> None:
        """Refuse a keep beyond ``STREAMNORM_MAX_KEPT`` predictions waiting for labels."""
        limit = self.host.settings.max_kept
        queued = sum(t.kept is not None and t.kept[1] is not None for t in self.ids.values())
        if await self.host.store.kept_waiting(self.name) + queued >= limit:
            raise InvalidInput("keep", f"this model holds {limit} kept predictions waiting for "
                                       "labels (STREAMNORM_MAX_KEPT); label or let some expire "
                                       "first")

    async def _lock_for_write(self) -> ModelHead | None:
        """Hold the model's lease and its lock: the head read when the lease was taken, or
        ``None`` when this process already held it."""
        while True:
            head = await self.lease.take(lambda: self.flusher)  # polls without the lock
            token = self.lease.token
            await self.enter()
            if token is not None and self.lease.token == token and not self.lease.wanted:
                return head
            # handed over to another process, or the lease lapsed and was taken afresh
            # (whoever took it caught the learner up), or another process asked for it: this
            # one computes nothing more until it has handed it over, then queues up again
            self.leave()
            if self.lease.wanted and self.lease.token is not None:
                await asyncio.sleep(0.001)

    async def _apply(self, event: Event) -> tuple[LearnOutcome | None, Ticket]:
        """Run the event on the learner (lock and lease held) and queue its commit; a long
        computation runs on the compute thread, the lease renewed meanwhile."""
        if self.dead:  # a commit failed while this write was computing
            raise LeaseLost(_DROPPED)
        host = self.host
        stream = event.body.get("stream")
        if stream is not None:  # when, and which contexts go first: decided here, logged
            now = round(time.time(), 3)
            drop = self.book.to_drop(stream, now, host.settings.stream_ttl_s,
                                     host.budget.streams(self.learner.spec))
            event = event.noted({"t": now, "drop": drop} if drop else {"t": now})
        logged = {**event.body, **event.notes}
        if event.kind == "rollback":
            return await self._roll_back(event)
        try:
            async with self._kept_for(event.cost_ms):
                outcome = await host.compute.run(event.cost_ms, apply_event, self.learner,
                                                 logged)
                self.book.applied(stream, event.notes.get("t", 0.0),
                                  event.notes.get("drop", ()))
                state = None
                if self._snapshot_due():
                    state = await host.compute.run(host.state_ms(self.learner.spec),
                                                   self._snapshot_bytes)
            kept = None  # the record the commit stores (a keep) or removes (a label)
            if event.kind == "keep":
                assert outcome is not None and outcome.kept is not None
                kept = (event.body["keep"], outcome.kept)
            elif event.kind == "label":
                kept = (event.body["label"], None)
            return outcome, self._queue(event, state, outcome.loss if outcome else None, kept)
        except UpdateRejected as exc:  # the learner rolled itself back
            m.REJECTED.labels(model=self.name).inc()
            self.rejected += 1  # counted in Redis with the next update (nothing changes now)
            self.in_row += 1
            raise Rejected(f"update rejected: {exc}", "y") from exc
        except InvalidInput:  # refused by the learner before anything changed (an entry
            raise             # marked valid that was not: Engine.prepare trusted it)
        except BaseException:
            self.abandon()  # it may hold a change Redis will never have
            raise

    async def _roll_back(self, event: Event) -> tuple[LearnOutcome | None, Ticket]:
        """Replace the learner by a retained version (``UnknownVersion`` if it is not kept)
        and queue the commit with a snapshot of it (lock and lease held). Everything is
        computed before the learner is replaced, and nothing awaits between that and the
        queueing: an interrupted rollback changes nothing. The snapshot is not kept as a
        version again (it is the one restored)."""
        version = event.body["rollback"]
        restored = await self._restore(version)
        if restored is None:
            raise UnknownVersion(version)
        learner, book = restored
        state = await self.host.compute.run(self.host.state_ms(learner.spec),
                                            lambda: learner.to_bytes(contexts=False))
        self.learner, self.book = learner, book
        ticket = self._queue(event, (state, None), None, None)
        self.restored = True
        m.ROLLBACKS.labels(self.name, event.body.get("why", "request")).inc()
        return LearnOutcome(None, None, 0, True), ticket

    async def _restore(self, version: int) -> tuple[OnlineLearner, ContextBook] | None:
        """The learner of retained ``version`` and its book (``versions.restore``), or
        ``None`` when it is not kept; nothing here changes."""
        retained = await self.host.store.retained(self.name, version)
        if retained is None:
            return None
        return await self.host.compute.run(bytes_ms(len(retained.full)), restore, retained,
                                           self.learner.spec, self.book)

    async def _guard(self, snapshotted: bool) -> None:
        """The spec's divergence guard (``models.GuardSpec``), after an event (lock and lease
        held): roll back to the retained version with the best rolling loss after too many
        rejected updates in a row, or, when a snapshot was just taken, when the rolling loss
        is too far above that best. Logged like any rollback (``"why": "guard"``). Never after
        a rollback with nothing learned since (it would undo one asked for, or spend the
        history on copies of one version); a failure here leaves the event before it as it
        is (applied and queued: its reply must not fail) and the guard looks again later."""
        guard = self.learner.spec.guard
        if guard is None or self.dead or self.restored:
            return
        rejected = guard.rejected_in_row is not None and self.in_row >= guard.rejected_in_row
        if not rejected and not (guard.loss_ratio is not None and snapshotted):
            return
        try:
            target = guard_target(await self.host.store.versions(self.name),
                                  guard.min_samples)
            if target is None:
                return
            if not rejected:
                loss, n = rolling_loss(self.learner.metrics.report())
                if target[1] is None or loss is None or n < guard.min_samples \
                        or loss <= guard.loss_ratio * target[1]:  # type: ignore[operator]
                    return
            event = Event({"rollback": target[0], "why": "guard"})
            await self._roll_back(event.priced(self.learner.spec, 0.0))
        except (UnknownVersion, RedisError, LeaseLost, InvalidInput) as exc:
            log.warning("guard of %s could not roll back: %r", self.name, exc)
            return
        log.warning("model %s diverged (%s): rolled back to version %d", self.name,
                    "rejected updates" if rejected else "rolling loss", target[0])

    def _kept_for(self, cost_ms: float) -> AbstractAsyncContextManager[None]:
        """The lease renewed meanwhile when the work is long enough to leave the loop."""
        return self.lease.kept() if self.host.compute.offloaded(cost_ms) else nullcontext()

    # -- catching up ---------------------------------------------------------------------------
    async def catch_up(self, head: ModelHead) -> None:
        """Bring the learner to ``head.version`` (replay, or snapshot + replay)."""
        if self.uncommitted():  # this process holds the lease with updates in flight: no
            return              # other writer can have moved the model
        store = self.host.store
        if head.uid == self.uid and head.version < self.version:
            # read before this request waited for the lock, while this process committed more
            # writes: look again before concluding that Redis went back in time
            head = await store.head(self.name) or head
        if head.uid != self.uid or head.version < self.version:
            raw = await store.spec(self.name)
            if raw is None:
                raise UnknownModel(self.name)
            await self._reload(ModelSpec.model_validate_json(raw))
        self.snapshot_version = max(self.snapshot_version, head.snapshot_version)
        for _ in range(3):
            if self.version >= head.version:
                return
            entries = await store.log_after(self.name, self.version, head.version)
            if entries and entries[0][0] == self.version + 1 and all(
                    v == self.version + 1 + i for i, (v, _) in enumerate(entries)):
                await self._replay([(v, orjson.loads(raw)) for v, raw in entries])
                continue
            await self._reload(self.learner.spec)  # the log no longer reaches back
        if self.version < head.version:
            raise Unavailable(f"model {self.name!r} could not be brought up to date; retry")

    async def _replay(self, logged: list[tuple[int, dict[str, Any]]]) -> None:
        costs = [replay_ms(self.learner.spec, body) for _, body in logged]
        # a long replay under this process's lease (a write catching up) renews it
        kept = self._kept_for(sum(costs)) if self.lease.token is not None else nullcontext()
        async with kept:
            try:
                for (v, body), cost_ms in zip(logged, costs, strict=True):
                    if "rollback" in body:  # the version it restored, or else the
                        restored = await self._restore(body["rollback"])  # snapshot with it
                        if restored is None:
                            await self._reload(self.learner.spec)
                            return
                        self.learner, self.book = restored
                        self.version = self.committed = v
                        continue
                    await self.host.compute.run(cost_ms, apply_event, self.learner, body)
                    self.version = self.committed = v
                    self.book.applied(body.get("stream"), body.get("t", time.time()),
                                      body.get("drop", ()))
            except BaseException:  # stopped mid-entry: the learner may hold an update its
                self.abandon()     # version does not count
                raise
        m.REPLAYED.labels(self.name).inc(len(logged))

    async def _reload(self, spec: ModelSpec) -> None:
        """Replace the learner by the latest snapshot (the replay then continues)."""
        learner, book, head = await self._read_snapshot(self.name, self.host, spec)
        m.STATE_LOADS.labels(self.name).inc()
        self.learner, self.book, self.uid = learner, book, head.uid
        self.version = self.committed = self.snapshot_version = head.snapshot_version

    # -- commits -------------------------------------------------------------------------------
    def _snapshot_due(self) -> bool:
        """Whether the next queued update carries a snapshot (every ``snapshot_every``)."""
        return self.version + 1 - max(self.snapshot_version, self.snapshot_queued) \
            >= self.host.settings.snapshot_every

    def _queue(self, event: Event, state: tuple[bytes, bytes | None] | None,
               loss: float | None, kept: tuple[str, bytes | None] | None) -> Ticket:
        """Queue the commit of ``event``, just applied to the learner (lock held, no await),
        with ``state``, the learner's bytes after it (and with its contexts, to keep it as a
        version), when ``_snapshot_due`` said so, and the kept prediction it stores or
        removes."""
        learner = self.learner
        self.version += 1
        snapshot = None
        if state is not None:
            snapshot = self._snapshot_of(*state)
            self.snapshot_queued = self.version
        ticket = Ticket(self.version, event.to_json(), event.event_id, event.digest,
                        learner.updates, learner.samples, json.dumps(learner.metrics.report()),
                        loss, self.rejected, snapshot,
                        asyncio.get_running_loop().create_future(), kept)
        self.in_row, self.restored = 0, False
        self.rejected = 0
        ticket.done.add_done_callback(_retrieve)
        self.pending.append(ticket)
        self.last = ticket
        if event.event_id is not None:
            self.ids[event.event_id] = ticket
        if self.flusher is None:
            self.flusher = asyncio.create_task(self._flush())
        return ticket

    async def _flush(self) -> None:
        """Commit the queued tickets in order, a batch per Redis call, until none is left
        (a batch ends at a ticket that carries a snapshot, written right after it)."""
        try:
            while self.pending and not self.dead:
                batch = self.pending[:_MAX_BATCH]
                for i, ticket in enumerate(batch):
                    if ticket.snapshot is not None:
                        del batch[i + 1:]
                        break
                del self.pending[:len(batch)]
                try:
                    await self._commit(batch)
                except Exception:  # the tickets carry the error; the replica is dropped
                    break
                if batch[-1].snapshot is not None:
                    await self._snapshot(self.lease.token, batch[-1].version,
                                         batch[-1].snapshot)
                if self.lease.wanted and not self.dead:
                    await self._hand_over()
        finally:
            self.flusher = None
            if self.dead:
                _fail(self.pending, LeaseLost("an earlier update of this model failed to "
                                              "commit; retry (event_id makes retries safe)"))
                self.pending.clear()
            await self.settle()

    async def _commit(self, batch: list[Ticket]) -> None:
        last, settings = batch[-1], self.host.settings
        try:
            token = self.lease.token
            if token is None:
                raise LeaseLost("the model's lease was given up with updates queued")
            version, self.lease.wanted = await self.host.store.commit(
                self.name, token, batch[0].version - 1,
                [t.committed(self.host.store.curve_every) for t in batch], uid=self.uid,
                updates=last.updates, samples=last.samples, metrics_json=last.metrics_json,
                lease_ms=settings.lease_ms)
        except BaseException as exc:
            self.abandon()  # the script may still have run and renewed the lease
            _fail(batch, exc)
            raise
        assert version == last.version
        self.committed = version
        self.lease.renewed()  # the commit renewed it
        for ticket in batch:
            if ticket.event_id is not None:
                self.ids.pop(ticket.event_id, None)
            if ticket.kept is not None and ticket.kept[1] is None:  # a label
                m.LABELS.labels(self.name, "applied").inc()
            ticket.done.set_result(ticket.version)
        m.UPDATES.labels(self.name).inc(len(batch))

    async def checkpoint(self) -> bool:
        """Snapshot a learner ahead of its model's snapshot, so the next process to load the
        model replays nothing (on shutdown, and when a worker hands a partition over). Best
        effort: a model whose lease another process holds is left as it is."""
        if self.flusher is not None:
            await asyncio.wait([self.flusher])  # its errors are the tickets'
        async with self.lock:
            if self.dead or self.uncommitted() or self.version <= self.snapshot_version:
                return False
            token, taken = self.lease.token, False
            store, settings = self.host.store, self.host.settings
            if token is None:
                token = secrets.token_hex(16)
                head, _ = await store.acquire(self.name, token, settings.lease_ms)
                if head is None:
                    return False
                taken = True
                if head.uid != self.uid or head.version != self.version:
                    await self.lease.release(token)
                    return False  # another process moved the model: this learner is behind
            try:
                await self._snapshot(token, self.version, self._snapshot_of(
                    *await self.host.compute.run(self.host.state_ms(self.learner.spec),
                                                 self._snapshot_bytes)))
                return self.snapshot_version == self.version
            finally:
                if taken:
                    await self.lease.release(token)

    def abandon(self) -> None:
        """Drop a learner that holds updates Redis does not (it must never serve again) and
        hand its lease back."""
        token = self.lease.token
        self.drop()
        if token is not None:
            self.host.background(self.lease.release(token))

    def _snapshot_of(self, state: bytes, full: bytes | None) -> Snapshot:
        """The snapshot of the learner at ``version`` (no await: the book is taken here)."""
        retained = None if full is None else retained_of(full, self.learner, self.book,
                                                         self.version)
        return Snapshot(state, self.book.take(self.learner), retained)

    async def _snapshot(self, token: str | None, version: int, snapshot: Snapshot) -> None:
        """Write the learner's state at ``version`` (committed already) under lease ``token``."""
        state, contexts, retained = snapshot
        settings = self.host.settings
        try:
            if token is None:
                raise LeaseLost("no lease held")
            written = await self.host.store.write_snapshot(
                self.name, token, version, state, contexts, keep=settings.snapshot_every,
                retained=retained, retain=settings.keep_snapshots)
        except Exception as exc:  # committed already; a later update snapshots
            log.warning("snapshot of %s at %d failed: %r", self.name, version, exc)
            written = False
        if written:
            self.snapshot_version = max(self.snapshot_version, version)
            m.STATE_BYTES.labels(self.name).set(len(state))
            m.SNAPSHOTS.labels(self.name).inc()
        else:  # the next update snapshots again, with every context change this one carried;
            # a snapshot queued meanwhile was taken without them: it is dropped, its changes
            # go back to the book too
            self.snapshot_queued = 0
            self.book.restore(contexts)
            for ticket in self.pending:
                if ticket.snapshot is not None:
                    self.book.restore(ticket.snapshot.contexts)
                    ticket.snapshot = None

    # -- the lease -----------------------------------------------------------------------------
    async def _hand_over(self) -> None:
        """Another process waits for the lease: hand it over once nothing is queued (the
        lock makes the writes already computing queue first; later ones go back to wait)."""
        await self.lock.acquire()
        try:
            if not self.pending and not self.dead:
                self.lease.wanted = False
                await self.lease.hand_back()
        finally:
            self.lock.release()

    async def settle(self, linger: bool = True) -> None:
        """Give the lease back once this process has had nothing to write to the model for
        ``_LINGER_S`` (the next request of a busy client then finds it still held: two round
        trips saved; a process waiting for it polls at least that often anyway). A write that
        changed nothing hands it back at once, so a refused request leaves Redis as it was."""
        if self.phase is Phase.HELD:
            if self.lease.wanted or not linger:
                await self.lease.hand_back()
                return
            asyncio.get_running_loop().call_later(_LINGER_S, self._linger_over,
                                                  self.lease.token, self.writes)

    def _linger_over(self, token: str, writes: int) -> None:
        if self.phase is Phase.HELD and self.lease.token == token and self.writes == writes:
            self.lease.give_up()
            self.host.background(self.lease.release(token))

    async def close(self) -> None:
        """Snapshot the learner if it is ahead and hand the lease back (at shutdown, after
        the commits in flight ended)."""
        settings = self.host.settings
        try:
            await asyncio.wait_for(self.checkpoint(), settings.redis_timeout_s)
        except Exception as exc:  # a later load replays instead
            log.warning("no snapshot of %s at shutdown: %r", self.name, exc)
        await self.lease.hand_back()

