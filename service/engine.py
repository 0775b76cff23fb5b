"""The one place that applies an event to a model: validate → lease → catch up → learn → commit.

HTTP ``learn`` calls ``Engine.learn``, the stream worker ``Engine.learn_batch``. Each process
keeps hot learners in memory with the version they are at; a request first reads the model's
version in Redis (one round trip) and, only when it moved, catches the cached learner up by
replaying the logged events (or loads the snapshot and replays the tail when the log no longer
reaches back): a hot model is never deserialized per request (``streamnorm_state_loads_total``
counts loads).
Training is deterministic on one CPU thread, so a replayed learner equals the writer's bit for bit.
Torch work runs on the event loop thread between awaits: requests of one process never touch a
learner concurrently, and one ``asyncio.Lock`` per model orders them.

Writes (the lease, and the group commit of computed updates) are ``service.writes``: a reply
waits until the version it saw is committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from contextlib import AbstractAsyncContextManager, nullcontext
from functools import partial
from typing import Any

import orjson
from redis.exceptions import RedisError

from models import InvalidInput, ModelSpec, OnlineLearner, UpdateRejected, cost
from models.persist import context_from_bytes

from . import metrics as m
from .budget import Budget, replay_ms
from .compute import Compute
from .contexts import ContextBook
from .errors import ApiError
from .events import (
    Event,
    LearnOutcome,
    apply_event,
    canonical_event,
    predict,
    predict_arguments,
)
from .hot import Hot, Ticket
from .settings import Settings
from .store import LeaseLost, ModelHead, Store, Stored
from .writes import Writes

__all__ = ["Engine", "Event", "LearnOutcome"]

log = logging.getLogger("streamnorm")


def _committed(outcome: LearnOutcome | None, version: int, applied: bool) -> LearnOutcome:
    """A learn's reply once its update is in Redis at ``version`` (no prediction for a repeat
    of an event still in flight)."""
    if outcome is None:
        return LearnOutcome(None, None, version, applied)
    return LearnOutcome(outcome.prediction, outcome.loss, version, True, outcome.proba)


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


def _bytes_ms(n: int) -> float:
    """Estimated ms to build, serialize or load a state of ``n`` bytes (~2 ms per MB here)."""
    return n / 500_000


def _values_ms(spec: ModelSpec, payload: dict[str, Any]) -> float:
    """Estimated ms to validate a payload's numbers one by one (~0.5 µs each)."""
    seq, batch = payload.get("sequence"), payload.get("batch")
    steps = len(seq) if isinstance(seq, list) else 1
    if isinstance(batch, list):
        steps = sum(len(s["sequence"]) for s in batch
                    if isinstance(s, dict) and isinstance(s.get("sequence"), list))
    return steps * spec.input_size / 2000


def _same_event(event: Event, digest: str | None, version: int) -> None:
    """A repeat of an applied ``event_id`` must carry the same event (409 otherwise: answering
    ``applied: false`` would tell the client a different update is in)."""
    if digest is not None and digest != event.digest:
        raise ApiError(409, f"event_id {event.event_id!r} was already used by another event "
                            f"(applied as version {version}); an event_id names one event",
                       "event_id")


