"""The per-site numpy workers of the fast LSTM kernel (``models.fast.lstm_kernel``): one Layer
Norm or Streaming Norm site over a whole window (K calls at once: ``WindowSite``) or one call at a
time at batch size 1 (``RowSite``), forward and backward, on views of the site's own buffers."""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch import Tensor

from ..norms.layer import LayerNormSite
from ..norms.streaming import COUNTERS, MEMORIES, StreamingSite
from .arrays import Arr, add, const, cumsum, mul, sub, tri

__all__ = ["RowSite", "WindowSite", "forward_only", "held_row", "kept_row"]

Mod = LayerNormSite | StreamingSite
_VIEWS: weakref.WeakKeyDictionary[Any, tuple[dict[str, Tensor], dict[str, Arr]]] = (
    weakref.WeakKeyDictionary())


def _views(mod: StreamingSite) -> dict[str, Arr]:
    """numpy views of a site's memories (``[2, 1, 1, F]``) and counters (0-d), cached while
    its buffers are the same tensors (``.to()`` or assignment replaces them)."""
    bufs = mod._buffers
    hit = _VIEWS.get(mod)
    if hit is not None and all(bufs[k] is t for k, t in hit[0].items()):
        return hit[1]
    memory, counters = bufs["memory"], bufs["counters"]
    assert memory is not None and counters is not None
    f = memory.shape[2]
    c = counters.numpy()
    views = {k: c[i:i + 1].reshape(()) for i, k in enumerate(COUNTERS)}
    m = memory.numpy()
    views.update({k: m[i].reshape(2, 1, 1, f) for i, k in enumerate(MEMORIES)})
    _VIEWS[mod] = ({"memory": memory, "counters": counters}, views)
    return views


