"""Streaming Normalization (Liao et al. 2016): reductions to LN/BN, memories, folds, gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn import functional as F

from models import norms
from models.norms.streaming import StreamingSite, StreamingStat

EXACT = {"alpha": (0.0, 1.0), "beta": (0.0, 0.0, 1.0)}


def make_site(width: int, bias: bool = True, **params: Any) -> StreamingSite:
    method = norms.build({"method": "streaming", **params})
    site = method.site("h", width, bias=bias)
    assert isinstance(site, StreamingSite)
    return site


def _perturb_affine(site: StreamingSite) -> None:
    with torch.no_grad():
        site.weight.uniform_(0.5, 1.5)
        if site.bias is not None:
            site.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("batch", [1, 4])
def test_sample_preset_reduces_to_layer_norm_over_several_updates(batch: int) -> None:
    site = make_site(10, preset="sample", **EXACT).double()
    _perturb_affine(site)
    for _ in range(3):  # one call per update, as the oracle states
        a = (torch.randn(batch, 10, dtype=torch.float64) * 3 + 1).requires_grad_(True)
        ref_a = a.detach().clone().requires_grad_(True)
        out = site(a, 0)
        ref = F.layer_norm(ref_a, (10,), site.weight, site.bias, 1e-5)
        torch.testing.assert_close(out, ref)
        w = torch.randn_like(out)
        (ga,) = torch.autograd.grad((out * w).sum(), a)
        (gref,) = torch.autograd.grad((ref * w).sum(), ref_a)
        torch.testing.assert_close(ga, gref)
        site.on_optimizer_step()


@pytest.mark.parametrize("preset", ["paper", "online"])
def test_unit_presets_reduce_to_training_mode_batch_norm(preset: str) -> None:
    site = make_site(6, preset=preset, **EXACT).double()
    _perturb_affine(site)
    for _ in range(3):
        a = (torch.randn(5, 6, dtype=torch.float64) * 2 - 1).requires_grad_(True)
        ref_a = a.detach().clone().requires_grad_(True)
        out = site(a, 0)
        ref = F.batch_norm(ref_a, None, None, site.weight, site.bias, training=True, eps=1e-5)
        torch.testing.assert_close(out, ref)
        w = torch.randn_like(out)
        (ga,) = torch.autograd.grad((out * w).sum(), a)
        (gref,) = torch.autograd.grad((ref * w).sum(), ref_a)
        torch.testing.assert_close(ga, gref)
        site.on_optimizer_step()


def test_short_memory_is_the_exact_mean_of_the_calls_since_the_last_update() -> None:
    site = make_site(5, preset="online")
    calls = [torch.randn(2, 5) * (k + 1) for k in range(7)]
    for a in calls:
        site(a, 0)
    m1 = torch.stack([a.mean(0) for a in calls]).mean(0)
    m2 = torch.stack([(a * a).mean(0) for a in calls]).mean(0)
    torch.testing.assert_close(site.S, torch.stack([m1, m2]))
    assert int(site.n) == 7


def test_sample_axes_short_memory_is_the_mean_of_per_sample_statistics() -> None:
    site = make_site(8, preset="sample")
    calls = [torch.randn(3, 8) + k for k in range(4)]
    for a in calls:
        site(a, 0)
    mus = torch.stack([a.mean(1).mean() for a in calls]).mean()
    devs = torch.stack([a.std(1, unbiased=False).mean() for a in calls]).mean()
    torch.testing.assert_close(site.S[:, 0, 0], torch.stack([mus, devs]))


def _run_calls(site: StreamingSite, k: int) -> None:
    for _ in range(k):
        a = torch.randn(1, site.width, requires_grad=True)
        site(a, 0).pow(2).sum().backward()


def test_folds_exactly_once_at_the_first_call_after_a_step_with_the_stated_formula() -> None:
    site = make_site(4, preset="online", kappa=(0.9, 0.1, 0.8, 0.2))
    _run_calls(site, 5)
    site.on_optimizer_step()
    _run_calls(site, 3)  # the first of these folds the memories of the first five calls
    L0, S0, GL0, GS0 = (b.clone() for b in (site.L, site.S, site.GL, site.GS))
    assert int(site.n) == 3 and int(site.m) == 3
    site.on_optimizer_step()
    a = torch.randn(1, 4, requires_grad=True)
    site(a, 0).sum().backward()
    torch.testing.assert_close(site.L, 0.9 * L0 + 0.1 * S0)
    torch.testing.assert_close(site.GL, 0.8 * GL0 + 0.2 * GS0)
    assert int(site.n) == 1 and int(site.m) == 1
    cur = torch.stack([a.detach()[0], a.detach()[0] ** 2])
    torch.testing.assert_close(site.S, cur)
    L1 = site.L.clone()
    _run_calls(site, 2)  # no step in between: no second fold
    torch.testing.assert_close(site.L, L1)
    assert int(site.n) == 3


def test_first_fold_of_the_paper_preset_copies_the_short_memory() -> None:
    site = make_site(4, preset="paper")
    assert not int(site.l_init)
    for _ in range(3):
        a = torch.randn(3, 4, requires_grad=True)
        site(a, 0).pow(2).sum().backward()
    S0, GS0 = site.S.clone(), site.GS.clone()
    site.on_optimizer_step()
    site(torch.randn(3, 4), 0)
    torch.testing.assert_close(site.L, S0)
    torch.testing.assert_close(site.GL, GS0)


def test_no_fold_without_a_step_and_none_without_a_call() -> None:
    site = make_site(4, preset="online")
    site.on_optimizer_step()
    site.on_optimizer_step()  # two steps, no call: nothing to fold yet
    torch.testing.assert_close(site.L, torch.tensor([[0.0] * 4, [1.0] * 4]))
    _run_calls(site, 1)
    torch.testing.assert_close(site.L, torch.tensor([[0.0] * 4, [1.0] * 4]))  # S was empty


def test_forward_value_mixes_long_and_short_memories() -> None:
    site = make_site(3, preset="online", alpha=(0.6, 0.4))
    _run_calls(site, 2)
    site.on_optimizer_step()
    _run_calls(site, 1)
    L, S, n = site.L.clone(), site.S.clone(), int(site.n)
    s_cur = torch.randn(2, 3)
    s_hat = StreamingStat.apply(s_cur, site)
    expected_short = S + (s_cur - S) / (n + 1)
    torch.testing.assert_close(s_hat, 0.6 * L + 0.4 * expected_short)


def test_gradient_routing_uses_long_short_and_current_gradients() -> None:
    site = make_site(3, preset="online", beta=(0.5, 0.25, 0.25))
    _run_calls(site, 4)
    site.on_optimizer_step()
    _run_calls(site, 2)
    GL, GS, m = site.GL.clone(), site.GS.clone(), int(site.m)
    assert GL.abs().sum() > 0
    s_cur = torch.randn(2, 3, requires_grad=True)
    g = torch.randn(2, 3)
    (StreamingStat.apply(s_cur, site) * g).sum().backward()
    GS_new = GS + (g - GS) / (m + 1)
    torch.testing.assert_close(site.GS, GS_new)
    torch.testing.assert_close(s_cur.grad, 0.5 * GL + 0.25 * GS_new + 0.25 * g)


def test_lp_deviation_with_p_1_is_the_mean_absolute_deviation() -> None:
    site = make_site(6, preset="sample", p=1.0, **EXACT).double()
    a = torch.randn(2, 6, dtype=torch.float64)
    mu = a.mean(1, keepdim=True)
    mad = (a - mu).abs().mean(1, keepdim=True)
    expected = (a - mu) / torch.sqrt(mad * mad + 1e-5)
    torch.testing.assert_close(site(a, 0), expected)


def test_eval_changes_no_buffer_and_uses_the_mixed_memories() -> None:
    site = make_site(4, preset="online")
    _run_calls(site, 3)
    site.on_optimizer_step()
    _run_calls(site, 2)
    before = {k: v.clone() for k, v in site.state_dict().items()}
    site.eval()
    a = torch.randn(2, 4)
    out = site(a, 0)
    for k, v in site.state_dict().items():
        assert torch.equal(v, before[k]), k
    s = 0.7 * site.L + 0.3 * site.S
    var = (s[1] - s[0] ** 2).clamp_min(0)
    torch.testing.assert_close(out, (a - s[0]) / torch.sqrt(var + 1e-5) * site.weight + site.bias)


@pytest.mark.parametrize(("preset", "calls"), [("online", 20), ("paper", 5)])
def test_batch_size_one_stays_finite_from_the_first_call(preset: str, calls: int) -> None:
    """``online`` streams raw moments; ``paper``'s one-sample deviation is 0 (degenerate)."""
    site = make_site(8, preset=preset)
    for _ in range(calls):
        a = torch.randn(1, 8, requires_grad=True)
        out = site(a, 0)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(a.grad).all()
        site.on_optimizer_step()


def test_gradcheck_streaming_stat_in_its_exact_configuration() -> None:
    def fn(s: torch.Tensor) -> torch.Tensor:
        site = make_site(3, preset="paper", **EXACT).double()  # fresh state per evaluation
        return StreamingStat.apply(s, site)

    s = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (s,))


@pytest.mark.parametrize("preset", ["paper", "online", "sample"])
def test_gradcheck_streaming_site_in_its_exact_configuration(preset: str) -> None:
    def fn(a: torch.Tensor) -> torch.Tensor:
        site = make_site(5, preset=preset, **EXACT).double()
        return site(a, 0)

    a = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (a,))


def test_params_reject_weights_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="alpha"):
        norms.parse({"method": "streaming", "alpha": [1.5, 0.0]})
    with pytest.raises(ValueError, match="preset"):
        norms.parse({"method": "streaming", "preset": "fast"})
