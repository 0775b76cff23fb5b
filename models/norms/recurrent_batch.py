"""Recurrent Batch Normalization (Cooijmans et al. 2016): per-time-step statistics.

``BN(W_h h) + BN(W_x x) + b`` and ``tanh(BN(c))``, with **separate running statistics for each
position** ``t < T_max`` in the window (positions beyond reuse ``T_max − 1``'s), gains shared over
time and initialised at 0.1, ``β_x = β_h = 0`` (the cell bias carries the shift). Running
statistics are an EMA with momentum 0.01 (the authors' code). With several sequences in one call,
training uses true batch statistics; with one sample, batch statistics are degenerate, so it
normalizes with the position's running statistics and updates them by EMA (see ``_bn.bn_step``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ._bn import bn_step
from .base import NormMethod, NormParams, Site, SiteKind

__all__ = ["RecurrentBatchNorm", "RecurrentBatchNormParams", "RecurrentBatchNormSite"]


class RecurrentBatchNormParams(NormParams):
    """Parameters of ``recurrent_batch``."""

    method: Literal["recurrent_batch"] = "recurrent_batch"
    t_max: int = Field(64, ge=1, le=4096, description="positions with their own statistics")
    momentum: float = Field(0.01, gt=0, le=1, description="EMA weight of the newest statistics")
    gain_init: float = Field(0.1, gt=0, le=10, description="initial γ (the paper's 0.1)")
    eps: float = Field(1e-5, gt=0, le=1, description="added to the variance inside the root")


class RecurrentBatchNormSite(Site):
    """BN with running mean/var ``[T_max, F]`` indexed by the position in the window."""

    def __init__(self, width: int, *, bias: bool, t_max: int, momentum: float, gain_init: float,
                 eps: float) -> None:
        super().__init__()
        self.width, self.t_max, self.momentum, self.eps = width, t_max, momentum, eps
        self.weight = nn.Parameter(torch.full((width,), float(gain_init)))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None
        self.register_buffer("running_mean", torch.zeros(t_max, width))
        self.register_buffer("running_var", torch.ones(t_max, width))

    def forward(self, a: Tensor, t: int = 0) -> Tensor:
        k = min(t, self.t_max - 1)
        return bn_step(a, self.running_mean[k], self.running_var[k], self.weight, self.bias,
                       training=self.training, momentum=self.momentum, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.width}, t_max={self.t_max}, momentum={self.momentum}, eps={self.eps}"


class RecurrentBatchNorm(NormMethod):
    """Per-step BN at the ``x``, ``h`` and ``c`` sites."""

    name: ClassVar[str] = "recurrent_batch"

    def site(self, kind: SiteKind, width: int, *, groups: int = 1, bias: bool = False
             ) -> Site | None:
        if kind == "pre":
            return None
        assert isinstance(self.params, RecurrentBatchNormParams)
        p = self.params
        return RecurrentBatchNormSite(width, bias=bias, t_max=p.t_max, momentum=p.momentum,
                                      gain_init=p.gain_init, eps=p.eps)
