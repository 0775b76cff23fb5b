"""A GRU window in numpy for the methods with nothing to do per step (``none``, ``weight``).

PyTorch's own CPU GRU (``torch.gru``) is about 3× slower than its LSTM at batch size 1 although a
GRU has three gates to the LSTM's four (``bench/cells.py``). Here one ``autograd.Function`` runs
a whole window: the input term of every step in one matmul, then per step one matmul with
``W_hh`` and a few numpy calls on rows (~0.3 µs each, where a torch op costs ~1.2 µs); the
backward walks the steps back by hand (the derivation is in ``_GRUWindow.backward``) and forms
the weight gradients as one matmul over the window. Weight Norm's ``W = g·v/‖v‖`` is computed by
its parametrization before the call, so its gradient reaches ``g`` and ``v`` through autograd.

It computes PyTorch's GRU (gate order r, z, n; ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``,
``h' = (1 − z) ⊙ n + z ⊙ h``) to float rounding, not bit for bit: σ is ``½·tanh(a/2) + ½``
(no overflow in float32) and the sums run in another order. ``tests/test_fastgru.py`` checks it
against the generic per-step cell and ``torch.gru`` (outputs, every gradient, float32 and
float64, windows 1 to 64, batches 1 to 5) and ``gradcheck``\\s it in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .switch import is_enabled

__all__ = ["try_window"]


def _sigmoid(a: np.ndarray) -> np.ndarray:
    """σ(a) in place, as ``½·tanh(a/2) + ½``."""
    a *= 0.5
    np.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


class _GRUWindow(torch.autograd.Function):
    """``out [T, B, H]`` of a GRU window from ``h0 [B, H]``; the biases are ``bias [3H]`` (the
    input side's r, z, n) and ``bias_hn [H]`` (the hidden side's n: inside ``r ⊙ (…)``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor,
                bias_hn: Tensor) -> Tensor:
        X, Wi, Wh = x.detach().numpy(), w_ih.detach().numpy(), w_hh.detach().numpy()
        steps, batch, _ = X.shape
        h = Wh.shape[1]
        gx = np.matmul(X, Wi.T)  # [T, B, 3H]: every step's input term at once
        gx += bias.detach().numpy()
        bhn, WhT = bias_hn.detach().numpy(), Wh.T
        hs = np.empty((steps + 1, batch, h), X.dtype)  # h_{t-1} for each step, then the last
        hs[0] = h0.detach().numpy()
        rz = np.empty((steps, batch, 2 * h), X.dtype)
        n = np.empty((steps, batch, h), X.dtype)
        ghn = np.empty((steps, batch, h), X.dtype)  # W_hn h + b_hn, which r gates
        for t in range(steps):
            gh = np.matmul(hs[t], WhT)
            np.add(gx[t, :, :2 * h], gh[:, :2 * h], out=rz[t])
            _sigmoid(rz[t])
            np.add(gh[:, 2 * h:], bhn, out=ghn[t])
            np.multiply(rz[t, :, :h], ghn[t], out=n[t])
            n[t] += gx[t, :, 2 * h:]
            np.tanh(n[t], out=n[t])
            np.subtract(hs[t], n[t], out=hs[t + 1])  # h' = n + z ⊙ (h − n)
            hs[t + 1] *= rz[t, :, h:]
            hs[t + 1] += n[t]
        ctx.saved = (X, Wi, Wh, hs, rz, n, ghn)
        return torch.from_numpy(hs[1:].copy())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        """Per step, last first, with ``dh`` the gradient reaching ``h'``::

            dn = dh ⊙ (1 − z),  dz = dh ⊙ (h − n),  da_n = dn ⊙ (1 − n²)
            da_r = (da_n ⊙ ghn) ⊙ r(1 − r),  da_z = dz ⊙ z(1 − z),  dghn = da_n ⊙ r
            dh_prev = dh ⊙ z + [da_r, da_z, dghn] · W_hh

        and over the window ``dW_ih = Σ da_xᵀ x``, ``dW_hh = Σ [da_r, da_z, dghn]ᵀ h_prev``."""
        X, Wi, Wh, hs, rz, n, ghn = ctx.saved
        steps, batch, _ = X.shape
        h = Wh.shape[1]
        D = dout.numpy()
        da_x = np.empty((steps, batch, 3 * h), X.dtype)  # ∂/∂ (W_ih x + bias) per step
        da_h = np.empty((steps, batch, 3 * h), X.dtype)  # ∂/∂ (W_hh h) per step
        dh = np.zeros((batch, h), X.dtype)
        for t in range(steps - 1, -1, -1):
            dh += D[t]
            r, z, nt = rz[t, :, :h], rz[t, :, h:], n[t]
            ax, ah = da_x[t], da_h[t]
            dn = dh - dh * z
            np.multiply(1.0 - nt * nt, dn, out=ax[:, 2 * h:])  # da_n
            np.multiply(ax[:, 2 * h:], r, out=ah[:, 2 * h:])  # dghn
            np.multiply(ax[:, 2 * h:], ghn[t], out=ah[:, :h])  # dr, then da_r
            ah[:, :h] *= r - r * r
            np.subtract(hs[t], nt, out=ah[:, h:2 * h])  # dz, then da_z
            ah[:, h:2 * h] *= dh
            ah[:, h:2 * h] *= z - z * z
            ax[:, :2 * h] = ah[:, :2 * h]
            dh *= z
            dh += np.matmul(ah, Wh)
        need = ctx.needs_input_grad
        flat_x, flat_h = da_x.reshape(-1, 3 * h), da_h.reshape(-1, 3 * h)
        grads: list[np.ndarray | None] = [
            np.matmul(da_x, Wi) if need[0] else None,
            dh if need[1] else None,
            np.matmul(flat_x.T, X.reshape(-1, X.shape[2])) if need[2] else None,
            np.matmul(flat_h.T, hs[:-1].reshape(-1, h)) if need[3] else None,
            flat_x.sum(0) if need[4] else None,
            flat_h[:, 2 * h:].sum(0) if need[5] else None,
        ]
        return tuple(None if g is None else torch.from_numpy(np.ascontiguousarray(g))
                     for g in grads)


def try_window(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor,
               bias_hn: Tensor) -> Tensor | None:
    """The window's outputs ``[T, B, H]`` through the kernel, or ``None`` where it does not apply
    (switched off, CUDA, a dtype other than float32/float64, mixed dtypes, an empty window)."""
    args = (x, h0, w_ih, w_hh, bias, bias_hn)
    if (not is_enabled() or x.dim() != 3 or x.shape[0] == 0
            or x.dtype not in (torch.float32, torch.float64)
            or any(a.dtype != x.dtype or a.device.type != "cpu" for a in args)):
        return None
    return _GRUWindow.apply(*args)
