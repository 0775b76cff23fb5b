"""Online Normalization against an independent float64 oracle (issue 14).

The oracle is written here from the paper's equations (Chiley et al. 2019, as
``../shared/docs/norms.md`` states them), in numpy, sharing no code with ``models``:

- forward, per feature, with the statistics from before the sample:
  ``y = (x − μ)/sqrt(σ² + ε)``, ``μ ← α_f μ + (1 − α_f) x``, ``σ² ← α_f σ² + α_f(1 − α_f)(x − μ)²``;
- backward control, with ``y'`` the incoming gradient:
  ``x̃' = y' − (1 − α_b)·v·y``, ``v ← v + x̃'·y``, ``x' = x̃'/sqrt(σ² + ε) − (1 − α_b)·u``,
  ``u ← u + x'``;
- then the affine and layer scaling ``z / sqrt(mean(z²) + ε)`` over each gate's units.

It is fed the same inputs and upstream gradients as ours, step by step: the normalizer alone
(several hundred samples, each forward then backward, as a stream of single samples), the
normalizer through a window (forwards in time order, backwards in reverse, as backpropagation
through time runs them), and the normalizer in its place in the LSTM and GRU cells (one per gate
on the summed pre-activation), over hundreds of windows with the weights moving by SGD. Both run
in float64; the operations differ in order (numpy against torch), so equal means to 1e-9.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from models import norms
from models.cells import GRUCell, LSTMCell
from models.fast import switch
from models.norms.online import OnlineNormFn, OnlineNormSite

AF, AB, EPS = 0.999, 0.99, 1e-5
TOL = {"rtol": 1e-9, "atol": 1e-12}


class Normalizer:
    """The paper's online normalizer of one feature vector (batch size 1), in float64 numpy."""

    def __init__(self, width: int, alpha_f: float = AF, alpha_b: float = AB,
                 eps: float = EPS) -> None:
        self.af, self.ab, self.eps = alpha_f, alpha_b, eps
        self.mu, self.var = np.zeros(width), np.ones(width)
        self.u, self.v = np.zeros(width), np.zeros(width)
        self.saved: list[tuple[np.ndarray, np.ndarray]] = []  # (y, σ) of each forward

    def forward(self, x: np.ndarray) -> np.ndarray:
        sigma = np.sqrt(self.var + self.eps)
        y = (x - self.mu) / sigma
        d = x - self.mu
        self.var = self.af * self.var + self.af * (1 - self.af) * d * d
        self.mu = self.af * self.mu + (1 - self.af) * x
        self.saved.append((y, sigma))
        return y

    def backward(self, gy: np.ndarray) -> np.ndarray:
        """The gradient of the last forward not yet gone back through (last in, first out)."""
        y, sigma = self.saved.pop()
        gx_tilde = gy - (1 - self.ab) * self.v * y
        self.v = self.v + gx_tilde * y
        gx = gx_tilde / sigma - (1 - self.ab) * self.u
        self.u = self.u + gx
        return gx


def our_site(width: int, groups: int = 1, layer_scaling: bool = False) -> OnlineNormSite:
    site = norms.build({"method": "online", "alpha_b": AB, "layer_scaling": layer_scaling}).site(
        "pre", width, groups=groups)
    assert isinstance(site, OnlineNormSite)
    return site.double()


def assert_state(site: OnlineNormSite, oracle: Normalizer, tol: dict[str, float] = TOL) -> None:
    for ours, want in ((site.mean, oracle.mu), (site.var, oracle.var), (site.u, oracle.u),
                       (site.v, oracle.v)):
        np.testing.assert_allclose(ours.numpy(), want, **tol)


def drifting(rng: np.random.Generator, steps: int, width: int) -> np.ndarray:
    """Inputs whose mean and scale move (what the statistics must follow)."""
    t = np.arange(steps)[:, None]
    return (3 * np.sin(t / 50) + rng.normal(size=(steps, width))
            * (1 + 0.5 * np.cos(t / 80)) + np.linspace(-2, 2, width))


