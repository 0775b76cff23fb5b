"""``models.fast.gru_kernel`` and ``rnn_kernel`` against their oracles: the path each replaces
(``switch.disabled()``: ``torch.gru`` for ``none`` / ``weight`` GRUs, the per-step autograd loop
for ``layer``) and the cell's own per-step loop (``input_term`` + ``step``), to float rounding
(the kernels' σ and sums run in another order: not bit for bit); ``gradcheck`` of each
``autograd.Function`` in float64; and a learner on the kernel against one without it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

import models
from models import ModelSpec, OnlineLearner
from models.cells import CELLS, RecurrentCell
from models.fast import gru_kernel, rnn_kernel, switch

# (cell, method) that run a numpy kernel
CASES = [("gru", "none"), ("gru", "weight"), ("gru", "layer"), ("rnn", "layer")]

# float64 is the tight check of the arithmetic; in float32, 64 steps of rounding in another order
# (Layer Norm's 1/σ amplifies it) move a small gradient element by ~1e-5 of its tensor's largest
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-11, atol=1e-13)}


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    tol = TOL[b.dtype]
    torch.testing.assert_close(a, b, rtol=tol["rtol"],
                               atol=tol["atol"] * max(1.0, float(b.detach().abs().max())))


def _grad(p: torch.Tensor) -> torch.Tensor:
    """A parameter's gradient, zeros where autograd left none (the generic path skips the h
    term of a zero start state; the learner's gradients are views of one zeroed buffer, so the
    two are the same to it)."""
    return p.grad.clone() if p.grad is not None else torch.zeros_like(p)


def _measured(cell: RecurrentCell, h0: torch.Tensor | None, window: Callable[[], Any]
              ) -> list[torch.Tensor]:
    """Outputs, final state and every gradient of a loss on all outputs and the final state of
    ``window()`` (``(out, h)``), from cleared gradients."""
    cell.zero_grad()
    if h0 is not None:
        h0.grad = None
    out, h = window()
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    ((out * weights).sum() + 0.7 * h.pow(2).sum()).backward()
    grads = [_grad(p) for p in cell.parameters()]
    return [out.detach(), h.detach(), *grads, *([h0.grad.clone()] if h0 is not None else [])]


def _run(cell: RecurrentCell, x: torch.Tensor, h0: torch.Tensor | None, fast: bool
         ) -> list[torch.Tensor]:
    """Through ``forward_seq``: the kernel (``fast``) or the path it replaces."""
    def window() -> tuple[torch.Tensor, torch.Tensor]:
        with contextlib.nullcontext() if fast else switch.disabled():
            out, (h,) = cell.forward_seq(x, None if h0 is None else (h0,))
        return out, h

    return _measured(cell, h0, window)


def _per_step(cell: RecurrentCell, x: torch.Tensor, h0: torch.Tensor | None) -> list[torch.Tensor]:
    """Through the cell's generic per-step loop (what every method without a kernel runs)."""
    def window() -> tuple[torch.Tensor, torch.Tensor]:
        gx, state, outs = cell.input_term(x), None if h0 is None else (h0,), []
        for t in range(x.shape[0]):
            state = cell.step(gx[t], state, t)
            outs.append(state[0])
        assert state is not None
        return torch.stack(outs), state[0]

    return _measured(cell, h0, window)


def _cell(kind: str, method: str, dtype: torch.dtype, seed: int = 0) -> RecurrentCell:
    torch.manual_seed(seed)
    cell = CELLS[kind](5, 12, method).to(dtype)
    with torch.no_grad():  # non-zero biases, gains off 1: every path is exercised
        for name, p in cell.named_parameters():
            if name.startswith("bias"):
                p.uniform_(-0.5, 0.5)
            elif name.startswith("n") and name.endswith("weight"):  # a site's gain
                p.uniform_(0.5, 1.5)
    return cell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("kind", "method"), CASES)
@pytest.mark.parametrize(("steps", "batch"), [(1, 1), (16, 1), (64, 1), (5, 3), (16, 5)])
@pytest.mark.parametrize("start", ["zero", "state"])
def test_kernel_equals_the_path_it_replaces(dtype: torch.dtype, kind: str, method: str,
                                            steps: int, batch: int, start: str) -> None:
    cell = _cell(kind, method, dtype)
    x = torch.randn(steps, batch, 5, dtype=dtype) * 2
    h0 = torch.randn(batch, 12, dtype=dtype, requires_grad=True) if start == "state" else None
    fast, ref = _run(cell, x, h0, True), _run(cell, x, h0, False)
    assert len(fast) == len(ref)
    for a, b in zip(fast, ref, strict=True):
        _close(a, b)


