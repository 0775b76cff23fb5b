"""The stream contexts of a cached model: which streams it keeps, when each last moved, and what
the next snapshot writes — bounded in number and in idle time.

A model serves any number of streams, each with a recurrent context (``models.learner``). Left
alone they grow without bound and every snapshot re-serialized all of them, so:
- **A cap** (``STREAMNORM_MAX_STREAMS``): an event for a new stream beyond it drops the least
  recently moved streams' contexts.
- **An idle expiry** (``STREAMNORM_STREAM_TTL_S``): a stream with no event for that long has its
  context dropped; it restarts from a zero state (a prediction for it already uses none).
- **Snapshots write only what moved**: each context has its own key (``sn:{name}:ctx:{stream}``)
  and the index ``sn:{name}:streams`` (stream → when it last moved) names them; the state
  blob holds none, so its size and the cost of a snapshot do not depend on how many exist.
Which contexts an event drops is decided once, by the process that applies it, and written into
the logged event (``"t"``, when it was applied, and ``"drop"``), so a replay drops exactly the
same ones whatever its clock or settings: the learners stay equal bit for bit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from models import OnlineLearner
from models.persist import context_to_bytes

from ..redis.store import ContextWrites

__all__ = ["MAX_DROPS", "ContextBook", "ContextWrites"]

MAX_DROPS = 100  # contexts one event drops at most (the rest go with the following events)


@dataclass
class ContextBook:
    """When each stream of a learner last moved (least recent first), and what changed since
    the last snapshot."""

    last: OrderedDict[str, float] = field(default_factory=OrderedDict)
    moved: set[str] = field(default_factory=set)  # contexts the next snapshot writes
    dropped: set[str] = field(default_factory=set)  # contexts the next snapshot deletes

    @classmethod
    def loaded(cls, times: Iterable[tuple[str, float]], moved: Iterable[str] = ()
               ) -> ContextBook:
        """A book from the index (``times`` least recent first)."""
        return cls(OrderedDict(times), set(moved))

    def expired(self, stream: str, now: float, ttl: float) -> bool:
        return stream in self.last and self.last[stream] < now - ttl

    def to_drop(self, stream: str, now: float, ttl: float, cap: int) -> list[str]:
        """The contexts to drop before an event for ``stream`` at ``now``: ``stream``'s own if
        it expired, then others idle past ``ttl``, then the least recently moved beyond
        ``cap`` (at most ``MAX_DROPS`` but for ``stream``'s own)."""
        out = [stream] if self.expired(stream, now, ttl) else []
        for other, t in self.last.items():
            if len(out) >= MAX_DROPS or t >= now - ttl:
                break
            if other != stream:
                out.append(other)
        live = len(self.last) - len(out) + (stream not in self.last or stream in out)
        if live > cap:
            gone = set(out)
            for other in self.last:
                if live <= cap or len(out) >= MAX_DROPS:
                    break
                if other != stream and other not in gone:
                    out.append(other)
                    live -= 1
        return out

    def applied(self, stream: str | None, t: float, drop: Iterable[str]) -> None:
        """Record an applied event: ``drop`` went, ``stream`` (if any) moved at ``t``."""
        for gone in drop:
            self.last.pop(gone, None)
            self.moved.discard(gone)
            self.dropped.add(gone)
        if stream is not None:
            self.last[stream] = t
            self.last.move_to_end(stream)
            self.moved.add(stream)
            self.dropped.discard(stream)

    def take(self, learner: OnlineLearner) -> ContextWrites:
        """What the next snapshot writes, as bytes; the book is cleared (``restore`` puts it
        back if the snapshot fails)."""
        put = {s: context_to_bytes(learner, s) for s in self.moved if s in learner.contexts}
        writes = ContextWrites(put, {s: self.last.get(s, 0.0) for s in put}, set(self.dropped))
        self.moved.clear()
        self.dropped.clear()
        return writes

    def restore(self, writes: ContextWrites) -> None:
        """A snapshot carrying ``writes`` failed: the next one writes them again (unless they
        changed meanwhile)."""
        self.moved.update(s for s in writes.put if s in self.last)
        self.dropped.update(s for s in writes.drop if s not in self.last)