@pytest.mark.parametrize("alpha_b", [AB, 1.0])
def test_the_normalizer_equals_the_paper_sample_by_sample(alpha_b: float) -> None:
    """α_b = 1: no backward control (the controls then act with weight 1 − α_b = 0; ours
    does not keep them at all)."""
    rng = np.random.default_rng(0)
    xs, gys = drifting(rng, 600, 5), rng.normal(size=(600, 5))
    site, oracle = our_site(5), Normalizer(5, alpha_b=alpha_b)
    site.alpha_b = alpha_b
    for x, gy in zip(xs, gys, strict=True):
        xt = torch.tensor(x[None], requires_grad=True)
        y = OnlineNormFn.apply(xt, site)
        np.testing.assert_allclose(y.detach().numpy()[0], oracle.forward(x), **TOL)
        y.backward(torch.tensor(gy[None]))
        np.testing.assert_allclose(xt.grad.numpy()[0], oracle.backward(gy), **TOL)
        if alpha_b < 1:
            assert_state(site, oracle)
        else:  # the statistics as the paper's (and the gradient, y'/σ, checked above)
            np.testing.assert_allclose(site.mean.numpy(), oracle.mu, **TOL)
            np.testing.assert_allclose(site.var.numpy(), oracle.var, **TOL)
    if alpha_b < 1:
        assert np.abs(site.u.numpy()).max() > 0 and np.abs(site.v.numpy()).max() > 0
    else:
        assert not site.u.any() and not site.v.any()


def test_the_normalizer_through_windows_equals_the_paper_in_time_order() -> None:
    """Statistics move forward in time, controls backward, as BPTT runs a window."""
    rng = np.random.default_rng(1)
    steps, width = 8, 4
    site, oracle = our_site(width), Normalizer(width)
    xs = drifting(rng, 300 * steps, width).reshape(300, steps, width)
    for window in xs:
        gys = rng.normal(size=(steps, width))
        inputs = [torch.tensor(x[None], requires_grad=True) for x in window]
        ys = [OnlineNormFn.apply(x, site) for x in inputs]
        want_y = [oracle.forward(x) for x in window]
        np.testing.assert_allclose(torch.cat(ys).detach().numpy(), np.array(want_y), **TOL)
        torch.autograd.backward(ys, [torch.tensor(g[None]) for g in gys])
        want_g = [oracle.backward(gys[t]) for t in reversed(range(steps))][::-1]
        np.testing.assert_allclose(torch.cat([x.grad for x in inputs]).numpy(),
                                   np.array(want_g), **TOL)
        assert_state(site, oracle)


