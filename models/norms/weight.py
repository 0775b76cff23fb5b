"""Weight Normalization (Salimans & Kingma 2016): ``w = g · v / ‖v‖`` per output row.

Uses ``torch.nn.utils.parametrizations.weight_norm(..., dim=0)`` on ``W_x`` and ``W_h``; the
weight is computed once per window (``parametrize.cached()``). No state beyond ``g`` and ``v``,
and nothing per step, so the window still runs through PyTorch's fused kernels.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from .base import Linear, NormMethod, NormParams

__all__ = ["WeightNorm", "WeightNormParams"]


class WeightNormParams(NormParams):
    """``weight`` takes no parameters."""

    method: Literal["weight"] = "weight"


class WeightNorm(NormMethod):
    """Reparametrize the linear maps; the weight at wrap time equals the plain one."""

    name: ClassVar[str] = "weight"
    fused: ClassVar[bool] = True

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        return weight_norm(Linear(in_features, out_features), name="weight", dim=0)

    def window(self) -> object:
        return parametrize.cached()
