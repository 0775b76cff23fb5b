"""The cost budget: what one model may hold and one request may compute, checked where they enter.

Estimates come from the spec and the request's shape (``models.cost``), before anything is
allocated or validated element by element: a spec whose state or whose stream update is over the
limits is refused at creation, and a sequence or mini-batch request over them is refused before
its values are read. Each refusal is ``InvalidInput`` (a 422, or a dead letter on the stream)
naming the field to change.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

from models import InvalidInput, ModelSpec, cost

from ..settings import Settings

__all__ = ["Budget", "estimate_ms", "replay_ms"]


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


class Budget:
    """The limits of ``settings`` applied to specs and requests."""

    def __init__(self, settings: Settings) -> None:
        self.max_state_bytes = settings.max_state_bytes
        self.max_steps = settings.max_steps
        self.max_ms = settings.max_update_ms
        self.max_streams = settings.max_streams
        self.max_context_bytes = settings.max_context_bytes
        # what a spec's stream-mode requests cost and how many contexts it keeps, per spec
        # object (held, so its id is not reused): the hot path, where hashing a spec for the
        # estimate's cache costs ~5 %
        self._stream: dict[int, _PerSpec] = {}

    def check_spec(self, spec: ModelSpec) -> None:
        """Refuse a spec whose state, window or stream update is over the limits."""
        size = max(("n_features", spec.input_size), ("hidden_size", spec.hidden_size),
                   key=lambda kv: kv[1])[0]  # the wider of the two drives the weights
        state = cost.state_bytes(spec)
        if state > self.max_state_bytes:
            raise InvalidInput(size, f"the model's state would take ~{_mb(state)}, over the "
                                     f"{_mb(self.max_state_bytes)} limit "
                                     "(STREAMNORM_MAX_STATE_BYTES): lower hidden_size, "
                                     "num_layers or n_features")
        if spec.window > self.max_steps:
            raise InvalidInput("window", f"{spec.window} steps is over the limit of "
                                         f"{self.max_steps} (STREAMNORM_MAX_STEPS)")
        context = cost.context_bytes(spec)
        if context > self.max_context_bytes:
            raise InvalidInput("window", f"one stream's context would take ~{_mb(context)}, "
                                         f"over the {_mb(self.max_context_bytes)} all of a "
                                         "model's contexts may take "
                                         "(STREAMNORM_MAX_CONTEXT_BYTES): lower window or "
                                         "n_features")
        fixed, steps, madds = cost.update_terms(spec, [(spec.window, 1)])
        ms = fixed + steps + madds
        if ms > self.max_ms:  # name what drives it: the step overhead, or the weights
            field = size if madds > steps else "num_layers" if spec.num_layers > 1 else "window"
            raise InvalidInput(field, f"one update of this model is estimated at {ms:,.0f} ms, "
                                      f"over the {self.max_ms:,.0f} ms limit "
                                      "(STREAMNORM_MAX_UPDATE_MS): lower window, hidden_size, "
                                      "num_layers or n_features")

    def request_ms(self, spec: ModelSpec, payload: dict[str, Any], train: bool) -> float:
        """The estimated ms of a learn (``train``) or predict payload, refused when its
        sequences are too long or its cost over the limit. Stream-mode requests were bounded
        when the model was created; a payload of the wrong shape is left for validation."""
        if payload.get("sequence") is None and (not train or payload.get("batch") is None):
            return self._stream_ms(spec, train)
        groups, field = _groups(spec, payload, train)
        for n, _ in groups:
            if field and n > self.max_steps:
                raise InvalidInput(_longest(payload, field, n),
                                   f"{n} steps is over the limit of {self.max_steps} "
                                   "(STREAMNORM_MAX_STEPS)")
        ms = estimate_ms(spec, groups, train)
        if ms > self.max_ms and field:
            raise InvalidInput(field, f"this request is estimated at {ms:,.0f} ms of compute, "
                                      f"over the {self.max_ms:,.0f} ms limit "
                                      "(STREAMNORM_MAX_UPDATE_MS): send fewer or shorter "
                                      "sequences")
        return ms

    def streams(self, spec: ModelSpec) -> int:
        """The stream contexts a model keeps at most: ``STREAMNORM_MAX_STREAMS``, fewer when
        they would take more than ``STREAMNORM_MAX_CONTEXT_BYTES`` together."""
        return self._per_spec(spec).streams

    def _stream_ms(self, spec: ModelSpec, train: bool) -> float:
        known = self._per_spec(spec)
        return known.learn_ms if train else known.predict_ms

    def _per_spec(self, spec: ModelSpec) -> _PerSpec:
        known = self._stream.get(id(spec))
        if known is None or known.spec is not spec:
            if len(self._stream) >= 4096:
                self._stream.clear()
            groups = [(spec.window, 1)]
            cap = max(1, min(self.max_streams, self.max_context_bytes // cost.context_bytes(spec)))
            known = self._stream[id(spec)] = _PerSpec(spec, estimate_ms(spec, groups, True),
                                                      estimate_ms(spec, groups, False), cap)
        return known


class _PerSpec(NamedTuple):
    """What a spec's stream-mode requests cost (ms) and how many contexts it keeps."""

    spec: ModelSpec
    learn_ms: float
    predict_ms: float
    streams: int


def replay_ms(spec: ModelSpec, body: dict[str, Any]) -> float:
    """The estimated ms of a logged event (never refused: it was accepted once)."""
    return estimate_ms(spec, _groups(spec, body, True)[0], True)


def estimate_ms(spec: ModelSpec, groups: list[tuple[int, int]], train: bool) -> float:
    return cost.update_ms(spec, groups) if train else cost.predict_ms(spec, groups[0][0])


def _groups(spec: ModelSpec, payload: dict[str, Any], train: bool
            ) -> tuple[list[tuple[int, int]], str]:
    """``(steps, samples)`` groups of a payload (one per distinct sequence length) and the
    field they come from (``""``: the stream window)."""
    if isinstance(payload.get("steps"), int):  # a logged label: its kept window's length
        return [(payload["steps"], 1)], ""
    seq, batch = payload.get("sequence"), payload.get("batch") if train else None
    if isinstance(batch, list):
        lengths = [len(s["sequence"]) for s in batch
                   if isinstance(s, dict) and isinstance(s.get("sequence"), list)]
        return list(Counter(lengths).items()), "batch"
    if isinstance(seq, list):
        return [(len(seq), 1)], "sequence"
    return [(spec.window, 1)], ""


def _longest(payload: dict[str, Any], field: str, n: int) -> str:
    """The field of the (first) sequence of ``n`` steps."""
    if field == "batch":
        for i, s in enumerate(payload["batch"]):
            if isinstance(s, dict) and isinstance(s.get("sequence"), list) \
                    and len(s["sequence"]) == n:
                return f"batch[{i}].sequence"
    return field
