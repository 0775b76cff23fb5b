"""The fast LSTM window (``models.fast.lstm_kernel``) computes what the generic autograd loop does.

Outputs, final and captured states, every gradient and every Streaming Norm buffer (S, L, GS, GL,
n, m, folds) match the generic path window after window; ``gradcheck`` checks the hand-written
backward where it is the true derivative (Layer Norm, and Streaming Norm with α = (0, 1),
β = (0, 0, 1) and one call per site between steps).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
import pytest
import torch

from models import RecurrentStack, notify_optimizer_step
from models.fast import lstm_kernel

SPECS: dict[str, Any] = {
    "layer": "layer",
    "paper": {"method": "streaming", "preset": "paper"},
    "online": {"method": "streaming", "preset": "online"},
    "sample": {"method": "streaming", "preset": "sample"},
    "p1": {"method": "streaming", "preset": "paper", "p": 1.0},
    "custom": {"method": "streaming", "preset": "online", "alpha": [0.5, 0.5],
               "beta": [0.4, 0.3, 0.3], "kappa": [0.8, 0.2, 0.6, 0.4]},
}


def _close(a: torch.Tensor | None, b: torch.Tensor | None, what: str) -> None:
    """Equal to float tolerance: elementwise in float64; in float32, against the tensor's scale
    (the generic path itself is ~1e-5 relative from a float64 run after 16 steps)."""
    assert (a is None) == (b is None), what
    if a is not None and b is not None:
        atol = 1e-5
        if b.dtype == torch.float32 and b.numel():
            atol += 1e-4 * b.abs().max().item()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=what)


def _window(net: RecurrentStack, x: torch.Tensor, state: Any, fast: bool, loss_on: str,
            capture: int | None) -> tuple[Any, ...]:
    net.zero_grad(set_to_none=True)
    with contextlib.nullcontext() if fast else lstm_kernel.disabled():
        out, final, cap = net.run(x, state, capture=capture)
    # loss on the final cell state only: the last c site is not on the way to the loss
    loss = (out[-1] ** 2).sum() + out.mean() if loss_on == "out" else (final[1] ** 2).sum()
    loss.backward()
    grads = {k: p.grad for k, p in net.named_parameters()}
    return out.detach(), [f.detach() for f in final], cap, grads


def lockstep(spec: Any, *, layers: int = 1, batch: int = 1, with_state: bool = False,
             windows: int = 4, steps: int = 5, dtype: torch.dtype = torch.float64,
             loss_on: str = "out", capture: int | None = None,
             freeze: tuple[str, ...] = ()) -> None:
    """Run both paths window by window with SGD steps; compare, then resync the fast copy."""
    gen = RecurrentStack("lstm", 3, 8, layers, spec).to(dtype)
    for name, p in gen.named_parameters():
        p.requires_grad_(not any(f in name for f in freeze))
    fast = copy.deepcopy(gen)
    nets = {True: fast, False: gen}
    opts = {k: torch.optim.SGD([p for p in n.parameters() if p.requires_grad], lr=0.1)
            for k, n in nets.items()}
    for w in range(windows):
        x = torch.randn(steps, batch, 3, dtype=dtype)
        state = None
        if with_state:
            state = tuple(torch.randn(layers, batch, 8, dtype=dtype) for _ in range(2))
        res = {}
        for k, net in nets.items():
            st = None if state is None else tuple(s.clone().requires_grad_() for s in state)
            res[k] = (*_window(net, x, st, k, loss_on, capture), st)
        (o1, f1, c1, g1, s1), (o2, f2, c2, g2, s2) = res[True], res[False]
        _close(o1, o2, f"window {w}: outputs")
        for a, b in zip(f1, f2, strict=True):
            _close(a, b, f"window {w}: final state")
        if capture is not None:
            for a, b in zip(c1, c2, strict=True):
                _close(a.detach(), b.detach(), f"window {w}: captured state")
        for name in g2:
            _close(g1[name], g2[name], f"window {w}: grad of {name}")
        if s1 is not None:
            for a, b in zip(s1, s2, strict=True):
                _close(a.grad, b.grad, f"window {w}: grad of the initial state")
        b1, b2 = dict(fast.named_buffers()), dict(gen.named_buffers())
        for name in b2:
            _close(b1[name].to(b2[name].dtype), b2[name], f"window {w}: buffer {name}")
        for k, net in nets.items():
            opts[k].step()
            notify_optimizer_step(net)
        fast.load_state_dict(gen.state_dict())  # stop rounding differences from compounding


# -- equality with the generic path ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["layer", "online", "custom", "sample", "paper", "p1"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_generic(name: str, layers: int, batch: int, with_state: bool) -> None:
    if batch == 1 and name in ("paper", "p1"):
        pytest.skip("per-unit deviation of one sample is 0: see test_paper_preset_at_batch_one")
    lockstep(SPECS[name], layers=layers, batch=batch, with_state=with_state)


@pytest.mark.parametrize("name", ["paper", "p1"])
def test_paper_preset_at_batch_one(name: str) -> None:
    """Per-unit mean/deviation at batch size 1 divides by sqrt(1e-12 + ε): gradients reach 1e7
    in one window and rounding noise compounds after a step, so compare single windows."""
    lockstep(SPECS[name], layers=2, windows=1)
    lockstep(SPECS[name], with_state=True, windows=1)


@pytest.mark.parametrize("name", ["layer", "online", "custom"])
def test_matches_generic_in_float32(name: str) -> None:
    lockstep(SPECS[name], layers=2, batch=1, dtype=torch.float32, steps=16, windows=3)


@pytest.mark.parametrize("name", ["layer", "online", "paper"])
def test_loss_on_the_cell_state_only(name: str) -> None:
    """The last step's c site is off the way to the loss: it must not count a gradient."""
    lockstep(SPECS[name], batch=3, with_state=True, loss_on="final_c")


