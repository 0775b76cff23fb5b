"""``models.fast.gru_kernel``, ``rnn_kernel`` and ``lstm_window`` against their oracles: the path
each replaces (``switch.disabled()``: ``torch.gru`` / ``torch.rnn_tanh`` for ``none`` / ``weight``
GRUs and RNNs, the per-step autograd loop for the others) and the cell's own
per-step loop (``input_term`` + ``step``), to float rounding (the kernels' σ and sums run in
another order: not bit for bit): outputs, final states, every gradient and every buffer (running
statistics, Online Norm's controls); ``gradcheck`` of each ``autograd.Function`` in float64; and
a learner on the kernels against one without them."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

import models
from models import ModelSpec, OnlineLearner
from models.cells import CELLS, RecurrentCell
from models.fast import gru_kernel, lstm_window, rnn_kernel, switch

_SITES = ["batch_rnn", "recurrent_batch", "online", "cosine"]
ONLINE_CONTROL = {"method": "online", "alpha_b": 0.99}  # the backward control on
ONLINE_CLAMP = {"method": "online", "layer_scaling": False, "clamp": 1.0}
SAMPLE = {"method": "streaming", "preset": "sample"}  # per-sample statistics, streamed
# (cell, method) that run a numpy kernel (``recurrent_batch``: at batch size 1 in training)
CASES: list[tuple[str, Any]] = [
    *((kind, m) for kind in ("gru", "rnn")
      for m in ("none", "weight", "layer", "streaming", SAMPLE, *_SITES, ONLINE_CONTROL,
                ONLINE_CLAMP)),
    *(("lstm", m) for m in (*_SITES, ONLINE_CONTROL, ONLINE_CLAMP))]
KERNELS = {"gru": gru_kernel, "rnn": rnn_kernel, "lstm": lstm_window}


def _id(case: Any) -> str:
    return case if isinstance(case, str) else "-".join(f"{k}={v}" for k, v in case.items()
                                                       if k != "method")


# float64 is the tight check of the arithmetic; in float32, 64 steps of rounding in another order
# (Layer Norm's 1/σ amplifies it) move a small gradient element by ~1e-5 of its tensor's largest
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-11, atol=1e-13)}


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    tol = TOL[b.dtype] if b.dtype in TOL else TOL[torch.float64]
    torch.testing.assert_close(a, b, rtol=tol["rtol"],
                               atol=tol["atol"] * max(1.0, float(b.detach().abs().max())))


def _grad(p: torch.Tensor) -> torch.Tensor:
    """A parameter's gradient, zeros where autograd left none (``_measured`` compares which
    ones are ``None`` apart: an optimizer skips those)."""
    return p.grad.clone() if p.grad is not None else torch.zeros_like(p)


State = tuple[torch.Tensor, ...]


def _measured(cell: RecurrentCell, h0: State | None, window: Callable[[], Any]
              ) -> list[torch.Tensor]:
    """Outputs, final state, every gradient and every buffer after a loss on all outputs and
    the final state of ``window()`` (``(out, state)``), from cleared gradients."""
    cell.zero_grad()
    for s in h0 or ():
        s.grad = None
    out, state = window()
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    ((out * weights).sum() + 0.7 * sum(s.pow(2).sum() for s in state)).backward()
    grads = [_grad(p) for p in cell.parameters()]
    none = torch.tensor([p.grad is None for p in cell.parameters()], dtype=torch.float64)
    return [out.detach(), *(s.detach() for s in state), *grads, none,
            *(b.clone() for b in cell.buffers()), *(s.grad.clone() for s in h0 or ())]


def _start(h0: State | None) -> State | None:
    """A fresh leaf copy of the start state (each run takes its own gradient)."""
    return None if h0 is None else tuple(s.detach().clone().requires_grad_() for s in h0)


def _run(cell: RecurrentCell, x: torch.Tensor, h0: State | None, fast: bool
         ) -> list[torch.Tensor]:
    """Through ``forward_seq``: the kernel (``fast``) or the path it replaces."""
    h0 = _start(h0)

    def window() -> tuple[torch.Tensor, State]:
        with contextlib.nullcontext() if fast else switch.disabled():
            return cell.forward_seq(x, h0)

    return _measured(cell, h0, window)


def _per_step(cell: RecurrentCell, x: torch.Tensor, h0: State | None) -> list[torch.Tensor]:
    """Through the cell's generic per-step loop (what every method without a kernel runs)."""
    h0 = _start(h0)

    def window() -> tuple[torch.Tensor, State]:
        gx, state, outs = cell.input_term(x), h0, []
        for t in range(x.shape[0]):
            state = cell.step(gx[t], state, t)
            outs.append(state[0])
        assert state is not None
        return torch.stack(outs), state

    return _measured(cell, h0, window)


