"""A plain-RNN window in numpy, every method (its sites from ``models.fast.rows``).

As ``gru_kernel``: the input term ``N_x(W_x x) + b`` of the whole window at once, the recurrence
``h' = tanh(P(gx + N_h(W_h h)))`` (``P``: Online Norm's pre site) as one ``autograd.Function``
looping in numpy with the method's sites, and a hand-written backward::

    da = P'(dh ⊙ (1 − h'²)),  dgx = da,  dh_prev = N_h'(da) · W_hh,  dW_hh = Σ N_h'(da)ᵀ h_prev

It equals the per-step cell to float rounding (``tests/test_fastrecurrent.py`` checks both
kernels). A ``None`` start state has no h term at the first step, as on the generic path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .arrays import tensor
from .rows import Plug, h_back, supported

__all__ = ["FUSED_UP_TO", "RNNWindow", "plug", "supports", "window"]


class RNNWindow(torch.autograd.Function):
    """``out [T, B, H]`` from the input term ``gx [T, B, H]``, ``h0 [B, H]``, ``W_hh [H, H]`` and
    the sites' tensors (``plug``: h, pre)."""

    @staticmethod
    def forward(ctx: Any, plug: Plug, gx: Tensor, h0: Tensor, w_hh: Tensor,
                *tensors: Tensor | None) -> Tensor:
        GX, Wh = gx.detach().numpy(), w_hh.detach().numpy()
        steps, batch, h = GX.shape
        hs = np.empty((steps + 1, batch, h), GX.dtype)  # h_{t-1} for each step, then the last
        hs[0] = h0.detach().numpy()
        s_h, s_pre = plug.build(tensors, steps, batch, hs)
        WhT = Wh.T
        for t in range(steps):
            a = GX[t]
            if t or not plug.fresh:  # a None state: no h term at the first step
                a = a + s_h.forward(np.matmul(hs[t], WhT), t)
            np.tanh(s_pre.forward(a, t), out=hs[t + 1])
        plug.end_forward()
        ctx.saved = (plug, Wh, hs)
        ctx.save_for_backward(w_hh, *tensors)  # an in-place change before backward raises
        return torch.from_numpy(hs[1:].copy())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        _ = ctx.saved_tensors  # autograd's check that the weights read below are unchanged
        plug, Wh, hs = ctx.saved
        s_h, s_pre = plug.built
        steps, batch, h = dout.shape
        D = dout.numpy()
        der = 1.0 - hs[1:] * hs[1:]
        da_x = np.empty((steps, batch, h), hs.dtype)  # ∂/∂ gx per step
        da_h = np.zeros((steps, batch, h), hs.dtype)  # ∂/∂ (W_hh h) per step
        dh = np.zeros((batch, h), hs.dtype)
        first = plug.first
        need = ctx.needs_input_grad
        plug.begin_backward()
        for t in range(steps - 1, -1, -1):
            dh += D[t]
            da_x[t] = s_pre.backward(dh * der[t], t)
            dh = h_back(s_h, da_x[t], t, Wh, da_h[t]) if t >= first else np.zeros_like(dh)
        plug.end_backward()
        idle = first == steps  # no h term in the window: W_hh, the h site got no gradient
        grads = [
            da_x if need[1] else None,
            dh if need[2] else None,
            np.matmul(da_h.reshape(-1, h).T, hs[:-1].reshape(-1, h))
            if need[3] and not idle else None,
        ]
        return (None, *(tensor(g) for g in grads),
                *plug.grads(need[4:], (0,) if idle else ()))


def plug(cell: Any, batch: int, t0: int, fresh: bool) -> Plug | None:
    """The sites of ``cell``'s window (h, pre), or ``None`` where a site is not one ``rows``
    computes."""
    return Plug.of(cell, batch, t0, fresh, [("nh", 0, cell.hidden_size)], ["npre"])


# ``none``/``weight`` windows this short run PyTorch's fused kernel, faster there (H 64, one
# thread, ``bench/cells.py --windows 1 2 4 [--generic]``: fused 0.13 / 0.17 / 0.23 ms at 1 / 2 /
# 4 steps, numpy 0.21 / 0.22 / 0.24)
FUSED_UP_TO = 4


def supports(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None = None) -> bool:
    """Whether ``window`` runs this cell's window ``x [T, B, I]`` from ``state``
    (``rows.supported``)."""
    return supported(cell, x, state, plug, "rnn_kernel", FUSED_UP_TO)


def window(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None, t0: int = 0
           ) -> tuple[Tensor, ...]:
    """The hidden states ``([T, B, H],)`` of ``cell`` (an ``RNNCell`` that ``supports`` ``x``)
    over the window ``x`` from ``state`` (``None``: zero)."""
    p = plug(cell, x.shape[1], t0, state is None)
    assert p is not None
    h0 = state[0] if state is not None else cell.zero_state(x)[0]
    gx = cell.input_term(x, t0)
    return (p.done(RNNWindow.apply(p, gx, h0, cell.lh.weight, *p.tensors())),)
