"""The per-step site math of the numpy recurrences (``gru_kernel``, ``rnn_kernel``,
``lstm_window``): one class per method, so that a kernel is written once per cell and a method
plugs in as its sites.

A site class (a ``Rows``) works on the rows ``a [B, F]`` of one step ``t`` of the window:
``forward(a, t)``; ``backward(dy, t)``, called for the steps last first, as autograd would;
``grads()``, the gradients of the site's own tensors over the window, in the order of its
``tensors(spec)``, which the kernel's ``autograd.Function`` takes as inputs. A site that keeps
running statistics reads and writes them in place through numpy views of the module's buffers,
in the order the generic path does. Each mirrors its torch definition in ``models.norms``
(named in its docstring); ``tests/test_fastrecurrent.py`` holds each against it.

``Plug`` carries the sites of one window into a kernel: which class serves which module, their
tensors flattened for ``apply``, and the gradients back in the same order; ``supported`` is the
one test every kernel applies before taking a window.

One module on purpose (~500 lines): the protocol and every method's class (40–90 lines each)
side by side read as one table of what each method does per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..norms.cosine import CosineLinear
from ..norms.layer import LayerNormSite
from ..norms.online import OnlineNormSite
from ..norms.recurrent_batch import RecurrentBatchNormSite
from ..norms.streaming import StreamingSite
from .arrays import Arr, tensor
from .sites import RowSite, WindowSite, held_row
from .switch import fits

__all__ = ["BatchRows", "CosineRows", "LayerRows", "OnlineRows", "Plug", "Rows", "StreamingRows",
           "bn_moved", "h_back", "own_steps", "rows_for", "sigmoid_", "supported"]


def sigmoid_(a: Arr) -> Arr:
    """σ(a) in place, as ``½·tanh(a/2) + ½``."""
    a *= 0.5
    np.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


def _np(t: Tensor | None) -> Arr | None:
    return None if t is None else t.detach().numpy()


class Rows:
    """A site that does nothing (``none``, ``weight``, a method without a site here); the base
    of the others. ``reads_h``: the site reads the h rows its input came from (``CosineRows``)
    and adds to their gradient (``backward_h``)."""

    reads_h = False

    def __init__(self, spec: Any, arrs: Sequence[Arr | None], steps: int, batch: int, t0: int,
                 hs: Arr) -> None:
        pass

    @staticmethod
    def tensors(spec: Any) -> list[Tensor | None]:
        """The tensors the site computes with, whose gradients ``grads`` returns."""
        return []

    @staticmethod
    def accepts(spec: Any, batch: int) -> bool:
        """Whether this class computes what ``spec`` computes for a batch of ``batch``."""
        return True

    @staticmethod
    def routes(spec: Any) -> bool:
        """Whether the site's backward moves state (Streaming Norm's ``GS``, Online Norm's
        controls): then it must see exactly the calls autograd reaches, which every call is when
        every parameter of the cell needs a gradient (``Plug.fits`` asks for that)."""
        return False

    def forward(self, a: Arr, t: int) -> Arr:
        """The site's output for the rows ``a [B, F]`` of step ``t``."""
        return a

    def backward(self, dy: Arr, t: int) -> Arr:
        """The gradient reaching ``a`` of step ``t`` from ``dy`` (steps taken last first)."""
        return dy

    def backward_h(self, t: int) -> Arr | None:
        """What the site adds to the gradient of step ``t``'s h rows (``reads_h`` sites)."""
        return None

    def end_forward(self) -> None:
        """After the window's forward: write back what the forward kept aside."""

    def begin_backward(self) -> None:
        """Before the first ``backward``."""

    def end_backward(self) -> None:
        """After the last ``backward``: write back what the backward kept aside."""

    def release(self) -> None:
        """No backward will come (the window's output needs no gradient): hand back what the
        site holds for one."""

    def grads(self) -> list[Arr | None]:
        """The gradients of ``tensors(spec)`` over the window (``None``: none)."""
        return []


