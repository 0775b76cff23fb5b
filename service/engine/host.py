"""What the replicas of one process share: Redis, the limits, the compute thread, background
tasks, and the validation of a learn payload against a spec (with its estimated cost)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from models import ModelSpec, cost

from ..redis.store import Store
from ..settings import Settings
from .budget import Budget
from .compute import Compute
from .event import Event, canonical_event, canonical_keep

__all__ = ["Host", "bytes_ms"]


def bytes_ms(n: int) -> float:
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


@dataclass
class Host:
    """What the replicas of one process share: Redis, the limits, the compute thread."""

    store: Store
    settings: Settings
    compute: Compute
    budget: Budget
    dropped: Callable[[str, Any], None] = lambda name, replica: None  # the cache forgets it
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def lease_s(self) -> float:
        """How long a lease surely holds after it was taken or renewed (renewed well before
        Redis expires it)."""
        return 0.8 * self.settings.lease_ms / 1000

    async def prepare(self, spec: ModelSpec, payload: dict[str, Any]) -> Event:
        """A learn payload validated against ``spec`` and within the budget (a large one
        validated on the compute thread); ``InvalidInput`` names what is wrong."""
        cost_ms = self.budget.request_ms(spec, payload, train=True)
        event = await self.compute.run(_values_ms(spec, payload), canonical_event, spec, payload)
        return event.priced(spec, cost_ms)

    def keep(self, spec: ModelSpec, payload: dict[str, Any], prediction_id: str) -> Event:
        """A predict payload that keeps its prediction under ``prediction_id``, validated
        against ``spec`` and priced as the update its label will make."""
        cost_ms = self.budget.request_ms(spec, payload, train=True)
        return canonical_keep(spec, payload, prediction_id).priced(spec, cost_ms)

    async def again(self, spec: ModelSpec, event: Event) -> Event:
        """``event`` validated again for ``spec`` (the model was re-created meanwhile); a
        rollback does not depend on the spec."""
        if event.kind == "rollback":
            return event
        if event.kind == "keep":
            body = {k: v for k, v in event.body.items() if k != "keep"}
            return self.keep(spec, body, event.body["keep"])
        return await self.prepare(spec, event.payload())

    def admit(self, spec: ModelSpec, payload: dict[str, Any]) -> Event:
        """A payload ``prepare`` already made canonical for ``spec`` (from the event stream, as
        ``Engine.submit`` appended it), as an event again without validating it twice."""
        body = {k: v for k, v in payload.items() if k != "event_id"}
        event = Event(body, payload.get("event_id"))
        return event.priced(spec, self.budget.request_ms(spec, body, train=True))

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` without waiting for it (``Engine.close`` does)."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def state_ms(self, spec: ModelSpec) -> float:
        return bytes_ms(cost.state_bytes(spec))
