"""A hand-written LSTM window for Layer and Streaming Normalization, looping in numpy.

The generic loop of ``RecurrentCell.forward_window`` builds an autograd graph of ~40 tiny torch
ops per step (~1.3 µs of dispatch each). Here one ``autograd.Function`` runs a whole window of one
``LSTMCell``: the forward and backward loops are numpy (~0.3 µs a call) on views of the same
memory, and the weight gradients are one matmul over the window. It computes what the generic
path computes: outputs, gradients, and Streaming Norm's buffer updates (fold, ``S``/``n`` in the
forward, ``GS``/``m`` in the backward, each site called in the order autograd calls it: per step
the ``c`` site then the ``h`` site, last step first, then the ``x`` site, last step first). The
per-site workers are in ``models.fast.sites``.

Working arrays are kept per cell and window shape and reused by the next window once the
previous one's backward has run (a window whose graph is still pending gets fresh ones); a second
backward (``retain_graph=True``) through a window whose arrays a newer window has reused raises
instead of reading overwritten data. ``disabled()`` (``models.fast.switch``) turns the kernels
off; ``try_window`` returns ``None`` where it does not apply (GRU/RNN, other methods, Streaming
Norm in eval, CUDA, other dtypes), and the generic loop runs.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..norms.layer import LayerNormSite
from ..norms.streaming import StreamingSite
from . import sites
from .arrays import Arr, add, const, mul, sub
from .sites import RowSite, WindowSite
from .switch import disabled, is_enabled

__all__ = ["disabled", "forward_only", "is_enabled", "try_window"]

State = tuple[Tensor, ...]
_TAKEN: list[list[Any]] = []  # kernels taken inside ``forward_only`` blocks
_PLANS: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], tuple[int, ...], list[Arr]]] = (
    weakref.WeakKeyDictionary())
_KERNELS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], _Kernel]] = (
    weakref.WeakKeyDictionary())


@contextlib.contextmanager
def forward_only() -> Iterator[None]:
    """For forwards whose graph is dropped without a backward (``predict_one``): the kernels
    they take are handed back on exit instead of staying reserved for a backward that never
    comes (which made every later forward build a new kernel)."""
    taken: list[_Kernel] = []
    _TAKEN.append(taken)
    try:
        with sites.forward_only():  # the GRU/RNN windows' Streaming Norm rows too
            yield
    finally:
        _TAKEN.pop()
        for k in taken:
            k.busy = False


class _Kernel:
    """Forward and backward of a window of one ``LSTMCell`` (gate order i, f, g, o) in arrays
    (and per-step views) reused from window to window while no graph still needs them.

    At batch size 1 the arrays drop the batch axis (``[T, F]``) and the sites are ``RowSite``s.
    """

    def __init__(self, cell: Any, steps: int, batch: int, dt: Any) -> None:
        T, H, m = steps, cell.hidden_size, cell._modules
        self.mods = (m["nx"], m["nh"], m["nc"])
        row = all(RowSite.takes(s, batch) for s in self.mods)
        self.rows = tuple(RowSite(s, T, dt) for s in self.mods) if row else None
        self.bs = bs = () if row else (batch,)
        self.busy, self.gen, self.req_key = False, 0, None
        self.Hs, self.Cs = np.zeros((2, T + 1, *bs, H), dt)
        self.ZS = np.empty((T, *bs, 8, H), dt)  # tanh of the scaled gates, then the σ's, σ(2g)
        self.TC, self.DCN, self.DO, self.dtc = np.empty((4, T, *bs, H), dt)
        self.DP4, self.der = np.empty((2, T, *bs, 4, H), dt)
        self.DAH = np.empty((T, *bs, 4 * H), dt)
        self.dh, self.dc, self.tmp = np.empty((3, *bs, H), dt)
        self.GX = self.rows[0].Y if self.rows else np.empty((T, *bs, 4 * H), dt)
        ZS, DP4 = self.ZS, self.DP4
        ZSf, self.DP = ZS.reshape(T, *bs, 8 * H), DP4.reshape(T, *bs, 4 * H)
        self.fv = list(zip(self.GX, ZSf[..., :4 * H], ZSf[..., 4 * H:], ZS[..., 2, :],
                           ZS[..., 4, :], ZS[..., 5, :], ZS[..., 7, :], self.Cs[:-1],
                           self.Cs[1:], self.Hs[:-1], self.Hs[1:], self.TC, strict=True))
        self.bv = list(zip(self.DP, self.DO, DP4[..., 3, :], self.DCN, self.dtc,
                           ZS[..., 2:5:2, :], DP4[..., 0:3:2, :], DP4[..., 1, :], self.Cs[:-1],
                           self.der.reshape(T, *bs, 4 * H), ZS[..., 5, :], self.DAH, strict=True))

    def setup(self, cell: Any, args: tuple[Tensor | None, ...], arrs: list[Arr]) -> None:
        """Bind a window's input, weights and state."""
        x, *_, h0, c0 = args
        T, B, _ = x.shape
        self.X = x.detach().contiguous().numpy().reshape(T * B, -1)
        self.Wx, self.Wh, self.bias, wx, wh, wc, bc = arrs
        ws, bs = (wx, wh, wc), (None, None, bc)
        if self.rows:
            self.sx, self.sh, self.sc = (r.reset(w, b) for r, w, b in zip(self.rows, ws, bs,
                                                                            strict=True))
        else:
            self.sx, self.sh, self.sc = (WindowSite(s, w, b) for s, w, b in zip(self.mods, ws, bs,
                                                                            strict=True))
        self.state = h0 is not None and c0 is not None
        if self.state:
            self.Hs[0] = h0.detach().numpy().reshape(self.Hs[0].shape)
            self.Cs[0] = c0.detach().numpy().reshape(self.Cs[0].shape)
        else:
            self.Hs[0] = self.Cs[0] = 0.0
        key = (self.state, *(t is not None and t.requires_grad for t in args))
        if key != self.req_key:
            self._paths(key, T)

    def _paths(self, req: tuple[bool, ...], steps: int) -> None:
        """Which site calls autograd would reach: a statistic whose input needs no gradient
        has no node in the generic graph, so it must not route a gradient here either."""
        self.req_key = req
        _, x, wx, wh, bias, nxw, nhw, ncw, ncb, h, c = req
        gx = x or wx or nxw or bias
        self.xs_req, self.hs_req, self.cs_req = x or wx, [], []
        for t in range(steps):
            a = gx
            if t or self.state:
                self.hs_req.append(wh or h)
                a = a or wh or h or nhw
            c = a or (c and (t > 0 or self.state))
            self.cs_req.append(c)
            h = a or c or ncw or ncb

    def forward(self) -> tuple[Arr, Arr]:
        """Run the window; returns the outputs ``[T, (B,) H]`` and the cell states."""
        Wh, sh, sc, bs, st, H = self.Wh, self.sh, self.sc, self.bs, self.state, self.tmp.shape[-1]
        T, dt, tmp = len(self.fv), Wh.dtype, self.tmp
        scale = const(4 * H, dt, 0.5, 2 * H)  # σ(a) = (1 + tanh(a/2))/2: one tanh for 4 gates
        gx = self.sx.run(np.matmul(self.X, self.Wx.T).reshape((T, *bs, 4 * H)))
        if self.rows is None:  # (a row site writes into GX itself)
            self.GX[...] = gx
        mul(add(self.GX, self.bias, self.GX), scale, self.GX)
        sh.wf = sh.w * scale
        WhT, half = Wh.T, const(1, dt, 0.5)[0, ...]
        for t, (gx, z, sg, zg, sgi, sgf, sgo, cprev, c, hprev, h, tc) in enumerate(self.fv):
            if t or st:
                np.tanh(add(gx, sh.step_mm(hprev, WhT), z), z)
            else:
                np.tanh(gx, z)
            add(mul(z, half, sg), half, sg)
            mul(sgi, zg, c)
            if t or st:
                add(c, mul(sgf, cprev, tmp), c)
            mul(sgo, np.tanh(sc.step(c), tc), h)
        for s in (self.sx, sh, sc):
            s.sync_forward()
        return self.Hs[1:], self.Cs[1:]

    def backward(self, dout: Arr | None, dC: Arr | None, needs: tuple[bool, ...]
                 ) -> list[Arr | None]:
        """Gradients for ``x, wx, wh, bias, nx.w, nh.w, nc.w, nc.b, h0, c0`` given those of the
        outputs and of the cell states ``dC [T, B, H]`` (``None``: not on the way to the loss)."""
        Wh, Hs, TC, sh, sc, dh, dc = self.Wh, self.Hs, self.TC, self.sh, self.sc, self.dh, self.dc
        T, H = TC.shape[0], TC.shape[-1]
        SG = self.ZS[..., 4:, :]
        mul(sub(1.0, SG, self.der), SG, self.der)  # σ' for i, f, o; σ(2g)' = tanh'(g)/4
        self.der[..., 2, :] *= 4.0
        mul(sub(1.0, mul(TC, TC, self.dtc), self.dtc), SG[..., 3, :], self.dtc)
        if dout is None:
            self.DO.fill(0.0)
        else:
            self.DO[...] = dout.reshape(TC.shape)
        dC = None if dC is None else dC.reshape(TC.shape)
        dh.fill(0.0)
        dc.fill(0.0)
        dc3, first = dc[..., None, :], 0 if self.state else 1
        sh.begin(self.DP[first:], self.hs_req)
        sc.begin(self.DCN, self.cs_req)
        for t in range(T - 1, -1, -1):
            dp, do, dpo, dcn, dtc, zgsi, dpig, dpf, cprev, der, fc, dah = self.bv[t]
            add(dh, do, dh)
            if dC is not None:
                add(dc, dC[t], dc)
            mul(dh, TC[t], dpo)
            if dout is None and t == T - 1:
                dcn.fill(0.0)
                sc.skip()
            else:
                add(dc, sc.step_back(mul(dh, dtc, dcn), self.cs_req[t]), dc)
            mul(dc3, zgsi, dpig)
            mul(dc, cprev, dpf)
            mul(dp, der, dp)
            mul(dc, fc, dc)
            if t >= first:
                np.matmul(sh.step_back(dp, self.hs_req[t - first], dah), Wh, dh)
        g: list[Arr | None] = [None] * 10
        DP2 = self.DP.reshape(-1, 4 * H)
        if first < T and needs[2]:
            g[2] = self.DAH[first:].reshape(-1, 4 * H).T @ Hs[first:T].reshape(-1, H)
        g[3] = DP2.sum(0) if needs[3] else None
        if any(needs[:2]) or needs[4]:
            self.sx.begin(self.DP, [self.xs_req] * T)
            dax = self.sx.run_back(self.DP, self.xs_req).reshape(-1, 4 * H)
            g[1] = dax.T @ self.X if needs[1] else None
            g[0] = (dax @ self.Wx).reshape(T, -1, self.X.shape[1]) if needs[0] else None
        g[4], g[5], (g[6], g[7]) = self.sx.grads()[0], sh.grads()[0], sc.grads()
        if self.state:
            g[8], g[9] = dh.reshape(-1, H).copy(), dc.reshape(-1, H).copy()
        for s in (self.sx, sh, sc):
            s.end_backward()
        return [None if (v is None or not n) else v for v, n in zip(g, needs, strict=True)]


