"""``StreamContext``: what a model keeps per stream between windows.

A module of its own, below both the learner that makes contexts and the codec that stores them
(``models.persist``), so neither has to import the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["StreamContext"]


@dataclass
class StreamContext:
    """A stream's recurrent context: the state at the start of its window (``None``: zero) and
    the inputs since then (at most ``window − 1``; the next ``x`` completes the window)."""

    state: tuple[Tensor, ...] | None
    inputs: Tensor  # [k, I]
