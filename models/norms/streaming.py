"""Streaming Normalization (Liao, Kawaguchi & Poggio 2016).

Statistics are streamed across samples and time steps with a short-term memory ``S`` (the exact
mean since the last optimizer step, current call included) and a long-term memory ``L`` (folded
from ``S`` at the first call after each step), and so are the gradients of the statistics
(``GS``, ``GL``). At every call::

    fold if a step happened:  L ← κ1·L + κ2·S,  GL ← κ3·GL + κ4·GS,  S, GS, n, m ← 0
    S ← S + (s_cur − S)/(n + 1),  n ← n + 1
    ŝ = α1·L + α2·S                          (before the first fold S stands in for L)
    y = (a − μ̂) / sqrt(d̂² + ε) · g + b      (μ̂, d̂ from ŝ; raw moments: d̂² = m̂2 − m̂1²)

and in the backward pass, with ``g_s = ∂loss/∂ŝ``::

    GS ← GS + (g_s − GS)/(m + 1),  m ← m + 1,   ∂loss/∂s_cur := β1·GL + β2·GS + β3·g_s

Presets (``norms.md``): ``paper`` (per-unit mean/deviation, κ1 = κ3 = 0.7, ``L ← S`` at the first
fold, β = (0.7, 0, 0.3)), ``online`` (default; per-unit raw moments, κ1 = κ3 = 0.99, ``L`` starts
at ``m1 = 0, m2 = 1``; the one that works at batch size 1) and ``sample`` (per-sample
mean/deviation, i.e. LayerNorm-like statistics that are then streamed). The tuned presets
(``online``, ``sample``) use β = (0, 0, 0.3): see ``_BETA_TUNED``. ``p`` selects the Lp deviation
``mean(|a − μ|^p)^(1/p)`` of the mean/deviation presets. In eval mode a site normalizes with
``α1·L + α2·S`` and changes no buffer.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .base import NormMethod, NormParams, Site, SiteKind

__all__ = ["COUNTERS", "MEMORIES", "StreamingNorm", "StreamingNormParams", "StreamingSite",
           "StreamingStat"]

MEMORIES = ("L", "S", "GL", "GS")  # rows of a site's ``memory`` buffer
COUNTERS = ("n", "m", "steps", "folded_at", "l_init", "gl_init")  # its ``counters`` buffer
_VIEWS = frozenset(MEMORIES + COUNTERS)

Preset = Literal["paper", "online", "sample"]

_ALPHA = (0.7, 0.3)
_BETA_PAPER = (0.7, 0.0, 0.3)
# Tuned presets drop the long-term gradient memory from the backward (β1 = 0): with one sample
# per optimizer step, injecting 0.7·GL into every call's statistic gradient kept an LSTM at
# chance on the memory task of tests/test_memory_task.py, β = (0, 0, 0.3) learned it.
_BETA_TUNED = (0.0, 0.0, 0.3)
_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"axes": "unit", "stats": "meanstd", "kappa": (0.7, 0.3, 0.7, 0.3), "warm": False,
              "beta": _BETA_PAPER},
    "online": {"axes": "unit", "stats": "moments", "kappa": (0.99, 0.01, 0.99, 0.01),
               "warm": True, "beta": _BETA_TUNED},
    "sample": {"axes": "sample", "stats": "meanstd", "kappa": (0.99, 0.01, 0.99, 0.01),
               "warm": False, "beta": _BETA_TUNED},
}


class StreamingNormParams(NormParams):
    """Parameters of ``streaming``: a preset, and overrides of its α, β, κ and ``p``."""

    method: Literal["streaming"] = "streaming"
    preset: Preset = Field("online", description="paper | online | sample (see norms.md)")
    p: float = Field(2.0, ge=1.0, le=8.0, description="Lp deviation (mean/deviation presets)")
    alpha: tuple[float, float] | None = Field(
        None, description="weights of (long, short) memories in the forward; default (0.7, 0.3)")
    beta: tuple[float, float, float] | None = Field(
        None, description="weights of (GL, GS, current) gradients; default: paper (0.7, 0, 0.3), "
                          "online and sample (0, 0, 0.3)")
    kappa: tuple[float, float, float, float] | None = Field(
        None, description="fold weights (L, S, GL, GS); default from the preset")
    eps: float = Field(1e-5, gt=0, le=1, description="added to the variance inside the root")

    @model_validator(mode="after")
    def _check_weights(self) -> StreamingNormParams:
        for name in ("alpha", "beta", "kappa"):
            value = getattr(self, name)
            if value is not None and not all(0.0 <= v <= 1.0 for v in value):
                raise ValueError(f"{name}: every weight must lie in [0, 1], got {list(value)}")
        return self

    def resolved(self) -> dict[str, Any]:
        """The preset with overrides applied: axes, stats, alpha, beta, kappa, warm, p, eps."""
        out = dict(_PRESETS[self.preset])
        out["alpha"] = self.alpha or _ALPHA
        out["beta"] = self.beta or out["beta"]
        out["kappa"] = self.kappa or out["kappa"]
        out["p"], out["eps"] = self.p, self.eps
        return out


class StreamingStat(torch.autograd.Function):
    """Mix the current statistic into the memories; route the gradient as the paper does.

    ``s_cur`` is ``[2, *shape]`` (unit axes: ``[2, F]``; sample axes: ``[2, B, 1]``). Returns
    ``ŝ`` of the same shape. The forward value comes from history, the gradient goes into the
    present sample: the backward is deliberately *not* the derivative of the forward.
    """

    @staticmethod
    def forward(ctx: Any, s_cur: Tensor, site: StreamingSite) -> Tensor:  # type: ignore[override]
        ctx.site = site
        return site._mix(s_cur.detach())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.site._route_grad(g), None


class StreamingSite(Site):
    """One Streaming Normalization site (per-unit or per-sample statistics)."""

    def __init__(self, width: int, *, bias: bool, axes: str, stats: str,
                 alpha: tuple[float, float], beta: tuple[float, float, float],
                 kappa: tuple[float, float, float, float], warm: bool, p: float, eps: float
                 ) -> None:
        super().__init__()
        self.width, self.axes, self.stats = width, axes, stats
        self.alpha, self.beta, self.kappa = tuple(alpha), tuple(beta), tuple(kappa)
        self.p, self.eps, self.warm = float(p), float(eps), bool(warm)
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None
        shape = (2, width) if axes == "unit" else (2, 1, 1)
        # two buffers (fewer tensors to save, load and copy), named through views: __getattr__
        self.register_buffer("memory", torch.zeros((len(MEMORIES), *shape)))
        self.register_buffer("counters", torch.zeros(len(COUNTERS), dtype=torch.int64))
        if warm:  # the online preset starts from m1 = 0, m2 = 1 and a zero gradient memory
            self.L[1].fill_(1.0)
            self.l_init.fill_(1)
            self.gl_init.fill_(1)

    def __getattr__(self, name: str) -> Any:
        """``L``, ``S``, ``GL``, ``GS`` (rows of ``memory``) and ``n``, ``m``, ``steps``,
        ``folded_at``, ``l_init``, ``gl_init`` (elements of ``counters``): views of the buffers,
        made on first use and then plain attributes (the fast LSTM kernel reads the buffers
        through numpy and never makes them)."""
        if name in _VIEWS:
            memory, counters = self._buffers["memory"], self._buffers["counters"]
            assert memory is not None and counters is not None
            self.__dict__.update(zip(MEMORIES, memory.unbind(0), strict=True))
            self.__dict__.update(zip(COUNTERS, counters.unbind(0), strict=True))
            return self.__dict__[name]
        return super().__getattr__(name)

    def rebind_views(self) -> None:
        """Forget the named views: the buffers were replaced (``models.fast.flat``, ``.to()``)."""
        for name in _VIEWS:
            self.__dict__.pop(name, None)

    def _apply(self, fn: Any, recurse: bool = True) -> StreamingSite:
        """``.to()``, ``.double()``… replace the buffers: name views of the new ones."""
        out = super()._apply(fn, recurse)
        self.rebind_views()
        return out

    # -- state machine -------------------------------------------------------------------------
    def on_optimizer_step(self) -> None:
        """Count an optimizer step; the next training call folds."""
        self.steps += 1

    @torch.no_grad()
    def _fold(self) -> None:
        k1, k2, k3, k4 = self.kappa
        if int(self.n) > 0:
            if int(self.l_init):
                self.L.mul_(k1).add_(self.S, alpha=k2)
            else:
                self.L.copy_(self.S)
                self.l_init.fill_(1)
        if int(self.m) > 0:
            if int(self.gl_init):
                self.GL.mul_(k3).add_(self.GS, alpha=k4)
            else:
                self.GL.copy_(self.GS)
                self.gl_init.fill_(1)
        self.S.zero_()
        self.GS.zero_()
        self.n.zero_()
        self.m.zero_()
        self.folded_at.copy_(self.steps)

    def _pool(self, s: Tensor) -> Tensor:
        """Per-sample statistics ``[2, B, 1]`` are streamed as their batch mean ``[2, 1]``."""
        return s.mean(1, keepdim=True) if self.axes == "sample" else s

    @torch.no_grad()
    def _mix(self, s_cur: Tensor) -> Tensor:
        if int(self.steps) > int(self.folded_at):
            self._fold()
        n = int(self.n)
        w = 1.0 / (n + 1)
        short = self.S + (s_cur - self.S) * w  # per sample when axes == "sample"
        self.S.add_((self._pool(s_cur) - self.S) * w)
        self.n += 1
        if not int(self.l_init):
            return short.clone()
        return self.alpha[0] * self.L + self.alpha[1] * short

    @torch.no_grad()
    def _route_grad(self, g: Tensor) -> Tensor:
        m = int(self.m)
        self.GS.add_((self._pool(g) - self.GS) / (m + 1))
        self.m += 1
        b1, b2, b3 = self.beta
        long = self.GL if int(self.gl_init) else self.GS
        return b1 * long + b2 * self.GS + b3 * g

    # -- computation ---------------------------------------------------------------------------
    def _current(self, a: Tensor) -> Tensor:
        """The statistic of the current call: raw moments or (mean, Lp deviation)."""
        dim = 0 if self.axes == "unit" else -1
        keep = self.axes == "sample"
        if self.stats == "moments":
            m1 = a.mean(dim, keepdim=keep)
            m2 = (a * a).mean(dim, keepdim=keep)
            return torch.stack([m1, m2])
        mu = a.mean(dim, keepdim=keep)
        centred = (a - mu).abs()
        power = centred * centred if self.p == 2.0 else centred.pow(self.p)
        dev = power.mean(dim, keepdim=keep).clamp_min(1e-12).pow(1.0 / self.p)
        return torch.stack([mu, dev])

    def _normalize(self, a: Tensor, s: Tensor) -> Tensor:
        mu = s[0]
        var = (s[1] - mu * mu).clamp_min(0.0) if self.stats == "moments" else s[1] * s[1]
        y = (a - mu) * torch.rsqrt(var + self.eps)
        y = y * self.weight
        return y + self.bias if self.bias is not None else y

    def mixed(self) -> Tensor:
        """The statistics an eval-mode call normalizes with: ``α1·L + α2·S`` (no update)."""
        if not int(self.l_init):
            return self.S.clone() if int(self.n) else self.L.clone()
        return self.alpha[0] * self.L + self.alpha[1] * self.S

    def forward(self, a: Tensor, t: int = 0) -> Tensor:
        if not self.training:
            with torch.no_grad():
                s = self.mixed()
            return self._normalize(a, s)
        s_hat = StreamingStat.apply(self._current(a), self)
        return self._normalize(a, s_hat)

    def extra_repr(self) -> str:
        return (f"{self.width}, axes={self.axes}, stats={self.stats}, alpha={self.alpha}, "
                f"beta={self.beta}, kappa={self.kappa}, p={self.p}, eps={self.eps}")


class StreamingNorm(NormMethod):
    """Streaming Normalization at the ``x``, ``h`` and ``c`` sites."""

    name: ClassVar[str] = "streaming"

    def site(self, kind: SiteKind, width: int, *, groups: int = 1, bias: bool = False
             ) -> Site | None:
        if kind == "pre":
            return None
        assert isinstance(self.params, StreamingNormParams)
        return StreamingSite(width, bias=bias, **self.params.resolved())