class _Window(torch.autograd.Function):
    """A whole LSTM window with its normalization sites; the backward is written by hand."""

    @staticmethod
    def forward(ctx: Any, kernel: _Kernel, cell: Any, arrs: list[Arr], *args: Tensor | None
                ) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        kernel.setup(cell, args, arrs)
        out, c = kernel.forward()
        ctx.kernel, ctx.gen = kernel, kernel.gen
        ctx.save_for_backward(*args)  # in-place changes before backward raise, as in autograd
        ctx.set_materialize_grads(False)
        shape = (out.shape[0], args[0].shape[1], -1)
        return torch.from_numpy(out.reshape(shape).copy()), torch.from_numpy(
            c.reshape(shape).copy())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor | None, dc: Tensor | None
                 ) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        _ = ctx.saved_tensors
        kernel = ctx.kernel
        if kernel.gen != ctx.gen:
            raise RuntimeError("models.fast.lstm_kernel: this window's buffers were reused by a "
                               "later forward; run backward before the next window of this "
                               "cell, or use models.fast.lstm_kernel.disabled()")
        grads = kernel.backward(None if dout is None else dout.numpy(),
                                None if dc is None else dc.numpy(), ctx.needs_input_grad[3:])
        kernel.busy = False
        return (None, None, None, *(None if g is None else torch.from_numpy(
            np.ascontiguousarray(g)) for g in grads))


