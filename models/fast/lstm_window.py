"""An LSTM window in numpy for the methods with sites from ``models.fast.rows``
(``recurrent_batch``, ``online``, ``batch_rnn``, ``cosine``); ``none``/``weight`` run
``torch.lstm``, ``layer``/``streaming`` the older ``lstm_kernel``.

The design of ``gru_kernel``: the input term ``N_x(W_x x) + b`` for the whole window at once,
the recurrence one ``autograd.Function`` with the sites plugged in (``rows.Plug``: h, pre, c)::

    a = P(gx + N_h(W_h h)),  i, f, o = σ(a_i, a_f, a_o),  g = tanh(a_g)
    c' = i ⊙ g + f ⊙ c,  h' = o ⊙ tanh(N_c(c'))

backward per step, last first (``dh``, ``dc``: the gradients reaching ``h'``, ``c'``)::

    tc = tanh(N_c(c')),  dc += N_c'(dh ⊙ o ⊙ (1 − tc²)),  dc_prev = dc ⊙ f,  dh_prev = N_h'(da)·W_hh
    da = P'([dc ⊙ g ⊙ i(1 − i), dc ⊙ c ⊙ f(1 − f), dc ⊙ i ⊙ (1 − g²), dh ⊙ tc ⊙ o(1 − o)])

It equals the per-step cell to float rounding (``tests/test_fastrecurrent.py``). A ``None``
start state has no h term and no ``f ⊙ c`` at the first step, as on the generic path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .arrays import const, tensor
from .rows import Plug, h_back, supported

__all__ = ["LSTMWindow", "plug", "supports", "window"]


class LSTMWindow(torch.autograd.Function):
    """``(out, cs)`` ``[T, B, H]`` each from the input term ``gx [T, B, 4H]``, ``h0``, ``c0``
    ``[B, H]``, ``W_hh [4H, H]`` and the sites' tensors (``plug``: h, pre, c)."""

    @staticmethod
    def forward(ctx: Any, plug: Plug, gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor,
                *tensors: Tensor | None) -> tuple[Tensor, Tensor]:
        GX, Wh = gx.detach().numpy(), w_hh.detach().numpy()
        steps, batch, _ = GX.shape
        h = Wh.shape[1]
        dt = GX.dtype
        hs = np.empty((steps + 1, batch, h), dt)  # h_{t-1} for each step, then the last
        cs = np.empty((steps + 1, batch, h), dt)
        hs[0], cs[0] = h0.detach().numpy(), c0.detach().numpy()
        s_h, s_pre, s_c = plug.build(tensors, steps, batch, hs)
        gates = np.empty((steps, batch, 4 * h), dt)  # σ(i), σ(f), tanh(g), σ(o)
        tc = np.empty((steps, batch, h), dt)  # tanh(N_c(c'))
        WhT = Wh.T
        half = const(4 * h, dt, 0.5, 2 * h)  # σ(a) = ½·tanh(a/2) + ½: one tanh for 4 gates
        for t in range(steps):
            g = gates[t]
            if t == 0 and plug.fresh:  # no h term (a None state)
                g[...] = GX[t]
            else:
                np.add(GX[t], s_h.forward(np.matmul(hs[t], WhT), t), out=g)
            pre = s_pre.forward(g, t)
            np.multiply(pre, half, out=g)
            np.tanh(g, out=g)
            for sl in (g[:, :2 * h], g[:, 3 * h:]):
                sl *= 0.5
                sl += 0.5
            c = cs[t + 1]
            np.multiply(g[:, :h], g[:, 2 * h:3 * h], out=c)
            if not (t == 0 and plug.fresh):
                c += g[:, h:2 * h] * cs[t]
            np.tanh(s_c.forward(c, t), out=tc[t])
            np.multiply(g[:, 3 * h:], tc[t], out=hs[t + 1])
        plug.end_forward()
        if plug.fresh:
            cs[0] = 0.0  # the first step had no f ⊙ c: its gradient is zero
        ctx.saved = (plug, Wh, hs, cs, gates, tc)
        ctx.save_for_backward(w_hh, *tensors)  # an in-place change before backward raises
        ctx.set_materialize_grads(False)
        return torch.from_numpy(hs[1:].copy()), torch.from_numpy(cs[1:].copy())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor | None, dcs: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        _ = ctx.saved_tensors  # autograd's check that the weights read below are unchanged
        plug, Wh, hs, cs, gates, tc = ctx.saved
        s_h, s_pre, s_c = plug.built
        steps, batch, h = tc.shape
        i, f, g, o = (gates[..., k * h:(k + 1) * h] for k in range(4))
        # the gate derivatives of the whole window, one op each
        der = np.empty_like(gates)
        der[..., :h] = g * (i - i * i)  # × dc → da_i
        der[..., h:2 * h] = cs[:-1] * (f - f * f)  # × dc → da_f
        der[..., 2 * h:3 * h] = i * (1.0 - g * g)  # × dc → da_g
        der[..., 3 * h:] = tc * (o - o * o)  # × dh → da_o
        dtc = o * (1.0 - tc * tc)  # × dh → ∂/∂ N_c(c')
        D = None if dout is None else dout.numpy()
        DC = None if dcs is None else dcs.numpy()
        da_x = np.empty((steps, batch, 4 * h), tc.dtype)  # ∂/∂ gx per step
        da_h = np.zeros((steps, batch, 4 * h), tc.dtype)  # ∂/∂ (W_hh h) per step
        dh = np.zeros((batch, h), tc.dtype)
        dc = np.zeros((batch, h), tc.dtype)
        first = plug.first
        need = ctx.needs_input_grad
        plug.begin_backward()
        for t in range(steps - 1, -1, -1):
            if D is not None:
                dh += D[t]
            if DC is not None:
                dc += DC[t]
            dc += s_c.backward(dh * dtc[t], t)
            ax = da_x[t]
            np.multiply(der[t].reshape(batch, 4, h)[:, :3], dc[:, None],
                        out=ax.reshape(batch, 4, h)[:, :3])
            np.multiply(der[t, :, 3 * h:], dh, out=ax[:, 3 * h:])
            da = s_pre.backward(ax, t)
            if da is not ax:  # (the identity returns ax itself)
                ax[...] = da
            dc *= f[t]
            dh = h_back(s_h, ax, t, Wh, da_h[t]) if t >= first else np.zeros_like(dh)
        plug.end_backward()
        idle = first == steps  # no h term in the window: W_hh, the h site got no gradient
        grads = [
            da_x if need[1] else None,
            dh if need[2] else None,
            dc if need[3] else None,
            np.matmul(da_h.reshape(-1, 4 * h).T, hs[:-1].reshape(-1, h))
            if need[4] and not idle else None,
        ]
        return (None, *(tensor(g) for g in grads),
                *plug.grads(need[5:], (0,) if idle else ()))


