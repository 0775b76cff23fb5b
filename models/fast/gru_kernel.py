"""A GRU window in numpy, every method (its sites from ``models.fast.rows``).

PyTorch's own CPU GRU (``torch.gru``) is about 3× slower than its LSTM at batch size 1 although a
GRU has three gates to the LSTM's four, and a normalized GRU's per-step autograd loop builds
~30 tiny torch ops a step (~1.2 µs of dispatch each). How a window runs here:

- the **input term** of every step, ``N_x(W_x x) + b`` (``GRUCell.input_term``), is computed for
  the whole window at once, by torch and autograd (or ``xsite``'s numpy functions for a
  Streaming Norm or Recurrent BN x site and a cosine ``W_x``);
- the **recurrence** is one ``autograd.Function``: per step one matmul with ``W_hh`` and a few
  numpy calls on rows (~0.3 µs each); the backward walks the steps back by hand (derivation in
  ``GRUWindow.backward``) and forms ``dW_hh`` as one matmul over the window;
- a method plugs in as its **sites** (``rows.Plug``): the h sites ``N(W_h^{rz} h)``,
  ``N(W_h^n h)`` and the pre sites around ``rz`` and ``n`` (Online Norm), each a ``rows.Rows``
  with ``forward``/``backward`` on rows; a cosine ``W_h`` is a matmul with the raw weight and an
  h site (``CosineRows``). Weight Norm's ``W = g·v/‖v‖`` is computed by its parametrization
  before the call, so its gradient reaches ``g`` and ``v`` through autograd.

It computes the generic path's GRU (gate order r, z, n; ``n = tanh(a_n + r ⊙ (N(W_hn h) + b_hn))``,
``h' = (1 − z) ⊙ n + z ⊙ h``) to float rounding, not bit for bit: σ is ``½·tanh(a/2) + ½`` (no
overflow in float32) and sums run in another order. ``tests/test_fastrecurrent.py`` checks it
against ``torch.gru`` and the per-step cell (outputs, every gradient and buffer, float32 and
float64, windows 1 to 64, batches 1 to 5) and ``gradcheck``\\s it in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .arrays import Arr, tensor
from .rows import Plug, sigmoid_, supported

__all__ = ["FUSED_UP_TO", "GRUWindow", "plug", "supports", "window"]


class GRUWindow(torch.autograd.Function):
    """``out [T, B, H]`` of a GRU window from the input term ``gx [T, B, 3H]`` and ``h0 [B, H]``,
    with ``W_hh [3H, H]``, ``b_hn [H]`` (inside ``r ⊙ (…)``) and the sites' tensors (``plug``:
    h_rz, h_n, pre_rz, pre_n)."""

    @staticmethod
    def forward(ctx: Any, plug: Plug, gx: Tensor, h0: Tensor, w_hh: Tensor, bias_hn: Tensor,
                *tensors: Tensor | None) -> Tensor:
        GX, Wh = gx.detach().numpy(), w_hh.detach().numpy()
        steps, batch, _ = GX.shape
        h = Wh.shape[1]
        hs = np.empty((steps + 1, batch, h), GX.dtype)  # h_{t-1} for each step, then the last
        hs[0] = h0.detach().numpy()
        s_hrz, s_hn, s_prz, s_pn = plug.build(tensors, steps, batch, hs)
        bhn, WhT = bias_hn.detach().numpy(), Wh.T
        rz = np.empty((steps, batch, 2 * h), GX.dtype)
        n = np.empty((steps, batch, h), GX.dtype)
        ghn = np.empty((steps, batch, h), GX.dtype)  # N(W_hn h) + b_hn, which r gates
        for t in range(steps):
            if t == 0 and plug.fresh:  # no h term (a None state)
                rz[t] = GX[t, :, :2 * h]
                ghn[t] = bhn
            else:
                gh = np.matmul(hs[t], WhT)
                np.add(GX[t, :, :2 * h], s_hrz.forward(gh[:, :2 * h], t), out=rz[t])
                np.add(s_hn.forward(gh[:, 2 * h:], t), bhn, out=ghn[t])
            rzt = rz[t]
            pre = s_prz.forward(rzt, t)
            if pre is not rzt:  # (the identity returns its input itself)
                rzt[...] = pre
            sigmoid_(rzt)
            np.multiply(rz[t, :, :h], ghn[t], out=n[t])
            n[t] += GX[t, :, 2 * h:]
            np.tanh(s_pn.forward(n[t], t), out=n[t])
            np.subtract(hs[t], n[t], out=hs[t + 1])  # h' = n + z ⊙ (h − n)
            hs[t + 1] *= rz[t, :, h:]
            hs[t + 1] += n[t]
        plug.end_forward()
        ctx.saved = (plug, Wh, hs, rz, n, ghn)
        ctx.save_for_backward(w_hh, *tensors)  # an in-place change before backward raises
        return torch.from_numpy(hs[1:].copy())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        """Per step, last first, with ``dh`` the gradient reaching ``h'`` (``N'``: a site's
        backward)::

            dn = dh ⊙ (1 − z),  dz = dh ⊙ (h − n),  da_n = N_pn'(dn ⊙ (1 − n²))
            [da_r, da_z] = N_prz'([(da_n ⊙ ghn) ⊙ r(1 − r), dz ⊙ z(1 − z)]),  dghn = da_n ⊙ r
            dh_prev = dh ⊙ z + [N_hrz'(da_r, da_z), N_hn'(dghn)] · W_hh

        and over the window ``dW_hh = Σ [N_h'(…)]ᵀ h_prev``. The gate derivatives are formed
        for the whole window first, one op each."""
        _ = ctx.saved_tensors  # autograd's check that the weights read below are unchanged
        plug, Wh, hs, rz, n, ghn = ctx.saved
        s_hrz, s_hn, s_prz, s_pn = plug.built
        steps, batch, h = n.shape
        r, z = rz[..., :h], rz[..., h:]
        # per step: dh ⊙ cn = da_n before N_pn', ⊙ cr (with da_n) = da_r, ⊙ cz = da_z
        cn = (1.0 - z) * (1.0 - n * n)
        cr = ghn * (r - r * r)
        cz = (hs[:-1] - n) * (z - z * z)
        D = dout.numpy()
        da_x = np.empty((steps, batch, 3 * h), n.dtype)  # ∂/∂ gx per step
        da_h = np.zeros((steps, batch, 3 * h), n.dtype)  # ∂/∂ (W_hh h) per step
        dghn = np.empty((steps, batch, h), n.dtype)
        dh = np.zeros((batch, h), n.dtype)
        first = plug.first
        need = ctx.needs_input_grad
        plug.begin_backward()
        for t in range(steps - 1, -1, -1):
            dh += D[t]
            ax = da_x[t]
            ax[:, 2 * h:] = s_pn.backward(dh * cn[t], t)
            np.multiply(ax[:, 2 * h:], cr[t], out=ax[:, :h])
            np.multiply(dh, cz[t], out=ax[:, h:2 * h])
            arz = ax[:, :2 * h]
            da = s_prz.backward(arz, t)
            if da is not arz:
                arz[...] = da
            np.multiply(ax[:, 2 * h:], r[t], out=dghn[t])
            dh *= z[t]
            if t >= first:
                da_h[t, :, :2 * h] = s_hrz.backward(ax[:, :2 * h], t)
                da_h[t, :, 2 * h:] = s_hn.backward(dghn[t], t)
                dh += np.matmul(da_h[t], Wh)
                for s in (s_hrz, s_hn):
                    if s.reads_h:
                        dh += s.backward_h(t)
        plug.end_backward()
        idle = first == steps  # no h term in the window: W_hh, the h sites got no gradient
        grads: list[Arr | None] = [
            da_x if need[1] else None,
            dh if need[2] else None,
            np.matmul(da_h.reshape(-1, 3 * h).T, hs[:-1].reshape(-1, h))
            if need[3] and not idle else None,
            dghn.sum((0, 1)) if need[4] else None,
        ]
        return (None, *(tensor(g) for g in grads),
                *plug.grads(need[5:], (0, 1) if idle else ()))


def plug(cell: Any, batch: int, t0: int, fresh: bool) -> Plug | None:
    """The sites of ``cell``'s window (h_rz, h_n, pre_rz, pre_n), or ``None`` where a site is
    not one ``rows`` computes."""
    h = cell.hidden_size
    return Plug.of(cell, batch, t0, fresh, [("nh_rz", 0, 2 * h), ("nh_n", 2 * h, 3 * h)],
                   ["npre_rz", "npre_n"])


# ``none``/``weight`` windows this short run PyTorch's fused kernel, faster there (H 64, one
# thread, ``bench/cells.py --windows 1 2 4 [--generic]``: fused 0.24 / 0.33 ms at 1 / 2 steps,
# numpy 0.27 / 0.31)
FUSED_UP_TO = 1


def supports(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None = None) -> bool:
    """Whether ``window`` runs this cell's window ``x [T, B, I]`` from ``state``
    (``rows.supported``)."""
    return supported(cell, x, state, plug, "gru_kernel", FUSED_UP_TO)


def window(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None, t0: int = 0
           ) -> tuple[Tensor, ...]:
    """The hidden states ``([T, B, H],)`` of ``cell`` (a ``GRUCell`` that ``supports`` ``x``) over
    the window ``x`` from ``state`` (``None``: zero)."""
    p = plug(cell, x.shape[1], t0, state is None)
    assert p is not None
    h0 = state[0] if state is not None else cell.zero_state(x)[0]
    gx = cell.input_term(x, t0)
    return (p.done(GRUWindow.apply(p, gx, h0, cell.lh.weight, cell.bias_hn, *p.tensors())),)

