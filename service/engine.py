"""The one place that applies an event to a model: validate → lease → catch up → learn → commit.

HTTP ``learn`` calls ``Engine.learn`` (the stream worker will too). Each process keeps hot
learners in memory with the version they are at; a request first reads the model's version in
Redis (one round trip) and, only when it moved, catches the cached learner up by replaying the
logged events (or loads the snapshot and replays the tail when the log no longer reaches back):
a hot model is never deserialized per request (``streamnorm_state_loads_total`` counts loads).
Training is deterministic on one CPU thread, so a replayed learner equals the writer's bit for bit.
Torch work runs on the event loop thread between awaits: requests of one process never touch a
learner concurrently, and one ``asyncio.Lock`` per model orders them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from models import InvalidInput, ModelSpec, OnlineLearner, UpdateRejected
from models.persist import context_to_bytes

from . import metrics as m
from .errors import ApiError
from .events import Event, LearnOutcome, apply_event, canonical_event, predict_arguments
from .settings import Settings
from .store import LeaseLost, ModelHead, Store

__all__ = ["Engine", "Event", "LearnOutcome"]

log = logging.getLogger("streamnorm")


@dataclass
class _Hot:
    """A learner cached by this process, the version it is at, and who may touch it."""

    learner: OnlineLearner
    uid: str
    version: int
    snapshot_version: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    token: str | None = None  # the lease, while this process holds it
    dead: bool = False  # dropped from the cache (holds an uncommitted update): never use
    writers: int = 0  # learns of this process in progress on the model (they share the lease)
    lease_until: float = 0.0  # monotonic time before which the held lease surely holds
    lease_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    moved: set[str] = field(default_factory=set)  # streams whose ctx key the next snapshot writes


class Engine:
    """Per-process learner cache plus the read and write paths over the store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings = store, settings
        self._hot: OrderedDict[str, _Hot] = OrderedDict()
        self._specs: dict[tuple[str, str], ModelSpec] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lease_s = 0.8 * settings.lease_ms / 1000  # renew well before Redis expires it

    # -- models --------------------------------------------------------------------------------
    async def create(self, spec: ModelSpec) -> None:
        learner = OnlineLearner(spec)
        metrics = json.dumps(learner.metrics.report())
        ok = await self.store.create(spec.name, spec.model_dump_json(), learner.to_bytes(),
                                     uuid.uuid4().hex, metrics)
        if not ok:
            raise ApiError(409, f"a model named {spec.name!r} exists", "name")

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
        hot = await self._enter(name)
        try:
            await self._catch_up(name, hot, head)
            if spec.task == "regression":
                return hot.learner.predict_one(**kwargs), None, hot.version
            proba = hot.learner.predict_proba_one(**kwargs)
            return max(proba, key=proba.__getitem__), proba, hot.version  # first on ties
        finally:
            self._leave(hot)

    async def current_state(self, name: str) -> tuple[bytes, int]:
        """The learner's bytes at the latest version (for export)."""
        _, head = await self.spec(name)
        hot = await self._enter(name)
        try:
            await self._catch_up(name, hot, head)
            return hot.learner.to_bytes(), hot.version
        finally:
            self._leave(hot)

    # -- writing -------------------------------------------------------------------------------
    async def learn(self, name: str, payload: dict[str, Any]) -> LearnOutcome:
        """Apply one event exactly once (``event_id``) and commit it before replying."""
        cached = self._hot.get(name)
        spec = cached.learner.spec if cached is not None else (await self.spec(name))[0]
        try:
            event = canonical_event(spec, payload)  # before any lock: bad input costs nothing
        except InvalidInput:
            if cached is None:
                raise
            fresh, _ = await self.spec(name)  # the cached spec is stale if the model was
            if fresh == spec:                 # deleted and re-created by another process
                raise
            spec, event = fresh, canonical_event(fresh, payload)
        hot = await self._entry(name)
        hot.writers += 1
        try:
            while True:
                head = await self._lease(name, hot)  # polls without holding the model's lock
                await self._lock(hot)
                if hot.token is not None:
                    break
                self._leave(hot)  # yielded to another process meanwhile: queue up again
            try:
                if head is not None:
                    await self._catch_up(name, hot, head)
                if hot.learner.spec != spec:  # the name was deleted and re-created meanwhile
                    event = canonical_event(hot.learner.spec, payload)
                if event.event_id is not None:
                    done = await self.store.seen(name, event.event_id)
                    if done is not None:
                        return LearnOutcome(None, None, done, False)
                return await self._apply(name, hot, event)
            finally:
                self._leave(hot)
        finally:
            hot.writers -= 1
            if hot.writers == 0:
                await self._hand_back(name, hot)

    async def _hand_back(self, name: str, hot: _Hot) -> None:
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

    async def _apply(self, name: str, hot: _Hot, event: Event) -> LearnOutcome:
        learner, body = hot.learner, event.body
        try:
            outcome = apply_event(learner, body)
        except UpdateRejected as exc:  # the learner rolled itself back
            raise ApiError(422, f"update rejected: {exc}", "y") from exc
        stream = body.get("stream")
        assert hot.token is not None
        try:
            version, wanted = await self.store.commit(
                name, hot.token, hot.version, event.to_json(), event_id=event.event_id,
                updates=learner.updates, samples=learner.samples,
                metrics_json=json.dumps(learner.metrics.report()),
                lease_ms=self.settings.lease_ms)
        except BaseException:
            # the learner holds an update Redis does not: it must never serve again; the
            # script may still have run and renewed the lease, so hand that back too
            token = hot.token
            self._drop(name, hot)
            if token is not None:
                self._background(self._release(name, token))
            raise
        hot.version = version
        hot.lease_until = time.monotonic() + self._lease_s  # the commit renewed it
        if stream is not None:
            hot.moved.add(stream)
        m.UPDATES.labels(name).inc()
        if version - hot.snapshot_version >= self.settings.snapshot_every:
            try:
                await self._snapshot(name, hot)
            except Exception as exc:  # committed already; a later update snapshots
                log.warning("snapshot of %s at %d failed: %r", name, version, exc)
        if wanted:  # another process waits: hand the lease over
            await self._hand_back(name, hot)
        if outcome is None:
            return LearnOutcome(None, None, version, True)
        return LearnOutcome(outcome.prediction, outcome.loss, version, True, outcome.proba)

    async def _snapshot(self, name: str, hot: _Hot) -> None:
        learner = hot.learner
        state = learner.to_bytes()
        contexts = {s: context_to_bytes(learner, s) for s in hot.moved if s in learner.contexts}
        assert hot.token is not None
        if await self.store.write_snapshot(name, hot.token, hot.version, state, contexts,
                                           keep=self.settings.snapshot_every):
            hot.snapshot_version = hot.version
            hot.moved.clear()
            m.STATE_BYTES.labels(name).set(len(state))
            m.SNAPSHOTS.labels(name).inc()

    async def _lease(self, name: str, hot: _Hot) -> ModelHead | None:
        """Hold the model's lease: ``None`` when this process already holds it (no other
        writer can have moved the model), else the head read when it was taken."""
        async with hot.lease_lock:  # one poller per process; the others then share its lease
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

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Hand back every lease this process holds (a restart then waits for nobody)."""
        for name, hot in list(self._hot.items()):
            await self._hand_back(name, hot)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)

    # -- the cache -----------------------------------------------------------------------------
    async def _entry(self, name: str) -> _Hot:
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

    async def _lock(self, hot: _Hot) -> None:
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

    async def _enter(self, name: str) -> _Hot:
        """The cached entry for ``name`` with its lock held (loaded if needed)."""
        while True:
            hot = await self._entry(name)
            try:
                await self._lock(hot)
            except LeaseLost:
                continue
            return hot

    def _leave(self, hot: _Hot) -> None:
        hot.waiting -= 1
        hot.lock.release()

    def _drop(self, name: str, hot: _Hot) -> None:
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

    async def _load(self, name: str, spec: ModelSpec) -> _Hot:
        snap = await self.store.snapshot(name)
        if snap is None:
            raise ApiError(404, f"no model named {name!r}", "name")
        state, head = snap
        learner = OnlineLearner.from_bytes(state)
        if learner.spec != spec:
            raise ApiError(409, f"model {name!r} was replaced while loading; retry")
        m.STATE_LOADS.labels(name).inc()
        return _Hot(learner, head.uid, head.snapshot_version, head.snapshot_version)

    async def _reload(self, name: str, hot: _Hot, spec: ModelSpec) -> None:
        """Replace the entry's learner by the latest snapshot (the replay then continues)."""
        fresh = await self._load(name, spec)
        hot.learner, hot.uid, hot.version = fresh.learner, fresh.uid, fresh.version
        hot.snapshot_version = fresh.snapshot_version

    async def _catch_up(self, name: str, hot: _Hot, head: ModelHead) -> None:
        """Bring the cached learner to ``head.version`` (replay, or snapshot + replay)."""
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
                for v, raw in entries:
                    body = json.loads(raw)
                    apply_event(hot.learner, body)
                    hot.version = v
                    if "stream" in body:
                        hot.moved.add(body["stream"])
                m.REPLAYED.labels(name).inc(len(entries))
                continue
            await self._reload(name, hot, hot.learner.spec)  # the log no longer reaches back
        if hot.version < head.version:
            raise ApiError(503, f"model {name!r} could not be brought up to date; retry")