@pytest.mark.parametrize("name", ["online", "custom"])
def test_frozen_input_weights(name: str) -> None:
    """A statistic whose input needs no gradient gets no backward call in autograd either."""
    lockstep(SPECS[name], layers=2, with_state=True, freeze=("layers.0.lx", "layers.0.lh"))


@pytest.mark.parametrize("name", ["layer", "online"])
def test_capture_and_one_step_windows(name: str) -> None:
    lockstep(SPECS[name], layers=2, capture=1)
    lockstep(SPECS[name], steps=1, windows=3)  # T = 1 from a zero state: no h-site call


@pytest.mark.parametrize("name", ["layer", "online", "paper"])
def test_no_grad_forward_matches(name: str) -> None:
    """Training mode without autograd (a prediction on copied statistics) updates the same."""
    gen = RecurrentStack("lstm", 3, 8, 2, SPECS[name]).double()
    fast = copy.deepcopy(gen)
    for _ in range(3):
        x = torch.randn(6, 2, 3, dtype=torch.float64)
        with torch.no_grad():
            out_f, _ = fast(x)
            with lstm_kernel.disabled():
                out_g, _ = gen(x)
        _close(out_f, out_g, "outputs")
        notify_optimizer_step(fast)
        notify_optimizer_step(gen)
    for (name_b, a), b in zip(fast.named_buffers(), gen.buffers(), strict=True):
        _close(a, b, name_b)


def test_applicability() -> None:
    x = torch.randn(4, 1, 3)
    lstm = RecurrentStack("lstm", 3, 8, 1, "streaming").layers[0]
    assert lstm_kernel.try_window(lstm, x, None) is not None
    with lstm_kernel.disabled():
        assert not lstm_kernel.is_enabled()
        assert lstm_kernel.try_window(lstm, x, None) is None
    assert lstm_kernel.is_enabled()
    lstm.eval()  # Streaming Norm in eval normalizes with frozen statistics: the generic path
    assert lstm_kernel.try_window(lstm, x, None) is None
    assert lstm_kernel.try_window(RecurrentStack("lstm", 3, 8, 1, "layer").layers[0].eval(), x,
                               None) is not None
    for norm in ("none", "online", "weight"):
        assert lstm_kernel.try_window(RecurrentStack("lstm", 3, 8, 1, norm).layers[0], x,
                                   None) is None
    assert lstm_kernel.try_window(lstm.train(), x.to(torch.float16), None) is None


