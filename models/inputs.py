"""Validation of samples before they touch a model: shapes, names, finiteness, label types."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .spec import ModelSpec

__all__ = ["MAX_SEQUENCE", "InvalidInput", "to_features", "to_sequence", "to_target"]

MAX_SEQUENCE = 10_000
_F32_MAX = float(torch.finfo(torch.float32).max)


class InvalidInput(ValueError):
    """A sample the model cannot take; ``field`` names the offending part (``x``, ``y``…)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(field, f"must be a number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float64
        raise InvalidInput(field, "does not fit in float32") from None
    if not math.isfinite(v):
        raise InvalidInput(field, f"must be finite, got {v}")
    if abs(v) > _F32_MAX:
        raise InvalidInput(field, f"{v} does not fit in float32")
    return v


def to_features(x: Any, spec: ModelSpec, field: str = "x") -> list[float]:
    """One step's features as floats, from a list (length ``n_features``) or a name → value map."""
    if isinstance(x, Mapping):
        if spec.features is None:
            raise InvalidInput(field, "this model has no feature names; send a list")
        missing = [n for n in spec.features if n not in x]
        if missing:
            raise InvalidInput(field, f"missing feature(s) {missing[:10]}")
        unknown = [k for k in x if k not in set(spec.features)]
        if unknown:
            raise InvalidInput(field, f"unknown feature(s) {[str(k) for k in unknown[:10]]}")
        return [_number(x[n], f"{field}.{n}") for n in spec.features]
    if isinstance(x, str | bytes) or not isinstance(x, Sequence):
        raise InvalidInput(field, f"must be a list of numbers or an object of features, got "
                                  f"{type(x).__name__}")
    if len(x) != spec.input_size:
        raise InvalidInput(field, f"expected {spec.input_size} values, got {len(x)}")
    return [_number(v, f"{field}[{i}]") for i, v in enumerate(x)]


def to_sequence(sequence: Any, spec: ModelSpec, field: str = "sequence") -> Tensor:
    """A sequence of steps as a ``[T, I]`` float32 tensor."""
    if isinstance(sequence, str | bytes | Mapping) or not isinstance(sequence, Sequence):
        raise InvalidInput(field, "must be a list of steps")
    if not 1 <= len(sequence) <= MAX_SEQUENCE:
        raise InvalidInput(field, f"must have 1 to {MAX_SEQUENCE} steps, got {len(sequence)}")
    rows = [to_features(step, spec, f"{field}[{t}]") for t, step in enumerate(sequence)]
    return torch.tensor(rows, dtype=torch.float32)


def to_target(y: Any, spec: ModelSpec, field: str = "y") -> float | int:
    """The target: a finite number, 0/1 or a bool, or a class index below ``n_classes``."""
    if spec.task == "regression":
        return _number(y, field)
    if spec.task == "binary":
        if isinstance(y, bool):
            return int(y)
        if isinstance(y, int | float) and y in (0, 1):
            return int(y)
        raise InvalidInput(field, f"must be 0, 1, true or false for a binary model, got {y!r}")
    if isinstance(y, bool) or not isinstance(y, int):
        if isinstance(y, float) and y.is_integer():
            y = int(y)
        else:
            raise InvalidInput(field, f"must be a class index (integer), got {y!r}")
    n = int(spec.n_classes or 0)
    if not 0 <= y < n:
        raise InvalidInput(field, f"class index must be in [0, {n}), got {y}")
    return int(y)
