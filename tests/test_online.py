"""Online Normalization (Chiley et al. 2019): one-step algebra, long-run moments, gradcheck."""

from __future__ import annotations

import math

import torch

from models import norms
from models.norms.online import OnlineNormFn, OnlineNormSite

AF, AB, EPS = 0.999, 0.99, 1e-5


def make_site(width: int = 4, groups: int = 1, layer_scaling: bool = False) -> OnlineNormSite:
    site = norms.build({"method": "online", "layer_scaling": layer_scaling}).site(
        "pre", width, groups=groups)
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
