"""Races: several member models fed the same events; the leader by rolling metric serves.

A race is a definition (``RacePlan``, stored as JSON) over ordinary models. An event for a race
is validated once (the members share task and inputs, so its canonical form is theirs too),
then given to each member with the member-scoped id ``{event_id}@{member}``: each member applies
it exactly once however often it is retried, over HTTP or the stream, and one member's rejected
update holds no other back. The leader changes only when a challenger's rolling metric beats it
by ``margin`` (``choose_leader``), so it does not flap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from pydantic import ValidationError

from models import InvalidInput, ModelSpec

from ..redis.races import RaceStore, Standing
from ..redis.store import Store
from ..settings import Settings
from .errors import Conflict, UnknownModel, UnknownRace
from .event import Event, LearnOutcome
from .host import Host
from .replica import Written


class Models(Protocol):
    """What races need of the engine (``Engine``): its models' verbs."""

    store: Store
    host: Host
    settings: Settings

    async def create(self, spec: ModelSpec) -> bool: ...
    async def delete(self, name: str) -> None: ...
    async def spec_of(self, name: str) -> ModelSpec: ...
    async def prepare(self, name: str, payloads: list[dict[str, Any]],
                      valid_for: list[str | None] | None = None) -> list[Event | Exception]: ...
    async def learn(self, name: str, events: list[Event | Exception]) -> list[Written]: ...
    async def predict(self, name: str, payload: dict[str, Any]
                      ) -> tuple[float | int, dict[int, float] | None, int]: ...
    async def keep(self, name: str, payload: dict[str, Any]) -> tuple[LearnOutcome, str]: ...
    def follow(self, cursors: dict[str, int], alive: Callable[[], Awaitable[bool]]
               ) -> AsyncIterator[tuple[str, dict[str, Any]] | None]: ...

__all__ = ["LOWER_IS_BETTER", "RaceKept", "RacePlan", "Races", "choose_leader", "plan"]

LOWER_IS_BETTER = frozenset({"MAE", "RMSE", "LogLoss"})
TASK_METRICS = {"regression": ("MAE", "RMSE"), "binary": ("Accuracy", "LogLoss"),
                "multiclass": ("Accuracy", "LogLoss")}
SHARED = ("task", "n_features", "features", "n_classes")  # what members may not override


class RaceKept(NamedTuple):
    """A race's kept prediction: who served it, its outcome, its id, who failed to keep it."""

    serving: str
    outcome: LearnOutcome
    prediction_id: str
    failed: dict[str, Exception]


@dataclass(frozen=True)
class RacePlan:
    """A race's definition: its members (name, normalization method), the metric that ranks
    them, and the leader's rules; ``request`` is what created it (a retry must match it)."""

    name: str
    members: tuple[tuple[str, str], ...]
    metric: str
    min_updates: int
    margin: float
    request: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return [member for member, _ in self.members]

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "members": [list(m) for m in self.members],
                           "metric": self.metric, "min_updates": self.min_updates,
                           "margin": self.margin, "request": self.request})

    @classmethod
    def from_json(cls, raw: str) -> RacePlan:
        d = json.loads(raw)
        return cls(d["name"], tuple((m, n) for m, n in d["members"]), d["metric"],
                   int(d["min_updates"]), float(d["margin"]), d["request"])