class LayerRows(Rows):
    """``LayerNormSite`` without a bias: ``F.layer_norm(a, (F,), g, None, eps)`` per step::

        x̂ = (a − mean a)·r,  r = 1/sqrt(var a + ε),  y = x̂ ⊙ g
        da = r·(dy⊙g − mean(dy⊙g) − x̂ ⊙ mean(dy⊙g⊙x̂)),  dg = Σ dy ⊙ x̂
    """

    def __init__(self, spec: Any, arrs: Sequence[Arr | None], steps: int, batch: int, t0: int,
                 hs: Arr) -> None:
        g = arrs[0]
        assert g is not None
        self.g, self.eps = g, spec.eps
        self.xhat = np.zeros((steps, batch, g.shape[0]), g.dtype)
        self.r = np.zeros((steps, batch, 1), g.dtype)
        self.dy = np.zeros_like(self.xhat)  # each step's dy, for dg over the window at the end

    @staticmethod
    def tensors(spec: Any) -> list[Tensor | None]:
        return [spec.weight]

    @staticmethod
    def accepts(spec: Any, batch: int) -> bool:
        return spec.bias is None

    def forward(self, a: Arr, t: int) -> Arr:
        xc = a - a.mean(-1, keepdims=True)
        r = self.r[t]
        np.reciprocal(np.sqrt(np.einsum("bf,bf->b", xc, xc)[:, None] / a.shape[-1] + self.eps),
                      out=r)
        np.multiply(xc, r, out=self.xhat[t])
        return self.xhat[t] * self.g

    def backward(self, dy: Arr, t: int) -> Arr:
        xh = self.xhat[t]
        self.dy[t] = dy
        dyg = dy * self.g
        inv = 1.0 / dy.shape[-1]
        m1 = dyg.sum(-1, keepdims=True) * inv
        m2 = np.einsum("bf,bf->b", dyg, xh)[:, None] * inv
        return (dyg - m1 - xh * m2) * self.r[t]

    def grads(self) -> list[Arr | None]:
        return [np.einsum("tbf,tbf->f", self.dy, self.xhat)]


def own_steps(site: Any, t0: int, steps: int) -> int:
    """The steps of a window from ``t0`` whose Recurrent BN position is theirs alone (``t0 + t <
    T_max − 1``): the statistics they read are known when the window starts."""
    return max(0, min(steps, site.t_max - 1 - t0))


def bn_moved(mean: Arr, var: Arr, x: Arr, m: float) -> tuple[Arr, Arr]:
    """``bn_step``'s one-sample EMA of running statistics: ``δ = x − μ``, ``μ + m·δ`` and
    ``(1 − m)(σ² + m·δ²)``."""
    delta = x - mean
    return mean + m * delta, (var + m * delta * delta) * (1.0 - m)


