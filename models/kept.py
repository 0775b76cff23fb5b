"""``KeptPrediction``: what a prediction needs kept so that its label, arriving later, trains
exactly the window the prediction saw (``OnlineLearner.keep_one`` / ``learn_kept``).

A record holds the window of inputs ``[T, I]``, the recurrent state it started from (``None``:
zero), the step whose state a training forward captures (as ``learn_one`` would have), and the
prediction's own output (logits, so the label scores the prediction that was served, not a new
one). It is stored as its own safetensors + JSON bytes (``to_bytes``; no pickle): the service
keeps it in Redis until the label comes or it expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .codec import StateError, load_packed, pack, read_header, unpack
from .spec import ModelSpec

__all__ = ["KEPT", "KeptPrediction"]

KEPT = "streamnorm.kept"
_SCHEMA = 1
_MAX_BYTES = 64 * 2**20


@dataclass(frozen=True)
class KeptPrediction:
    """A prediction's window, start state, capture step and output (see the module doc)."""

    window: Tensor  # [T, I] float32
    state: tuple[Tensor, ...] | None  # each [num_layers, 1, H] float32
    capture: int | None  # the step whose state starts the stream's next window (None: none)
    logits: Tensor  # [1, C] the prediction's output

    def to_bytes(self) -> bytes:
        tensors = {"window": self.window, "logits": self.logits}
        if self.state is not None:
            tensors.update({f"state.{k}": s for k, s in enumerate(self.state)})
        return pack(tensors, KEPT, _SCHEMA, {"capture": self.capture})

    @classmethod
    def from_bytes(cls, data: bytes, spec: ModelSpec, n_state: int, max_steps: int
                   ) -> KeptPrediction:
        """Parse and check a record for a model of ``spec`` (``StateError`` if it does not
        fit: a record is never trusted to have come from this model)."""
        input_size, hidden_size, num_layers = spec.input_size, spec.hidden_size, spec.num_layers
        info = read_header(data, KEPT, _SCHEMA, _MAX_BYTES)
        if info["schema"] != str(_SCHEMA):
            raise StateError(f"kept prediction of schema {info['schema']}: this version "
                             f"reads schema {_SCHEMA}")
        tensors = unpack(load_packed(data), info["index"])
        capture: Any = info["meta"].get("capture")
        window, logits = tensors.get("window"), tensors.get("logits")
        if window is None or window.dim() != 2 or window.shape[1] != input_size \
                or not 1 <= window.shape[0] <= max_steps or window.dtype != torch.float32:
            raise StateError("kept prediction: window does not fit the model")
        if logits is None or tuple(logits.shape) != (1, spec.output_size) \
                or logits.dtype != torch.float32:
            raise StateError("kept prediction: output does not fit the model")
        if capture is not None and not (isinstance(capture, int) and 0 <= capture
                                        < window.shape[0]):
            raise StateError("kept prediction: capture step out of range")
        keys = [f"state.{k}" for k in range(n_state)]
        if not any(k in tensors for k in keys):
            return cls(window, None, capture, logits)
        state = []
        for k in keys:
            s = tensors.get(k)
            if s is None or tuple(s.shape) != (num_layers, 1, hidden_size) \
                    or s.dtype != torch.float32:
                raise StateError("kept prediction: state does not fit the model")
            state.append(s)
        return cls(window, tuple(state), capture, logits)