def _cell(kind: str, method: Any, dtype: torch.dtype, seed: int = 0) -> RecurrentCell:
    torch.manual_seed(seed)
    cell = CELLS[kind](5, 12, method).to(dtype)
    with torch.no_grad():  # non-zero biases, gains off 1, statistics off their start: every
        for name, p in cell.named_parameters():  # path is exercised
            if name.startswith("bias") or name.endswith(".bias"):
                p.uniform_(-0.5, 0.5)
            elif name.startswith("n") and name.endswith("weight"):  # a site's gain
                p.uniform_(0.5, 1.5)
        for name, b in cell.named_buffers():
            if name.rsplit(".", 1)[-1] in ("running_mean", "mean", "u", "v"):
                b.uniform_(-0.3, 0.3)
            elif name.rsplit(".", 1)[-1] in ("running_var", "var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("memory"):  # Streaming Norm's L, S, GL, GS: (mean, 2nd moment
                b[:, 0].uniform_(-0.3, 0.3)  # or deviation), a variance well above ε
                b[:, 1] = b[:, 0] ** 2 + torch.rand_like(b[:, 1]) + 0.5
            elif name.endswith("counters"):  # n, m, steps, folded_at, l_init, gl_init:
                b.copy_(torch.tensor([3, 2, 1, 0, 1, 1]))  # a step since the last fold
    return cell


def _state(kind: str, batch: int, dtype: torch.dtype) -> State:
    return tuple(torch.randn(batch, 12, dtype=dtype) for _ in range(2 if kind == "lstm" else 1))


def _both(cell: RecurrentCell, run: Callable[[RecurrentCell, bool], list[torch.Tensor]]) -> None:
    """``run`` on a copy of ``cell`` through the kernel and on another through the path it
    replaces (each from the same buffers): every result equal to float rounding."""
    fast, ref = run(copy.deepcopy(cell), True), run(copy.deepcopy(cell), False)
    assert len(fast) == len(ref)
    for a, b in zip(fast, ref, strict=True):
        _close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("kind", "method"), CASES, ids=_id)
@pytest.mark.parametrize(("steps", "batch"), [(1, 1), (16, 1), (64, 1), (5, 3), (16, 5)])
@pytest.mark.parametrize("start", ["zero", "state"])
def test_kernel_equals_the_path_it_replaces(dtype: torch.dtype, kind: str, method: Any,
                                            steps: int, batch: int, start: str) -> None:
    cell = _cell(kind, method, dtype)
    x = torch.randn(steps, batch, 5, dtype=dtype) * 2
    h0 = _state(kind, batch, dtype) if start == "state" else None
    _both(cell, lambda c, fast: _run(c, x, h0, fast))


@pytest.mark.parametrize(("kind", "method"), CASES, ids=_id)
@pytest.mark.parametrize("steps", [1, 9])
def test_kernel_equals_the_per_step_cell(kind: str, method: Any, steps: int) -> None:
    cell = _cell(kind, method, torch.float64, seed=3)
    x = torch.randn(steps, 2, 5, dtype=torch.float64)
    h0 = _state(kind, 2, torch.float64)
    fast, ref = _run(copy.deepcopy(cell), x, h0, True), _per_step(copy.deepcopy(cell), x, h0)
    for a, b in zip(fast, ref, strict=True):
        _close(a, b)