class BatchRows(Rows):
    """``RecurrentBatchNormSite`` at batch size 1 in training, or any batch in eval
    (``_bn.bn_step``): normalize with the running statistics of position ``k = min(t0 + t,
    T_max − 1)``, then (training) move them by the EMA ``μ += m·δ; σ² = (1 − m)(σ² + m·δ²)``.
    The statistics are constants of the step, so ``da = dy ⊙ g·r``.

    Steps whose position no other step of the window shares (``t0 + t < T_max − 1``: every step
    of a window within ``T_max``) read statistics known when the window starts: those are read
    for the window at once, and their EMA moves once the forward is done (``end_forward``);
    steps at the last position, which they share, read and move it one after the other."""

    def __init__(self, spec: Any, arrs: Sequence[Arr | None], steps: int, batch: int, t0: int,
                 hs: Arr) -> None:
        g = arrs[0]
        assert g is not None
        self.g, self.b, self.mod, self.t0, self.train = g, arrs[1], spec, t0, spec.training
        self.mean, self.var = _np(spec.running_mean), _np(spec.running_var)
        self.last = spec.t_max - 1
        self.own = own_steps(spec, t0, steps) if self.train else steps
        ks = [min(t0 + t, self.last) for t in range(self.own)]
        self.M = np.zeros((steps, g.shape[0]), g.dtype)  # the mean each step reads
        self.M[:self.own] = self.mean[ks]
        self.r = np.ones((steps, g.shape[0]), g.dtype)  # 1/sqrt(var + ε) each step reads
        self.r[:self.own] = 1.0 / np.sqrt(self.var[ks] + spec.eps)
        self.xhat = np.zeros((steps, batch, g.shape[0]), g.dtype)
        self.dy = np.zeros_like(self.xhat)
        self.A = np.zeros((self.own if self.train else 0, g.shape[0]), g.dtype)  # their inputs
        self.called: list[int] = []  # the steps that called the site (the EMA moves for those)

    @staticmethod
    def tensors(spec: Any) -> list[Tensor | None]:
        return [spec.weight, spec.bias]

    @staticmethod
    def accepts(spec: Any, batch: int) -> bool:
        return (batch == 1 or not spec.training) and spec.running_mean.dtype == spec.weight.dtype

    def forward(self, a: Arr, t: int) -> Arr:
        xh = self.xhat[t]
        if self.train:
            self.called.append(t)
            if t < self.own:
                self.A[t] = a[0]
            else:  # the shared last position: read, then move, step by step
                mean, var, last = self.mean, self.var, self.last
                self.M[t] = mean[last]
                np.reciprocal(np.sqrt(var[last] + self.mod.eps), out=self.r[t])
                mean[last], var[last] = bn_moved(mean[last], var[last], a[0], self.mod.momentum)
        np.multiply(np.subtract(a, self.M[t], out=xh), self.r[t], out=xh)
        y = xh * self.g
        if self.b is not None:
            y += self.b
        return y

    def end_forward(self) -> None:
        own = [t for t in self.called if t < self.own]
        if not own:
            return
        ks = [self.t0 + t for t in own]
        self.mean[ks], self.var[ks] = bn_moved(self.M[own], self.var[ks], self.A[own],
                                               self.mod.momentum)

    def backward(self, dy: Arr, t: int) -> Arr:
        self.dy[t] = dy
        return dy * (self.g * self.r[t])

    def grads(self) -> list[Arr | None]:
        return [np.einsum("tbf,tbf->f", self.dy, self.xhat),
                None if self.b is None else self.dy.sum((0, 1))]


