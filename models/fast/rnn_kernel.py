"""A plain-RNN window in numpy for ``layer`` (``none`` and ``weight`` run ``torch.rnn_tanh``,
which is already as fast as ``nn.RNN``).

As ``gru_kernel``: the input term ``N_x(W_x x) + b`` of the whole window by torch, the recurrence
``h' = tanh(gx + N_h(W_h h))`` as one ``autograd.Function`` looping in numpy with the method's h
site from ``models.fast.rows``, and a hand-written backward::

    da = dh ⊙ (1 − h'²),  dgx = da,  dh_prev = N_h'(da) · W_hh,  dW_hh = Σ N_h'(da)ᵀ h_prev

It equals the per-step cell to float rounding (``tests/test_fastrecurrent.py`` checks both
kernels). A zero start state runs as an explicit zero ``h`` (its Layer Norm is zero; ``dW_hh``
gets nothing from it), as on the generic path, where a ``None`` state skips the term.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..norms.layer import LayerNormSite
from .rows import LayerRows
from .switch import fits

__all__ = ["supports", "window"]


class _RNNWindow(torch.autograd.Function):
    """``out [T, B, H]`` from the input term ``gx [T, B, H]``, ``h0 [B, H]``, ``W_hh [H, H]`` and
    the h site's Layer Norm gain ``g [H]``."""

    @staticmethod
    def forward(ctx: Any, gx: Tensor, h0: Tensor, w_hh: Tensor, g: Tensor, eps: float) -> Tensor:
        GX, Wh = gx.detach().numpy(), w_hh.detach().numpy()
        steps, batch, h = GX.shape
        site = LayerRows(g.detach().numpy(), eps, steps, batch)
        hs = np.empty((steps + 1, batch, h), GX.dtype)  # h_{t-1} for each step, then the last
        hs[0] = h0.detach().numpy()
        WhT = Wh.T
        for t in range(steps):
            np.add(GX[t], site.forward(np.matmul(hs[t], WhT), t), out=hs[t + 1])
            np.tanh(hs[t + 1], out=hs[t + 1])
        ctx.saved = (Wh, hs, site)
        ctx.save_for_backward(w_hh, g)  # an in-place change before backward raises
        return torch.from_numpy(hs[1:].copy())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        _ = ctx.saved_tensors  # autograd's check that the weights read below are unchanged
        Wh, hs, site = ctx.saved
        steps, batch, h = dout.shape
        D = dout.numpy()
        da_x = np.empty((steps, batch, h), hs.dtype)  # ∂/∂ gx per step
        da_h = np.empty((steps, batch, h), hs.dtype)  # ∂/∂ (W_hh h) per step
        dh = np.zeros((batch, h), hs.dtype)
        for t in range(steps - 1, -1, -1):
            dh += D[t]
            ht = hs[t + 1]
            np.multiply(dh, 1.0 - ht * ht, out=da_x[t])
            da_h[t] = site.backward(da_x[t], t)
            dh = np.matmul(da_h[t], Wh)
        need = ctx.needs_input_grad
        grads = [
            da_x if need[0] else None,
            dh if need[1] else None,
            np.matmul(da_h.reshape(-1, h).T, hs[:-1].reshape(-1, h)) if need[2] else None,
            site.grads() if need[3] else None,
        ]
        return (*(None if x is None else torch.from_numpy(np.ascontiguousarray(x))
                  for x in grads), None)


def supports(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None = None) -> bool:
    """Whether ``window`` runs this cell's window ``x [T, B, I]`` from ``state``: the kernels are
    on, the method is ``layer`` with the sites this kernel knows, everything float32 or float64
    on the CPU."""
    nh = cell._modules.get("nh")
    return (cell.method.name == "layer" and type(nh) is LayerNormSite and nh.bias is None
            and cell._modules.get("npre") is None and fits(cell, x, state))


def window(cell: Any, x: Tensor, h0: Tensor, t0: int = 0) -> Tensor:
    """The outputs ``[T, B, H]`` of ``cell`` (an ``RNNCell`` that ``supports`` ``x``) over the
    window ``x`` from ``h0``."""
    return _RNNWindow.apply(cell.input_term(x, t0), h0, cell.lh.weight, cell.nh.weight,
                            cell.nh.eps)
