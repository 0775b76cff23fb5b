"""Cells against PyTorch's built-ins, and every method × cell for state, eval, batch size 1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import GRUCell, LSTMCell, RecurrentStack, RNNCell, notify_optimizer_step
from models.state import module_from_bytes, module_to_bytes

from .conftest import CELLS, METHODS


# -- `none` equals torch -------------------------------------------------------------------------
def _lstm_pair() -> tuple[LSTMCell, nn.LSTMCell]:
    ref = nn.LSTMCell(5, 7)
    cell = LSTMCell(5, 7, "none")
    with torch.no_grad():
        cell.lx.weight.copy_(ref.weight_ih)
        cell.lh.weight.copy_(ref.weight_hh)
        cell.bias.copy_(ref.bias_ih + ref.bias_hh)
    return cell, ref


def _run_steps(cell: nn.Module, xs: torch.Tensor, state: object, generic: bool) -> list:
    """Step by step through torch's cell, or through our generic per-step path."""
    outs = []
    for x in xs:
        if generic:
            state = cell.step(cell.input_term(x.unsqueeze(0))[0], state, 0)
        else:
            state = cell(x, state)
        outs.append(state)
    return outs


@pytest.mark.parametrize("generic", [False, True])
def test_none_lstm_cell_equals_torch_lstm_cell(generic: bool) -> None:
    cell, ref = _lstm_pair()
    xs = torch.randn(6, 3, 5)
    h0, c0 = torch.randn(3, 7), torch.randn(3, 7)
    ours = _run_steps(cell, xs, (h0, c0), generic)
    theirs = _run_steps(ref, xs, (h0, c0), False)
    for (h, c), (rh, rc) in zip(ours, theirs, strict=True):
        torch.testing.assert_close(h, rh)
        torch.testing.assert_close(c, rc)
    (ours[-1][0].sum() + ours[-1][1].sum()).backward()
    (theirs[-1][0].sum() + theirs[-1][1].sum()).backward()
    torch.testing.assert_close(cell.lh.weight.grad, ref.weight_hh.grad)
    torch.testing.assert_close(cell.lx.weight.grad, ref.weight_ih.grad)


def _assert_single_state_cells_agree(cell: nn.Module, ref: nn.Module, generic: bool) -> None:
    """Run a GRU/RNN cell and its torch twin over the same steps; every state must match."""
    xs, h0 = torch.randn(5, 2, 4), torch.randn(2, 6)
    ours = _run_steps(cell, xs, (h0,) if generic else h0, generic)
    theirs = _run_steps(ref, xs, h0, False)
    for h, rh in zip(ours, theirs, strict=True):
        torch.testing.assert_close(h[0] if generic else h, rh)


@pytest.mark.parametrize("generic", [False, True])
def test_none_gru_cell_equals_torch_gru_cell(generic: bool) -> None:
    ref, cell = nn.GRUCell(4, 6), GRUCell(4, 6, "none")
    with torch.no_grad():
        cell.lx.weight.copy_(ref.weight_ih)
        cell.lh.weight.copy_(ref.weight_hh)
        cell.bias.copy_(ref.bias_ih + torch.cat([ref.bias_hh[:12], torch.zeros(6)]))
        cell.bias_hn.copy_(ref.bias_hh[12:])
    _assert_single_state_cells_agree(cell, ref, generic)


@pytest.mark.parametrize("generic", [False, True])
def test_none_rnn_cell_equals_torch_rnn_cell(generic: bool) -> None:
    ref, cell = nn.RNNCell(4, 6), RNNCell(4, 6, "none")
    with torch.no_grad():
        cell.lx.weight.copy_(ref.weight_ih)
        cell.lh.weight.copy_(ref.weight_hh)
        cell.bias.copy_(ref.bias_ih + ref.bias_hh)
    _assert_single_state_cells_agree(cell, ref, generic)


def test_zero_state_none_equals_explicit_zeros_without_normalization() -> None:
    cell, ref = _lstm_pair()
    xs = torch.randn(4, 2, 5)
    h, c = cell(xs[0])
    rh, rc = ref(xs[0])
    torch.testing.assert_close(h, rh)
    torch.testing.assert_close(c, rc)