# -- gradcheck of the hand-written backward -------------------------------------------------------
def _gradcheck(cell: Any, batch: int, steps: int, with_state: bool) -> None:
    params, _ = lstm_kernel._plan(cell)
    snapshot = {k: v.clone() for k, v in cell.state_dict().items()}

    def fn(x: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cell.load_state_dict(snapshot)  # every evaluation starts from the same statistics
        ps, state = rest[:7], (rest[7:] if with_state else (None, None))
        arrs = [p.detach().numpy() for p in ps]
        kernel = lstm_kernel._kernel(cell, steps, batch, np.float64)
        return lstm_kernel._Window.apply(kernel, cell, arrs, x, *ps, *state)

    x = torch.randn(steps, batch, cell.input_size, dtype=torch.float64, requires_grad=True)
    ps = [p.detach().clone().requires_grad_() for p in params]
    st = [torch.randn(batch, cell.hidden_size, dtype=torch.float64, requires_grad=True)
          for _ in range(2 if with_state else 0)]
    assert torch.autograd.gradcheck(fn, (x, *ps, *st), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_state", [False, True])
def test_gradcheck_layer(batch: int, with_state: bool) -> None:
    cell = RecurrentStack("lstm", 3, 4, 1, "layer").double().layers[0]
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.1 * torch.randn_like(p))  # gains and biases away from 1 and 0
    _gradcheck(cell, batch, 4, with_state)


@pytest.mark.parametrize(("preset", "batch"), [("sample", 2), ("paper", 3), ("online", 3)])
def test_gradcheck_streaming_true_gradient(preset: str, batch: int) -> None:
    """α = (0, 1), β = (0, 0, 1), one call per site between steps: LN/BN, and its gradient."""
    spec = {"method": "streaming", "preset": preset, "alpha": [0.0, 1.0],
            "beta": [0.0, 0.0, 1.0]}
    cell = RecurrentStack("lstm", 3, 4, 1, spec).double().layers[0]
    x = torch.randn(3, batch, 3, dtype=torch.float64)
    cell(x[0], (torch.randn(batch, 4).double(), torch.randn(batch, 4).double()))
    notify_optimizer_step(cell)  # the next call folds: n = 0, so ŝ is the call's statistic
    _gradcheck(cell, batch, 1, True)


# -- buffers reused from window to window ---------------------------------------------------
def test_two_windows_before_one_backward() -> None:
    """A second window while the first still awaits its backward gets buffers of its own."""
    gen = RecurrentStack("lstm", 3, 8, 1, SPECS["online"]).double()
    fast = copy.deepcopy(gen)
    xs = [torch.randn(5, 1, 3, dtype=torch.float64) for _ in range(2)]
    for k, net in ((True, fast), (False, gen)):
        with contextlib.nullcontext() if k else lstm_kernel.disabled():
            out1, st = net(xs[0])
            out2, _ = net(xs[1], st)
        (out1.sum() + (out2 ** 2).sum()).backward()
    for (name, a), b in zip(fast.named_parameters(), gen.parameters(), strict=True):
        _close(a.grad, b.grad, name)
    for (name, a), b in zip(fast.named_buffers(), gen.buffers(), strict=True):
        _close(a, b, name)


def test_retain_graph_and_reuse() -> None:
    net = RecurrentStack("lstm", 3, 8, 1, "layer").double()
    x = torch.randn(4, 1, 3, dtype=torch.float64)
    out, _ = net(x)
    out.sum().backward(retain_graph=True)
    first = net.layers[0].lx.weight.grad.clone()
    out.sum().backward(retain_graph=True)  # the buffers are still this window's
    _close(net.layers[0].lx.weight.grad, 2 * first, "second backward")
    net(x)[0].sum().backward()  # a new window reuses them ...
    with pytest.raises(RuntimeError, match="reused by a later forward"):
        out.sum().backward()  # ... so the old graph must not read them


@pytest.mark.parametrize("name", ["layer", "online"])
def test_buffers_reused_across_start_states(name: str) -> None:
    """One cached kernel serves windows from a zero state, from a constant state and from a
    state that needs a gradient (the paths autograd takes differ)."""
    gen = RecurrentStack("lstm", 3, 8, 2, SPECS[name]).double()
    fast = copy.deepcopy(gen)
    for k in range(6):
        x = torch.randn(4, 1, 3, dtype=torch.float64)
        state = None if k % 3 == 0 else tuple(torch.randn(2, 1, 8, dtype=torch.float64)
                                              .requires_grad_(k % 3 == 2) for _ in range(2))
        outs = []
        for fast_path, net in ((True, fast), (False, gen)):
            net.zero_grad()
            with contextlib.nullcontext() if fast_path else lstm_kernel.disabled():
                out, _ = net(x, state)
            out.sum().backward()
            outs.append((out.detach(), [p.grad for p in net.parameters()]))
        _close(outs[0][0], outs[1][0], f"window {k}: outputs")
        for a, b in zip(outs[0][1], outs[1][1], strict=True):
            _close(a, b, f"window {k}: grads")
        fast.load_state_dict(gen.state_dict())


def test_predictions_hand_their_kernel_back() -> None:
    """A predict's graph is dropped without a backward: its kernel must be reusable, not left
    reserved (which made every later window build a new kernel)."""
    from models import OnlineLearner
    from models.fast.lstm_kernel import _KERNELS

    learner = OnlineLearner({"name": "k", "task": "regression", "n_features": 2,
                             "hidden_size": 4, "window": 3, "norm": "layer"})
    for i in range(4):
        learner.learn_one([0.1 * i, 0.2], 0.3, stream="s")
    cell = learner.net.stack.layers[0]
    before = dict(_KERNELS[cell])
    learner.predict_one([0.3, 0.1], stream="s")
    learner.predict_one([0.2, 0.1], stream="s")
    assert _KERNELS[cell] == before  # the same kernel objects
    assert not any(k.busy for k in _KERNELS[cell].values())
