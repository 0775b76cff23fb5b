"""Streaming Norm's input-to-hidden site over a whole window at once, for the cells whose
recurrence runs in numpy (``gru_kernel``, ``rnn_kernel``; the LSTM kernel runs its own).

The generic ``Site.forward_seq`` calls the site once per step: ~20 torch ops and an
``autograd.Function`` each. Here one ``Function`` makes the window's calls in order with the LSTM
kernel's ``WindowSite`` (``models.fast.sites``): the fold, ``S``/``n`` moved call by call in the
forward and ``GS``/``m`` last call first in the backward, as autograd does on the generic path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..norms.streaming import StreamingSite
from .sites import WindowSite
from .switch import is_enabled

__all__ = ["forward_seq"]


class _StreamingWindow(torch.autograd.Function):
    """``y [T, B, F]``: ``site`` called on each step of ``a [T, B, F]`` in order."""

    @staticmethod
    def forward(ctx: Any, site: StreamingSite, a: Tensor, w: Tensor, b: Tensor | None
                ) -> Tensor:
        ws = WindowSite(site, w.detach().numpy(), None if b is None else b.detach().numpy())
        y = ws.run(a.detach().numpy())
        ws.sync_forward()
        ctx.ws = ws
        ctx.save_for_backward(w, b)  # an in-place change before backward raises
        return torch.from_numpy(y)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        _ = ctx.saved_tensors
        ws, need = ctx.ws, ctx.needs_input_grad
        ws.begin_backward()  # a call whose input needs no gradient routes nothing (no node)
        da = ws.run_back(dy.numpy(), need[1])
        ws.end_backward()
        dw, db = ws.grads()
        return (None, *(None if g is None or not n else torch.from_numpy(np.ascontiguousarray(g))
                        for g, n in ((da, need[1]), (dw, need[2]), (db, need[3]))))


def forward_seq(site: Any, a: Tensor, t0: int = 0) -> Tensor:
    """``site.forward_seq(a, t0)``; a Streaming Norm site in training, float32/float64 on the
    CPU, runs the window at once here."""
    w = getattr(site, "weight", None)
    if (type(site) is StreamingSite and site.training and is_enabled() and w is not None
            and a.dtype == w.dtype == site.memory.dtype and a.device.type == "cpu"
            and a.dtype in (torch.float32, torch.float64) and a.dim() == 3):
        return _StreamingWindow.apply(site, a, w, site.bias)
    return site.forward_seq(a, t0)
