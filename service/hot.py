"""A learner cached by one process, and the updates it has computed but not yet committed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from models import OnlineLearner

from .contexts import ContextBook, ContextWrites

__all__ = ["Hot", "Ticket"]


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
    snapshot: tuple[bytes, ContextWrites] | None  # state + context changes at ``version``
    done: asyncio.Future[int]


@dataclass
class Hot:
    """A learner cached by this process, the version it is at, and who may touch it."""

    learner: OnlineLearner
    uid: str
    version: int  # the learner's, including updates queued but not yet committed
    snapshot_version: int
    committed: int = -1  # the latest version this process knows to be in Redis
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    token: str | None = None  # the lease, while this process holds it
    dead: bool = False  # dropped from the cache (holds an uncommitted update): never use
    writers: int = 0  # learns of this process in progress on the model (they share the lease)
    learns: int = 0  # learns of this process started on the model so far
    lease_until: float = 0.0  # monotonic time before which the held lease surely holds
    lease_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    book: ContextBook = field(default_factory=ContextBook)  # its streams' contexts
    pending: list[Ticket] = field(default_factory=list)  # computed, not yet sent to Redis
    last: Ticket | None = None  # the newest ticket (a reply at ``version`` waits for it)
    ids: dict[str, Ticket] = field(default_factory=dict)  # event ids queued or in flight
    flusher: asyncio.Task[None] | None = None
    snapshot_queued: int = 0  # version of the latest snapshot queued with a ticket
    wanted: bool = False  # another process waits for the lease (the last commit said so)

    def __post_init__(self) -> None:
        if self.committed < 0:
            self.committed = self.version

    def uncommitted(self) -> bool:
        return self.version > self.committed

    def snapshot_state(self) -> bytes:
        """The learner as a snapshot stores it: without stream contexts (each has a key of its
        own, written when it moves: ``ContextBook.take``)."""
        return self.learner.to_bytes(contexts=False)

    def in_flight(self) -> Ticket | None:
        """The ticket a reply at ``version`` must wait for, or ``None`` when all is in Redis."""
        return self.last if self.uncommitted() else None