@pytest.mark.parametrize(("kind", "method"), CASES, ids=_id)
def test_eval_mode_equals_the_path_it_replaces(kind: str, method: Any) -> None:
    """In eval the sites normalize with their statistics and change no buffer (any batch;
    Streaming Norm in eval runs the generic path)."""
    cell = _cell(kind, method, torch.float64).eval()
    x, h0 = torch.randn(6, 3, 5, dtype=torch.float64), _state(kind, 3, torch.float64)
    _both(cell, lambda c, fast: _run(c, x, h0, fast))
    before = [b.clone() for b in cell.buffers()]
    _run(cell, x, None, True)
    assert all(torch.equal(a, b) for a, b in zip(before, cell.buffers(), strict=True))


@pytest.mark.parametrize(("kind", "method"), CASES, ids=_id)
def test_the_kernel_is_taken(kind: str, method: Any) -> None:
    """The fast path really runs (a ``GRUWindow`` / ``RNNWindow`` / ``LSTMWindow`` node),
    not when switched off."""
    cell = _cell(kind, method, torch.float32)
    x = torch.randn(KERNELS[kind].FUSED_UP_TO + 1 if method in ("none", "weight") else 4, 1, 5)
    node = f"{kind.upper()}WindowBackward"
    out, _, _ = cell.forward_window(x)
    assert type(out.grad_fn).__name__ == node
    with switch.disabled():
        out, _, _ = cell.forward_window(x)
    assert type(out.grad_fn).__name__ != node


def _function_args(kind: str, method: Any) -> tuple[Any, list[Any]]:
    """A kernel ``Function`` and random float64 inputs for it, with the sites of a ``method``
    cell (eval mode for the sites with statistics: their training forward moves buffers, which
    ``gradcheck``'s repeated calls must not see; the training path is held to autograd's
    above)."""
    torch.manual_seed(2)
    cell = CELLS[kind](3, 4, method).double()
    if method in ("recurrent_batch", "online"):
        cell.eval()
    kernel = KERNELS[kind]
    plug = kernel.plug(cell, 2, 0, False)
    tensors = [None if t is None else t.detach().clone().uniform_(0.5, 1.5).requires_grad_()
               for t in plug.tensors()]
    g, h = CELLS[kind].gates, 4
    shapes: list[tuple[int, ...]] = [(5, 2, g * h), *[(2, h)] * cell.n_state, (g * h, h)]
    if kind == "gru":
        shapes.append((h,))
    args = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    fn = {"gru": gru_kernel.GRUWindow, "rnn": rnn_kernel.RNNWindow,
          "lstm": lstm_window.LSTMWindow}[kind]
    return (lambda *a: fn.apply(plug, *a)), [*args, *tensors]


@pytest.mark.parametrize(("kind", "method"), [
    (k, m) for k in ("gru", "rnn", "lstm") for m in ("none", "layer", *_SITES)
    if not (k == "lstm" and m in ("none", "layer"))])
def test_gradcheck_in_float64(kind: str, method: str) -> None:
    fn, args = _function_args(kind, method)
    assert torch.autograd.gradcheck(fn, args)


def test_other_methods_dtypes_and_the_switch_take_the_generic_path() -> None:
    x = torch.randn(3, 1, 5)
    for kind in ("gru", "rnn"):  # short none/weight windows: PyTorch's fused kernel is faster
        short = torch.randn(KERNELS[kind].FUSED_UP_TO, 1, 5)
        assert not KERNELS[kind].supports(_cell(kind, "none", torch.float32), short)
        assert KERNELS[kind].supports(_cell(kind, "none", torch.float32), torch.randn(5, 1, 5))
    for kind, kernel in KERNELS.items():  # Streaming Norm in eval
        assert not kernel.supports(_cell(kind, "streaming", torch.float32).eval(), x)
    assert not lstm_window.supports(_cell("lstm", "streaming", torch.float32), x)  # lstm_kernel's
    assert not lstm_window.supports(_cell("lstm", "none", torch.float32), x)  # torch.lstm's
    assert not lstm_window.supports(_cell("lstm", "layer", torch.float32), x)  # lstm_kernel's
    rbn = _cell("gru", "recurrent_batch", torch.float32)
    assert not gru_kernel.supports(rbn, torch.randn(3, 2, 5))  # true batch statistics
    assert gru_kernel.supports(rbn.eval(), torch.randn(3, 2, 5))
    for kind, kernel in KERNELS.items():
        cell = _cell(kind, "online", torch.float32)
        assert kernel.supports(cell, x)
        assert not kernel.supports(cell, x.double())  # mixed dtypes
        assert kernel.supports(cell, x, _state(kind, 1, torch.float32))
        assert not kernel.supports(cell, x, _state(kind, 1, torch.float64))
        assert not kernel.supports(cell, torch.randn(0, 1, 5))
        with switch.disabled():
            assert not kernel.supports(cell, x)
        assert not kernel.supports(cell.half(), x.half())