@pytest.mark.parametrize(("kind", "method"), CASES)
@pytest.mark.parametrize("steps", [1, 9])
def test_kernel_equals_the_per_step_cell(kind: str, method: str, steps: int) -> None:
    cell = _cell(kind, method, torch.float64, seed=3)
    x = torch.randn(steps, 2, 5, dtype=torch.float64)
    h0 = torch.randn(2, 12, dtype=torch.float64, requires_grad=True)
    for a, b in zip(_run(cell, x, h0, True), _per_step(cell, x, h0), strict=True):
        _close(a, b)


@pytest.mark.parametrize(("kind", "method"), CASES)
def test_the_kernel_is_taken(kind: str, method: str) -> None:
    """The fast path really runs (a ``_GRUWindow`` / ``_RNNWindow`` node), not when switched off."""
    cell = _cell(kind, method, torch.float32)
    x = torch.randn(4, 1, 5)
    out, _ = cell.forward_seq(x)
    node = f"_{kind.upper()}WindowBackward"
    assert type(out.grad_fn).__name__ == node
    with switch.disabled():
        out, _ = cell.forward_seq(x)
    assert type(out.grad_fn).__name__ != node


def test_rnn_gradcheck_in_float64() -> None:
    torch.manual_seed(2)
    h = 4
    args: list[Any] = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in
                       ((5, 2, h), (2, h), (h, h), (h,))]
    fn: Any = rnn_kernel._RNNWindow.apply
    assert torch.autograd.gradcheck(lambda *a: fn(*a, 1e-3), args)


@pytest.mark.parametrize("layer", [False, True])
def test_gradcheck_in_float64(layer: bool) -> None:
    torch.manual_seed(1)
    h = 4
    args: list[Any] = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in
                       ((5, 2, 3 * h), (2, h), (3 * h, h), (h,), (2 * h,), (h,))]
    if not layer:
        args[4] = args[5] = None
    fn: Any = gru_kernel._GRUWindow.apply
    assert torch.autograd.gradcheck(lambda *a: fn(*a, 1e-3), args)


@pytest.mark.parametrize("method", ["streaming", "online", "recurrent_batch", "batch_rnn",
                                    "cosine"])
def test_other_methods_dtypes_and_the_switch_take_the_generic_path(method: str) -> None:
    x = torch.randn(3, 1, 5)
    assert not gru_kernel.supports(_cell("gru", method, torch.float32), x)
    assert not rnn_kernel.supports(_cell("rnn", method, torch.float32), x)
    assert not rnn_kernel.supports(_cell("rnn", "none", torch.float32), x)  # torch.rnn_tanh's
    for kernel, kind in ((gru_kernel, "gru"), (rnn_kernel, "rnn")):
        cell = _cell(kind, "layer", torch.float32)
        assert kernel.supports(cell, x)
        assert not kernel.supports(cell, x.double())  # mixed dtypes
        assert kernel.supports(cell, x, (torch.zeros(1, 12),))
        assert not kernel.supports(cell, x, (torch.zeros(1, 12, dtype=torch.float64),))
        assert not kernel.supports(cell, torch.randn(0, 1, 5))
        with switch.disabled():
            assert not kernel.supports(cell, x)
        assert not kernel.supports(cell.half(), x.half())


