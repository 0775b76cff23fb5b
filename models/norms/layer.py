"""Layer Normalization (Ba, Kiros & Hinton 2016): statistics over the units of one sample.

    LN(a) = g ⊙ (a − mean(a)) / sqrt(var(a) + ε) + b

with the biased variance, as ``torch.nn.LayerNorm``. LSTM sites: ``W_x x`` and ``W_h h`` each
over the whole ``4H`` vector, ``c_t`` over ``H``; gains start at 1 and biases at 0. No state, so
it behaves the same at any batch size, in training and in eval.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from .base import NormMethod, NormParams, Site, SiteKind

__all__ = ["LayerNorm", "LayerNormParams", "LayerNormSite"]


class LayerNormParams(NormParams):
    """Parameters of ``layer``."""

    method: Literal["layer"] = "layer"
    eps: float = Field(1e-5, gt=0, le=1, description="added to the variance inside the root")


class LayerNormSite(Site):
    """``F.layer_norm`` over the last dimension, with a gain and an optional bias."""

    def __init__(self, width: int, *, bias: bool, eps: float) -> None:
        super().__init__()
        self.width, self.eps = width, eps
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, a: Tensor, t: int = 0) -> Tensor:
        return F.layer_norm(a, (self.width,), self.weight, self.bias, self.eps)

    def forward_seq(self, a: Tensor, t0: int = 0) -> Tensor:
        return self.forward(a, t0)

    def extra_repr(self) -> str:
        return f"{self.width}, eps={self.eps}, bias={self.bias is not None}"


class LayerNorm(NormMethod):
    """LN at the ``x``, ``h`` and ``c`` sites."""

    name: ClassVar[str] = "layer"

    def site(self, kind: SiteKind, width: int, *, groups: int = 1, bias: bool = False
             ) -> Site | None:
        if kind == "pre":
            return None
        assert isinstance(self.params, LayerNormParams)
        return LayerNormSite(width, bias=bias, eps=self.params.eps)