@pytest.mark.parametrize(("kind", "method"), CASES, ids=_id)
def test_learner_on_the_kernel_learns_as_without_it(kind: str, method: Any) -> None:
    """Stream mode (carried state, the state captured mid-window) and ``learn_many``: the same
    predictions with the kernel as without, to float rounding, over 60 updates."""
    spec = ModelSpec(name="g", task="regression", n_features=3, cell=kind, hidden_size=16,
                     window=6, seed=5,
                     norm=method if isinstance(method, dict) else {"method": method},
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
    # batch_rnn: BN's backward centres the W_x gradients on ~0 and Adam divides by their root
    # mean square, so float32 rounding in another order moves a few predictions by ~1e-5 (the
    # kernel's arithmetic is held to 1e-11 in float64 above)
    tol = 5e-5 if method == "batch_rnn" else 1e-5
    assert preds[0] == pytest.approx(preds[1], rel=1e-4, abs=tol)
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


@pytest.mark.parametrize(("kind", "method"), CASES, ids=_id)
def test_capture_mid_window_equals_the_generic_path(kind: str, method: Any) -> None:
    """The state after step ``capture`` (a stream's next window start) as without the kernel."""
    cell = _cell(kind, method, torch.float64)
    batch = 1 if method == "recurrent_batch" else 2  # (its kernel: batch size 1)
    x = torch.randn(6, batch, 5, dtype=torch.float64)
    h0 = _state(kind, batch, torch.float64)
    for capture in (0, 3, 5, 6, -1):  # out of the window: no captured state, as step by step
        fast = copy.deepcopy(cell).forward_window(x, h0, 0, capture)
        with switch.disabled():
            ref = copy.deepcopy(cell).forward_window(x, h0, 0, capture)
        _close(fast[0], ref[0])
        if not 0 <= capture < 6:
            assert fast[2] is None and ref[2] is None
            continue
        assert fast[2] is not None and ref[2] is not None
        for a, b in zip((*fast[1], *fast[2]), (*ref[1], *ref[2]), strict=True):
            _close(a, b)


@pytest.mark.parametrize(("kind", "method"), CASES, ids=_id)
@pytest.mark.parametrize("start", ["zero", "state"])
@pytest.mark.parametrize("frozen", ["W_h", "W_x and bias"])
def test_frozen_weights_and_a_second_backward(kind: str, method: Any, start: str, frozen: str
                                              ) -> None:
    """``W_h`` (or ``W_x`` and the bias) frozen: no gradient for it, the others and every
    buffer as without the kernel (a call whose input needs no gradient has no node: a site
    whose backward moves state, Streaming Norm's or Online Norm's with its control, then runs
    the generic path); a second backward through the same graph (``retain_graph``) gives the
    same gradients again."""
    cell = _cell(kind, method, torch.float64)
    h0 = _state(kind, 1, torch.float64) if start == "state" else None
    lin = "lh" if frozen == "W_h" else "lx"
    names = ([f"{lin}.parametrizations.weight.original0", f"{lin}.parametrizations.weight."
              "original1"] if method == "weight" else [f"{lin}.weight"])
    names += [] if frozen == "W_h" else ["bias"]
    for name in names:
        dict(cell.named_parameters())[name].requires_grad_(False)
    x = torch.randn(5, 1, 5, dtype=torch.float64)
    grads, control = [], method == ONLINE_CONTROL  # its second backward moves u, v again
    for fast in (True, False):
        c = copy.deepcopy(cell)
        with contextlib.nullcontext() if fast else switch.disabled():
            out, _ = c.forward_seq(x, h0)
        out.pow(2).sum().backward(retain_graph=True)
        first = [_grad(p) for p in c.parameters()]
        c.zero_grad()
        out.pow(2).sum().backward()
        second = [_grad(p) for p in c.parameters()]
        for a, b in zip(first, second, strict=True):
            assert control or torch.equal(a, b)
        assert all(dict(c.named_parameters())[name].grad is None for name in names)
        grads.append([*first, *second, *(b.clone() for b in c.buffers())])
    for a, b in zip(*grads, strict=True):
        _close(a, b)


@pytest.mark.parametrize(("kind", "method"), [("gru", "none"), ("gru", "layer"), ("rnn", "layer"),
                                             ("lstm", "online"), ("rnn", "cosine")])
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
    assert type(out.grad_fn).__name__ == "GRUWindowBackward"


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_streaming_rows_are_reused_and_a_stale_second_backward_raises(kind: str) -> None:
    """Streaming Norm's row arrays are kept per site and window shape: a forward without a
    graph (``no_grad``, or inside ``forward_only`` as the learner's predictions) hands them
    back and the next window reuses them; a window taken while they are held gets new ones;
    a second backward through a window whose arrays a later window took raises (as
    ``lstm_kernel``'s) instead of reading overwritten numbers."""
    from models.fast import lstm_kernel, sites

    cell = _cell(kind, "streaming", torch.float32)
    x = torch.randn(6, 1, 5)
    nh = cell.nh_rz if kind == "gru" else cell.nh

    def kept() -> Any:
        return sites.kept_row(nh, 6, x.numpy().dtype)

    with torch.no_grad():
        cell.forward_seq(x)
    first = kept()
    assert first is not None and not first.held
    with lstm_kernel.forward_only():
        cell.forward_seq(x)[0].sum()  # a graph, dropped
    assert kept() is first and not first.held
    out, _ = cell.forward_seq(x)
    assert kept() is first and first.held
    other, _ = cell.forward_seq(x)  # `first` is held by `out`: new arrays
    assert kept() is not first
    out.sum().backward()
    assert not first.held
    other.sum().backward(retain_graph=True)
    cell.forward_seq(x)  # a later window takes the arrays `other` used
    with pytest.raises(RuntimeError, match="reused by a later window"):
        other.sum().backward()


@pytest.mark.parametrize("method", ["streaming", ONLINE_CONTROL])
def test_a_site_whose_backward_moves_state_needs_every_parameter_trained(method: Any) -> None:
    """Such a site must see exactly the calls autograd reaches: with a parameter frozen the
    kernel declines (the generic path decides which calls route), in eval or without a graph
    nothing routes and the kernel runs."""
    cell = _cell("rnn", method, torch.float32)
    x = torch.randn(4, 1, 5)
    assert rnn_kernel.supports(cell, x)
    cell.lx.weight.requires_grad_(False)
    assert not rnn_kernel.supports(cell, x)
    with torch.no_grad():
        assert rnn_kernel.supports(cell, x)


def test_a_window_without_a_graph_at_another_batch_keeps_a_held_row() -> None:
    """A no-grad window of batch 2 (no RowSite) must not hand back the batch-1 row a pending
    window holds (the pending backward then raised)."""
    cell = _cell("rnn", "streaming", torch.float32)
    ref = copy.deepcopy(cell)
    xs = [torch.randn(6, 1, 5), torch.randn(6, 2, 5), torch.randn(6, 1, 5)]
    got = []
    for c, fast in ((cell, True), (ref, False)):
        with contextlib.nullcontext() if fast else switch.disabled():
            a, _ = c.forward_seq(xs[0])
            with torch.no_grad():
                c.forward_seq(xs[1])
            b, _ = c.forward_seq(xs[2])
            (a.sum() + b.sum()).backward()
        got.append([_grad(p) for p in c.parameters()] + [b.clone() for b in c.buffers()])
    for u, v in zip(*got, strict=True):
        _close(u, v)


def test_kept_rows_do_not_keep_their_sites_alive() -> None:
    """The rows kept per Streaming Norm site reference it weakly: a dropped model is freed."""
    import gc
    import weakref

    cell = _cell("gru", "streaming", torch.float32)
    out, state = cell.forward_seq(torch.randn(5, 1, 5))
    out.sum().backward()
    alive = weakref.ref(cell.nh_rz)
    del cell, out, state  # (a tensor of the window's graph holds its sites, as any graph)
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize(("kind", "method"), [("gru", "layer"), ("rnn", "cosine"),
                                              ("lstm", "online")])
def test_a_window_without_an_h_term_leaves_w_h_without_a_gradient(kind: str, method: str
                                                                  ) -> None:
    """One step from no state: no ``W_h h`` term, so ``W_h`` and the h sites get no gradient
    (``None``, as autograd leaves them: an optimizer skips them), on both paths."""
    for fast in (True, False):
        cell = _cell(kind, method, torch.float32)
        with contextlib.nullcontext() if fast else switch.disabled():
            out, _ = cell.forward_seq(torch.randn(1, 1, 5))
        out.sum().backward()
        assert cell.lh.weight.grad is None
        assert cell.lx.weight.grad is not None


def test_the_cosine_input_term_equals_torch_and_gradchecks() -> None:
    """``xsite.CosineWindow`` (a cosine ``W_x x`` over the window): ``CosineLinear``'s values and
    gradients (a zero input row and a zero weight row included: no gradient through a zero
    norm, as torch's), and ``gradcheck`` in float64."""
    from models.fast import xsite
    from models.norms.cosine import CosineLinear

    torch.manual_seed(4)
    lin = CosineLinear(3, 5, gain_init=3.0, eps=1e-8).double()
    with torch.no_grad():
        lin.weight[2] = 0.0
        lin.gain.uniform_(0.5, 2.0)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    x[1, 0] = 0.0
    x.requires_grad_()
    got = []
    for fast in (True, False):
        with contextlib.nullcontext() if fast else switch.disabled():
            y = xsite.linear(lin, x)
        assert (type(y.grad_fn).__name__ == "CosineWindowBackward") is fast
        got.append([y, *torch.autograd.grad((y * y).sum(), [x, lin.weight, lin.gain])])
    for a, b in zip(*got, strict=True):
        _close(a, b)
    args = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in ((4, 2, 3), (5, 3),
                                                                             (5,))]
    assert torch.autograd.gradcheck(lambda *a: xsite.CosineWindow.apply(*a, 1e-8), args)


