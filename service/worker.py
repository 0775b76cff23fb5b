"""``streamnorm worker``: applies the events of the stream partitions it holds.

Each worker heartbeats into ``sn:workers`` and holds at most its share of the partitions
(⌈partitions / live workers⌉): it takes free ones, renews its leases every heartbeat, and lets go
of extras when workers join. A partition whose holder died is free once its lease expires
(``STREAMNORM_PARTITION_LEASE_MS``, the idle timeout after which a dead consumer's entries are
taken): its new holder first claims every pending entry (``XAUTOCLAIM``), applies its own pending
entries, and only then reads new ones, so a model's events keep their order.

An entry names a ``model`` or a ``race`` (an event for each member, with the member-scoped id
``{event_id}@{member}``; settled when every member's is; dead-lettered naming the members that
cannot take it). A batch of entries is applied per model, in entry order, through
``Engine.learn`` — the same call as HTTP ``learn``, with the entries validated here, where
they enter; an event without an ``event_id`` gets one derived from its entry
(``Streams.event_id``), so a redelivered entry is never applied twice. An entry is acknowledged
(and deleted) only after its update is committed. One that cannot apply (bad JSON, unknown
model, invalid input, NaN) goes to the partition's dead-letter stream with its error, and is
acknowledged; a transient failure (Redis, a busy lease) leaves the entries pending and retries
them first. SIGTERM finishes the batch in hand, stops reading and hands the leases back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import secrets
import socket
import time
from collections import deque
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from models import InvalidInput

from . import telemetry as m
from .api.schemas import MODEL_NAME_PATTERN, LearnRequest
from .engine import (
    Busy,
    Engine,
    EngineError,
    Event,
    LearnOutcome,
    Unavailable,
    UnknownModel,
    UnknownRace,
)
from .engine.event import is_canonical
from .engine.race import RacePlan
from .redis.connect import AnyRedis
from .redis.store import LeaseLost, Store
from .redis.streams import Entry, Streams, partition_of
from .settings import Settings

__all__ = ["Worker"]

log = logging.getLogger("streamnorm.worker")
_NAME = re.compile(MODEL_NAME_PATTERN)
_IDLE_MIN_S, _IDLE_MAX_S = 0.005, 0.1  # polling an empty partition: first and longest pause


class Worker:
    """One consumer of the ``streamnorm`` group; ``run`` until ``stop``."""

    def __init__(self, settings: Settings, redis: AnyRedis, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.token = f"{self.name}:{secrets.token_hex(8)}"
        self.streams = Streams(redis, settings.partitions)
        self.engine = Engine(Store.configured(redis, settings), self.streams, settings)
        self.stopping = asyncio.Event()
        self.held: dict[int, asyncio.Task[None]] = {}
        self.releasing: set[int] = set()  # partitions to hand back after the batch in hand
        self._applied: deque[tuple[float, int]] = deque()
        # (partition, entry id) of a race's pending entry → its members that can never apply it
        self._failed: dict[tuple[int, str], dict[str, str]] = {}

    def stop(self) -> None:
        """Finish the batches in hand, then return from ``run``."""
        self.stopping.set()

    async def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    await self._balance()
                except Exception as exc:  # Redis away: keep the partitions' tasks retrying
                    log.warning("heartbeat failed: %r", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.settings.heartbeat_s)
        finally:
            self.stopping.set()
            if self.held:
                await asyncio.wait(list(self.held.values()))
            await self.engine.close()
            try:
                await self.streams.leave(self.name)
            except Exception as exc:
                log.warning("could not leave the worker set: %r", exc)

    # -- partitions ----------------------------------------------------------------------------
    async def _balance(self) -> None:
        """Heartbeat, renew held partitions, hand back extras, take free ones up to a share."""
        alive = await self.streams.heartbeat(self.name, int(3000 * self.settings.heartbeat_s))
        share = math.ceil(self.settings.partitions / alive)
        lease_ms = self.settings.partition_lease_ms
        for p, task in list(self.held.items()):
            if task.done():
                del self.held[p]
                self.releasing.discard(p)
            elif not await self.streams.hold(p, self.token, lease_ms):
                log.warning("lost partition %d", p)
                self.releasing.add(p)  # its task stops after the batch in hand
        kept = [p for p in sorted(self.held) if p not in self.releasing]
        for p in kept[share:]:
            self.releasing.add(p)
        if len(kept) >= share:
            return
        start = int.from_bytes(self.token.encode()[-4:], "big") % self.settings.partitions
        for k in range(self.settings.partitions):
            p = (start + k) % self.settings.partitions
            if p in self.held:
                continue
            if await self.streams.hold(p, self.token, lease_ms):
                self.held[p] = asyncio.create_task(self._consume(p))
                kept.append(p)
                if len(kept) >= share:
                    return

    def _keeps(self, p: int) -> bool:
        return not self.stopping.is_set() and p not in self.releasing

    async def _consume(self, p: int) -> None:
        """Apply partition ``p``'s entries until told to stop or to hand it back."""
        after: str | None = "0"  # pending entries first (all of them claimed to us)
        pause, idle = 0.05, _IDLE_MIN_S
        try:
            while self._keeps(p):
                try:
                    if after == "0":
                        await self.streams.ensure_group(p)
                        await self.streams.claim_all(p, self.name)
                    entries = await self.streams.read(p, self.name, self.token, after,
                                                      self.settings.worker_batch,
                                                      self.settings.partition_lease_ms)
                    if entries is None:  # another worker holds the partition now
                        log.warning("partition %d: lease lost, stopping", p)
                        self.releasing.add(p)
                        break
                    if not entries:
                        if after is None:  # idle: poll again soon (reads cannot block)
                            await asyncio.sleep(idle)
                            idle = min(idle * 2, _IDLE_MAX_S)
                        after = None  # pending done: read new entries
                        continue
                    idle = _IDLE_MIN_S
                    clean = await self._apply(p, entries)
                except Exception as exc:  # Redis away, a lease busy: retry from the pending
                    log.warning("partition %d: %r", p, exc)
                    clean = False
                if clean:
                    pause = 0.05
                    if after is not None:
                        after = entries[-1].id
                else:
                    after = "0"
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 2.0)
        finally:
            for key in [k for k in self._failed if k[0] == p]:
                del self._failed[key]
            mine = [m for m in self.engine.cached()
                    if partition_of(m, self.settings.partitions) == p]
            await self.engine.checkpoint(mine)  # the next holder loads them, replays nothing
            try:
                await self.streams.let_go(p, self.token)
            except Exception as exc:  # it expires
                log.warning("could not hand back partition %d: %r", p, exc)

    # -- events --------------------------------------------------------------------------------
    async def _apply(self, p: int, entries: list[Entry]) -> bool:
        """Apply a batch per model in entry order; acknowledge what is settled. Whether
        every entry was settled (applied, a repeat, or dead-lettered). A race's entry is an
        event for each member: settled when every member's is."""
        jobs: dict[str, list[tuple[Entry, Event | Exception]]] = {}
        dead: list[tuple[Entry, str]] = []
        races: dict[str, RacePlan] = {}
        outcomes: dict[str, list[str]] = {}  # entry id → its failures ("" = not settled)
        for entry, parsed in zip(entries, await self._prepared(p, entries), strict=True):
            if isinstance(parsed, str):
                dead.append((entry, parsed))
                continue
            race, events = parsed
            outcomes[entry.id] = []
            if race is not None:  # members settled by an earlier try, or deleted alone, are done
                races[race.name] = race
                settled = self._failed.setdefault((p, entry.id), {})
                events = {m: e for m, e in events.items()
                          if m not in settled and not isinstance(e, UnknownModel)}
            for model, event in events.items():
                jobs.setdefault(model, []).append((entry, event))
        results = await asyncio.gather(*(
            self.engine.learn(model, [event for _, event in items])
            for model, items in jobs.items()), return_exceptions=True)
        clean, applied = True, 0
        for (model, items), res in zip(jobs.items(), results, strict=True):
            if isinstance(res, BaseException):
                if _transient(res):  # the whole group stays pending, retried first
                    log.warning("model %s: %r (will retry)", model, res)
                    clean = False
                    for entry, _ in items:
                        outcomes[entry.id].append("")
                else:  # e.g. an unreadable stored state: retrying would block the partition
                    log.error("model %s: %r (dead-lettered)", model, res)
                    for entry, _ in items:
                        self._fail(p, entry, model, f"{type(res).__name__}: {res}", outcomes)
                continue
            waiting = False  # the rest of this model's entries wait behind an unsettled one
            for (entry, _), outcome in zip(items, res, strict=True):
                if waiting or not (isinstance(outcome, LearnOutcome) or _permanent(outcome)):
                    waiting, clean = True, False
                    outcomes[entry.id].append("")
                elif isinstance(outcome, LearnOutcome):
                    applied += outcome.applied
                else:
                    self._fail(p, entry, model, _describe(outcome), outcomes)
        acked: list[str] = []
        for entry in entries:
            failures = outcomes.get(entry.id)
            if failures is None or "" in failures:
                continue  # dead already, or not settled: pending, retried first
            earlier = self._failed.pop((p, entry.id), None)
            why = [f"{m}: {w}" for m, w in earlier.items()] if earlier is not None else failures
            if why:
                dead.append((entry, "; ".join(why)))
            else:
                acked.append(entry.id)
        dead.sort(key=lambda d: tuple(int(n) for n in d[0].id.split("-")))  # entry order
        await self.streams.done(p, acked, dead)
        for race in races.values():
            with contextlib.suppress(Exception):  # the next event's look will do
                await self.engine.races.elect(race, (await self.engine.races.definition(
                    race.name))[1])
        m.EVENTS.inc(applied)
        m.DEAD_LETTERED.inc(len(dead))
        self._rate(applied)
        return clean

    def _fail(self, p: int, entry: Entry, model: str, why: str,
              outcomes: dict[str, list[str]]) -> None:
        """Record that ``model`` can never apply ``entry``: a race's entry remembers it, so a
        retry of the entry (pending for another member) does not run it again, out of order."""
        settled = self._failed.get((p, entry.id))
        if settled is not None:
            settled[model] = why
        else:
            outcomes[entry.id].append(f"{model}: {why}")

    async def _prepared(self, p: int, entries: list[Entry]
                        ) -> list[str | tuple[RacePlan | None, dict[str, Event | Exception]]]:
        """Each entry's events by model (a race's: one per member), validated where they
        entered (``POST /events`` marks the entries it validated); a string: why the entry
        can never apply. A model's entries are validated together."""
        out: list[str | tuple[RacePlan | None, dict[str, Event | Exception]]] = []
        by_model: dict[str, list[tuple[int, dict[str, Any], str | None]]] = {}
        for entry in entries:
            try:
                kind, name, payload, valid_for = self._parse(p, entry)
                if kind == "race":
                    race, _ = await self.engine.races.definition(name)
                    out.append((race, await self.engine.races.fan_out(race, payload)))
                    continue
            except (ValueError, UnknownRace, UnknownModel) as exc:  # InvalidInput: a ValueError
                out.append(str(exc) if type(exc) is ValueError else _describe(exc))
                continue
            by_model.setdefault(name, []).append((len(out), payload, valid_for))
            out.append((None, {}))
        for model, items in by_model.items():
            try:
                events = await self.engine.prepare(model, [pl for _, pl, _ in items],
                                                   [vf for *_, vf in items])
            except UnknownModel as exc:
                events = [exc] * len(items)
            for (i, _, _), event in zip(items, events, strict=True):
                out[i] = (None, {model: event})
        return out

    def _parse(self, p: int, entry: Entry) -> tuple[str, str, dict[str, Any], str | None]:
        """The kind (``model`` or ``race``), name, learn payload and ``valid_for`` of an entry
        (ValueError: it can never apply). An entry ``POST /events`` appended is canonical and
        marked with the model incarnation it was validated for: taken as it is (when it has
        the canonical form)."""
        kind = "race" if "race" in entry.fields else "model"
        name = entry.fields.get(kind, "")
        if not _NAME.fullmatch(name):
            raise ValueError(f"{kind}: {name!r} is not a {kind} name")
        try:
            payload = json.loads(entry.fields.get("event", ""))
        except ValueError as exc:
            raise ValueError(f"event: invalid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ValueError("event: must be a JSON object (a learn body)")
        valid_for = entry.fields.get("valid_for")
        if valid_for is None or not is_canonical(payload):
            payload, valid_for = self._shaped(payload), None
        if not payload.get("event_id"):
            payload["event_id"] = self.streams.event_id(p, entry)
        return kind, name, payload, valid_for

    @staticmethod
    def _shaped(payload: dict[str, Any]) -> dict[str, Any]:
        """A producer's entry checked against the learn body's schema (its values are checked
        against the model's spec by ``Engine.prepare``)."""
        try:
            return LearnRequest.model_validate(payload).model_dump(exclude_unset=True,
                                                                     warnings=False)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"event.{where}: {first['msg']}") from None

    def _rate(self, applied: int) -> None:
        now = time.monotonic()
        self._applied.append((now, applied))
        while self._applied and self._applied[0][0] < now - 10:
            self._applied.popleft()
        span = max(now - self._applied[0][0], 1.0)
        m.EVENT_RATE.set(sum(n for _, n in self._applied) / span)


def _transient(exc: BaseException) -> bool:
    """A failure of the infrastructure (retrying helps), not of the events."""
    return isinstance(exc, RedisError | LeaseLost | OSError | TimeoutError | Busy | Unavailable)


def _permanent(exc: Exception) -> bool:
    """An error the event itself causes (retrying cannot help)."""
    return isinstance(exc, InvalidInput) or (
        isinstance(exc, EngineError) and not isinstance(exc, Busy | Unavailable))


def _describe(exc: Exception) -> str:
    """A dead letter's ``error``: the kind of error, what is wrong, the field."""
    field = getattr(exc, "field", None)
    detail = exc.detail if isinstance(exc, EngineError) else str(exc)
    return f"{type(exc).__name__}: {detail}" + (f" (field {field})" if field else "")
