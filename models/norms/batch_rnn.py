"""Batch-Normalized RNN (Laurent et al. 2015): BN on the input-to-hidden term only.

``h_t = φ(W_h h_{t−1} + BN(W_x x_t) + b)`` with statistics pooled over batch *and* time of the
window ("sequence-wise"), so a window of more than one step is not degenerate at batch size 1.
Running mean/var (EMA, momentum 0.1) serve eval and one-step, one-sample windows (normalize with
them, then update them by EMA).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ._bn import bn_step
from .base import NormMethod, NormParams, Site, SiteKind

__all__ = ["BatchRNN", "BatchRNNParams", "BatchRNNSite"]


class BatchRNNParams(NormParams):
    """Parameters of ``batch_rnn``."""

    method: Literal["batch_rnn"] = "batch_rnn"
    momentum: float = Field(0.1, gt=0, le=1, description="EMA weight of the newest statistics")
    eps: float = Field(1e-5, gt=0, le=1, description="added to the variance inside the root")


class BatchRNNSite(Site):
    """Sequence-wise BN of ``W_x x`` over ``[T, B]``."""

    def __init__(self, width: int, *, momentum: float, eps: float) -> None:
        super().__init__()
        self.width, self.momentum, self.eps = width, momentum, eps
        self.weight = nn.Parameter(torch.ones(width))
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_var", torch.ones(width))

    def forward(self, a: Tensor, t: int = 0) -> Tensor:
        return self.forward_seq(a.unsqueeze(0), t)[0]

    def forward_seq(self, a: Tensor, t0: int = 0) -> Tensor:
        flat = a.reshape(-1, self.width)
        out = bn_step(flat, self.running_mean, self.running_var, self.weight, None,
                      training=self.training, momentum=self.momentum, eps=self.eps)
        return out.view(a.shape)

    def extra_repr(self) -> str:
        return f"{self.width}, momentum={self.momentum}, eps={self.eps}"


class BatchRNN(NormMethod):
    """BN at the ``x`` site only."""

    name: ClassVar[str] = "batch_rnn"

    def site(self, kind: SiteKind, width: int, *, groups: int = 1, bias: bool = False
             ) -> Site | None:
        if kind != "x":
            return None
        assert isinstance(self.params, BatchRNNParams)
        return BatchRNNSite(width, momentum=self.params.momentum, eps=self.params.eps)