def _plan(cell: Any) -> tuple[tuple[Any, ...], list[Arr]] | None:
    """The cell's parameters and their numpy views, cached while the same tensors and storage."""
    m = cell._modules
    sites = (m.get("nx"), m.get("nh"), m.get("nc"))
    kind = type(sites[0])
    if kind not in (LayerNormSite, StreamingSite) or any(type(s) is not kind for s in sites):
        return None
    if m.get("npre") is not None or (kind is StreamingSite and not (
            cell.training and all(s.training for s in sites))):
        return None
    params = (m["lx"]._parameters.get("weight"), m["lh"]._parameters.get("weight"),
              cell._parameters.get("bias"), *(s._parameters.get("weight") for s in sites),
              sites[2]._parameters.get("bias"))
    hit = _PLANS.get(cell)
    if hit is not None and all(p is q for p, q in zip(params, hit[0], strict=True)) and all(
            p.data_ptr() == d for p, d in zip(params, hit[1], strict=True)):
        return params, hit[2]
    if any(p is None or p.dtype not in (torch.float32, torch.float64) or p.device.type != "cpu"
           or p.dtype != params[0].dtype for p in params):
        return None
    arrs = [p.detach().numpy() for p in params]
    _PLANS[cell] = (params, tuple(p.data_ptr() for p in params), arrs)
    return params, arrs


