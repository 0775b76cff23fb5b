"""Online Normalization (Chiley et al. 2019): one-step algebra, long-run moments, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from models import ModelSpec, OnlineLearner, UpdateRejected, norms
from models.norms.online import OnlineNormFn, OnlineNormSite

AF, AB, EPS = 0.999, 0.99, 1e-5


def make_site(width: int = 4, groups: int = 1, layer_scaling: bool = False,
              clamp: float | None = None) -> OnlineNormSite:
    site = norms.build({"method": "online", "alpha_b": AB, "layer_scaling": layer_scaling,
                        "clamp": clamp}).site("pre", width, groups=groups)
    assert isinstance(site, OnlineNormSite)
    return site.double()


def test_one_step_algebra_from_zero_mean_unit_variance() -> None:
    site = make_site()
    x1 = torch.tensor([[0.5, -2.0, 3.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y1 = OnlineNormFn.apply(x1, site)
    torch.testing.assert_close(y1, x1.detach() / math.sqrt(1 + EPS))
    torch.testing.assert_close(site.mean, (1 - AF) * x1.detach()[0])
    torch.testing.assert_close(site.var, AF + AF * (1 - AF) * x1.detach()[0] ** 2)
    g1 = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64)
    y1.backward(g1)
    torch.testing.assert_close(x1.grad, g1 / math.sqrt(1 + EPS))  # u = v = 0 at the start
    torch.testing.assert_close(site.v, (g1 * y1.detach())[0])
    torch.testing.assert_close(site.u, x1.grad[0])

    # second step: the controls from step one now act
    mu, var, u, v = site.mean.clone(), site.var.clone(), site.u.clone(), site.v.clone()
    x2 = torch.tensor([[1.0, 1.0, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    y2 = OnlineNormFn.apply(x2, site)
    torch.testing.assert_close(y2, (x2.detach() - mu) / torch.sqrt(var + EPS))
    g2 = torch.tensor([[0.5, -1.0, 2.0, 1.0]], dtype=torch.float64)
    y2.backward(g2)
    gt = g2 - (1 - AB) * v * y2.detach()
    torch.testing.assert_close(x2.grad, gt / torch.sqrt(var + EPS) - (1 - AB) * u)
    torch.testing.assert_close(site.v, v + (gt * y2.detach())[0])


def test_long_run_moments_of_the_output_on_stationary_input() -> None:
    site = make_site(width=3)
    loc = torch.tensor([3.0, -1.0, 0.0], dtype=torch.float64)
    scale = torch.tensor([2.0, 0.5, 5.0], dtype=torch.float64)
    ys = []
    with torch.no_grad():
        for k in range(12000):
            y = OnlineNormFn.apply(loc + scale * torch.randn(1, 3, dtype=torch.float64), site)
            if k >= 6000:
                ys.append(y)
    y = torch.cat(ys)
    assert y.mean(0).abs().max() < 0.06
    assert (y.pow(2).mean(0) - 1).abs().max() < 0.08


def test_batch_update_matches_the_paper_formula() -> None:
    site = make_site(width=2)
    x = torch.randn(5, 2, dtype=torch.float64)
    OnlineNormFn.apply(x, site)
    xbar, var_b = x.mean(0), x.var(0, unbiased=False)
    torch.testing.assert_close(site.mean, (1 - AF) * xbar)
    torch.testing.assert_close(site.var, AF + (1 - AF) * var_b + AF * (1 - AF) * xbar ** 2)


def test_layer_scaling_gives_each_gate_unit_rms() -> None:
    site = make_site(width=12, groups=3, layer_scaling=True)
    with torch.no_grad():
        site.weight.uniform_(0.5, 2.0)
    z = site(torch.randn(2, 12, dtype=torch.float64) * 5, 0).view(2, 3, 4)
    torch.testing.assert_close(z.pow(2).mean(-1), torch.ones(2, 3, dtype=torch.float64),
                               atol=1e-4, rtol=1e-4)


def test_eval_changes_no_state() -> None:
    site = make_site(width=4)
    for _ in range(5):
        x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
        site(x, 0).pow(2).sum().backward()
    before = {k: v.clone() for k, v in site.state_dict().items()}
    site.eval()
    site(torch.randn(3, 4, dtype=torch.float64), 0)
    for k, v in site.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_gradcheck_online_norm_function() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        site = make_site(width=4)  # fresh state: controls start at 0, the exact derivative
        site.update_controls = False  # backward twice on one graph must give one answer
        return OnlineNormFn.apply(x, site)

    x = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,))


def test_clamp_limits_the_output_and_stops_the_gradient_outside() -> None:
    site = make_site(width=4, clamp=1.0)
    with torch.no_grad():
        site.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.0]))
        site.bias.copy_(torch.tensor([0.0, 0.5, 0.0, -0.25]))
    x = torch.tensor([[0.5, 3.0, -4.0, -1.0]], dtype=torch.float64, requires_grad=True)
    z = site(x, 0)
    by_hand = x.detach() / math.sqrt(1 + EPS) * site.weight.detach() + site.bias.detach()
    assert by_hand.abs().gt(1.0).any() and by_hand.abs().lt(1.0).any()  # both cases occur
    torch.testing.assert_close(z, by_hand.clamp(-1.0, 1.0))
    z.backward(torch.ones_like(z))  # first step: u = v = 0, the plain derivative
    inside = by_hand.abs() < 1.0
    want = torch.where(inside, site.weight.detach() / math.sqrt(1 + EPS), torch.zeros_like(z))
    torch.testing.assert_close(x.grad, want)


def test_clamp_replaces_layer_scaling_and_says_so() -> None:
    with pytest.raises(ValidationError, match="clamp"):
        norms.build({"method": "online", "clamp": 5.0})  # layer_scaling defaults to true
    with pytest.raises(ValidationError, match="clamp"):
        norms.build({"method": "online", "layer_scaling": False, "clamp": 0.0})
    with pytest.raises(ValidationError, match="clamp"):  # inf would be stored as null
        norms.build({"method": "online", "layer_scaling": False, "clamp": float("inf")})
    site = norms.build({"method": "online", "layer_scaling": False, "clamp": 5.0}).site(
        "pre", 8, groups=4)
    assert isinstance(site, OnlineNormSite) and site.clamp == 5.0


def _controls_after_leading_zeros(norm: dict[str, object]) -> tuple[int, float]:
    """30 learns of 64-step sequences whose first 16 steps are 0 (h stays 0 there): rejected
    updates, and the largest backward-control sum afterwards."""
    learner = OnlineLearner(ModelSpec(name="z", task="multiclass", n_classes=3, n_features=1,
                                      hidden_size=16, norm=norm, seed=0))
    gen = torch.Generator().manual_seed(0)
    rejected = 0
    for k in range(30):
        tail = (torch.rand(48, generator=gen, dtype=torch.float64) * (k % 3 + 1)).tolist()
        try:
            learner.learn_one(y=k % 3, sequence=[[0.0]] * 16 + [[v] for v in tail])
        except UpdateRejected:
            rejected += 1
    sites = [m for m in learner.net.modules() if isinstance(m, OnlineNormSite)]
    assert sites
    return rejected, max(float(t.abs().max()) for s in sites for t in (s.u, s.v))


def test_leading_constant_steps_blow_up_layer_scaling_not_clamping() -> None:
    """README's diagnosis of the permuted-digits divergence: a gate fed the same constant at
    every sample's first steps is scaled up by as much as 1/sqrt(eps) per step, so the controls
    sum enormous gradients; with clamping instead they stay of the gradients' size."""
    _, scaled = _controls_after_leading_zeros({"method": "online", "alpha_b": AB})
    rejected, clamped = _controls_after_leading_zeros(
        {"method": "online", "alpha_b": AB, "layer_scaling": False, "clamp": 5.0})
    assert scaled > 1e6
    assert rejected == 0 and clamped < 100.0