class Engine:
    """Per-process learner cache plus the read and write paths over the store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings = store, settings
        self._hot: OrderedDict[str, Hot] = OrderedDict()
        self._specs: dict[tuple[str, str], ModelSpec] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self.writes = Writes(store, settings, self._drop)
        self.budget = Budget(settings)
        self.compute = Compute(settings.inline_ms)

    # -- models --------------------------------------------------------------------------------
    async def create(self, spec: ModelSpec) -> bool:
        """Store a new model at version 0 (``True``). ``False`` when a model of that name and
        the same spec exists (a retry of a create whose reply was lost); 409 for another spec.
        Atomic: one script writes the spec, the state and the meta, or nothing."""
        self.budget.check_spec(spec)
        build_ms = _bytes_ms(cost.state_bytes(spec))
        learner = await self.compute.run(build_ms, OnlineLearner, spec)
        state = await self.compute.run(build_ms, learner.to_bytes)
        metrics, uid = json.dumps(learner.metrics.report()), uuid.uuid4().hex
        try:
            if await self.store.create(spec.name, spec.model_dump_json(), state, uid, metrics):
                return True
        except RedisError:  # the script may have run before the reply was lost: look
            head = await self.store.head(spec.name)
            if head is None or head.uid != uid:
                raise
            return True
        existing = await self.store.spec(spec.name)
        if existing is not None and ModelSpec.model_validate_json(existing) == spec:
            return False
        raise ApiError(409, f"a model named {spec.name!r} exists with another spec", "name")

    async def delete(self, name: str) -> None:
        if not await self.store.delete(name):
            raise ApiError(404, f"no model named {name!r}", "name")
        hot = self._hot.get(name)
        if hot is not None and not hot.lock.locked():
            self._drop(name, hot)  # a busy one finds the model gone at its commit

    async def spec(self, name: str, head: ModelHead | None = None) -> tuple[ModelSpec, ModelHead]:
        """The model's spec (cached per incarnation) and head; 404 if unknown."""
        head = head or await self.store.head(name)
        if head is None:
            raise ApiError(404, f"no model named {name!r}", "name")
        spec = self._specs.get((name, head.uid))
        if spec is None:
            raw = await self.store.spec(name)
            if raw is None:
                raise ApiError(404, f"no model named {name!r}", "name")
            if len(self._specs) >= 4 * self.settings.cache_models:  # re-created names pile up
                self._specs.clear()
            spec = self._specs[(name, head.uid)] = ModelSpec.model_validate_json(raw)
        return spec, head

    # -- reading -------------------------------------------------------------------------------
    async def predict(self, name: str, payload: dict[str, Any]
                      ) -> tuple[float | int, dict[int, float] | None, int]:
        """The prediction ``learn`` would make now, the class probabilities, the version."""
        spec, head = await self.spec(name)
        kwargs = predict_arguments(payload)
        cost_ms = self.budget.request_ms(spec, payload, train=False)
        hot = await self._enter(name)
        try:
            await self._catch_up(name, hot, head)
            forget = "stream" in kwargs and hot.book.expired(
                kwargs["stream"], time.time(), self.settings.stream_ttl_s)
            pred, proba = await self.compute.run(
                cost_ms, partial(predict, hot.learner, kwargs, forget=forget))
            version, wait = hot.version, hot.in_flight()
        finally:
            self._leave(hot)
        if wait is not None:  # seen on updates still in flight: reply once they are in Redis
            await asyncio.shield(wait.done)
        return pred, proba, version

    async def current_state(self, name: str) -> tuple[bytes, int]:
        """The learner's bytes at the latest version (for export)."""
        _, head = await self.spec(name)
        hot = await self._enter(name)
        try:
            await self._catch_up(name, hot, head)
            state = await self.compute.run(self._state_ms(hot), hot.learner.to_bytes)  # all
            version = hot.version
            wait = hot.in_flight()
        finally:
            self._leave(hot)
        if wait is not None:
            await asyncio.shield(wait.done)
        return state, version

    # -- writing -------------------------------------------------------------------------------
    async def learn(self, name: str, payload: dict[str, Any]) -> LearnOutcome:
        """Apply one event exactly once (``event_id``) and commit it before replying."""
        cached = self._hot.get(name)
        spec = cached.learner.spec if cached is not None else (await self.spec(name))[0]
        try:  # before any lock: bad input costs nothing
            cost_ms, event = await self._prepared(spec, payload)
        except InvalidInput:
            if cached is None:
                raise
            fresh, _ = await self.spec(name)  # the cached spec is stale if the model was
            if fresh == spec:                 # deleted and re-created by another process
                raise
            spec = fresh
            cost_ms, event = await self._prepared(spec, payload)
        hot = await self._entry(name)
        hot.writers += 1
        hot.learns += 1
        applied = False
        try:
            head = await self._lock_for_write(name, hot)
            outcome: LearnOutcome | None = None
            try:
                if head is not None:
                    await self._catch_up(name, hot, head)
                if hot.learner.spec != spec:  # the name was deleted and re-created meanwhile
                    spec = hot.learner.spec
                    cost_ms, event = await self._prepared(spec, payload)
                ticket = hot.ids.get(event.event_id) if event.event_id is not None else None
                if ticket is not None:
                    _same_event(event, ticket.digest, ticket.version)
                elif event.event_id is not None:
                    done = (await self.store.seen(name, [event.event_id])).get(event.event_id)
                    if done is not None:
                        _same_event(event, done.digest, done.version)
                        return LearnOutcome(None, None, done.version, False)
                if ticket is None:
                    if hot.dead:  # a commit failed while this request waited for Redis
                        raise LeaseLost("the model's cached learner was dropped after a "
                                        "failed commit")
                    outcome, ticket = await self._apply(name, hot, event, cost_ms)
                    applied = True
            finally:
                self._leave(hot)
            return _committed(outcome, await asyncio.shield(ticket.done), applied)
        finally:
            hot.writers -= 1
            await self.writes.settle(name, hot, linger=applied)

    async def learn_batch(self, name: str, payloads: list[dict[str, Any]]
                          ) -> list[LearnOutcome | Exception]:
        """Apply events to one model in their order (the stream worker's call): one lease and
        one hold of the lock for them all, committed in as few calls as the flusher groups.
        An event's own error (invalid input, update rejected, unknown model) takes its place
        in the list; failing to take the lease or to commit raises, and the caller retries
        the lot (event ids make that safe)."""
        out: list[LearnOutcome | Exception | None] = [None] * len(payloads)
        try:
            spec, _ = await self.spec(name)
        except ApiError as exc:
            if exc.status != 404:
                raise
            return [exc] * len(payloads)
        events = []
        for i, payload in enumerate(payloads):
            try:
                cost_ms, event = await self._prepared(spec, payload)
                events.append((i, event, cost_ms))
            except InvalidInput as exc:
                out[i] = exc
        hot = await self._entry(name)
        hot.writers += 1
        hot.learns += 1
        queued: list[tuple[int, LearnOutcome | None, Ticket, bool]] = []
        try:
            head = await self._lock_for_write(name, hot)
            try:
                if head is not None:
                    await self._catch_up(name, hot, head)
                if hot.learner.spec != spec:
                    raise LeaseLost("the model was deleted and re-created meanwhile")
                inflight = {e.event_id: hot.ids[e.event_id] for _, e, _ in events
                            if e.event_id in hot.ids}  # (their commits may land meanwhile)
                done = await self.store.seen(name, [e.event_id for _, e, _ in events
                                                    if e.event_id and e.event_id not in inflight])
                if hot.dead:
                    raise LeaseLost("the model's cached learner was dropped after a failed "
                                    "commit")
                for i, event, cost_ms in events:
                    eid = event.event_id
                    try:
                        if eid is not None and eid in done:
                            _same_event(event, done[eid].digest, done[eid].version)
                            out[i] = LearnOutcome(None, None, done[eid].version, False)
                            continue
                        if eid is not None and (eid in inflight or eid in hot.ids):
                            ticket = inflight.get(eid) or hot.ids[eid]
                            _same_event(event, ticket.digest, ticket.version)
                            queued.append((i, None, ticket, False))
                            continue
                    except ApiError as exc:  # an id reused for another event
                        out[i] = exc
                        continue
                    try:
                        outcome, ticket = await self._apply(name, hot, event, cost_ms)
                    except ApiError as exc:  # the update was rejected and rolled back
                        out[i] = exc
                        continue
                    queued.append((i, outcome, ticket, True))
                    if eid is not None:  # its commit may land (and leave hot.ids) while a
                        inflight[eid] = ticket  # later event of this batch computes
            finally:
                self._leave(hot)
            for i, outcome, ticket, applied in queued:
                out[i] = _committed(outcome, await asyncio.shield(ticket.done), applied)
        finally:
            hot.writers -= 1
            await self.writes.settle(name, hot, linger=bool(queued))
        return [o if o is not None else LeaseLost("not applied") for o in out]

    async def _lock_for_write(self, name: str, hot: Hot) -> ModelHead | None:
        """Hold the model's lease and its lock: the head read when the lease was taken, or
        ``None`` when this process already held it."""
        while True:
            head = await self.writes.lease(name, hot)  # polls without holding the lock
            token = hot.token
            await self._lock(hot)
            if hot.token is not None and hot.token == token and not hot.wanted:
                return head
            # yielded to another process, or the lease lapsed and was taken afresh (whoever
            # took it caught the learner up), or another process asked for the lease: this
            # one computes nothing more until it has handed it over, then queues up again
            self._leave(hot)
            if hot.wanted and hot.token is not None:
                await asyncio.sleep(0.001)

    async def _apply(self, name: str, hot: Hot, event: Event, cost_ms: float
                     ) -> tuple[LearnOutcome | None, Ticket]:
        """Run the event on the learner (lock and lease held) and queue its commit; a long
        computation runs on the compute thread, the lease renewed meanwhile."""
        if hot.dead:  # a commit failed while this batch was computing
            raise LeaseLost("the model's cached learner was dropped after a failed commit")
        stream = event.body.get("stream")
        if stream is not None:  # when, and which contexts go first: decided here, logged
            now = round(time.time(), 3)
            drop = hot.book.to_drop(stream, now, self.settings.stream_ttl_s,
                                    self.budget.streams(hot.learner.spec))
            event = event.noted({"t": now, "drop": drop} if drop else {"t": now})
        logged = {**event.body, **event.notes}
        try:
            async with self._kept(name, hot, cost_ms):
                outcome = await self.compute.run(cost_ms, apply_event, hot.learner, logged)
                hot.book.applied(stream, event.notes.get("t", 0.0), event.notes.get("drop", ()))
                state = None
                if self.writes.snapshot_due(hot):
                    state = await self.compute.run(self._state_ms(hot), hot.snapshot_state)
            return outcome, self.writes.queue(name, hot, event, state)
        except UpdateRejected as exc:  # the learner rolled itself back
            m.REJECTED.labels(model=name).inc()
            raise ApiError(422, f"update rejected: {exc}", "y") from exc
        except BaseException:
            self.writes.abandon(name, hot)  # it may hold a change Redis will never have
            raise

    def _kept(self, name: str, hot: Hot, cost_ms: float) -> AbstractAsyncContextManager[None]:
        """The lease renewed meanwhile when the work is long enough to leave the loop."""
        return self.writes.kept(name, hot) if self.compute.offloaded(cost_ms) else nullcontext()

    async def _prepared(self, spec: ModelSpec, payload: dict[str, Any]) -> tuple[float, Event]:
        """A learn payload within the budget (its estimated ms) and validated (a large one on
        the compute thread); ``InvalidInput`` names what is wrong."""
        cost_ms = self.budget.request_ms(spec, payload, train=True)
        event = await self.compute.run(_values_ms(spec, payload), canonical_event, spec, payload)
        return cost_ms, event

    @staticmethod
    def _state_ms(hot: Hot) -> float:
        return _bytes_ms(cost.state_bytes(hot.learner.spec))

    async def close(self) -> None:
        """Commit what is queued, snapshot what is ahead, hand back every lease."""
        await self.writes.close(self._hot)
        await self.compute.close()

    async def checkpoint(self, names: list[str]) -> int:
        """Snapshot the cached learners of ``names`` that are ahead of their snapshots (a
        worker handing a partition over): how many were written."""
        written = 0
        for name in names:
            hot = self._hot.get(name)
            if hot is not None:
                try:
                    written += await self.writes.checkpoint(name, hot)
                except Exception as exc:  # best effort: the next holder replays instead
                    log.warning("no checkpoint of %s: %r", name, exc)
        return written

    def cached(self) -> list[str]:
        """Names of the learners this process holds in memory."""
        return list(self._hot)

    # -- the cache -----------------------------------------------------------------------------
    async def _entry(self, name: str) -> Hot:
        """The cached entry for ``name`` (loaded once, however many requests wait for it)."""
        hot = self._hot.get(name)
        if hot is None:
            loading = self._loading.setdefault(name, asyncio.Lock())
            async with loading:
                hot = self._hot.get(name)
                if hot is None:
                    spec, _ = await self.spec(name)
                    hot = await self._load(name, spec)
                    self._hot[name] = hot
                    self._evict()
            if not loading.locked():  # waiters find the entry cached: forget the lock
                self._loading.pop(name, None)
        self._hot.move_to_end(name)
        return hot

    async def _lock(self, hot: Hot) -> None:
        """Take the entry's lock; a dropped entry cannot be used (retry the request)."""
        hot.waiting += 1
        try:
            await hot.lock.acquire()
        except BaseException:
            hot.waiting -= 1
            raise
        if hot.dead:
            self._leave(hot)
            raise LeaseLost("the model's cached learner was dropped after a failed commit")

    async def _enter(self, name: str) -> Hot:
        """The cached entry for ``name`` with its lock held (loaded if needed)."""
        while True:
            hot = await self._entry(name)
            try:
                await self._lock(hot)
            except LeaseLost:
                continue
            return hot

    def _leave(self, hot: Hot) -> None:
        hot.waiting -= 1
        hot.lock.release()

    def _drop(self, name: str, hot: Hot) -> None:
        hot.dead, hot.token = True, None
        if self._hot.get(name) is hot:
            del self._hot[name]

    def _evict(self) -> None:
        """Forget the least recently used idle learners beyond ``cache_models``."""
        for old_name in list(self._hot)[:max(0, len(self._hot) - self.settings.cache_models)]:
            old = self._hot[old_name]
            if not old.waiting and not old.lock.locked() and old.token is None \
                    and not old.writers:
                self._drop(old_name, old)

    async def _load(self, name: str, spec: ModelSpec) -> Hot:
        snap = await self.store.snapshot(name)
        if snap is None:
            raise ApiError(404, f"no model named {name!r}", "name")
        size = len(snap.state) + sum(len(b) for _, _, b in snap.contexts)
        learner, book = await self.compute.run(_bytes_ms(size), _loaded, snap)
        if learner.spec != spec:
            raise ApiError(409, f"model {name!r} was replaced while loading; retry")
        m.STATE_LOADS.labels(name).inc()
        head = snap.head
        return Hot(learner, head.uid, head.snapshot_version, head.snapshot_version, book=book)

    async def _reload(self, name: str, hot: Hot, spec: ModelSpec) -> None:
        """Replace the entry's learner by the latest snapshot (the replay then continues)."""
        fresh = await self._load(name, spec)
        hot.learner, hot.uid, hot.version = fresh.learner, fresh.uid, fresh.version
        hot.committed, hot.snapshot_version = fresh.version, fresh.snapshot_version
        hot.book = fresh.book

    async def _catch_up(self, name: str, hot: Hot, head: ModelHead) -> None:
        """Bring the cached learner to ``head.version`` (replay, or snapshot + replay)."""
        if hot.uncommitted():  # this process holds the lease with updates in flight: no other
            return             # writer can have moved the model
        if head.uid == hot.uid and head.version < hot.version:
            # read before this request waited for the lock, while this process committed more
            # learns: look again before concluding that Redis went back in time
            head = await self.store.head(name) or head
        if head.uid != hot.uid or head.version < hot.version:
            await self._reload(name, hot, (await self.spec(name, head))[0])
        hot.snapshot_version = max(hot.snapshot_version, head.snapshot_version)
        for _ in range(3):
            if hot.version >= head.version:
                return
            entries = await self.store.log_after(name, hot.version, head.version)
            if entries and entries[0][0] == hot.version + 1 and all(
                    v == hot.version + 1 + i for i, (v, _) in enumerate(entries)):
                logged = [(v, orjson.loads(raw)) for v, raw in entries]
                costs = [replay_ms(hot.learner.spec, body) for _, body in logged]
                # a long replay under this process's lease (a learn catching up) renews it
                kept = self._kept(name, hot, sum(costs)) if hot.token is not None \
                    else nullcontext()
                async with kept:
                    try:
                        for (v, body), cost_ms in zip(logged, costs, strict=True):
                            await self.compute.run(cost_ms, apply_event, hot.learner, body)
                            hot.version = hot.committed = v
                            hot.book.applied(body.get("stream"), body.get("t", time.time()),
                                             body.get("drop", ()))
                    except BaseException:  # stopped mid-entry: the learner may hold an
                        self.writes.abandon(name, hot)  # update its version does not count
                        raise
                m.REPLAYED.labels(name).inc(len(entries))
                continue
            await self._reload(name, hot, hot.learner.spec)  # the log no longer reaches back
        if hot.version < head.version:
            raise ApiError(503, f"model {name!r} could not be brought up to date; retry")