class WindowSite:
    """One site over one window, any batch size: K calls at once or one call at a time.

    Arrays are ``a [K, B, F]``; statistics ``[2, K, Bs, Fs]`` (unit axes ``[2, K, 1, F]``,
    per-sample ``[2, K, B, 1]``). Streaming Norm's memories are numpy views of the buffers.
    """

    def __init__(self, mod: Mod, w: Arr, b: Arr | None) -> None:
        self.mod, self.eps, self.w, self.b, self.wf = mod, mod.eps, w, b, w
        self.stream = isinstance(mod, StreamingSite)
        self.kind = mod.stats if isinstance(mod, StreamingSite) else "var"
        self.ax = -2 if isinstance(mod, StreamingSite) and mod.axes == "unit" else -1
        self.saved: list[tuple[Any, ...]] = []
        self.dys: list[Arr] = []
        self.xhats: list[Arr] = []
        self.calls = self.pos = 0
        if isinstance(mod, StreamingSite):
            self.v = v = _views(mod)
            self.L, self.S, self.GL, self.GS = v["L"], v["S"], v["GL"], v["GS"]
            self.cnt = {k: int(v[k]) for k in COUNTERS}

    def _red(self, z: Arr) -> Arr:
        return z if z.shape[self.ax] == 1 else np.add.reduce(z, axis=self.ax, keepdims=True)

    # -- Streaming Norm's memories (StreamingSite._fold, _mix, _route_grad) ------------------------
    def _fold(self) -> None:
        c, (k1, k2, k3, k4) = self.cnt, self.mod.kappa
        if c["n"] > 0:
            self.L[...] = k1 * self.L + k2 * self.S if c["l_init"] else self.S
            c["l_init"] = 1
        if c["m"] > 0:
            self.GL[...] = k3 * self.GL + k4 * self.GS if c["gl_init"] else self.GS
            c["gl_init"] = 1
        self.S.fill(0.0)
        self.GS.fill(0.0)
        c["n"] = c["m"] = 0
        c["folded_at"] = c["steps"]

    def _mix(self, s: Arr) -> Arr:
        """K calls in order: update ``S``/``n`` and return ``ŝ``."""
        c, k = self.cnt, s.shape[1]
        if self.calls == 0 and c["steps"] > c["folded_at"]:
            self._fold()
        n0, S = c["n"], self.S
        pooled = s if self.ax == -2 else s.mean(2, keepdims=True)
        cnt = np.arange(n0, n0 + k + 1, dtype=s.dtype).reshape(1, -1, 1, 1)
        cum = cumsum(pooled)
        prev = np.concatenate([S + 0 * pooled[:, :1], (n0 * S + cum[:, :-1]) / cnt[:, 1:-1]], 1)
        short = prev + (s - prev) / cnt[:, 1:]
        S[...] = (n0 * S + cum[:, -1:]) / (n0 + k)
        c["n"] = n0 + k
        if not c["l_init"]:
            return short
        return self.mod.alpha[0] * self.L + self.mod.alpha[1] * short

    def _route(self, g: Arr) -> Arr:
        """K calls taken last to first: update ``GS``/``m`` and return ``ĝ``."""
        c, k = self.cnt, g.shape[1]
        m0, GS = c["m"], self.GS
        pooled = g if self.ax == -2 else g.mean(2, keepdims=True)
        cnt = np.arange(m0 + 1, m0 + k + 1, dtype=g.dtype).reshape(1, -1, 1, 1)
        gs = ((m0 * GS + cumsum(pooled[:, ::-1])) / cnt)[:, ::-1]
        GS[...] = gs[:, :1]
        c["m"] = m0 + k
        b1, b2, b3 = self.mod.beta
        out = b3 * g
        if b1:
            out += b1 * (self.GL if c["gl_init"] else gs)
        if b2:
            out += b2 * gs
        return out

    def sync_forward(self) -> None:
        """Write the counters the forward changed back into the module's buffers."""
        if self.stream and self.calls:
            for k in ("n", "m", "folded_at", "l_init", "gl_init"):
                self.v[k][...] = self.cnt[k]

    # -- normalization -------------------------------------------------------------------------
    def run(self, a: Arr) -> Arr:
        """Normalize K calls ``a [K, B, F]`` (in call order) and save what backward needs."""
        n = a.shape[self.ax]
        inv, dev_grad = 1.0 / n, None
        if self.kind == "moments":
            s = np.stack([self._red(a), self._red(a * a)]) * inv
        else:
            mu = self._red(a) * inv
            cen = a - mu
            if self.kind == "var":
                s = np.stack([mu, self._red(cen * cen) * inv])
            else:  # mean and Lp deviation, clamped as StreamingSite._current
                p = self.mod.p
                ac = np.abs(cen)
                big = self._red(ac * ac if p == 2.0 else ac ** p) * inv
                ok = big >= 1e-12
                big = np.maximum(big, 1e-12)
                s = np.stack([mu, big ** (1.0 / p)])
                v = 2.0 * cen if p == 2.0 else p * ac ** (p - 1.0) * np.sign(cen)
                v -= self._red(v) * inv
                dev_grad = v * ((ok * inv / p) * big ** (1.0 / p - 1.0))
        sh = self._mix(s) if self.stream else s
        mask = None
        if self.kind == "moments":
            var = sh[1] - sh[0] * sh[0]
            mask = var >= 0
            np.maximum(var, 0.0, out=var)
        else:
            var = sh[1] * sh[1] if self.kind == "meanstd" else sh[1]
        r = 1.0 / np.sqrt(var + self.eps)
        xc = a - sh[0]
        xhat = xc * r
        y = xhat * self.wf
        if self.b is not None:
            y += self.b
        self.calls += a.shape[0]
        self.saved.append((a, sh, r, xc, xhat, mask, dev_grad))
        return y

    def run_back(self, dy: Arr, route: bool) -> Arr:
        """Gradient of the latest unprocessed ``run`` given ``dy`` of its shape."""
        self.pos -= 1
        a, sh, r, xc, xhat, mask, dev_grad = self.saved[self.pos]
        n = a.shape[self.ax]
        self.dys.append(dy)
        self.xhats.append(xhat)
        dyh = dy * self.w
        t1 = dyh * r
        g = np.stack([self._red(t1), self._red(dyh * xc) * (r * r * r)])
        g *= -1.0
        g[1] *= 0.5
        if self.kind == "moments":
            g[1] *= mask
            g[0] -= 2.0 * sh[0] * g[1]
        elif self.kind == "meanstd":
            g[1] *= 2.0 * sh[1]
        gh = self._route(g) if (self.stream and route) else g
        da = t1 + gh[0] * (1.0 / n)
        if self.kind == "meanstd":
            return da + gh[1] * dev_grad
        return da + gh[1] * ((a if self.kind == "moments" else xc) * (2.0 / n))

    def step(self, a: Arr) -> Arr:
        """One call on ``a [B, F]``."""
        return self.run(a[None])[0]

    def step_mm(self, h: Arr, WT: Arr) -> Arr:
        """``step(h @ WT)``."""
        return self.step(np.matmul(h, WT))

    def step_back(self, dy: Arr, route: bool, out: Arr | None = None) -> Arr:
        """Backward of the latest unprocessed single call, ``dy [B, F]`` (into ``out``)."""
        da = self.run_back(dy[None], route)[0]
        if out is not None:
            out[...] = da
        return da

    def begin_backward(self) -> None:
        """Rewind to the last call and re-read the gradient counters (they may have moved)."""
        self.pos, self.dys, self.xhats = len(self.saved), [], []
        if self.stream:
            self.cnt["m"], self.cnt["gl_init"] = int(self.v["m"]), int(self.v["gl_init"])

    def begin(self, dys: Arr, routed: list[bool]) -> None:
        """Start the backward (the row sites use ``dys``, the array the ``dy``s go into)."""
        self.begin_backward()

    def skip(self) -> None:
        """Pass over a call that is not on the way to the loss (autograd never calls it)."""
        self.pos -= 1

    def end_backward(self) -> None:
        """Write ``m`` back into the module."""
        if self.stream:
            self.v["m"][...] = self.cnt["m"]

    def grads(self) -> tuple[Arr | None, Arr | None]:
        """``(dweight, dbias)`` summed over the calls backward went through (``None``: none)."""
        if not self.dys:
            return None, None
        f = self.w.shape[0]
        dy = np.concatenate([d.reshape(-1, f) for d in self.dys])
        dw = np.einsum("nf,nf->f", dy, np.concatenate([x.reshape(-1, f) for x in self.xhats]))
        return dw, (None if self.b is None else dy.sum(0))