def test_stack_of_two_none_layers_equals_torch_lstm() -> None:
    ref = nn.LSTM(3, 5, num_layers=2)
    net = RecurrentStack("lstm", 3, 5, 2, "none")
    with torch.no_grad():
        for k, layer in enumerate(net.layers):
            layer.lx.weight.copy_(getattr(ref, f"weight_ih_l{k}"))
            layer.lh.weight.copy_(getattr(ref, f"weight_hh_l{k}"))
            layer.bias.copy_(getattr(ref, f"bias_ih_l{k}") + getattr(ref, f"bias_hh_l{k}"))
    x, h0, c0 = torch.randn(7, 2, 3), torch.randn(2, 2, 5), torch.randn(2, 2, 5)
    out, (h, c) = net(x, (h0, c0))
    rout, (rh, rc) = ref(x, (h0, c0))
    torch.testing.assert_close(out, rout)
    torch.testing.assert_close(h, rh)
    torch.testing.assert_close(c, rc)


def test_lstm_forget_gate_bias_starts_at_one_and_w_h_blocks_are_orthogonal() -> None:
    cell = LSTMCell(3, 8, "layer")
    torch.testing.assert_close(cell.bias[8:16], torch.ones(8))
    assert cell.bias[:8].abs().sum() == 0 and cell.bias[16:].abs().sum() == 0
    for k in range(4):
        w = cell.lh.weight[k * 8:(k + 1) * 8].detach()
        torch.testing.assert_close(w @ w.T, torch.eye(8), atol=1e-5, rtol=1e-5)


# -- every method × cell -------------------------------------------------------------------------
def _train(net: RecurrentStack, windows: int, batch: int = 1, seq: int = 5) -> tuple:
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    state = None
    for _ in range(windows):
        out, state = net(torch.randn(seq, batch, 3), state)
        out[-1].pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        notify_optimizer_step(net)
        state = tuple(s.detach() for s in state)
    return state


def _grads(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHODS)
def test_state_round_trip_gives_the_next_output_and_gradients_bit_for_bit(method: str,
                                                                          cell: str) -> None:
    net = RecurrentStack(cell, 3, 6, 2, method)
    state = _train(net, 3)
    blob = module_to_bytes(net, {"cell": cell, "method": method})
    torch.manual_seed(99)  # the fresh module starts from different weights
    fresh = RecurrentStack(cell, 3, 6, 2, method)
    assert module_from_bytes(fresh, blob) == {"cell": cell, "method": method}
    x = torch.randn(5, 1, 3)
    for module in (net, fresh):
        out, new_state = module(x, state)
        out[-1].pow(2).sum().backward()
        notify_optimizer_step(module)
        module.out, module.new_state = out, new_state
    assert torch.equal(net.out, fresh.out)
    for a, b in zip(net.new_state, fresh.new_state, strict=True):
        assert torch.equal(a, b)
    ga, gb = _grads(net), _grads(fresh)
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        assert torch.equal(ga[k], gb[k]), k
    sa, sb = net.state_dict(), fresh.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHODS)
def test_eval_forward_changes_no_buffer(method: str, cell: str) -> None:
    net = RecurrentStack(cell, 3, 6, 2, method)
    _train(net, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    out, _ = net(torch.randn(5, 2, 3))
    out.sum().backward()
    with torch.no_grad():
        net(torch.randn(4, 1, 3), None)
    after = net.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("explicit_zero", [False, True])
def test_batch_size_one_never_yields_nan_or_inf(method: str, cell: str,
                                                explicit_zero: bool) -> None:
    net = RecurrentStack(cell, 3, 6, 2, method)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for k in range(25):
        x = torch.randn(1 if k % 5 == 0 else 6, 1, 3)
        state = None
        if explicit_zero:
            state = tuple(torch.zeros(2, 1, 6) for _ in range(net.n_state))
        out, _ = net(x, state)
        assert torch.isfinite(out).all(), k
        out[-1].pow(2).sum().backward()
        for name, p in net.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (k, name)
        opt.step()
        opt.zero_grad()
        notify_optimizer_step(net)
    for name, b in net.state_dict().items():
        assert not b.is_floating_point() or torch.isfinite(b).all(), name


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHODS)
def test_a_batch_of_several_sequences_works(method: str, cell: str) -> None:
    net = RecurrentStack(cell, 3, 6, 2, method)
    x = torch.randn(5, 4, 3)
    out, state = net(x)
    assert out.shape == (5, 4, 6) and all(s.shape == (2, 4, 6) for s in state)
    out[-1].pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    if method in ("none", "layer", "weight", "cosine"):  # per-sample methods: rows independent
        single, _ = net(x[:, 2:3])
        torch.testing.assert_close(out[:, 2:3], single, atol=1e-6, rtol=1e-5)
