"""Online Normalization (Chiley et al. 2019), with backward control and layer scaling.

The backward control is off by default (``alpha_b = 1``, not the paper's 0.99): at batch size 1
in a stream it removed the learning signal on most streams of ``bench/study.py`` (README,
"Which normalization for online recurrent learning?"); ``alpha_b = 0.99`` turns it on.

Per feature, with the statistics from before the sample::

    y = (x − μ) / sqrt(σ² + ε)
    μ' = α_f μ + (1 − α_f) x̄,   σ²' = α_f σ² + (1 − α_f) var_b(x) + α_f (1 − α_f)(x̄ − μ)²

(``x̄``, ``var_b`` over the batch; at batch size 1 this is the paper's fully connected update).
Backward control, with ``y'`` the incoming gradient::

    x̃' = y' − (1 − α_b)·v·y;   v ← v + mean_b(x̃'·y)
    x'  = x̃' / sqrt(σ² + ε) − (1 − α_b)·u;   u ← u + mean_b(x')

then a per-feature affine, then layer scaling ``z / sqrt(mean(z²) + ε)`` over each gate's units.
Placement (Cerebras): one normalizer per gate on the summed pre-activation ``W_x x + W_h h + b``.

Layer scaling is the paper's error check; the reference code's other one, activation clamping
(``clamp(z, −c, c)``), is ``clamp=c`` with ``layer_scaling=False``. Layer scaling of a gate whose
input is the same constant in every sample (zero input with ``h = 0``) multiplies the backward
gradient by up to ``1/√ε`` per such step; clamping never amplifies a gradient.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .base import NormMethod, NormParams, Site, SiteKind

__all__ = ["OnlineNorm", "OnlineNormFn", "OnlineNormParams", "OnlineNormSite"]


class OnlineNormParams(NormParams):
    """Parameters of ``online``."""

    method: Literal["online"] = "online"
    alpha_f: float = Field(0.999, gt=0, lt=1, description="forward statistics decay")
    alpha_b: float = Field(1.0, gt=0, le=1, description="backward control decay; 1 (the "
                           "default: at batch size 1 the control removes the learning signal, "
                           "bench/study.py) turns it off, the gradient then treats the running "
                           "statistics as constants; the paper's 0.99 for mini-batches")
    eps: float = Field(1e-5, gt=0, le=1, description="added to the variance inside the root")
    layer_scaling: bool = Field(True, description="rescale each gate to unit RMS after the affine")
    clamp: float | None = Field(None, gt=0, le=1e6,
                                description="clamp the output to ±clamp after the affine instead "
                                            "(activation clamping; needs layer_scaling=false)")

    @field_validator("clamp")
    @classmethod
    def _one_error_check(cls, clamp: float | None, info: ValidationInfo) -> float | None:
        if clamp is not None and info.data.get("layer_scaling") is True:
            raise ValueError("activation clamping replaces layer scaling; set layer_scaling "
                             "to false to use it")
        return clamp


class OnlineNormFn(torch.autograd.Function):
    """The normalizer ``y = (x − μ)/σ`` with its state updates (forward and backward)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, site: OnlineNormSite) -> Tensor:  # type: ignore[override]
        with torch.no_grad():
            scale = torch.rsqrt(site.var + site.eps)
            y = (x - site.mean) * scale
            af = site.alpha_f
            xbar = x.mean(0)
            var_b = x.var(0, unbiased=False) if x.shape[0] > 1 else torch.zeros_like(xbar)
            delta = xbar - site.mean
            site.var.mul_(af).add_((1 - af) * var_b + af * (1 - af) * delta * delta)
            site.mean.add_((1 - af) * delta)
        ctx.site = site
        ctx.save_for_backward(y, scale)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        y, scale = ctx.saved_tensors
        site: OnlineNormSite = ctx.site
        ab = 1.0 - site.alpha_b
        if ab == 0.0:  # no backward control: u and v stay as they are (zero)
            return gy * scale, None
        gx_tilde = gy - ab * site.v * y
        gx = gx_tilde * scale - ab * site.u
        if site.update_controls:
            site.v.add_((gx_tilde * y).mean(0))
            site.u.add_(gx.mean(0))
        return gx, None


class OnlineNormSite(Site):
    """Online Norm of a summed pre-activation of ``groups`` gates (width = groups × units)."""

    def __init__(self, width: int, *, groups: int, alpha_f: float, alpha_b: float, eps: float,
                 layer_scaling: bool, clamp: float | None = None) -> None:
        super().__init__()
        if width % groups:
            raise ValueError(f"width {width} is not a multiple of groups {groups}")
        self.width, self.groups = width, groups
        self.alpha_f, self.alpha_b, self.eps = alpha_f, alpha_b, eps
        self.layer_scaling, self.clamp = layer_scaling, clamp
        self.update_controls = True  # False only to gradcheck the backward (made reentrant)
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("var", torch.ones(width))
        self.register_buffer("u", torch.zeros(width))
        self.register_buffer("v", torch.zeros(width))

    def forward(self, a: Tensor, t: int = 0) -> Tensor:
        if self.training:
            y = OnlineNormFn.apply(a, self)
        else:
            y = (a - self.mean) * torch.rsqrt(self.var + self.eps)
        z = y * self.weight + self.bias
        if self.clamp is not None:
            return z.clamp(-self.clamp, self.clamp)
        if not self.layer_scaling:
            return z
        zg = z.view(*z.shape[:-1], self.groups, self.width // self.groups)
        zg = zg * torch.rsqrt((zg * zg).mean(-1, keepdim=True) + self.eps)
        return zg.reshape(z.shape)

    def extra_repr(self) -> str:
        return (f"{self.width}, groups={self.groups}, alpha_f={self.alpha_f}, "
                f"alpha_b={self.alpha_b}, eps={self.eps}, layer_scaling={self.layer_scaling}, "
                f"clamp={self.clamp}")


class OnlineNorm(NormMethod):
    """Online Norm on the summed pre-activation (the ``pre`` site) only."""

    name: ClassVar[str] = "online"

    def site(self, kind: SiteKind, width: int, *, groups: int = 1, bias: bool = False
             ) -> Site | None:
        if kind != "pre":
            return None
        assert isinstance(self.params, OnlineNormParams)
        p = self.params
        return OnlineNormSite(width, groups=groups, alpha_f=p.alpha_f, alpha_b=p.alpha_b,
                              eps=p.eps, layer_scaling=p.layer_scaling, clamp=p.clamp)