class RowSite(WindowSite):
    """A site at batch size 1 for LN or per-unit raw moments: 1-D rows, as few numpy calls as we
    can, in arrays (and per-step views of them) kept from window to window.

    Raw moments keep the running sum ``R = n·S`` (``S = R/n`` when the window ends) and fold
    ``ε`` into the mixed second moment; ``RR`` holds ``sqrt(var̂ + ε)``. With ``β2 = 0`` and a long
    gradient memory a call's backward is linear in ``dy`` with coefficients known after the
    forward, ``da = dy·V + Z``, and ``GS`` takes the summed ``g`` at the end.
    """

    held, gen = False, 0  # ``held_row``'s bookkeeping

    @staticmethod
    def takes(mod: Mod, batch: int) -> bool:
        """Whether ``mod``'s calls run here: batch size 1, Layer Norm or per-unit raw moments
        (Streaming Norm's ``online`` preset); other sites and batches run a ``WindowSite``."""
        return batch == 1 and (isinstance(mod, LayerNormSite)
                               or (mod.axes, mod.stats) == ("unit", "moments"))

    @property  # type: ignore[override]
    def mod(self) -> Any:
        """The site module, referenced weakly (``held_row`` keeps rows per module)."""
        return self._mod()

    @mod.setter
    def mod(self, mod: Mod) -> None:
        self._mod = weakref.ref(mod)

    def release(self) -> None:
        """Hand the row back to ``held_row``: its window's backward is done, or none will come."""
        self.held = False

    def check(self, gen: int) -> None:
        """Raise if a later window has taken this row since generation ``gen``."""
        if self.gen != gen:
            raise RuntimeError("models.fast: this window's Streaming Norm arrays were reused by "
                               "a later window of the same site; run backward before the next "
                               "window, or use models.fast.switch.disabled()")

    def __init__(self, mod: Mod, steps: int, dt: Any) -> None:
        self.mod, f = mod, mod.width
        self.stream = isinstance(mod, StreamingSite)
        self.inv, self.rs, self.ar = 1.0 / f, [0.0] * steps, np.arange(1, steps + 1, dtype=dt)
        self.XC, self.XH, self.Y = (np.empty((steps, f), dt) for _ in range(3))
        if self.stream:
            self.Q, self.SH = np.empty((steps, 2, f), dt), np.empty((steps, 2, f), dt)
            self.RR, self.coa = np.empty((steps, f), dt), np.empty(steps, dt)
            self.eps0 = np.array(mod.eps, dt)
            self.sv = list(zip(self.Q, self.Q[:, 0], self.Q[:, 1], self.SH, self.SH[:, 0],
                               self.SH[:, 1], self.RR, self.XC, self.XH, self.Y,
                               [self.coa[i, ...] for i in range(steps)], strict=True))
        else:
            self.ones = const(f, dt, 1.0 / f)
            self.lv = list(zip(self.XC, self.XH, self.Y, strict=True))

    def reset(self, w: Arr, b: Arr | None) -> RowSite:
        """Start a window with these weights (and the module's current statistics)."""
        WindowSite.__init__(self, self.mod, w, b)
        if self.stream:
            self.A, self.M1, self.M2s = self.Q[:, 0], self.SH[:, 0], self.SH[:, 1]
        return self

    def _start(self) -> None:
        c = self.cnt
        if c["steps"] > c["folded_at"]:
            self._fold()
        a1, a2 = self.mod.alpha if c["l_init"] else (0.0, 1.0)
        self.n0, self.R = c["n"], self.S[:, 0, 0] * c["n"]
        self.aL = a1 * self.L[:, 0, 0]
        self.aL[1] += self.eps  # so that m̂2 − m̂1² comes out as var̂ + ε
        np.divide(a2, add(self.ar, self.n0, self.coa), self.coa)

    def step_mm(self, h: Arr, WT: Arr) -> Arr:
        if not self.stream:
            return self.step(np.matmul(h, WT))
        a = self.sv[self.calls][1]
        return self.step(np.matmul(h, WT, a))

    def step(self, a: Arr) -> Arr:
        i = self.calls
        self.calls = i + 1
        if not self.stream:
            xc, xh, y = self.lv[i]
            sub(a, np.dot(a, self.ones), xc)
            r = self.rs[i] = 1.0 / math.sqrt(float(np.dot(xc, xc)) * self.inv + self.eps)
            mul(xc, r, xh)
        else:
            q, a0, a2, sh, s0, s1, v, xc, xh, y, co = self.sv[i]
            if i == 0:
                self._start()
            if a is not a0:
                a0[...] = a
            R = self.R
            mul(a, a, a2)
            add(R, q, R)
            add(mul(R, co, sh), self.aL, sh)
            sub(s1, mul(s0, s0, v), v)
            np.maximum(v, self.eps0, out=v)  # clamp_min(0) of the variance, plus ε
            np.divide(sub(a, s0, xc), np.sqrt(v, v), xh)
        mul(xh, self.wf, y)
        return y if self.b is None else add(y, self.b, y)

    def run(self, a: Arr) -> Arr:
        k, a = a.shape[0], a.reshape(a.shape[0], -1)
        xc, xh, y = self.XC[:k], self.XH[:k], self.Y[:k]
        if not self.stream:
            sub(a, np.matmul(a, self.ones)[:, None], xc)
            r = 1.0 / np.sqrt(np.einsum("kf,kf->k", xc, xc) * self.inv + self.eps)
            self.rs[:k] = r.tolist()
            mul(xc, r[:, None], xh)
        else:
            self._start()
            q = np.empty((2, k, a.shape[1]), a.dtype)
            q[0] = a
            mul(a, a, q[1])
            sh, v = np.matmul(tri(k, a.dtype), q), self.RR[:k]
            add(sh, self.R[:, None], sh)
            self.R = sh[:, -1].copy()
            add(mul(sh, self.coa[:k, None], sh), self.aL[:, None], sh)
            sub(sh[1], mul(sh[0], sh[0], v), v)
            np.maximum(v, self.eps0, out=v)
            np.divide(sub(a, sh[0], xc), np.sqrt(v, v), xh)
            self.A, self.M1, self.M2s = a, sh[0], sh[1]
        self.calls = k
        mul(xh, self.wf, y)
        return y if self.b is None else add(y, self.b, y)

    def sync_forward(self) -> None:
        if self.stream and self.calls:
            self.cnt["n"] = self.n0 + self.calls
            self.S[:, 0, 0] = self.R / self.cnt["n"]
        super().sync_forward()

    def begin(self, dys: Arr, routed: list[bool]) -> None:
        """Start the backward: ``dys [K, F]`` holds (or will hold, last call first) each call's
        ``dy``; ``routed`` says which calls autograd would route a statistic gradient for."""
        super().begin_backward()
        k = self.pos = self.calls
        self.done, self.DY, w = 0, dys, self.w
        if not self.stream:
            self.RW = np.array(self.rs[:k], w.dtype)[:, None] * w
            self.M2 = np.empty((k, w.shape[0], 2), w.dtype)  # dy @ M2 = (mean dy·w, mean dy·w·x̂)
            self.M2[..., 0] = w * self.inv
            mul(self.XH[:k], w * self.inv, self.M2[..., 1])
            return
        self.rmask, self.linear = list(routed), False
        if not k:
            return
        r = self.r = np.reciprocal(self.RR[:k])
        q = self.q = r * r  # g = (dy·w)·(−r − 2μ̂q, q): the statistic's gradient
        mul(q, self.XH[:k], q)
        mul(q, -0.5, q)
        if self.RR[:k].min() <= math.sqrt(self.eps) * (1 + 1e-6):  # some variance was clamped
            m1 = self.M1[:k]
            q[self.M2s[:k] - m1 * m1 < self.eps] = 0.0  # clamp_min passes no gradient
        b1, b2, b3 = self.mod.beta
        self.linear = b2 == 0.0 and bool(self.cnt["gl_init"])
        if self.linear:
            gl = self.GL[:, 0, 0]
            V = self.V = mul(self.XC[:k], q)
            mul(V, w * (2.0 * b3), V)
            add(V, mul(r, w * (1.0 - b3)), V)
            self.Zc = add(mul(self.A[:k], 2.0 * b1 * gl[1]), b1 * gl[0])

    def skip(self) -> None:
        self.pos -= 1
        if self.stream:
            self.rmask[self.pos] = False

    def step_back(self, dy: Arr, route: bool, out: Arr | None = None) -> Arr:
        self.pos = k = self.pos - 1
        self.done += 1
        da = np.empty_like(dy) if out is None else out
        if not self.stream:
            m1, m2 = np.dot(dy, self.M2[k]).tolist()
            r = self.rs[k]
            mul(dy, self.RW[k], da)
            sub(da, mul(self.XH[k], r * m2, self.Y[k]), da)
            return sub(da, r * m1, da)
        if self.linear and route:
            return add(mul(dy, self.V[k], da), self.Zc[k], da)
        if not route:  # autograd would not reach the statistic: its input needs no gradient
            return mul(dy * self.w, self.r[k], da)
        dyh, qk = dy * self.w, self.q[k]
        u = np.stack([-self.r[k] - 2.0 * self.M1[k] * qk, qk])
        gh = self._route((dyh * u)[:, None, None, :])[:, 0, 0]
        mul(dyh, self.r[k], da)
        da += gh[0]
        da += 2.0 * self.A[k] * gh[1]
        return da

    def run_back(self, dy: Arr, route: bool) -> Arr:
        k, dy = dy.shape[0], dy.reshape(dy.shape[0], -1)
        if self.stream and route and not self.linear:
            return np.stack([self.step_back(dy[i], route) for i in range(k - 1, -1, -1)][::-1])
        self.pos, self.done = 0, k
        if not self.stream:
            m = np.matmul(dy[:, None, :], self.M2)[:, 0] * np.array(self.rs[:k])[:, None]
            return dy * self.RW - self.XH[:k] * m[:, 1:] - m[:, :1]
        return dy * self.V + self.Zc if route else dy * self.w * self.r

    def end_backward(self) -> None:
        k = self.calls
        if self.stream and self.linear and self.done:
            n, d = sum(self.rmask), self.DY[:k]
            if n < k:
                d = d * np.array(self.rmask, d.dtype)[:, None]
            if n:  # Σ over the calls of g = (dy·w)·(−r − 2μ̂q, q)
                c, q, sum_ = self.cnt, self.q, np.einsum
                g1 = sum_("kf,kf->f", d, q)
                g0 = sum_("kf,kf->f", d, self.r) + 2.0 * sum_("kf,kf->f", d, self.M1[:k] * q)
                g = np.stack([-g0, g1]) * self.w
                self.GS[:, 0, 0] = (c["m"] * self.GS[:, 0, 0] + g) / (c["m"] + n)
                c["m"] += n
        super().end_backward()

    def grads(self) -> tuple[Arr | None, Arr | None]:
        if not self.done:
            return None, None
        dy = self.DY[:self.calls]
        dw = np.einsum("kf,kf->f", dy, self.XH[:self.calls])
        return dw, (None if self.b is None else dy.sum(0))


