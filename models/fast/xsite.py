"""The input term's pieces over a whole window at once, for the cells whose recurrence runs in
numpy (``gru_kernel``, ``rnn_kernel``, ``lstm_window``): Streaming Norm's and Recurrent BN's
input-to-hidden sites (``forward_seq``) and a cosine ``W_x x`` (``linear``).

The generic ``Site.forward_seq`` calls the site once per step: ~20 torch ops and an
``autograd.Function`` each. Here one ``Function`` makes the window's calls in order with the LSTM
kernel's ``RowSite`` (batch size 1, per-unit raw moments: the ``online`` preset) or ``WindowSite``
(``models.fast.sites``): the fold, ``S``/``n`` moved call by call in the
forward and ``GS``/``m`` last call first in the backward, as autograd does on the generic path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..norms.cosine import CosineLinear
from ..norms.recurrent_batch import RecurrentBatchNormSite
from ..norms.streaming import StreamingSite
from .arrays import tensor
from .rows import bn_moved, own_steps
from .sites import RowSite, WindowSite, held_row, kept_row
from .switch import is_enabled

__all__ = ["BatchNormWindow", "CosineWindow", "forward_seq", "linear"]


class _StreamingWindow(torch.autograd.Function):
    """``y [T, B, F]``: ``site`` called on each step of ``a [T, B, F]`` in order."""

    @staticmethod
    def forward(ctx: Any, site: StreamingSite, a: Tensor, w: Tensor, b: Tensor | None
                ) -> Tensor:
        W, B, A = w.detach().numpy(), None if b is None else b.detach().numpy(), a.detach().numpy()
        steps, batch, _ = A.shape
        ctx.row = None
        if RowSite.takes(site, batch):
            row = ctx.row = held_row(site, steps, A.dtype)
            ctx.gen = row.gen
            ws: WindowSite = row.reset(W, B)
            y = ws.run(A).reshape(A.shape).copy()
        else:
            ws = WindowSite(site, W, B)
            y = ws.run(A)
        ws.sync_forward()
        ctx.ws = ws
        ctx.save_for_backward(w, b)  # an in-place change before backward raises
        return torch.from_numpy(y)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        _ = ctx.saved_tensors
        ws, need = ctx.ws, ctx.needs_input_grad
        D = dy.numpy()
        if ctx.row is not None:
            ctx.row.check(ctx.gen)
            D = np.ascontiguousarray(D.reshape(D.shape[0], -1))
            ws.begin(D, [need[1]] * D.shape[0])
        else:  # a call whose input needs no gradient routes nothing (it has no node)
            ws.begin_backward()
        da = ws.run_back(D, need[1]).reshape(dy.shape)
        ws.end_backward()
        if ctx.row is not None:
            ctx.row.release()
        dw, db = ws.grads()
        return (None, *(tensor(g) if n else None
                        for g, n in ((da, need[1]), (dw, need[2]), (db, need[3]))))


class BatchNormWindow(torch.autograd.Function):
    """``RecurrentBatchNormSite.forward_seq`` of a window ``a [T, B, F]`` at batch size 1 in
    training, or any batch in eval, in numpy: each step normalizes with its position's running
    statistics as read, then (training) the EMA moves them — a window's own positions at once,
    the shared last one (``t0 + t ≥ T_max − 1``) step after step. The statistics are constants of
    the step: ``da = dy ⊙ g·r``, ``dg = Σ dy ⊙ x̂``, ``db = Σ dy``."""

    @staticmethod
    def forward(ctx: Any, site: RecurrentBatchNormSite, a: Tensor, t0: int, w: Tensor,
                b: Tensor | None) -> Tensor:
        A, W = a.detach().numpy(), w.detach().numpy()
        mean, var = site.running_mean.numpy(), site.running_var.numpy()
        steps, last, m = A.shape[0], site.t_max - 1, site.momentum
        ks = [min(t0 + i, last) for i in range(steps)]
        M, V = mean[ks], var[ks]  # copies: the statistics as each step reads them
        if site.training:
            own = own_steps(site, t0, steps)  # their positions' EMA at once
            mean[t0:t0 + own], var[t0:t0 + own] = bn_moved(M[:own], V[:own], A[:own, 0], m)
            for i in range(own, steps):  # the last position, step after step
                M[i], V[i] = mean[last], var[last]
                mean[last], var[last] = bn_moved(M[i], V[i], A[i, 0], m)
        R = 1.0 / np.sqrt(V + site.eps)
        xhat = (A - M[:, None]) * R[:, None]
        y = xhat * W
        if b is not None:
            y += b.detach().numpy()
        ctx.saved = (xhat, R * W)
        ctx.save_for_backward(w, b)  # an in-place change before backward raises
        return torch.from_numpy(y)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        _ = ctx.saved_tensors
        xhat, RW = ctx.saved
        need, D = ctx.needs_input_grad, dy.numpy()
        return (None, tensor(D * RW[:, None]) if need[1] else None, None,
                tensor(np.einsum("tbf,tbf->f", D, xhat)) if need[3] else None,
                tensor(D.sum((0, 1))) if need[4] else None)


def forward_seq(site: Any, a: Tensor, t0: int = 0) -> Tensor:
    """``site.forward_seq(a, t0)``; a Streaming Norm site in training, or a Recurrent BN site at
    batch size 1 or in eval, float32/float64 on the CPU, runs the window at once here."""
    if (type(site) is RecurrentBatchNormSite and (a.shape[1] == 1 or not site.training)
            and is_enabled("xsite") and a.dim() == 3 and a.device.type == "cpu"
            and a.dtype == site.weight.dtype == site.running_mean.dtype
            and a.dtype in (torch.float32, torch.float64)):
        return BatchNormWindow.apply(site, a, t0, site.weight, site.bias)
    w = getattr(site, "weight", None)
    if (type(site) is StreamingSite and site.training and is_enabled("xsite") and w is not None
            and a.dtype == w.dtype == site.memory.dtype and a.device.type == "cpu"
            and a.dtype in (torch.float32, torch.float64) and a.dim() == 3):
        y = _StreamingWindow.apply(site, a, w, site.bias)
        if not y.requires_grad and RowSite.takes(site, a.shape[1]):  # no backward will come: hand
            row = kept_row(site, a.shape[0], w.detach().numpy().dtype)  # the row just taken back
            if row is not None:
                row.release()
        return y
    return site.forward_seq(a, t0)


class CosineWindow(torch.autograd.Function):
    """``CosineLinear`` on every row of ``x [..., I]`` (``gain ⊙ W x / (‖x‖·‖w_j‖ + ε)``) with a
    hand-written backward (torch's takes ~20 ops for it)::

        D = x Wᵀ,  d = ‖x‖·n + ε (n_j = ‖w_j‖),  C = D / d,  y = C ⊙ g
        dg = Σ dy ⊙ C,  dD = dy ⊙ g / d,  e = −Σ_j dD ⊙ C   (= ∂/∂d summed with n, per row: ·n)
        dx = dD W + (Σ_j e_j n_j / ‖x‖) x,  dW = dDᵀ x + (Σ_rows e ‖x‖ / n) w
    (a zero ``x`` or ``w_j`` passes no gradient through its norm, as torch's)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, gain: Tensor, eps: float) -> Tensor:
        X, W, g = x.detach().numpy(), w.detach().numpy(), gain.detach().numpy()
        X2 = X.reshape(-1, X.shape[-1])
        xn = np.sqrt(np.einsum("ri,ri->r", X2, X2))[:, None]
        n = np.sqrt(np.einsum("fi,fi->f", W, W))
        d = xn * n
        d += eps
        C = np.matmul(X2, W.T)
        C /= d
        ctx.saved = (X2, W, g, xn, n, d, C)
        ctx.save_for_backward(w, gain)  # an in-place change before backward raises
        return torch.from_numpy((C * g).reshape(*X.shape[:-1], -1))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        _ = ctx.saved_tensors
        X2, W, g, xn, n, d, C = ctx.saved
        need = ctx.needs_input_grad
        DY = dy.numpy().reshape(C.shape)
        dD = DY * g
        dD /= d
        e = -(dD * C)  # ∂loss/∂d per row and unit (d = ‖x‖·n + ε)
        dx = dw = None
        if need[0]:
            coef = np.zeros_like(xn)
            np.divide((e * n).sum(-1, keepdims=True), xn, out=coef, where=xn > 0)
            dx = (np.matmul(dD, W) + coef * X2).reshape((*dy.shape[:-1], W.shape[1]))
        if need[1]:
            coef_w = np.zeros_like(n)
            np.divide(np.einsum("rf,r->f", e, xn[:, 0]), n, out=coef_w, where=n > 0)
            dw = np.matmul(dD.T, X2) + coef_w[:, None] * W
        dg = np.einsum("rf,rf->f", DY, C) if need[2] else None
        return tensor(dx), tensor(dw), tensor(dg), None


def linear(lin: Any, x: Tensor) -> Tensor:
    """``lin(x)`` for a window ``x``; a ``CosineLinear``, float32/float64 on the CPU, runs here."""
    if (type(lin) is CosineLinear and is_enabled("xsite") and x.dtype == lin.weight.dtype
            == lin.gain.dtype and x.dtype in (torch.float32, torch.float64)
            and x.device.type == "cpu"):
        return CosineWindow.apply(x, lin.weight, lin.gain, lin.eps)
    return lin(x)