def _kernel(cell: Any, steps: int, batch: int, dt: Any) -> _Kernel:
    """The cell's cached kernel for this window shape, or a new one if that one is in use."""
    kernels = _KERNELS.setdefault(cell, {})
    key = (steps, batch, np.dtype(dt).str)
    k = kernels.get(key)
    m = cell._modules
    if k is None or k.busy or k.mods != (m["nx"], m["nh"], m["nc"]):
        if key not in kernels and len(kernels) >= 8:  # a few window shapes per cell
            del kernels[next(iter(kernels))]
        k = kernels[key] = _Kernel(cell, steps, batch, dt)
    k.busy, k.gen = True, k.gen + 1
    if _TAKEN:
        _TAKEN[-1].append(k)
    return k


def try_window(cell: Any, x: Tensor, state: tuple[Tensor, ...] | None, t0: int = 0,
               capture: int | None = None) -> tuple[Tensor, State, State | None] | None:
    """``forward_window`` of an ``LSTMCell`` through the kernel: ``(out, final, captured)``, or
    ``None`` where the kernel does not apply (then the generic loop runs).

    Applies to ``layer``, and to ``streaming`` in training mode, in float32/float64 on the CPU.
    """
    if (not is_enabled("lstm_kernel") or x.dim() != 3 or x.shape[0] == 0
            or x.shape[2] != cell.input_size):
        return None
    plan = _plan(cell)
    if plan is None or x.dtype != plan[0][0].dtype or x.device.type != "cpu":
        return None
    params, arrs = plan
    h0 = c0 = None
    if state is not None:
        shape = (x.shape[1], cell.hidden_size)
        if len(state) != 2 or any(s.shape != shape or s.dtype != x.dtype
                                  or s.device.type != "cpu" for s in state):
            return None
        h0, c0 = state
    kernel = _kernel(cell, x.shape[0], x.shape[1], arrs[0].dtype)
    try:
        out, cs = _Window.apply(kernel, cell, arrs, x, *params, h0, c0)
    except BaseException:
        kernel.busy = False
        raise
    if not out.requires_grad:  # no graph: nothing will come back for the buffers
        kernel.busy = False
    cap = None if capture is None else (out[capture], cs[capture])
    return out, (out[-1], cs[-1]), cap
