"""Learn events: validated against a model's spec into a canonical JSON form, and applied.

The canonical form is what the log stores: replaying it through ``apply_event`` makes the same
``learn_one`` / ``learn_many`` calls the original request made, so a replayed learner equals the
writer's bit for bit (JSON keeps every float exactly).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from models import InvalidInput, ModelSpec, OnlineLearner
from models.inputs import to_features, to_sequence, to_target

__all__ = ["Event", "LearnOutcome", "apply_event", "canonical_event", "canonical_keep",
           "is_canonical", "kept_id", "label_id", "predict", "predict_arguments"]

# the idempotency keys of keeps and labels: a space cannot occur in a client's event_id
# (``[!-~]``), so these never meet one
_KEEP, _LABEL = "keep ", "label "


def kept_id(prediction_id: str) -> str:
    """The event id of the keep of ``prediction_id`` (a second keep of it is a repeat)."""
    return _KEEP + prediction_id


def label_id(prediction_id: str) -> str:
    """The event id of the label of ``prediction_id`` (a second label is not applied)."""
    return _LABEL + prediction_id


@dataclass(frozen=True)
class Event:
    """A validated learn event in its canonical JSON form (what the log stores and replays).

    The body is encoded once, when the event is made (on the compute thread for a large one:
    encoding a 1 MB sequence with ``json`` held the GIL, and so the event loop, for ~40 ms;
    orjson takes ~4, with the same floats: both write the shortest repr that reads back
    exactly)."""

    body: dict[str, Any]
    event_id: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # set when applied: "t", "drop"
    body_json: bytes = b""  # the body encoded (made from ``body`` when not given)
    digest: str = ""  # identifies the content: a repeat of ``event_id`` must match it
    spec: ModelSpec | None = None  # the spec it was validated against
    cost_ms: float = 0.0  # its estimated compute (``Budget.request_ms``)

    def __post_init__(self) -> None:
        if not self.body_json:
            object.__setattr__(self, "body_json", orjson.dumps(self.body))
        if not self.digest:
            object.__setattr__(self, "digest", hashlib.blake2b(
                self.body_json, digest_size=12).hexdigest())

    @property
    def kind(self) -> str:
        """``learn`` (a sample, a sequence or a mini-batch), ``keep`` (a prediction kept for
        its label), ``label`` or ``rollback``."""
        return next((k for k in ("keep", "label", "rollback") if k in self.body), "learn")

    def noted(self, notes: dict[str, Any]) -> Event:
        """This event with the notes of its writer (the body's encoding and digest kept)."""
        return Event(self.body, self.event_id, notes, self.body_json, self.digest, self.spec,
                     self.cost_ms)

    def priced(self, spec: ModelSpec, cost_ms: float) -> Event:
        """This event as validated against ``spec``, estimated at ``cost_ms``."""
        return Event(self.body, self.event_id, self.notes, self.body_json, self.digest, spec,
                     cost_ms)

    def payload(self) -> dict[str, Any]:
        """The event as a learn payload (to validate it again against another spec)."""
        if self.kind == "label":
            return {"prediction_id": self.body["label"], "y": self.body["y"]}
        return {**self.body, **({"event_id": self.event_id} if self.event_id else {})}

    def with_kept(self, record: bytes, steps: int, cost_ms: float) -> Event:
        """A label event carrying its kept prediction's record and window length, as the log
        stores it (a replay needs nothing but the log entry; the record's key is gone once
        labelled), priced for that window."""
        body = {**self.body, "kept": base64.b64encode(record).decode(), "steps": steps}
        return Event(body, self.event_id, self.notes, b"", self.digest, self.spec, cost_ms)

    def to_json(self) -> str:
        """What the log stores and a replay applies: the body and the notes."""
        if not self.notes:
            return self.body_json.decode()
        return (self.body_json[:-1] + b"," + orjson.dumps(self.notes)[1:]).decode()


@dataclass(frozen=True)
class LearnOutcome:
    prediction: float | int | None
    loss: float | None
    version: int
    applied: bool
    proba: dict[int, float] | None = None
    kept: bytes | None = None  # a keep's record (``KeptPrediction.to_bytes``), to store


def _check_mode(payload: dict[str, Any], *, batch: bool) -> None:
    """Exactly one of ``x`` / ``sequence`` (/ ``batch`` for learns), and no ``stream`` with a
    sequence: the one check predict and learn share."""
    modes = ("x", "sequence", "batch") if batch else ("x", "sequence")
    if sum(payload.get(k) is not None for k in modes) != 1:
        raise InvalidInput("x", "give exactly one of x (with stream), sequence, or batch" if batch
                           else "give exactly one of x (with stream) or sequence")
    if payload.get("sequence") is not None and payload.get("stream") is not None:
        raise InvalidInput("stream", "sequence mode keeps no stream context; drop stream")


def predict_arguments(payload: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``predict_one`` for a predict payload (the values themselves
    are validated by the learner, against its spec)."""
    _check_mode(payload, batch=False)
    if payload.get("sequence") is not None:
        return {"sequence": payload["sequence"]}
    return {"x": payload["x"], "stream": payload.get("stream") or "default"}


def predict(learner: OnlineLearner, kwargs: dict[str, Any], *, forget: bool = False
            ) -> tuple[float | int, dict[int, float] | None]:
    """The prediction (and class probabilities) for ``predict_arguments``; ``forget``: from a
    zero context, as the next learn of an expired stream will be (nothing changes)."""
    saved = learner.contexts.pop(kwargs["stream"], None) if forget else None
    try:
        if learner.spec.task == "regression":
            return learner.predict_one(**kwargs), None
        proba = learner.predict_proba_one(**kwargs)
        return max(proba, key=proba.__getitem__), proba  # the first on ties
    finally:
        if saved is not None:
            learner.contexts[kwargs["stream"]] = saved


def canonical_keep(spec: ModelSpec, payload: dict[str, Any], prediction_id: str) -> Event:
    """Validate a predict payload that keeps its prediction under ``prediction_id``."""
    kwargs = predict_arguments(payload)
    body: dict[str, Any] = {"keep": prediction_id}
    if "sequence" in kwargs:
        body["sequence"] = to_sequence(kwargs["sequence"], spec).tolist()
    else:
        body.update(x=to_features(kwargs["x"], spec), stream=kwargs["stream"])
    return Event(body, kept_id(prediction_id))


def _label(spec: ModelSpec, payload: dict[str, Any]) -> Event:
    """A label for a kept prediction: its id names it, so a second label (whatever its ``y``)
    is a repeat, not applied again (an ``event_id`` beside it is not used: the
    ``prediction_id`` is the label's idempotency key)."""
    pid = payload["prediction_id"]
    if not isinstance(pid, str) or not 0 < len(pid) <= 128:
        raise InvalidInput("prediction_id", "must be a string of 1 to 128 characters")
    event_id = label_id(pid)
    return Event({"label": pid, "y": to_target(payload.get("y"), spec)}, event_id,
                 digest=hashlib.blake2b(event_id.encode(), digest_size=12).hexdigest())


def canonical_event(spec: ModelSpec, payload: dict[str, Any]) -> Event:
    """Validate a learn payload (or a label: ``prediction_id`` and ``y``) against ``spec``
    (InvalidInput names the field)."""
    if payload.get("keep"):
        raise InvalidInput("keep", "only predict keeps a prediction (learn trains at once)")
    if payload.get("prediction_id") is not None:
        if any(payload.get(k) is not None for k in ("x", "sequence", "batch", "stream")):
            raise InvalidInput("prediction_id", "a label carries prediction_id and y only "
                                                "(the kept prediction has its input)")
        return _label(spec, payload)
    _check_mode(payload, batch=True)
    stream, x, seq, batch = (payload.get(k) for k in ("stream", "x", "sequence", "batch"))
    event_id = payload.get("event_id")
    if batch is not None:
        if not isinstance(batch, list) or not batch or len(batch) > 1024:
            raise InvalidInput("batch", "must be a list of 1 to 1024 {sequence, y} samples")
        samples = []
        for i, item in enumerate(batch):
            if not isinstance(item, dict):
                raise InvalidInput(f"batch[{i}]", "must be an object with sequence and y")
            rows = to_sequence(item.get("sequence"), spec, f"batch[{i}].sequence").tolist()
            samples.append({"sequence": rows, "y": to_target(item.get("y"), spec,
                                                             f"batch[{i}].y")})
        return Event({"batch": samples}, event_id)
    y = to_target(payload.get("y"), spec)
    if seq is not None:
        return Event({"sequence": to_sequence(seq, spec).tolist(), "y": y}, event_id)
    return Event({"x": to_features(x, spec), "y": y, "stream": stream or "default"}, event_id)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _rows(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(r, list) and all(map(_number, r)) for r in v)


def is_canonical(payload: dict[str, Any]) -> bool:
    """Whether a payload has the form ``canonical_event`` gives an event (the keys of its mode
    and nothing else, numbers where numbers go): what an entry marked as validated must have
    before it is taken as it is (its values were checked against the spec when marked)."""
    event_id = payload.get("event_id")
    if event_id is not None and not (isinstance(event_id, str) and 0 < len(event_id) <= 128):
        return False
    keys = payload.keys() - {"event_id"}
    if keys == {"x", "y", "stream"}:
        return isinstance(payload["x"], list) and all(map(_number, payload["x"])) \
            and _number(payload["y"]) and isinstance(payload["stream"], str)
    if keys == {"sequence", "y"}:
        return _rows(payload["sequence"]) and _number(payload["y"])
    if keys == {"batch"}:
        batch = payload["batch"]
        return isinstance(batch, list) and all(
            isinstance(b, dict) and b.keys() == {"sequence", "y"} and _rows(b["sequence"])
            and _number(b["y"]) for b in batch)
    return False


def apply_event(learner: OnlineLearner, body: dict[str, Any]) -> LearnOutcome | None:
    """Run one canonical event on ``learner`` (the same call for a request and a replay): drop
    the contexts its notes name, then learn; a failed update leaves the contexts as they were."""
    dropped = {s: learner.contexts.pop(s) for s in body.get("drop", ())
               if s in learner.contexts}
    try:
        return _learn(learner, body)
    except BaseException:
        learner.contexts.update(dropped)
        raise


def _learn(learner: OnlineLearner, body: dict[str, Any]) -> LearnOutcome | None:
    if "label" in body:
        kept = learner.kept_from_bytes(base64.b64decode(body["kept"], validate=True))
        r = learner.learn_kept(kept, body["y"])
        return LearnOutcome(r.prediction, r.loss, 0, True, r.proba)
    if "keep" in body:
        if "sequence" in body:
            pred, proba, kept = learner.keep_one(sequence=body["sequence"])
        else:
            pred, proba, kept = learner.keep_one(body["x"], stream=body["stream"])
        return LearnOutcome(pred, None, 0, True, proba, kept.to_bytes())
    if "batch" in body:
        items = body["batch"]
        learner.learn_many([s["sequence"] for s in items], [s["y"] for s in items])
        return None
    if "sequence" in body:
        r = learner.learn_one(sequence=body["sequence"], y=body["y"])
    else:
        r = learner.learn_one(body["x"], body["y"], stream=body["stream"])
    return LearnOutcome(r.prediction, r.loss, 0, True, r.proba)