# -- the normalizer in its place: one per gate on the summed pre-activation ---------------------
class OracleNorm(torch.autograd.Function):
    """The oracle normalizer as a torch op, so the oracle cells below can use autograd for
    their own (plain) math; the normalizer's forward and backward are the numpy ones."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, normalizer: Normalizer) -> Tensor:  # type: ignore[override]
        ctx.normalizer = normalizer
        return torch.from_numpy(normalizer.forward(a.detach().numpy()[0]))[None]

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return torch.from_numpy(ctx.normalizer.backward(gy.numpy()[0]))[None], None


class OracleSite:
    """Normalizer, affine, layer scaling over each of ``groups`` gates (written here)."""

    def __init__(self, width: int, groups: int) -> None:
        self.norm, self.groups = Normalizer(width), groups
        self.weight = torch.ones(width, dtype=torch.float64, requires_grad=True)
        self.bias = torch.zeros(width, dtype=torch.float64, requires_grad=True)

    def __call__(self, a: Tensor) -> Tensor:
        z = OracleNorm.apply(a, self.norm) * self.weight + self.bias
        gates = z.reshape(1, self.groups, -1)
        return (gates / torch.sqrt((gates ** 2).mean(-1, keepdim=True) + EPS)).reshape(z.shape)


class OracleLSTM:
    def __init__(self, ours: LSTMCell) -> None:
        self.h = ours.hidden_size
        self.wx, self.wh, self.b = (p.detach().clone().requires_grad_()
                                    for p in (ours.lx.weight, ours.lh.weight, ours.bias))
        self.site = OracleSite(4 * self.h, 4)

    def params(self) -> list[Tensor]:
        return [self.wx, self.wh, self.b, self.site.weight, self.site.bias]

    def window(self, x: Tensor, state: tuple[Tensor, ...] | None
               ) -> tuple[Tensor, tuple[Tensor, ...]]:
        outs = []
        for xt in x:
            a = xt @ self.wx.T + self.b
            if state is not None:
                a = a + state[0] @ self.wh.T
            i, f, g, o = self.site(a).chunk(4, -1)
            c = torch.sigmoid(i) * torch.tanh(g)
            if state is not None:
                c = c + torch.sigmoid(f) * state[1]
            state = (torch.sigmoid(o) * torch.tanh(c), c)
            outs.append(state[0])
        assert state is not None
        return torch.stack(outs), state


class OracleGRU:
    def __init__(self, ours: GRUCell) -> None:
        self.h = h = ours.hidden_size
        self.wx, self.wh, self.b, self.bhn = (
            p.detach().clone().requires_grad_()
            for p in (ours.lx.weight, ours.lh.weight, ours.bias, ours.bias_hn))
        self.site_rz, self.site_n = OracleSite(2 * h, 2), OracleSite(h, 1)

    def params(self) -> list[Tensor]:
        return [self.wx, self.wh, self.b, self.bhn, self.site_rz.weight, self.site_rz.bias,
                self.site_n.weight, self.site_n.bias]

    def window(self, x: Tensor, state: tuple[Tensor, ...] | None
               ) -> tuple[Tensor, tuple[Tensor, ...]]:
        h, outs = self.h, []
        for xt in x:
            gx = xt @ self.wx.T + self.b
            if state is None:
                rz_pre, hn = gx[:, :2 * h], self.bhn
            else:
                ah = state[0] @ self.wh.T
                rz_pre, hn = gx[:, :2 * h] + ah[:, :2 * h], ah[:, 2 * h:] + self.bhn
            r, z = torch.sigmoid(self.site_rz(rz_pre)).chunk(2, -1)
            n = torch.tanh(self.site_n(gx[:, 2 * h:] + r * hn))
            new = n - z * n if state is None else n + z * (state[0] - n)
            state = (new,)
            outs.append(new)
        assert state is not None
        return torch.stack(outs), state


def our_params(cell: LSTMCell | GRUCell) -> list[Tensor]:
    if isinstance(cell, LSTMCell):
        return [cell.lx.weight, cell.lh.weight, cell.bias, cell.npre.weight, cell.npre.bias]
    return [cell.lx.weight, cell.lh.weight, cell.bias, cell.bias_hn, cell.npre_rz.weight,
            cell.npre_rz.bias, cell.npre_n.weight, cell.npre_n.bias]


def our_sites(cell: LSTMCell | GRUCell) -> list[OnlineNormSite]:
    return [cell.npre] if isinstance(cell, LSTMCell) else [cell.npre_rz, cell.npre_n]


def oracle_sites(oracle: OracleLSTM | OracleGRU) -> list[OracleSite]:
    return [oracle.site] if isinstance(oracle, OracleLSTM) else [oracle.site_rz, oracle.site_n]


# the numpy kernels (models.fast) compute σ as ½·tanh(a/2) + ½ and sum in another order: over
# 250 windows with the weights moving, an ulp per op grows to ~1e-9 relative (4e-12 absolute on
# an output of 3e-3); each of their windows is held to the generic path to 1e-11 in
# tests/test_fastrecurrent.py, and the generic path to this oracle at TOL here
KERNEL_TOL = {"rtol": 1e-8, "atol": 1e-11}


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("path", ["generic", "kernel"])
def test_online_norm_in_its_cell_equals_the_oracle_over_hundreds_of_windows(kind: str,
                                                                             path: str) -> None:
    """Windows of a stream with the state carried (the first from no state), the weights
    moving by SGD: outputs, every gradient and every statistic equal the oracle's, on the
    generic per-step path and on the numpy kernel."""
    with contextlib.nullcontext() if path == "kernel" else switch.disabled():
        _oracle_run(kind, TOL if path == "generic" else KERNEL_TOL)


def _oracle_run(kind: str, tol: dict[str, float]) -> None:
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    steps, n_in, hidden, lr = 6, 3, 5, 0.05
    cell = (LSTMCell if kind == "lstm" else GRUCell)(
        n_in, hidden, {"method": "online", "alpha_b": AB}).double()
    oracle = OracleLSTM(cell) if isinstance(cell, LSTMCell) else OracleGRU(cell)
    assert all(isinstance(s, OnlineNormSite) and s.layer_scaling for s in our_sites(cell))
    state: tuple[Tensor, ...] | None = None
    o_state: tuple[Tensor, ...] | None = None
    xs = drifting(rng, 250 * steps, n_in).reshape(250, steps, 1, n_in)
    for window in xs:
        x = torch.tensor(window)
        out, final, _ = cell.forward_window(x, state)
        o_out, o_final = oracle.window(x, o_state)
        np.testing.assert_allclose(out.detach().numpy(), o_out.detach().numpy(), **tol)
        g = torch.tensor(rng.normal(size=out.shape))
        cell.zero_grad()
        (out * g).sum().backward()
        (o_out * g).sum().backward()
        for ours, want in zip(our_params(cell), oracle.params(), strict=True):
            assert ours.grad is not None and want.grad is not None
            np.testing.assert_allclose(ours.grad.numpy(), want.grad.numpy(), **tol)
        for site, o_site in zip(our_sites(cell), oracle_sites(oracle), strict=True):
            assert_state(site, o_site.norm, tol)
        with torch.no_grad():
            for ours, want in zip(our_params(cell), oracle.params(), strict=True):
                ours -= lr * ours.grad
                want -= lr * want.grad
                want.grad = None
        state = tuple(s.detach() for s in final)
        o_state = tuple(s.detach() for s in o_final)
    for site in our_sites(cell):  # the controls did act
        assert site.u.abs().max() > 0 and site.v.abs().max() > 0