class OnlineRows(Rows):
    """``OnlineNormSite`` (``OnlineNormFn``, then the affine, then layer scaling or clamping)::

        y = (a − μ)·s,  s = 1/sqrt(σ² + ε)
        σ² ← α σ² + (1 − α) var_b + α(1 − α) δ²,  μ ← μ + (1 − α) δ   (α = α_f, δ = mean_b a − μ)
        z = y ⊙ w + b;  out = z / sqrt(mean_group(z²) + ε)  (or clamp(z, ±c))

    backward: ``dz = rs·dout − z·rs³·mean_group(dout ⊙ z)`` (or the clamp's mask), ``gy = dz ⊙ w``
    and the backward control ``x̃' = gy − (1 − α_b) v y; a' = x̃' s − (1 − α_b) u`` with ``u``, ``v``
    updated per call (nothing with ``α_b = 1``)."""

    def __init__(self, spec: Any, arrs: Sequence[Arr | None], steps: int, batch: int, t0: int,
                 hs: Arr) -> None:
        self.w, self.b = arrs[0], arrs[1]
        assert self.w is not None and self.b is not None
        self.mod, self.train = spec, spec.training
        self.mean, self.var, self.u, self.v = (_np(t) for t in (spec.mean, spec.var, spec.u,
                                                                 spec.v))
        f, dt, g = self.w.shape[0], self.w.dtype, spec.groups
        self.y, self.z, self.dz = (np.zeros((steps, batch, f), dt) for _ in range(3))
        self.zg = self.z.reshape(steps, batch, g, f // g)  # per gate, for layer scaling
        self.s = np.zeros((steps, f), dt)
        self.rs, self.rs3 = np.zeros((2, steps, batch, g, 1), dt)  # 1/rms, its cube
        self.inv = g / f
        af = spec.alpha_f
        self.c = (af, af * (1 - af), 1 - af)

    @staticmethod
    def tensors(spec: Any) -> list[Tensor | None]:
        return [spec.weight, spec.bias]

    @staticmethod
    def accepts(spec: Any, batch: int) -> bool:
        return spec.mean.dtype == spec.weight.dtype

    @staticmethod
    def routes(spec: Any) -> bool:
        return spec.training and spec.alpha_b < 1.0 and spec.update_controls

    def forward(self, a: Arr, t: int) -> Arr:
        mod, s, y, z = self.mod, self.s[t], self.y[t], self.z[t]
        np.add(self.var, mod.eps, out=s)
        np.reciprocal(np.sqrt(s, out=s), out=s)
        np.multiply(np.subtract(a, self.mean, out=y), s, out=y)
        if self.train:
            af, c1, c2 = self.c
            delta = (a[0] if a.shape[0] == 1 else a.mean(0)) - self.mean
            self.var *= af
            if a.shape[0] > 1:
                self.var += c2 * a.var(0)
            self.var += c1 * (delta * delta)
            self.mean += c2 * delta
        np.add(np.multiply(y, self.w, out=z), self.b, out=z)
        if mod.clamp is not None:
            return np.clip(z, -mod.clamp, mod.clamp)
        if not mod.layer_scaling:
            return z.copy()
        zg, rs = self.zg[t], self.rs[t]
        if zg.shape[0] == 1:  # a few groups: their scale in Python floats (fewer numpy calls)
            inv, eps, z0 = self.inv, mod.eps, zg[0]
            sq = [float(np.dot(z0[0], z0[0]))] if z0.shape[0] == 1 else np.einsum(
                "gf,gf->g", z0, z0).tolist()
            r = [1.0 / math.sqrt(v * inv + eps) for v in sq]
            rs[0, :, 0] = r
            self.rs3[t, 0, :, 0] = [x * x * x for x in r]
        else:
            np.multiply(np.einsum("bgf,bgf->bg", zg, zg)[..., None], self.inv, out=rs)
            rs += mod.eps
            np.reciprocal(np.sqrt(rs, out=rs), out=rs)
            np.multiply(rs * rs, rs, out=self.rs3[t])
        return (zg * rs).reshape(z.shape)

    def backward(self, dy: Arr, t: int) -> Arr:
        mod, z, dz = self.mod, self.z[t], self.dz[t]
        if mod.clamp is not None:
            np.multiply(dy, np.abs(z) <= mod.clamp, out=dz)
        elif mod.layer_scaling:  # dz = rs·dy − z·rs³·mean_group(dy ⊙ z)
            zg, dg, dzg = self.zg[t], dy.reshape(self.zg[t].shape), self.dz[t].reshape(
                self.zg[t].shape)
            if zg.shape[:2] == (1, 1):  # one row, one group: a Python float
                m: Any = float(np.dot(dg[0, 0], zg[0, 0])) * float(self.rs3[t, 0, 0, 0]) * self.inv
            else:
                m = np.einsum("bgf,bgf->bg", dg, zg)[..., None]
                m *= self.rs3[t]
                m *= self.inv
            np.subtract(np.multiply(dg, self.rs[t], out=dzg), zg * m, out=dzg)
        else:
            dz[...] = dy
        gy = dz * self.w
        ab = 1.0 - mod.alpha_b
        if ab == 0.0 or not self.train:
            gy *= self.s[t]
            return gy
        y = self.y[t]
        gxt = gy - ab * self.v * y
        gx = gxt * self.s[t] - ab * self.u
        if mod.update_controls:
            self.v += (gxt * y).mean(0)
            self.u += gx.mean(0)
        return gx

    def grads(self) -> list[Arr | None]:
        return [np.einsum("tbf,tbf->f", self.dz, self.y), self.dz.sum((0, 1))]


class CosineRows(Rows):
    """The ``h`` term of a ``CosineLinear`` (``gain ⊙ W h / (‖h‖·‖w_j‖ + ε)``) on the rows
    ``W h`` the kernel computed, for the units ``spec = (linear, lo, hi)``. Its tensors are the
    gains and the row norms ``‖w_j‖`` (computed by torch, so their gradient reaches ``W``)::

        y = g ⊙ a / d,  d = q·n + ε,  q = ‖h‖
        da = dy ⊙ g/d,  dg = Σ dy ⊙ a/d,  dn = −Σ da ⊙ a·q/d,  dh += −(Σ_j da ⊙ a ⊙ n/d)·h/q
    """

    reads_h = True

    def __init__(self, spec: Any, arrs: Sequence[Arr | None], steps: int, batch: int, t0: int,
                 hs: Arr) -> None:
        self.g, self.n = arrs
        assert self.g is not None and self.n is not None
        self.eps, self.hs = spec[0].eps, hs
        f, dt = self.g.shape[0], self.g.dtype
        self.a, self.dy, self.da, self.gd, self.nd = np.zeros((5, steps, batch, f), dt)
        self.d = np.ones((steps, batch, f), dt)  # a step not run (no h term) adds 0 · 0/1
        self.q = np.zeros((steps, batch, 1), dt)

    @staticmethod
    def tensors(spec: Any) -> list[Tensor | None]:
        lin, lo, hi = spec
        return [lin.gain[lo:hi], torch.linalg.vector_norm(lin.weight[lo:hi], dim=1)]

    def forward(self, a: Arr, t: int) -> Arr:
        h, q, d = self.hs[t], self.q[t], self.d[t]
        np.sqrt(np.einsum("bh,bh->b", h, h)[:, None], out=q)
        np.multiply(q, self.n, out=d)
        d += self.eps
        np.divide(self.g, d, out=self.gd[t])
        np.divide(self.n, d, out=self.nd[t])
        self.a[t] = a
        return a * self.gd[t]

    def backward(self, dy: Arr, t: int) -> Arr:
        self.dy[t] = dy
        return np.multiply(dy, self.gd[t], out=self.da[t])

    def backward_h(self, t: int) -> Arr | None:
        q = self.q[t]
        if q.shape[0] == 1:  # one row: its coefficient as a Python float (fewer numpy calls)
            qv = float(q[0, 0])  # ‖h‖ = 0: no direction, no gradient (torch's)
            dq = float(np.dot(self.da[t, 0], self.a[t, 0] * self.nd[t, 0]))
            return self.hs[t] * (-dq / qv if qv > 0.0 else 0.0)
        dq = np.einsum("bf,bf->b", self.da[t], self.a[t] * self.nd[t])[:, None]
        coef = np.zeros_like(q)
        np.divide(dq, q, out=coef, where=q > 0)
        coef *= -1.0
        return coef * self.hs[t]

    def grads(self) -> list[Arr | None]:
        ad = self.a / self.d
        return [np.einsum("tbf,tbf->f", self.dy, ad),
                -np.einsum("tbf,tbf->f", self.da, ad * self.q)]


class StreamingRows(Rows):
    """``StreamingSite`` in training, one call per step, through the workers of the LSTM kernel
    (``models.fast.sites``): ``RowSite`` at batch size 1 with per-unit raw moments (the default
    ``online`` preset), ``WindowSite`` otherwise. Fold, ``S``/``n`` in the forward and
    ``GS``/``m`` in the backward move as on the generic path (every call routes a statistic
    gradient: ``routes``)."""

    def __init__(self, spec: Any, arrs: Sequence[Arr | None], steps: int, batch: int, t0: int,
                 hs: Arr) -> None:
        w, b = arrs
        assert w is not None
        self.row = RowSite.takes(spec, batch)
        if self.row:
            self.rowsite = held_row(spec, steps, w.dtype)
            self.gen = self.rowsite.gen
            self.site: WindowSite = self.rowsite.reset(w, b)
            self.dys = np.zeros((steps, w.shape[0]), w.dtype)
        else:
            self.site = WindowSite(spec, w, b)

    @staticmethod
    def tensors(spec: Any) -> list[Tensor | None]:
        return [spec.weight, spec.bias]

    @staticmethod
    def accepts(spec: Any, batch: int) -> bool:
        return spec.training and spec.memory.dtype == spec.weight.dtype

    @staticmethod
    def routes(spec: Any) -> bool:
        return True

    def forward(self, a: Arr, t: int) -> Arr:
        return self.site.step(a[0])[None] if self.row else self.site.step(a)

    def end_forward(self) -> None:
        self.site.sync_forward()

    def begin_backward(self) -> None:
        self.k = self.site.calls  # the calls the forward made (no first one after a None state)
        if self.row:
            self.rowsite.check(self.gen)
            self.site.begin(self.dys[:self.k], [True] * self.k)
        else:
            self.site.begin_backward()

    def backward(self, dy: Arr, t: int) -> Arr:
        self.k -= 1
        if self.row:
            self.dys[self.k] = dy[0]
            return self.site.step_back(self.dys[self.k], True)[None]
        return self.site.step_back(dy, True)

    def end_backward(self) -> None:
        self.site.end_backward()
        self.release()

    def release(self) -> None:
        if self.row:
            self.rowsite.release()

    def grads(self) -> list[Arr | None]:
        return list(self.site.grads())


_BY_SITE: dict[type, type[Rows]] = {LayerNormSite: LayerRows, RecurrentBatchNormSite: BatchRows,
                                    OnlineNormSite: OnlineRows, StreamingSite: StreamingRows}


def rows_for(mod: Any, batch: int) -> type[Rows] | None:
    """The class that runs the site module ``mod`` (``None``: the identity) for a batch of
    ``batch``, or ``None`` where no class here computes what it computes."""
    if mod is None:
        return Rows
    cls = _BY_SITE.get(type(mod))
    return cls if cls is not None and cls.accepts(mod, batch) else None


def _h_site(lin: Any, mod: Any, lo: int, hi: int, batch: int) -> tuple[type[Rows], Any] | None:
    """The h site for the units ``[lo, hi)`` of ``W_h h``: the site module's class, or where the
    method has none, a ``CosineLinear``'s h term (``CosineRows``) or the identity (``Rows``: a
    plain matmul with the weight, which the kernel does)."""
    if mod is not None:
        cls = rows_for(mod, batch)
        return None if cls is None else (cls, mod)
    return (CosineRows, (lin, lo, hi)) if isinstance(lin, CosineLinear) else (Rows, None)


def h_back(site: Rows, da: Arr, t: int, Wh: Arr, da_h: Arr) -> Arr:
    """The gradient reaching ``h_{t-1}`` through the h term ``N_h(W_h h)`` of step ``t`` given
    ``da`` at its output; ``da_h`` receives ``N_h'(da)`` (for ``dW_hh``)."""
    da_h[...] = site.backward(da, t)
    dh = np.matmul(da_h, Wh)
    if site.reads_h:
        dh += site.backward_h(t)
    return dh


class Plug:
    """The sites of one window: ``(class, spec)`` pairs, their tensors flattened for a kernel
    ``Function``'s ``apply`` and the gradients handed back in that order. ``t0``: the window's
    position in its sequence; ``fresh``: a ``None`` start state (the first step has no h term,
    and its h sites are not called, as on the generic path)."""

    def __init__(self, sites: Sequence[tuple[type[Rows], Any]], t0: int, fresh: bool) -> None:
        self.sites, self.t0, self.fresh = list(sites), t0, fresh
        self.flat: list[list[Tensor | None]] = []
        self.built: list[Rows] = []

    def tensors(self) -> list[Tensor | None]:
        """The sites' tensors, in order (computed here: a cosine site's row norms)."""
        self.flat = [cls.tensors(spec) for cls, spec in self.sites]
        return [t for ts in self.flat for t in ts]

    def build(self, tensors: Sequence[Tensor | None], steps: int, batch: int, hs: Arr
              ) -> list[Rows]:
        """The site objects of a window of ``steps`` × ``batch``; ``hs[t]``: the h rows of
        step ``t``'s h term."""
        out, i = [], 0
        for (cls, spec), ts in zip(self.sites, self.flat, strict=True):
            arrs = [_np(t) for t in tensors[i:i + len(ts)]]
            out.append(cls(spec, arrs, steps, batch, self.t0, hs))
            i += len(ts)
        self.built = out
        return out

    @classmethod
    def of(cls, cell: Any, batch: int, t0: int, fresh: bool,
           h_sites: Sequence[tuple[str, int, int]], others: Sequence[str]) -> Plug | None:
        """The sites of ``cell``'s window: its h sites (module name, units ``[lo, hi)`` of
        ``W_h h``), then the ``others`` by module name (``None`` modules: the identity); or
        ``None`` where a site is not one these classes compute."""
        m = cell._modules
        sites = [_h_site(m.get("lh"), m.get(name), lo, hi, batch) for name, lo, hi in h_sites]
        for name in others:
            kind = rows_for(m.get(name), batch)
            sites.append(None if kind is None else (kind, m.get(name)))
        if any(s is None for s in sites):
            return None
        return cls([s for s in sites if s is not None], t0, fresh)

    @property
    def first(self) -> int:
        """The first step with an h term (1 after a ``None`` state)."""
        return 1 if self.fresh else 0

    def end_forward(self) -> None:
        """Every built site's ``end_forward``."""
        for s in self.built:
            s.end_forward()

    def begin_backward(self) -> None:
        """Every built site's ``begin_backward``."""
        for s in self.built:
            s.begin_backward()

    def end_backward(self) -> None:
        """Every built site's ``end_backward``."""
        for s in self.built:
            s.end_backward()

    def done(self, out: Tensor) -> Tensor:
        """``out`` of the kernel, the sites released if no backward will come."""
        if not out.requires_grad:
            for s in self.built:
                s.release()
        return out

    def fits(self, cell: Any) -> bool:
        """Whether the kernel computes this window as the generic path would: a site whose
        backward moves state needs every call reached, so every parameter needing a gradient
        (or no graph at all)."""
        return not (torch.is_grad_enabled() and any(cls.routes(spec) for cls, spec in self.sites)
                    and not all(p.requires_grad for p in cell.parameters()))

    def grads(self, needs: Sequence[bool], idle: Sequence[int] = ()) -> list[Tensor | None]:
        """Each built site's tensor gradients, ``None`` where not needed and for the sites in
        ``idle`` (never called in the window: autograd would leave their ``.grad`` alone)."""
        flat = [None if i in idle else g for i, s in enumerate(self.built) for g in s.grads()]
        return [tensor(g) if n else None for g, n in zip(flat, needs, strict=True)]


def supported(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None,
              plug: Callable[[Any, int, int, bool], Plug | None], kernel: str,
              fused_up_to: int = 0) -> bool:
    """Whether a kernel with this ``plug`` runs ``cell``'s window ``x [T, B, I]`` from ``state``:
    every site has a class here that takes it, ``Plug.fits``, ``switch.fits``; a method with no
    sites (``none``, ``weight``) stays on PyTorch's fused kernel up to ``fused_up_to`` steps."""
    if cell.fused and x.shape[0] <= fused_up_to:
        return False
    p = plug(cell, x.shape[1], 0, state is None)
    return p is not None and p.fits(cell) and fits(cell, x, state, kernel)
