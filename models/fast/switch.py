"""The one switch of the hand-written kernels (``lstm_kernel``, ``gru_kernel``, ``rnn_kernel``):
off, every window runs the generic path its kernel is checked against (``tests/test_fastlstm.py``,
``tests/test_fastrecurrent.py``, ``bench/cells.py --generic``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["KERNELS", "disabled", "fits", "is_enabled", "only"]

# every kernel, by the module that runs it
KERNELS = frozenset({"lstm_kernel", "gru_kernel", "rnn_kernel", "lstm_window", "xsite"})
_ON: list[frozenset[str]] = [KERNELS]


@contextlib.contextmanager
def only(*names: str) -> Iterator[None]:
    """Inside this block only the named kernels run (none: every window takes the generic path);
    e.g. ``only("lstm_kernel")`` computes what code before the other kernels computed, bit for
    bit (the stored-state fixtures' exact checks)."""
    unknown = set(names) - KERNELS
    if unknown:
        raise ValueError(f"unknown kernels {sorted(unknown)}; known: {sorted(KERNELS)}")
    old, _ON[0] = _ON[0], frozenset(names)
    try:
        yield
    finally:
        _ON[0] = old


def disabled() -> contextlib.AbstractContextManager[None]:
    """Inside this block windows take the generic path (for comparisons)."""
    return only()


def is_enabled(name: str | None = None) -> bool:
    """Whether the kernel ``name`` (``None``: any kernel at all) may take its fast path."""
    return name in _ON[0] if name is not None else bool(_ON[0])


def fits(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None = None,
         kernel: str | None = None) -> bool:
    """What every numpy window needs, whatever the method: the kernel on, a non-empty window
    ``x [T, B, I]`` of the cell's input size, ``x``, every parameter and the start state (if any)
    float32 or float64 (one dtype) on the CPU."""
    tensors = [*cell.parameters(), *(state or ())]
    return (is_enabled(kernel) and x.dim() == 3 and x.shape[0] > 0 and x.shape[2] == cell.input_size
            and x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu"
            and all(t.dtype == x.dtype and t.device.type == "cpu" for t in tensors))
