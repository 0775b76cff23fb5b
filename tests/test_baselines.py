"""Weight Norm, Cosine Norm, Recurrent Batch Norm and BN-RNN: the oracles of norms.md."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from models import LSTMCell, RecurrentStack, norms
from models.norms.batch_rnn import BatchRNNSite
from models.norms.cosine import CosineLinear
from models.norms.recurrent_batch import RecurrentBatchNormSite


# -- weight normalization ------------------------------------------------------------------------
def test_weight_norm_at_wrap_time_keeps_the_weight_and_sets_g_to_the_row_norms() -> None:
    cell = LSTMCell(5, 6, "weight")
    for lin in (cell.lx, cell.lh):
        g, v = lin.parametrizations.weight.original0, lin.parametrizations.weight.original1
        torch.testing.assert_close(g.flatten(), v.norm(dim=1))
        torch.testing.assert_close(lin.weight, v)
    wh = cell.lh.weight.detach()  # orthogonal blocks survive the reparametrization
    torch.testing.assert_close(wh[:6] @ wh[:6].T, torch.eye(6), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_weight_norm_is_invariant_to_scaling_v(cell: str) -> None:
    net = RecurrentStack(cell, 4, 6, 1, "weight")
    x = torch.randn(5, 2, 4)
    out, _ = net(x)
    with torch.no_grad():
        for lin in (net.layers[0].lx, net.layers[0].lh):
            lin.parametrizations.weight.original1.mul_(3.7)
    torch.testing.assert_close(net(x)[0], out)


# -- cosine normalization ------------------------------------------------------------------------
def test_cosine_pre_activations_lie_in_minus_one_one_and_hit_the_ends() -> None:
    lin = CosineLinear(6, 10, gain_init=3.0, eps=1e-8)
    x = torch.cat([torch.randn(50, 6) * 100, lin.weight[:2].detach(), -lin.weight[:1].detach()])
    cos = lin.cosine(x)
    assert cos.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(cos[50, 0], torch.tensor(1.0))
    torch.testing.assert_close(cos[52, 0], torch.tensor(-1.0))
    torch.testing.assert_close(lin(x), cos * 3.0)


def test_cosine_is_invariant_to_scaling_the_input_and_zero_input_gives_zero() -> None:
    lin = CosineLinear(4, 8, gain_init=3.0, eps=1e-8).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(lin(x * 25.0), lin(x))
    assert torch.equal(lin(torch.zeros(1, 4, dtype=torch.float64)), torch.zeros(1, 8,
                                                                              dtype=torch.float64))


def test_cosine_cell_is_invariant_to_scaling_the_input() -> None:
    net = RecurrentStack("lstm", 4, 6, 1, "cosine").double()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(net(x * 9.0)[0], net(x)[0])


# -- recurrent batch normalization -----------------------------------------------------------------
def make_rbn(width: int, t_max: int) -> RecurrentBatchNormSite:
    site = norms.build({"method": "recurrent_batch", "t_max": t_max}).site("h", width)
    assert isinstance(site, RecurrentBatchNormSite)
    return site


def test_recurrent_bn_keeps_t_max_per_step_statistics_and_clamps_beyond() -> None:
    site = make_rbn(3, t_max=4)
    assert site.running_mean.shape == (4, 3)
    torch.testing.assert_close(site.weight, torch.full((3,), 0.1))
    mom = 0.01
    rm, rv = torch.zeros(4, 3), torch.ones(4, 3)
    for t in range(7):
        a = torch.randn(5, 3) * (t + 1) + t
        out = site(a, t)
        k = min(t, 3)
        torch.testing.assert_close(out, F.batch_norm(a, None, None, site.weight, None, True,
                                                     0.0, 1e-5))
        rm[k] = (1 - mom) * rm[k] + mom * a.mean(0)
        rv[k] = (1 - mom) * rv[k] + mom * a.var(0, unbiased=True)
    torch.testing.assert_close(site.running_mean, rm)
    torch.testing.assert_close(site.running_var, rv)


def test_recurrent_bn_one_sample_uses_running_statistics_and_ema() -> None:
    site = make_rbn(3, t_max=2)
    with torch.no_grad():
        site.running_mean[1] = torch.tensor([1.0, 2.0, 3.0])
        site.running_var[1] = torch.tensor([4.0, 1.0, 0.25])
    mean, var = site.running_mean[1].clone(), site.running_var[1].clone()
    a = torch.tensor([[2.0, 0.0, 3.5]])
    out = site(a, 5)  # clamps to position 1
    torch.testing.assert_close(out, 0.1 * (a - mean) / torch.sqrt(var + 1e-5))
    delta = a[0] - mean
    torch.testing.assert_close(site.running_mean[1], mean + 0.01 * delta)
    torch.testing.assert_close(site.running_var[1], (1 - 0.01) * (var + 0.01 * delta ** 2))
    assert torch.equal(site.running_mean[0], torch.zeros(3))


# -- batch-normalized RNN --------------------------------------------------------------------------
def test_batch_rnn_normalizes_only_the_input_term_with_sequence_wise_statistics() -> None:
    cell = LSTMCell(3, 4, "batch_rnn")
    assert isinstance(cell.nx, BatchRNNSite)
    assert cell.nh is None and cell.nc is None
    a = torch.randn(6, 1, 16) * 3 + 2  # one sequence: pooled over time it is not degenerate
    out = cell.nx.forward_seq(a, 0)
    ref = F.batch_norm(a.reshape(6, 16), None, None, cell.nx.weight, None, True, 0.0, 1e-5)
    torch.testing.assert_close(out, ref.view(6, 1, 16))
    torch.testing.assert_close(cell.nx.running_mean, 0.1 * a.reshape(6, 16).mean(0))


def test_batch_rnn_one_step_one_sample_uses_running_statistics() -> None:
    cell = LSTMCell(3, 4, "batch_rnn")
    a = torch.randn(1, 1, 16)
    out = cell.nx.forward_seq(a, 0)
    torch.testing.assert_close(out, a / torch.sqrt(torch.tensor(1.0 + 1e-5)))
    assert torch.isfinite(out).all()
