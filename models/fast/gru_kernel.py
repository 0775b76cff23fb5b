"""A GRU window in numpy: the recurrence of ``none``, ``weight`` and ``layer`` GRUs.

PyTorch's own CPU GRU (``torch.gru``) is about 3× slower than its LSTM at batch size 1 although a
GRU has three gates to the LSTM's four, and a ``layer`` GRU's per-step autograd loop builds ~30
tiny torch ops a step (~1.2 µs of dispatch each). How a window runs here:

- the **input term** of every step, ``N_x(W_x x) + b`` (``GRUCell.input_term``), is computed by
  torch for the whole window at once, so its normalization and its gradient stay autograd's;
- the **recurrence** is one ``autograd.Function``: per step one matmul with ``W_hh`` and a few
  numpy calls on rows (~0.3 µs each); the backward walks the steps back by hand (derivation in
  ``_GRUWindow.backward``) and forms ``dW_hh`` as one matmul over the window;
- a method plugs in through its **h sites** (the ``N_h`` of ``W_h^{rz} h`` and ``W_h^n h``): a
  class with ``forward(a, t)``, ``backward(dy, t)`` and ``grads()`` on numpy rows
  (``models.fast.rows``: ``PlainRows`` for ``none``, ``weight``; ``LayerRows`` for ``layer``).
  Weight Norm's ``W = g·v/‖v‖`` is computed by its parametrization before the call, so its
  gradient reaches ``g`` and ``v`` through autograd.

It computes the generic path's GRU (gate order r, z, n; ``n = tanh(a_n + r ⊙ (N(W_hn h) + b_hn))``,
``h' = (1 − z) ⊙ n + z ⊙ h``) to float rounding, not bit for bit: σ is ``½·tanh(a/2) + ½`` (no
overflow in float32) and sums run in another order. ``tests/test_fastrecurrent.py`` checks it
against ``torch.gru`` and the per-step cell (outputs, every gradient, float32 and float64, windows
1 to 64, batches 1 to 5) and ``gradcheck``\\s it in float64. A zero start state runs as an
explicit zero ``h``: its ``W_h h`` is exactly zero, a Layer Norm of it is zero, and ``dW_hh`` gets
nothing from it, as on the generic path, where a ``None`` state skips the term.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..norms.layer import LayerNormSite
from .arrays import Arr
from .rows import LayerRows, PlainRows, sigmoid_
from .switch import fits

__all__ = ["supports", "window"]


class _GRUWindow(torch.autograd.Function):
    """``out [T, B, H]`` of a GRU window from the input term ``gx [T, B, 3H]`` and ``h0 [B, H]``,
    with ``W_hh [3H, H]``, ``b_hn [H]`` (inside ``r ⊙ (…)``) and, for ``layer``, the h sites'
    gains ``g_rz [2H]``, ``g_n [H]`` (``None``: plain sites)."""

    @staticmethod
    def forward(ctx: Any, gx: Tensor, h0: Tensor, w_hh: Tensor, bias_hn: Tensor,
                g_rz: Tensor | None, g_n: Tensor | None, eps: float) -> Tensor:
        GX, Wh = gx.detach().numpy(), w_hh.detach().numpy()
        steps, batch, _ = GX.shape
        h = Wh.shape[1]
        if g_rz is None or g_n is None:
            s_rz: Any = PlainRows()
            s_n: Any = PlainRows()
        else:
            s_rz = LayerRows(g_rz.detach().numpy(), eps, steps, batch)
            s_n = LayerRows(g_n.detach().numpy(), eps, steps, batch)
        bhn, WhT = bias_hn.detach().numpy(), Wh.T
        hs = np.empty((steps + 1, batch, h), GX.dtype)  # h_{t-1} for each step, then the last
        hs[0] = h0.detach().numpy()
        rz = np.empty((steps, batch, 2 * h), GX.dtype)
        n = np.empty((steps, batch, h), GX.dtype)
        ghn = np.empty((steps, batch, h), GX.dtype)  # N(W_hn h) + b_hn, which r gates
        for t in range(steps):
            gh = np.matmul(hs[t], WhT)
            np.add(GX[t, :, :2 * h], s_rz.forward(gh[:, :2 * h], t), out=rz[t])
            sigmoid_(rz[t])
            np.add(s_n.forward(gh[:, 2 * h:], t), bhn, out=ghn[t])
            np.multiply(rz[t, :, :h], ghn[t], out=n[t])
            n[t] += GX[t, :, 2 * h:]
            np.tanh(n[t], out=n[t])
            np.subtract(hs[t], n[t], out=hs[t + 1])  # h' = n + z ⊙ (h − n)
            hs[t + 1] *= rz[t, :, h:]
            hs[t + 1] += n[t]
        ctx.saved = (Wh, hs, rz, n, ghn, s_rz, s_n)
        ctx.save_for_backward(w_hh, g_rz, g_n)  # an in-place change before backward raises
        return torch.from_numpy(hs[1:].copy())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        """Per step, last first, with ``dh`` the gradient reaching ``h'``::

            dn = dh ⊙ (1 − z),  dz = dh ⊙ (h − n),  da_n = dn ⊙ (1 − n²)
            da_r = (da_n ⊙ ghn) ⊙ r(1 − r),  da_z = dz ⊙ z(1 − z),  dghn = da_n ⊙ r
            dh_prev = dh ⊙ z + [N_rz'(da_r, da_z), N_n'(dghn)] · W_hh

        (``N'``: an h site's backward) and over the window ``dW_hh = Σ [N'(…)]ᵀ h_prev``."""
        _ = ctx.saved_tensors  # autograd's check that the weights read below are unchanged
        Wh, hs, rz, n, ghn, s_rz, s_n = ctx.saved
        steps, batch, h = n.shape
        D = dout.numpy()
        da_x = np.empty((steps, batch, 3 * h), n.dtype)  # ∂/∂ gx per step
        da_h = np.empty((steps, batch, 3 * h), n.dtype)  # ∂/∂ (W_hh h) per step
        dy = np.empty((batch, 3 * h), n.dtype)  # ∂/∂ the h sites' outputs (b_hn's: [:, 2H:])
        dh = np.zeros((batch, h), n.dtype)
        dbhn = np.zeros(h, n.dtype)
        for t in range(steps - 1, -1, -1):
            dh += D[t]
            r, z, nt, ax = rz[t, :, :h], rz[t, :, h:], n[t], da_x[t]
            dn = dh - dh * z
            np.multiply(1.0 - nt * nt, dn, out=ax[:, 2 * h:])  # da_n
            np.multiply(ax[:, 2 * h:], r, out=dy[:, 2 * h:])  # dghn
            np.multiply(ax[:, 2 * h:], ghn[t], out=dy[:, :h])  # dr, then da_r
            dy[:, :h] *= r - r * r
            np.subtract(hs[t], nt, out=dy[:, h:2 * h])  # dz, then da_z
            dy[:, h:2 * h] *= dh
            dy[:, h:2 * h] *= z - z * z
            ax[:, :2 * h] = dy[:, :2 * h]
            dbhn += dy[:, 2 * h:].sum(0)
            da_h[t, :, :2 * h] = s_rz.backward(dy[:, :2 * h], t)
            da_h[t, :, 2 * h:] = s_n.backward(dy[:, 2 * h:], t)
            dh *= z
            dh += np.matmul(da_h[t], Wh)
        need = ctx.needs_input_grad
        grads: list[Arr | None] = [
            da_x if need[0] else None,
            dh if need[1] else None,
            np.matmul(da_h.reshape(-1, 3 * h).T, hs[:-1].reshape(-1, h)) if need[2] else None,
            dbhn if need[3] else None,
            s_rz.grads() if need[4] else None,
            s_n.grads() if need[5] else None,
        ]
        return (*(None if g is None else torch.from_numpy(np.ascontiguousarray(g))
                  for g in grads), None)


# the methods the kernel runs, and whether their h sites are Layer Norm's (else: plain; ``cosine``
# has no sites either, but its linear maps are not matmuls with a weight)
_METHODS = {"none": False, "weight": False, "layer": True}


def _layer(cell: Any) -> bool | None:
    """``True``: Layer Norm h sites; ``False``: plain ones; ``None``: not a method run here."""
    layer = _METHODS.get(cell.method.name)
    if layer and not (type(cell.nh_rz) is LayerNormSite and type(cell.nh_n) is LayerNormSite
                      and cell.nh_rz.bias is None and cell.nh_n.bias is None
                      and cell.nh_rz.eps == cell.nh_n.eps):
        return None  # not the sites this kernel knows
    return layer


def supports(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None = None) -> bool:
    """Whether ``window`` runs this cell's window ``x [T, B, I]`` from ``state``: the kernels are
    on, the method is ``none``, ``weight`` or ``layer``, everything float32 or float64 on the
    CPU."""
    return _layer(cell) is not None and fits(cell, x, state)


def window(cell: Any, x: Tensor, h0: Tensor, t0: int = 0) -> Tensor:
    """The outputs ``[T, B, H]`` of ``cell`` (a ``GRUCell`` that ``supports`` ``x``) over the
    window ``x`` from ``h0``."""
    gx = cell.input_term(x, t0)
    if _layer(cell):
        nh_rz, nh_n = cell.nh_rz, cell.nh_n
        return _GRUWindow.apply(gx, h0, cell.lh.weight, cell.bias_hn, nh_rz.weight, nh_n.weight,
                                nh_rz.eps)
    return _GRUWindow.apply(gx, h0, cell.lh.weight, cell.bias_hn, None, None, 0.0)
