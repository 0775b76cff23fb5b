"""Cosine Normalization (Luo et al. 2017): pre-activations are cosines, ``w·x / (‖w‖‖x‖ + ε)``.

Deviation from the paper (documented): a learned per-unit gain, initialised at 3, multiplies the
cosine, because ``σ(±1) ∈ [0.27, 0.73]`` would keep an LSTM's forget gate from approaching 1; the
cell bias stays outside. ``ε`` in the denominator makes a zero ``h_0`` give a zero cosine.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from .base import NormMethod, NormParams

__all__ = ["CosineLinear", "CosineNorm", "CosineNormParams"]


class CosineNormParams(NormParams):
    """Parameters of ``cosine``."""

    method: Literal["cosine"] = "cosine"
    gain_init: float = Field(3.0, gt=0, le=100, description="initial per-unit gain on the cosine")
    eps: float = Field(1e-8, gt=0, le=1, description="added to ‖w‖‖x‖")


class CosineLinear(nn.Module):
    """``gain ⊙ cos(W_rows, a)``; ``cosine`` returns the raw cosines (in ``[-1, 1]``)."""

    def __init__(self, in_features: int, out_features: int, *, gain_init: float, eps: float
                 ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.eps = in_features, out_features, eps
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        bound = 1.0 / math.sqrt(out_features)
        nn.init.uniform_(self.weight, -bound, bound)
        self.gain = nn.Parameter(torch.full((out_features,), float(gain_init)))

    def cosine(self, a: Tensor) -> Tensor:
        """Raw cosine of every weight row with every input vector."""
        dots = nn.functional.linear(a, self.weight)
        norms = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
        return dots / (norms * torch.linalg.vector_norm(self.weight, dim=1) + self.eps)

    def forward(self, a: Tensor) -> Tensor:
        return self.cosine(a) * self.gain

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, eps={self.eps}"


class CosineNorm(NormMethod):
    """Cosine linear maps for ``W_x x`` and ``W_h h``; no sites."""

    name: ClassVar[str] = "cosine"

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        assert isinstance(self.params, CosineNormParams)
        return CosineLinear(in_features, out_features, gain_init=self.params.gain_init,
                            eps=self.params.eps)
