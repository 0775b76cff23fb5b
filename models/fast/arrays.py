"""numpy helpers the fast kernels and their site workers share: positional-``out`` ufuncs
(the cheapest calls numpy has), cached read-only constants, and a cumulative sum as a matmul.

They live apart from both users because both use them; nothing here knows about norms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Arr", "add", "const", "cumsum", "mul", "sub", "tensor", "tri"]

Arr = np.ndarray
mul, add, sub = np.multiply, np.add, np.subtract  # positional ``out``: the cheapest calls
_TRI: dict[tuple[int, str], Arr] = {}
_CONST: dict[tuple[Any, ...], Arr] = {}


def tri(k: int, dt: Any) -> Arr:
    """Lower-triangular ones ``[k, k]``: ``tri @ a`` is the cumulative sum of ``a``'s rows."""
    key = (k, np.dtype(dt).str)
    if key not in _TRI:
        if k > 256:
            return np.tril(np.ones((k, k), dt))
        _TRI[key] = np.tril(np.ones((k, k), dt))
    return _TRI[key]


def const(n: int, dt: Any, value: float, ones_at: int | None = None) -> Arr:
    """A cached read-only vector of ``value`` (ones at ``[ones_at, ones_at + n/4)`` if given)."""
    key = (n, np.dtype(dt).str, value, ones_at)
    if key not in _CONST:
        v = np.full(n, value, dt)
        if ones_at is not None:
            v[ones_at:ones_at + n // 4] = 1.0
        v.flags.writeable = False
        _CONST[key] = v
    return _CONST[key]


def cumsum(a: Arr) -> Arr:
    """Cumulative sum over axis 1 of ``[2, K, ...]`` (a matmul: ``np.cumsum`` there is slow)."""
    k = a.shape[1]
    return np.matmul(tri(k, a.dtype), a.reshape(2, k, -1)).reshape(a.shape)


def tensor(a: Arr | None) -> Tensor | None:
    """A kernel's gradient array as the tensor its ``Function.backward`` returns."""
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))
