"""No normalization: plain cells, run through PyTorch's fused recurrent kernels."""

from __future__ import annotations

from typing import ClassVar, Literal

from .base import NormMethod, NormParams

__all__ = ["NoNorm", "NoNormParams"]


class NoNormParams(NormParams):
    """``none`` takes no parameters."""

    method: Literal["none"] = "none"


class NoNorm(NormMethod):
    """Identity at every site; orthogonal ``W_h`` and forget-gate bias 1 come from the cell."""

    name: ClassVar[str] = "none"
    fused: ClassVar[bool] = True