def plug(cell: Any, batch: int, t0: int, fresh: bool) -> Plug | None:
    """The sites of ``cell``'s window (h, pre, c), or ``None`` where the method runs elsewhere
    (``none``/``weight``: ``torch.lstm``) or a site is not one ``rows`` computes."""
    if cell.fused or cell.method.name in ("layer", "streaming"):  # lstm_kernel's
        return None
    return Plug.of(cell, batch, t0, fresh, [("nh", 0, 4 * cell.hidden_size)], ["npre", "nc"])


def supports(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None = None) -> bool:
    """Whether ``window`` runs this cell's window ``x [T, B, I]`` from ``state``
    (``rows.supported``)."""
    return supported(cell, x, state, plug, "lstm_window")


def window(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None, t0: int = 0
           ) -> tuple[Tensor, ...]:
    """``(hs, cs)`` ``[T, B, H]`` each of ``cell`` (an ``LSTMCell`` that ``supports`` ``x``) over
    the window ``x`` from ``state`` (``None``: zero)."""
    p = plug(cell, x.shape[1], t0, state is None)
    assert p is not None
    h0, c0 = state if state is not None else cell.zero_state(x)
    hs, cs = LSTMWindow.apply(p, cell.input_term(x, t0), h0, c0, cell.lh.weight, *p.tensors())
    return p.done(hs), cs
