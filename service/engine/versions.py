"""Snapshots as versions to return to (design.md, "Versions, rollback, fork").

Every snapshot a replica writes can also keep the whole learner, stream contexts included, as a
**retained version** (the newest ``STREAMNORM_KEEP_SNAPSHOTS``): what ``GET
/models/{name}/versions`` lists, a rollback restores and a fork starts from. A rollback is an
event like any other — ordered, logged as ``{"rollback": v}``, applied once (``event_id``) —
whose application replaces the learner by the retained one and carries a snapshot, so a
process catching up replays it by loading the same bytes (or the snapshot written with it).
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

from models import InvalidInput, ModelSpec, OnlineLearner

from ..redis.store import ContextWrites, Retained
from .contexts import ContextBook

__all__ = ["Snapshot", "guard_target", "public", "restore", "retained_of", "rolling_loss"]


class Snapshot(NamedTuple):
    """What a snapshot writes: the state without contexts, the contexts that moved, and the
    retained version (``None``: not kept)."""

    state: bytes
    contexts: ContextWrites
    retained: Retained | None


def retained_of(full: bytes, learner: OnlineLearner, book: ContextBook, version: int
                ) -> Retained:
    """The learner at ``version`` (``full``: its ``to_bytes()``) as a version to return to,
    with when each stream last moved, so a restore keeps their idle expiry."""
    now = time.time()
    meta = {"version": version, "time": round(now, 3), "metrics": learner.metrics.report(),
            "updates": learner.updates,
            "times": {s: book.last.get(s, now) for s in learner.streams}}
    return Retained(full, json.dumps(meta, separators=(",", ":")))


def public(meta_json: str) -> dict[str, Any]:
    """A retained version as ``GET /models/{name}/versions`` shows it."""
    meta = json.loads(meta_json)
    return {k: meta[k] for k in ("version", "time", "metrics", "updates")}


def restore(retained: Retained, spec: ModelSpec, book: ContextBook
            ) -> tuple[OnlineLearner, ContextBook]:
    """The learner of a retained version and the book of its contexts: every restored context
    is written by the next snapshot and every other stream the book knows is dropped, so the
    snapshot carrying the rollback holds exactly the version's contexts."""
    learner = OnlineLearner.from_bytes(retained.full)
    if learner.spec != spec:
        raise InvalidInput("version", "that version was written for another spec of this name")
    times = json.loads(retained.meta).get("times", {})
    now = time.time()
    order = sorted(learner.streams, key=lambda s: (times.get(s, now), s))
    restored = ContextBook.loaded(((s, float(times.get(s, now))) for s in order), order)
    # every context the next snapshot would find in Redis: those of the book, and those it
    # dropped since the last snapshot (their keys are still there)
    restored.dropped = (set(book.last) | book.dropped) - set(learner.contexts)
    return learner, restored


def rolling_loss(metrics: dict[str, Any]) -> tuple[float | None, int]:
    """The rolling loss-like metric of a metrics report (``MAE``, or ``LogLoss`` for
    classifiers: lower is better) and how many predictions it has scored."""
    name = "MAE" if "MAE" in metrics else "LogLoss"
    return metrics[name]["rolling"], int(metrics["n"])


def guard_target(metas: list[str], min_samples: int) -> tuple[int, float | None] | None:
    """Where a guard rolls back to: the retained version with the best rolling loss among
    those with ``min_samples`` scored predictions, else the newest (``metas`` newest first);
    ``(version, its rolling loss)``, or ``None`` when nothing is retained."""
    best: tuple[int, float] | None = None
    for meta in map(json.loads, metas):
        loss, n = rolling_loss(meta["metrics"])
        if loss is not None and n >= min_samples and (best is None or loss < best[1]):
            best = (int(meta["version"]), loss)
    if best is not None:
        return best
    return (int(json.loads(metas[0])["version"]), None) if metas else None
