"""The template every normalization method fills in.

A recurrent cell computes ``a_t = N_x(L_x x_t) + N_h(L_h h_{t-1}) + b`` (see ``norms.md``). A
method decides three things: the linear maps ``L`` (weight and cosine normalization change them),
the normalization *sites* ``N`` (modules applied to a pre-activation), and whether the whole
window may run through PyTorch's fused kernels (only when there is nothing per step to do).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

__all__ = [
    "Linear",
    "NormMethod",
    "NormParams",
    "Site",
    "SiteKind",
    "notify_optimizer_step",
]

SiteKind = Literal["x", "h", "c", "pre"]
"""Where a site sits: input-to-hidden ``W_x x``, hidden-to-hidden ``W_h h``, the cell state
``c_t`` (LSTM only), or the summed pre-activation ``W_x x + W_h h + b`` (Online Norm)."""


class NormParams(BaseModel):
    """Parameters of one method; subclasses add ``method: Literal[name]`` and their fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(nn.Module):
    """A normalization applied at one site of a cell.

    ``forward`` takes one time step ``[B, F]`` at window position ``t``; ``forward_seq`` takes a
    whole window ``[T, B, F]`` starting at position ``t0`` (the input-to-hidden site sees the
    window at once, which lets sequence-wise methods pool over time and saves per-step work).
    """

    def forward(self, a: Tensor, t: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_seq(self, a: Tensor, t0: int) -> Tensor:
        """Apply ``forward`` step by step; stateless sites override this with one call."""
        return torch.stack([self.forward(a[i], t0 + i) for i in range(a.shape[0])])


class Linear(nn.Module):
    """A bias-free linear map ``W a`` whose weight the cell initialises (``none``'s ``L``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        bound = 1.0 / math.sqrt(out_features) if out_features else 0.0
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, a: Tensor) -> Tensor:
        return nn.functional.linear(a, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class NormMethod:
    """Builds the pieces of one normalization method for a cell.

    Subclasses set ``name`` and override ``site`` and/or ``linear``. ``fused`` says that the
    method adds nothing per step, so a cell may run the whole window through ``torch.lstm`` /
    ``torch.gru`` / ``torch.rnn_tanh`` with the weights ``linear`` produced.
    """

    name: ClassVar[str] = ""
    fused: ClassVar[bool] = False

    def __init__(self, params: NormParams) -> None:
        self.params = params

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        """The map ``L`` for ``W_x x`` or ``W_h h``; must expose ``.weight`` ``[out, in]``."""
        return Linear(in_features, out_features)

    def site(self, kind: SiteKind, width: int, *, groups: int = 1, bias: bool = False
             ) -> Site | None:
        """The module ``N`` at a site of ``width`` units, or ``None`` for the identity.

        ``groups`` is the number of gates sharing the site (layer scaling is per gate);
        ``bias`` asks for a learned shift (sites whose output the cell bias does not follow).
        """
        return None

    def window(self) -> object:
        """A context manager around one window's forward (weight norm caches its weight)."""
        import contextlib

        return contextlib.nullcontext()


def notify_optimizer_step(module: nn.Module) -> int:
    """Tell every stateful site under ``module`` that an optimizer step happened.

    Streaming Normalization folds its short-term memory into the long-term one at the first call
    after a step; this explicit counter (a buffer, so it is saved) is what triggers it.
    Returns the number of sites told.
    """
    told = 0
    for sub in module.modules():
        hook = getattr(sub, "on_optimizer_step", None)
        if callable(hook):
            hook()
            told += 1
    return told