def _field(prefix: str, error: ValidationError) -> InvalidInput:
    first = error.errors()[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    return InvalidInput(f"{prefix}{where}", str(first["msg"]))


def plan(request: dict[str, Any], max_members: int) -> tuple[RacePlan, list[ModelSpec]]:
    """The race a ``POST /races`` body describes and its members' specs, or ``InvalidInput``
    naming the field (``spec.hidden_size``, ``members[2].norm``): nothing is stored here."""
    name, base = request["name"], dict(request["spec"])
    if "name" in base:
        raise InvalidInput("spec.name", "a race's spec has no name: members are named by the "
                                        "race, or by their own `name`")
    try:
        template = ModelSpec.model_validate({**base, "name": name})
    except ValidationError as exc:
        raise _field("spec", exc) from None
    members = request["members"]
    if not 1 <= len(members) <= max_members:
        raise InvalidInput("members", f"a race has 1 to {max_members} members "
                                      "(STREAMNORM_MAX_RACE_MEMBERS)")
    specs, taken, named = [], set(), []
    for i, member in enumerate(members):
        overrides = {k: v for k, v in member.items() if k != "name"}
        for key in SHARED:
            if key in overrides:
                raise InvalidInput(f"members[{i}].{key}", "members share task and inputs: set "
                                   f"{key} in the race's spec")
        try:
            spec = ModelSpec.model_validate({**base, **overrides, "name": name})
        except ValidationError as exc:
            raise _field(f"members[{i}]", exc) from None
        own = member.get("name")
        if own is None:
            own, k = f"{name}.{spec.norm.method}", 1
            while own in taken:
                k += 1
                own = f"{name}.{spec.norm.method}-{k}"
            if len(own) > 64:
                raise InvalidInput(f"members[{i}].name", f"the default name {own!r} is over 64 "
                                   "characters: name the member, or the race shorter")
        if own in taken:
            raise InvalidInput(f"members[{i}].name", f"{own!r} names two members")
        taken.add(own)
        specs.append(spec.model_copy(update={"name": own}))
        named.append((own, spec.norm.method))
    metric = request.get("metric") or TASK_METRICS[template.task][0]
    if metric not in TASK_METRICS[template.task]:
        raise InvalidInput("metric", f"{metric!r} is not a metric of a {template.task} model: "
                                     f"one of {list(TASK_METRICS[template.task])}")
    min_updates, margin = int(request.get("min_updates", 100)), float(request.get("margin", 0.02))
    normal = {**request, "metric": metric, "min_updates": min_updates, "margin": margin}
    return RacePlan(name, tuple(named), metric, min_updates, margin, normal), specs


def rolling(standing: Standing | None, metric: str) -> float | None:
    """A member's rolling value of ``metric`` (``None``: gone, or nothing scored yet)."""
    if standing is None:
        return None
    value = ((json.loads(standing.metrics_json) or {}).get(metric) or {}).get("rolling")
    return float(value) if value is not None and math.isfinite(value) else None


def choose_leader(current: str, values: dict[str, tuple[int, float | None]], metric: str,
                  margin: float, min_updates: int) -> str:
    """The leader after this look at ``values`` (member → (updates, rolling metric), in member
    order; a member gone is absent): the best member with ``min_updates`` updates, but the
    current leader stays unless the best beats it by ``margin``, relative to its error (its
    ``MAE``, ``RMSE``, ``LogLoss``, or 1 − its ``Accuracy``: a leader at 99 % accuracy is beaten
    by 100 %); ``""`` while no member is ready.

    >>> choose_leader("a", {"a": (200, 1.00), "b": (200, 0.99)}, "MAE", 0.02, 100)
    'a'
    >>> choose_leader("a", {"a": (200, 1.00), "b": (200, 0.97)}, "MAE", 0.02, 100)
    'b'
    >>> choose_leader("", {"a": (50, 0.5), "b": (200, 0.9)}, "MAE", 0.02, 100)
    'b'
    """
    def error(value: float) -> float:
        return value if metric in LOWER_IS_BETTER else 1.0 - value

    ready = {m: error(v) for m, (n, v) in values.items() if n >= min_updates and v is not None}
    if not ready:
        return current if current in values else ""
    best = min(ready, key=ready.__getitem__)  # the first on ties
    if current not in ready or best == current:
        return best
    return best if ready[best] < ready[current] * (1 - margin) else current


@dataclass(frozen=True)
class RaceLearned:
    """A race learn: each member's outcome, the leader after it, and the prediction the
    member that led before it made (what ``predict`` would have answered)."""

    results: dict[str, Written]
    leader: str
    serving: str  # the member that led (or served, while none led) when the event came
    prediction: Written | None


class Races:
    """The race verbs, over the engine's models (``Engine.races``)."""

    def __init__(self, engine: Models, store: RaceStore) -> None:
        self.engine, self.store = engine, store
        self._plans: dict[str, RacePlan] = {}  # definition JSON → plan (immutable)

    # -- definitions ---------------------------------------------------------------------------
    async def create(self, request: dict[str, Any]) -> bool:
        """Create the race and its members: ``True``; ``False`` when the very same race exists
        (a retried create, answered as it is). Nothing is stored unless every member is valid
        and free; a member name taken meanwhile undoes what this call made."""
        race, specs = plan(request, self.engine.settings.max_race_members)
        for i, spec in enumerate(specs):
            try:
                self.engine.host.budget.check_spec(spec)
            except InvalidInput as exc:
                raise InvalidInput(f"members[{i}].{exc.field}", exc.message) from None
        existing = await self.store.get(race.name)
        if existing is None:
            for i, spec in enumerate(specs):
                if await self.engine.store.head(spec.name) is not None:
                    raise Conflict(f"a model named {spec.name!r} exists", f"members[{i}].name")
            if await self.store.claim(race.name, race.to_json()):
                try:
                    await self._create_members(specs)
                except BaseException:
                    await self.store.delete(race.name)
                    raise
                return True
            existing = await self.store.get(race.name)
        if existing is not None and RacePlan.from_json(existing[0]).request != race.request:
            raise Conflict(f"a race named {race.name!r} exists with another definition", "name")
        return False

    async def _create_members(self, specs: list[ModelSpec]) -> None:
        """Create every member, or none: one whose name was taken since the check (by any
        model) undoes the ones this call made."""
        made: list[str] = []
        try:
            for i, spec in enumerate(specs):
                try:
                    if not await self.engine.create(spec):
                        raise Conflict(f"a model named {spec.name!r} exists", "name")
                except Conflict as exc:
                    raise Conflict(exc.detail, f"members[{i}].name") from None
                made.append(spec.name)
        except BaseException:
            for name in made:
                await self._forget(name)
            raise

    async def _forget(self, member: str) -> None:
        with contextlib.suppress(UnknownModel):
            await self.engine.delete(member)

    async def definition(self, name: str) -> tuple[RacePlan, str]:
        """The race's plan and its leader (``""``: none yet); ``UnknownRace`` if none."""
        found = await self.store.get(name)
        if found is None:
            raise UnknownRace(name)
        raw, leader = found
        race = self._plans.get(raw)
        if race is None:
            if len(self._plans) > 1000:
                self._plans.clear()
            race = self._plans[raw] = RacePlan.from_json(raw)
        return race, leader

    async def delete(self, name: str) -> None:
        """Delete the members, then the race (a crash between leaves a race to delete again)."""
        race, _ = await self.definition(name)
        for member in race.names:
            await self._forget(member)
        await self.store.delete(name)

    async def names(self) -> list[str]:
        return await self.store.names()

    async def describe(self, name: str) -> dict[str, Any]:
        """The race with its members as stored, in the race's order (the order of its live
        feed's cursor), each with its ``rank`` by the rolling metric (1 = best)."""
        race, leader = await self.definition(name)
        standings = await self.store.standings(race.names)
        values = {m: rolling(s, race.metric) for m, s in zip(race.names, standings,
                                                              strict=True)}
        lower = race.metric in LOWER_IS_BETTER
        order = sorted(race.names, key=lambda m: (values[m] is None, (values[m] or 0.0)
                                                   * (1 if lower else -1)))
        members = []
        for (member, norm), standing in zip(race.members, standings, strict=True):
            members.append({
                "name": member, "norm": norm, "rank": order.index(member) + 1,
                "version": standing.version if standing else None,
                "updates": standing.updates if standing else None,
                "rolling": values[member],
                "metrics": json.loads(standing.metrics_json) if standing else None})
        return {"name": race.name, "metric": race.metric, "leader": leader or None,
                "min_updates": race.min_updates, "margin": race.margin,
                "spec": race.request["spec"], "members": members}

    # -- events --------------------------------------------------------------------------------
    async def fan_out(self, race: RacePlan, payload: dict[str, Any]
                      ) -> dict[str, Event | Exception]:
        """The event for each member: validated once, for the first member there is
        (``InvalidInput`` for all; ``Engine.prepare``, so a member re-created elsewhere is
        seen), priced for each member's spec, with the member-scoped id
        ``{event_id}@{member}``; a member gone gets ``UnknownModel``, and ``UnknownModel`` is
        raised when every member is gone."""
        engine = self.engine
        first: Event | None = None
        out: dict[str, Event | Exception] = {}
        event_id = payload.get("event_id")
        for member in race.names:
            try:
                if first is None:
                    checked = (await engine.prepare(member, [payload]))[0]
                    if isinstance(checked, Exception):
                        raise checked  # invalid for one: invalid for every member
                    first = checked
                    spec = checked.spec or await engine.spec_of(member)
                else:
                    spec = await engine.spec_of(member)
                cost_ms = engine.host.budget.request_ms(spec, first.body, train=True)
                # a label keeps its own id (its prediction's: the same in every member, and
                # on every delivery, whatever event_id it came with)
                scoped = first.event_id if first.kind == "label" else \
                    f"{event_id}@{member}" if event_id else None
                out[member] = Event(first.body, scoped, body_json=first.body_json,
                                    digest=first.digest).priced(spec, cost_ms)
            except UnknownModel as exc:
                out[member] = exc
            except InvalidInput as exc:
                if first is None:
                    raise
                out[member] = exc
        if first is None:
            raise UnknownModel(race.names[0], "name")
        return out

    async def learn(self, name: str, payload: dict[str, Any]) -> RaceLearned:
        """Apply one event to every member (concurrently: one's commit overlaps another's
        compute), then look at the leader."""
        race, leader = await self.definition(name)
        events = await self.fan_out(race, payload)
        results = await asyncio.gather(*(self._learn_one(m, e) for m, e in events.items()))
        outcomes = dict(zip(events, results, strict=True))
        serving = leader or race.names[0]
        return RaceLearned(outcomes, await self.elect(race, leader), serving,
                           outcomes.get(serving))

    async def _learn_one(self, member: str, event: Event | Exception) -> Written:
        if isinstance(event, Exception):
            return event
        try:
            return (await self.engine.learn(member, [event]))[0]
        except Exception as exc:  # one member's failure is its own
            return exc

    async def elect(self, race: RacePlan, leader: str) -> str:
        """Move the leader if a member now beats it by the margin (compare-and-set)."""
        standings = await self.store.standings(race.names)
        values = {m: (s.updates, rolling(s, race.metric))
                  for m, s in zip(race.names, standings, strict=True) if s is not None}
        chosen = choose_leader(leader, values, race.metric, race.margin, race.min_updates)
        if chosen != leader and not await self.store.move_leader(race.name, leader, chosen):
            return (await self.definition(race.name))[1]
        return chosen

    async def predict(self, name: str, payload: dict[str, Any]
                      ) -> tuple[str, tuple[float | int, dict[int, float] | None, int]]:
        """The leader's prediction (while none leads, the first member's that is there), and
        who made it."""
        race, leader = await self.definition(name)
        candidates = [leader] if leader else race.names
        for member in candidates[:-1]:
            with contextlib.suppress(UnknownModel):
                return member, await self.engine.predict(member, payload)
        return candidates[-1], await self.engine.predict(candidates[-1], payload)

    async def keep(self, name: str, payload: dict[str, Any]) -> RaceKept:
        """Keep the prediction for a delayed label in every member (one id for all, so one
        label trains each): the serving member's prediction, that member, the id, and the
        members that could not keep it (their labels will answer 404)."""
        race, leader = await self.definition(name)
        pid = payload.get("prediction_id") or uuid.uuid4().hex
        body = {**payload, "prediction_id": pid}
        results = await asyncio.gather(*(self.engine.keep(m, body) for m in race.names),
                                       return_exceptions=True)
        kept = {m: r[0] for m, r in zip(race.names, results, strict=True)
                if not isinstance(r, BaseException)}
        failed = {m: r for m, r in zip(race.names, results, strict=True)
                  if isinstance(r, Exception)}
        for member in ([leader] if leader else []) + race.names:  # who serves, or who can
            if member in kept:
                return RaceKept(member, kept[member], pid, failed)
        error = results[0]
        assert isinstance(error, BaseException)
        raise error

    async def live(self, name: str, cursor: list[int] | None
                   ) -> AsyncIterator[tuple[str, dict[str, Any], list[int]] | None]:
        """Follow every member's curve: ``(member, point, cursor)`` per new point, where the
        cursor (each member's last version, in member order) resumes the feed; ``None`` as a
        keep-alive. Ends when the race is deleted."""
        race, _ = await self.definition(name)
        if cursor is not None and len(cursor) != len(race.members):
            raise InvalidInput("last-event-id", f"a race cursor lists {len(race.members)} "
                                                "versions, one per member")
        if cursor is None:
            tails = [await self.engine.store.curve_tail(m) for m in race.names]
            cursor = [t or 0 for t in tails]
        start = dict(zip(race.names, cursor, strict=True))

        async def alive() -> bool:
            return await self.store.get(name) is not None

        return self._with_cursor(race.names, self.engine.follow(start, alive), cursor)

    @staticmethod
    async def _with_cursor(names: list[str], points: AsyncIterator[Any], cursor: list[int]
                           ) -> AsyncIterator[tuple[str, dict[str, Any], list[int]] | None]:
        cursor = list(cursor)
        async for item in points:
            if item is None:
                yield None
                continue
            member, point = item
            cursor[names.index(member)] = int(point["version"])
            yield member, point, list(cursor)
