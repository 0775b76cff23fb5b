"""The per-step site math of the numpy recurrences (``gru_kernel``, ``rnn_kernel``): one class per
method, each with ``forward(a, t)`` on the rows ``a [B, F]`` of step ``t``, ``backward(dy, t)``
(steps taken last first) and ``grads()`` (the site's own parameter gradient over the window, or
``None``), so that a kernel is written once per cell and a method plugs in as its sites. Each
mirrors its torch definition in ``models.norms`` (``LayerRows``: ``LayerNormSite``)."""

from __future__ import annotations

import numpy as np

from .arrays import Arr

__all__ = ["LayerRows", "PlainRows", "sigmoid_"]


def sigmoid_(a: Arr) -> Arr:
    """σ(a) in place, as ``½·tanh(a/2) + ½``."""
    a *= 0.5
    np.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


class PlainRows:
    """An h site that does nothing (``none``, ``weight``)."""

    def forward(self, a: Arr, t: int) -> Arr:
        return a

    def backward(self, dy: Arr, t: int) -> Arr:
        return dy

    def grads(self) -> Arr | None:
        return None


class LayerRows:
    """``F.layer_norm(a, (F,), g, None, eps)`` per step on rows ``[B, F]``, and its backward::

        x̂ = (a − mean a)·r,  r = 1/sqrt(var a + ε),  y = x̂ ⊙ g
        da = r·(dy⊙g − mean(dy⊙g) − x̂ ⊙ mean(dy⊙g⊙x̂)),  dg = Σ dy ⊙ x̂
    """

    def __init__(self, g: Arr, eps: float, steps: int, batch: int) -> None:
        self.g, self.eps = g, eps
        self.xhat = np.empty((steps, batch, g.shape[0]), g.dtype)
        self.r = np.empty((steps, batch, 1), g.dtype)
        self.dy = np.empty_like(self.xhat)  # each step's dy, for dg over the window at the end

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

    def grads(self) -> Arr | None:
        return np.einsum("tbf,tbf->f", self.dy, self.xhat)
