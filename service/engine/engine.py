"""The engine: the one place that applies an event to a model, and the verbs of the service.

HTTP ``learn`` (a batch of one) and the stream worker both call ``Engine.learn`` with events
validated where they entered (``Engine.prepare``). Each process keeps hot models in memory as
``Replica`` objects (an LRU of ``STREAMNORM_CACHE_MODELS``) at the version they are at; a request
first reads the model's version in Redis (one round trip) and, only when it moved, catches the
replica up by replaying the logged events (or loads the snapshot and replays the tail): a hot
model is never deserialized per request (``streamnorm_state_loads_total`` counts loads).
Training is deterministic on one CPU thread, so a replayed learner equals the writer's bit for
bit. Torch work runs on the event loop thread between awaits (or on the one compute thread):
requests of one process never touch a learner concurrently, and each replica's lock orders them.
The engine speaks in domain errors (``service.engine.errors``); it knows no HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from models import InvalidInput, ModelSpec, OnlineLearner, cost, health

from ..redis.races import RaceStore
from ..redis.store import LeaseLost, ModelHead, Store
from ..redis.streams import PartitionStats, Streams, partition_of
from ..settings import Settings
from .budget import Budget
from .compute import Compute
from .contexts import ContextBook
from .errors import Backlogged, Busy, Conflict, UnknownModel, UnknownRace, UnknownVersion
from .event import Event, LearnOutcome, predict, predict_arguments
from .host import Host, bytes_ms
from .race import Races
from .replica import Replica, Written
from .versions import public, retained_of

__all__ = ["Engine"]

log = logging.getLogger("streamnorm")
_POLL_S = 0.25  # how often a live feed looks for new points
_KEEPALIVE_S = 15.0  # a live feed says something at least this often

Described = tuple[str, dict[str, str]]  # a model's spec JSON and its meta hash


class Engine:
    """Per-process cache of replicas, and the verbs: models, predict, learn, events."""

    def __init__(self, store: Store, streams: Streams, settings: Settings) -> None:
        self.store, self.streams, self.settings = store, streams, settings
        self.host = Host(store, settings, Compute(settings.inline_ms), Budget(settings),
                         dropped=self._dropped)
        self._replicas: OrderedDict[str, Replica] = OrderedDict()
        self._specs: dict[tuple[str, str], ModelSpec] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._followers = 0  # live feeds this process serves
        self.races = Races(self, RaceStore(store.redis))

    # -- models --------------------------------------------------------------------------------
    async def create(self, spec: ModelSpec) -> bool:
        """Store a new model at version 0 (``True``). ``False`` when a model of that name and
        the same spec exists (a retry of a create whose reply was lost); ``Conflict`` for
        another spec. Atomic: one script writes the spec, the state and the meta, or nothing."""
        host = self.host
        host.budget.check_spec(spec)
        build_ms = bytes_ms(cost.state_bytes(spec))
        learner = await host.compute.run(build_ms, OnlineLearner, spec)
        return await self._store_new(learner)

    async def _store_new(self, learner: OnlineLearner) -> bool:
        """Store ``learner`` as a new model at version 0 (``create``'s contract); it is also
        the first retained version."""
        spec, host = learner.spec, self.host
        full = await host.compute.run(host.state_ms(spec), learner.to_bytes)
        retained = retained_of(full, learner, ContextBook(), 0)
        metrics, uid = json.dumps(learner.metrics.report()), uuid.uuid4().hex
        keep = retained.meta if self.settings.keep_snapshots else ""
        try:
            if await self.store.create(spec.name, spec.model_dump_json(), retained.full, uid,
                                       metrics, updates=learner.updates,
                                       samples=learner.samples, retained=keep):
                return True
        except RedisError:  # the script may have run before the reply was lost: look
            head = await self.store.head(spec.name)
            if head is None or head.uid != uid:
                raise
            return True
        existing = await self.store.spec(spec.name)
        if existing is not None and ModelSpec.model_validate_json(existing) == spec:
            return False
        raise Conflict(f"a model named {spec.name!r} exists with another spec", "name")

    async def delete(self, name: str) -> None:
        if not await self.store.delete(name):
            raise UnknownModel(name)
        replica = self._replicas.get(name)
        if replica is not None and not replica.lock.locked():
            replica.drop()  # a busy one finds the model gone at its commit

    async def describe(self, name: str) -> Described:
        """The spec JSON and meta of a model (``UnknownModel`` if there is none)."""
        found = await self.store.describe(name)
        if found is None:
            raise UnknownModel(name)
        return found

    async def catalogue(self) -> list[Described]:
        """Every model's spec JSON and meta (a SCAN: listing is rare)."""
        out = []
        for name in await self.store.names():
            found = await self.store.describe(name)
            if found is not None:
                out.append(found)
        return out

    async def curve(self, name: str, after: int, limit: int) -> list[dict[str, Any]]:
        """The model's learning-curve points with versions after ``after`` (at most
        ``limit``, oldest first): each written with the update that closed it."""
        if await self.store.head(name) is None:
            raise UnknownModel(name)
        return [json.loads(point) for point in await self.store.curve(name, after, limit)]

    async def live(self, name: str, after: int | None
                   ) -> AsyncIterator[tuple[str, dict[str, Any]] | None]:
        """Follow the model's curve (``follow``) from after ``after`` (``None``: after the
        newest point now); ends when the model is deleted."""
        if await self.store.head(name) is None:
            raise UnknownModel(name)
        if after is None:
            newest = await self.store.curve_tail(name)
            after = newest if newest is not None else 0

        async def alive() -> bool:
            return await self.store.head(name) is not None

        return self.follow({name: after}, alive)

    def follow(self, cursors: dict[str, int], alive: Callable[[], Awaitable[bool]]
               ) -> AsyncIterator[tuple[str, dict[str, Any]] | None]:
        """Follow the curves of ``cursors``' models (each after its version): ``(model,
        point)`` per new point, ``None`` every ``_KEEPALIVE_S`` without one, until ``alive``
        says no. Polls Redis (no connection held between polls), so any process follows
        whichever process writes. ``Busy`` beyond ``STREAMNORM_MAX_LIVE`` feeds."""
        if self._followers >= self.settings.max_live:
            raise Busy(f"this process serves {self._followers} live feeds already "
                       f"(STREAMNORM_MAX_LIVE); retry later or ask another")
        return self._follow(dict(cursors), alive)

    async def _follow(self, cursors: dict[str, int], alive: Callable[[], Awaitable[bool]]
                      ) -> AsyncIterator[tuple[str, dict[str, Any]] | None]:
        self._followers += 1
        try:
            quiet = 0.0
            while True:
                found = await self.store.curves(cursors, 100)
                for name, raw in found.items():
                    for point in map(json.loads, raw):
                        cursors[name] = int(point["version"])
                        yield name, point
                if any(found.values()):
                    quiet = 0.0
                    continue
                await asyncio.sleep(_POLL_S)
                quiet += _POLL_S
                if quiet >= _KEEPALIVE_S:
                    quiet = 0.0
                    if not await alive():
                        return  # deleted
                    yield None
        finally:
            self._followers -= 1

    async def spec(self, name: str, head: ModelHead | None = None
                   ) -> tuple[ModelSpec, ModelHead]:
        """The model's spec (cached per incarnation) and head; ``UnknownModel`` if none."""
        head = head or await self.store.head(name)
        if head is None:
            raise UnknownModel(name)
        spec = self._specs.get((name, head.uid))
        if spec is None:
            raw = await self.store.spec(name)
            if raw is None:
                raise UnknownModel(name)
            if len(self._specs) >= 4 * self.settings.cache_models:  # re-created names pile up
                self._specs.clear()
            spec = self._specs[(name, head.uid)] = ModelSpec.model_validate_json(raw)
        return spec, head

    async def spec_of(self, name: str) -> ModelSpec:
        """The model's spec: the hot replica's without a round trip, else ``spec``'s."""
        replica = self._replicas.get(name)
        return replica.learner.spec if replica is not None else (await self.spec(name))[0]

    # -- the edge's validation -----------------------------------------------------------------
    async def prepare(self, name: str, payloads: list[dict[str, Any]],
                      valid_for: list[str | None] | None = None) -> list[Event | Exception]:
        """Learn payloads for ``name`` validated against its spec, each an ``Event`` or the
        ``InvalidInput`` naming what is wrong with it (``UnknownModel`` for them all).
        ``valid_for[i]``: the model incarnation (uid) payload ``i`` was already validated for,
        in canonical form (``submit`` appends such entries): taken as it is while the model is
        that incarnation, validated again otherwise."""
        replica = self._replicas.get(name)
        if replica is not None:
            spec, uid = replica.learner.spec, replica.uid  # no round trip on the hot path
        else:
            spec, head = await self.spec(name)
            uid = head.uid
        valid_for = valid_for or [None] * len(payloads)
        out = await self._prepare_for(spec, uid, payloads, valid_for)
        if replica is not None and any(isinstance(e, InvalidInput) for e in out):
            fresh, head = await self.spec(name)  # the cached spec is stale if the model was
            if fresh != spec:                    # deleted and re-created by another process
                out = await self._prepare_for(fresh, head.uid, payloads, valid_for)
        return out

    async def _prepare_for(self, spec: ModelSpec, uid: str, payloads: list[dict[str, Any]],
                           valid_for: list[str | None]) -> list[Event | Exception]:
        out: list[Event | Exception] = []
        for payload, known in zip(payloads, valid_for, strict=True):
            try:
                out.append(self.host.admit(spec, payload) if known == uid
                           else await self.host.prepare(spec, payload))
            except InvalidInput as exc:
                out.append(exc)
        return out

    # -- reading -------------------------------------------------------------------------------
    async def predict(self, name: str, payload: dict[str, Any]
                      ) -> tuple[float | int, dict[int, float] | None, int]:
        """The prediction ``learn`` would make now, the class probabilities, the version."""
        spec, head = await self.spec(name)
        kwargs = predict_arguments(payload)
        cost_ms = self.host.budget.request_ms(spec, payload, train=False)
        ttl = self.settings.stream_ttl_s

        def run(replica: Replica) -> tuple[float | int, dict[int, float] | None]:
            forget = "stream" in kwargs and replica.book.expired(kwargs["stream"],
                                                                 time.time(), ttl)
            return predict(replica.learner, kwargs, forget=forget)

        (pred, proba), version = await (await self._enter(name)).read(head, cost_ms, run)
        return pred, proba, version

    async def keep(self, name: str, payload: dict[str, Any]
                   ) -> tuple[LearnOutcome, str]:
        """A prediction kept for a delayed label (``design.md``, "Delayed labels"): ordered and
        committed like an update (in stream mode ``x`` joins the stream's context), under the
        payload's ``prediction_id`` or a new one; the outcome and the id. A repeat of a kept id
        answers the kept prediction (``applied: false``); ``Conflict`` when it is no longer
        kept or named another input."""
        pid = payload.get("prediction_id") or uuid.uuid4().hex
        body = {k: v for k, v in payload.items() if k not in ("keep", "prediction_id")}
        event = self.host.keep((await self.spec(name))[0], body, pid)
        out = (await self.learn(name, [event]))[0]
        if isinstance(out, Conflict):  # the keep's own id names another input
            raise Conflict(f"prediction_id {pid!r} was kept for another input; choose a new "
                           "one", "prediction_id")
        if isinstance(out, Exception):
            raise out
        if out.applied:
            return out, pid
        record = await self.store.kept(name, pid)
        if record is None:
            raise Conflict(f"prediction_id {pid!r} was kept before and is no longer (labelled "
                           "or expired); choose a new one", "prediction_id")
        learner = (await self._entry(name)).learner
        kept = learner.kept_from_bytes(record)
        preds, probas = learner.net.decode(kept.logits)
        proba = None if probas is None else dict(enumerate(probas[0]))
        return LearnOutcome(preds[0], None, out.version, False, proba), pid

    # -- versions ------------------------------------------------------------------------------
    async def versions(self, name: str) -> list[dict[str, Any]]:
        """The retained versions, newest first (``design.md``, "Versions, rollback, fork")."""
        if await self.store.head(name) is None:
            raise UnknownModel(name)
        return [public(meta) for meta in await self.store.versions(name)]

    async def rollback(self, name: str, version: int, event_id: str | None = None,
                       why: str = "request") -> LearnOutcome:
        """Return the model to a retained version: an update like any other (ordered,
        logged, once per ``event_id``) whose version moves forward."""
        spec, _ = await self.spec(name)
        body: dict[str, Any] = {"rollback": version}
        if why != "request":
            body["why"] = why
        event = Event(body, event_id).priced(spec, self.host.state_ms(spec))
        out = (await self.learn(name, [event]))[0]
        if isinstance(out, Exception):
            raise out
        return out

    async def fork(self, name: str, new: str, version: int | None,
                   optimizer: dict[str, Any] | None) -> ModelSpec:
        """A new model ``new`` starting from ``name``'s state at a retained ``version`` (the
        latest by default): weights, optimizer moments, statistics, stream contexts, counters
        and metrics, with its optimizer settings changed by ``optimizer`` (same kind)."""
        spec, _ = await self.spec(name)
        if version is None:
            data, _ = await self.current_state(name)
        else:
            retained = await self.store.retained(name, version)
            if retained is None:
                raise UnknownVersion(version)
            data = retained.full
        fields = spec.model_dump(mode="json")
        fields["name"] = new
        if optimizer is not None:
            fields["optimizer"] = {**fields["optimizer"], **optimizer}
        try:
            new_spec = ModelSpec.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInput(where, f"{where}: {first['msg']}") from None
        self.host.budget.check_spec(new_spec)
        ms = bytes_ms(len(data))
        source = await self.host.compute.run(ms, OnlineLearner.from_bytes, data)
        learner = await self.host.compute.run(ms, source.with_spec, new_spec)
        if not await self._store_new(learner):
            raise Conflict(f"a model named {new!r} exists", "name")
        return new_spec

    async def current_state(self, name: str) -> tuple[bytes, int]:
        """The learner's bytes at the latest version, contexts included (for export)."""
        spec, head = await self.spec(name)
        replica = await self._enter(name)
        return await replica.read(head, self.host.state_ms(spec),
                                  lambda r: r.learner.to_bytes())

    async def norm_state(self, name: str) -> tuple[list[dict[str, Any]], int]:
        """A summary of each normalization buffer at the latest version (``models.health``):
        the dashboard's view of whether the running statistics are healthy."""
        spec, head = await self.spec(name)
        replica = await self._enter(name)
        return await replica.read(head, self.host.state_ms(spec),
                                  lambda r: health.summary(r.learner))

    # -- writing -------------------------------------------------------------------------------
    async def learn(self, name: str, events: list[Event | Exception]) -> list[Written]:
        """Apply validated events to one model in their order, each exactly once, and reply
        once they are committed (``Replica.write``); an HTTP learn is a list of one."""
        return await (await self._entry(name)).write(events)

    async def submit(self, items: list[tuple[str, str, dict[str, Any]]], *, numbered: bool
                     ) -> list[tuple[int, str]]:
        """Validate ``(kind, name, learn payload)`` items — ``kind``: ``model`` or ``race`` —
        and append them to the event stream, all or none: ``(partition, entry id)`` each.
        Errors name the item (``[3].x``) when they came as a list (``numbered``);
        ``Backlogged`` when a partition is too far behind. A race's event is validated once,
        for its first member (members share task and inputs); the worker fans it out."""
        out: list[tuple[str, str, str, str | None]] = []
        specs: dict[tuple[str, str], tuple[ModelSpec, str | None]] = {}
        for i, (kind, name, payload) in enumerate(items):
            where = f"[{i}]." if numbered else ""
            if (kind, name) not in specs:
                try:
                    specs[kind, name] = await self._target(kind, name)
                except (UnknownModel, UnknownRace) as exc:
                    exc.field = f"{where}{kind}"  # which item of the list
                    raise
            spec, uid = specs[kind, name]
            try:
                event = await self.host.prepare(spec, payload)
            except InvalidInput as exc:
                raise InvalidInput(f"{where}{exc.field}", exc.message) from None
            # canonical, and marked with the incarnation it fits: the worker takes it as it is
            out.append((kind, name, json.dumps(event.payload(), separators=(",", ":")), uid))
        limit = self.settings.max_backlog
        backlog = await self.streams.backlog({partition_of(name, self.streams.partitions)
                                              for _, name, _, _ in out})
        full = {p: n for p, n in backlog.items() if n >= limit}
        if full:
            raise Backlogged(f"the stream is behind: partition(s) {sorted(full)} hold "
                             f"{max(full.values())} unacknowledged events (limit {limit}); "
                             "retry later", "body")
        return await self.streams.append(out)

    async def _target(self, kind: str, name: str) -> tuple[ModelSpec, str | None]:
        """The spec an event for a model or race is validated against, and the model uid
        that marks it validated (none for a race: its members are checked when fanned out)."""
        if kind == "race":
            race, _ = await self.races.definition(name)
            for member in race.names:  # the first that is there, as it is now
                with contextlib.suppress(UnknownModel):
                    return (await self.spec(member))[0], None
            raise UnknownModel(race.names[0], "race")
        spec, head = await self.spec(name)
        return spec, head.uid

    async def checkpoint(self, names: list[str]) -> int:
        """Snapshot the cached learners of ``names`` that are ahead of their snapshots (a
        worker handing a partition over): how many were written."""
        written = 0
        for name in names:
            replica = self._replicas.get(name)
            if replica is not None:
                try:
                    written += await replica.checkpoint()
                except Exception as exc:  # best effort: the next holder replays instead
                    log.warning("no checkpoint of %s: %r", name, exc)
        return written

    async def ping(self) -> None:
        """Raise unless Redis answers (readiness)."""
        await self.store.ping()

    async def stream_stats(self) -> list[PartitionStats]:
        """Backlog, pending, dead-letter and applied counts of every event partition."""
        return await self.streams.stats()

    def cached(self) -> list[str]:
        """Names of the models this process holds in memory."""
        return list(self._replicas)

    async def close(self) -> None:
        """Commit what is queued, snapshot every learner ahead of its snapshot, hand back
        every lease this process holds (a restart then waits for nobody, and replays
        nothing), and stop the compute thread."""
        timeout = self.settings.redis_timeout_s
        flushers = [r.flusher for r in self._replicas.values() if r.flusher is not None]
        if flushers:
            await asyncio.wait(flushers, timeout=timeout)
        for replica in list(self._replicas.values()):
            await replica.close()
        if self.host.tasks:
            await asyncio.wait(list(self.host.tasks), timeout=2.0)
        await self.host.compute.close()

    # -- the cache -----------------------------------------------------------------------------
    async def _entry(self, name: str) -> Replica:
        """The replica of ``name`` (loaded once, however many requests wait for it)."""
        replica = self._replicas.get(name)
        if replica is None:
            loading = self._loading.setdefault(name, asyncio.Lock())
            async with loading:
                replica = self._replicas.get(name)
                if replica is None:
                    spec, _ = await self.spec(name)
                    replica = await Replica.load(name, self.host, spec)
                    self._replicas[name] = replica
                    self._evict()
            if not loading.locked():  # waiters find the entry cached: forget the lock
                self._loading.pop(name, None)
        self._replicas.move_to_end(name)
        return replica

    async def _enter(self, name: str) -> Replica:
        """The replica of ``name`` with its lock held (loaded if needed)."""
        while True:
            replica = await self._entry(name)
            try:
                await replica.enter()
            except LeaseLost:  # dropped while this request waited: take a fresh one
                continue
            return replica

    def _dropped(self, name: str, replica: Replica) -> None:
        """A replica dropped itself (or was dropped): forget it."""
        if self._replicas.get(name) is replica:
            del self._replicas[name]

    def _evict(self) -> None:
        """Forget the least recently used idle replicas beyond ``cache_models``."""
        extra = len(self._replicas) - self.settings.cache_models
        for old_name in list(self._replicas)[:max(0, extra)]:
            old = self._replicas[old_name]
            if old.evictable():
                old.drop()
