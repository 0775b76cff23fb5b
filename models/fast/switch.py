"""The one switch of the hand-written kernels (``lstm_kernel``, ``gru_kernel``, ``rnn_kernel``):
off, every window runs the generic path its kernel is checked against (``tests/test_fastlstm.py``,
``tests/test_fastrecurrent.py``, ``bench/cells.py --generic``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["disabled", "is_enabled"]

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