@pytest.mark.parametrize(("kind", "method"), CASES)
def test_learner_on_the_kernel_learns_as_without_it(kind: str, method: str) -> None:
    """Stream mode (carried state, the state captured mid-window) and ``learn_many``: the same
    predictions with the kernel as without, to float rounding, over 60 updates."""
    spec = ModelSpec(name="g", task="regression", n_features=3, cell=kind, hidden_size=16,
                     window=6, norm={"method": method}, seed=5,
                     optimizer={"name": "adam", "lr": 0.01})
    gen = torch.Generator().manual_seed(2)
    xs = torch.randn(60, 3, generator=gen).tolist()
    preds: list[list[float]] = []
    for fast in (True, False):
        learner, got = OnlineLearner(spec), []
        with contextlib.nullcontext() if fast else switch.disabled():
            for i, x in enumerate(xs):
                got.append(learner.learn_one(x, sum(x) * 0.5, stream="s").prediction)
                if i % 20 == 19:
                    seqs = [xs[j:j + 6] for j in range(0, 12, 3)]
                    learner.learn_many(seqs, [1.0, -1.0, 0.5, 0.0])
            got.append(learner.predict_one(xs[0], stream="s"))
        preds.append(got)
    assert preds[0] == pytest.approx(preds[1], rel=1e-4, abs=1e-5)
    assert len(set(preds[0])) > 30  # it learns: predictions move


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_stack_of_two_layer_norm_layers_through_the_kernel(kind: str) -> None:
    torch.manual_seed(0)
    net = models.RecurrentStack(kind, 3, 8, num_layers=2, norm="layer").double()
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    res = []
    for fast in (True, False):
        net.zero_grad()
        with contextlib.nullcontext() if fast else switch.disabled():
            out, (h,) = net(x)
            (out.sum() + h.sum()).backward()
        res.append([out.detach(), h.detach(), *(_grad(p) for p in net.parameters())])
    for a, b in zip(*res, strict=True):
        _close(a, b)


@pytest.mark.parametrize(("kind", "method"), CASES)
def test_capture_mid_window_equals_the_generic_path(kind: str, method: str) -> None:
    """The state after step ``capture`` (a stream's next window start) as without the kernel."""
    cell = _cell(kind, method, torch.float64)
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    h0 = (torch.randn(2, 12, dtype=torch.float64),)
    for capture in (0, 3, 5):
        got = [cell.forward_window(x, h0, 0, capture)]
        with switch.disabled():
            got.append(cell.forward_window(x, h0, 0, capture))
        (out_a, fin_a, cap_a), (out_b, fin_b, cap_b) = got
        _close(out_a, out_b)
        _close(fin_a[0], fin_b[0])
        assert cap_a is not None and cap_b is not None
        _close(cap_a[0], cap_b[0])


@pytest.mark.parametrize(("kind", "method"), CASES)
def test_frozen_weights_and_a_second_backward(kind: str, method: str) -> None:
    """``W_h`` frozen: no gradient for it, the others as without the kernel; a second backward
    through the same graph (``retain_graph``) gives the same gradients again."""
    cell = _cell(kind, method, torch.float64)
    lh = dict(cell.named_parameters())["lh.parametrizations.weight.original1" if method == "weight"
                                       else "lh.weight"]
    lh.requires_grad_(False)
    x = torch.randn(5, 1, 5, dtype=torch.float64)
    grads = []
    for fast in (True, False):
        cell.zero_grad()
        with contextlib.nullcontext() if fast else switch.disabled():
            out, _ = cell.forward_seq(x)
        out.pow(2).sum().backward(retain_graph=True)
        first = [_grad(p) for p in cell.parameters()]
        cell.zero_grad()
        out.pow(2).sum().backward()
        second = [_grad(p) for p in cell.parameters()]
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a, b)
        assert lh.grad is None
        grads.append(first)
    for a, b in zip(*grads, strict=True):
        _close(a, b)


@pytest.mark.parametrize(("kind", "method"), [("gru", "none"), ("gru", "layer"), ("rnn", "layer")])
def test_a_weight_changed_before_backward_raises(kind: str, method: str) -> None:
    """As on the generic path: the kernel's backward would read the changed ``W_h``."""
    cell = _cell(kind, method, torch.float32)
    out, _ = cell.forward_seq(torch.randn(3, 1, 5))
    with torch.no_grad():
        cell.lh.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_a_state_of_another_dtype_takes_the_generic_path() -> None:
    """A float64 state with a float32 window: not silently cast by the kernel; the generic path
    decides (``torch.gru`` raises on the mix, as before the kernel)."""
    cell = _cell("gru", "none", torch.float32)
    x, h0 = torch.randn(3, 1, 5), torch.randn(1, 12, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        cell.forward_seq(x, (h0,))
    out, _ = cell.forward_seq(x, (h0.float(),))
    assert type(out.grad_fn).__name__ == "_GRUWindowBackward"
