"""The one switch of the hand-written kernels (``lstm_kernel``, ``gru_kernel``, ``rnn_kernel``):
off, every window runs the generic path its kernel is checked against (``tests/test_fastlstm.py``,
``tests/test_fastrecurrent.py``, ``bench/cells.py --generic``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["disabled", "fits", "is_enabled"]

_ENABLED = [True]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Inside this block windows take the generic path (for comparisons)."""
    old, _ENABLED[0] = _ENABLED[0], False
    try:
        yield
    finally:
        _ENABLED[0] = old


def is_enabled() -> bool:
    """Whether a kernel may take its fast path."""
    return _ENABLED[0]


def fits(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None = None) -> bool:
    """What every numpy window needs, whatever the method: the kernels on, a non-empty window
    ``x [T, B, I]`` of the cell's input size, ``x``, every parameter and the start state (if any)
    float32 or float64 (one dtype) on the CPU."""
    tensors = [*cell.parameters(), *(state or ())]
    return (is_enabled() and x.dim() == 3 and x.shape[0] > 0 and x.shape[2] == cell.input_size
            and x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu"
            and all(t.dtype == x.dtype and t.device.type == "cpu" for t in tensors))