@pytest.mark.parametrize("t_max", [1, 3, 8, 64])
@pytest.mark.parametrize("t0", [0, 2, 7, 70])
@pytest.mark.parametrize(("steps", "batch", "training"), [(1, 1, True), (5, 1, True),
                                                          (16, 1, True), (5, 3, False)])
def test_the_recurrent_bn_input_window_equals_step_by_step(t_max: int, t0: int, steps: int,
                                                            batch: int, training: bool) -> None:
    """``xsite.BatchNormWindow`` (Recurrent BN's x site over a window in numpy): the outputs,
    gradients and running statistics of the site called step by step (``Site.forward_seq``),
    positions repeating past ``T_max`` included; ``gradcheck`` in eval (no statistic moves)."""
    from models.fast import xsite
    from models.norms.base import Site
    from models.norms.recurrent_batch import RecurrentBatchNormSite

    torch.manual_seed(t_max + t0 + steps)
    site = RecurrentBatchNormSite(6, bias=True, t_max=t_max, momentum=0.1, gain_init=0.7,
                                  eps=1e-5).double().train(training)
    with torch.no_grad():
        site.running_mean.uniform_(-1, 1)
        site.running_var.uniform_(0.5, 2)
        site.bias.uniform_(-1, 1)
    ref = copy.deepcopy(site)
    a = torch.randn(steps, batch, 6, dtype=torch.float64, requires_grad=True)
    got = []
    for s, fast in ((site, True), (ref, False)):
        y = xsite.forward_seq(s, a, t0) if fast else Site.forward_seq(s, a, t0)
        assert (type(y.grad_fn).__name__ == "BatchNormWindowBackward") is fast
        grads = torch.autograd.grad((y * y).sum(), [a, s.weight, s.bias])
        got.append([y, *grads, s.running_mean.clone(), s.running_var.clone()])
    for u, v in zip(*got, strict=True):
        _close(u, v)
    if not training:
        w, b = (p.detach().clone().requires_grad_() for p in (site.weight, site.bias))
        assert torch.autograd.gradcheck(
            lambda x, w, b: xsite.BatchNormWindow.apply(site, x, t0, w, b), [a, w, b])