_POOL: weakref.WeakKeyDictionary[Any, dict[tuple[int, str], RowSite]] = (
    weakref.WeakKeyDictionary())
_SHAPES = 8  # window shapes kept per site (as lstm_kernel's kernels per cell)
_FORWARD_ONLY: list[list[RowSite]] = []


def held_row(mod: Mod, steps: int, dt: Any) -> RowSite:
    """A ``RowSite`` of ``mod`` for a window of ``steps`` calls, held until ``release()``: the
    one kept for that shape unless a window whose backward has not run still holds it (then a
    new one, kept from now on). Kept rows reference their module weakly: a site's rows go with
    it."""
    pool = _POOL.setdefault(mod, {})
    key = (steps, np.dtype(dt).str)
    row = pool.get(key)
    if row is None or row.held:
        if key not in pool and len(pool) >= _SHAPES:
            del pool[next(iter(pool))]
        row = pool[key] = RowSite(mod, steps, dt)
    row.held, row.gen = True, row.gen + 1
    if _FORWARD_ONLY:
        _FORWARD_ONLY[-1].append(row)
    return row


@contextlib.contextmanager
def forward_only() -> Iterator[None]:
    """For forwards whose graph is dropped without a backward: the rows ``held_row`` hands out
    inside are released on exit (``lstm_kernel.forward_only`` enters this too)."""
    taken: list[RowSite] = []
    _FORWARD_ONLY.append(taken)
    try:
        yield
    finally:
        _FORWARD_ONLY.pop()
        for row in taken:
            row.release()


def kept_row(mod: Mod, steps: int, dt: Any) -> RowSite | None:
    """The ``RowSite`` of ``mod`` kept for windows of ``steps`` calls, if any."""
    return _POOL.get(mod, {}).get((steps, np.dtype(dt).str))
