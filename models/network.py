"""The network a learner trains: a recurrent stack plus a linear head for the task."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .cells import RecurrentStack, State
from .spec import ModelSpec

__all__ = ["Network", "WindowOutput"]


class WindowOutput(NamedTuple):
    """Head output for the last step ``[B, out]``, the final state, the captured state."""

    logits: Tensor
    state: State
    captured: State | None


class Network(nn.Module):
    """``RecurrentStack`` → last step → ``Linear(hidden, out)``; loss and decoding per task."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.task = spec.task
        self.stack = RecurrentStack(spec.cell, spec.input_size, spec.hidden_size,
                                    spec.num_layers, spec.norm)
        self.head = nn.Linear(spec.hidden_size, spec.output_size)

    def forward(self, x: Tensor, state: State | None = None, capture: int | None = None
                ) -> WindowOutput:
        """Run a window ``[T, B, I]``; ``capture`` also returns the state after that step."""
        out, final, captured = self.stack.run(x, state, capture=capture)
        return WindowOutput(self.head(out[-1]), final, captured)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """MSE (regression), binary cross-entropy on a logit, or cross-entropy over classes."""
        if self.task == "regression":
            return F.mse_loss(logits[:, 0], y)
        if self.task == "binary":
            return F.binary_cross_entropy_with_logits(logits[:, 0], y)
        return F.cross_entropy(logits, y)

    @torch.no_grad()
    def decode(self, logits: Tensor) -> tuple[list[float | int], list[list[float]] | None]:
        """Predictions per row, and class probabilities for classifiers."""
        if self.task == "regression":
            return [float(v) for v in logits[:, 0].tolist()], None
        if self.task == "binary":
            p1 = torch.sigmoid(logits[:, 0].double())
            probs = torch.stack([1 - p1, p1], 1)
        else:
            probs = torch.softmax(logits.double(), 1)
        return [int(i) for i in probs.argmax(1).tolist()], probs.tolist()
