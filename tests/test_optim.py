"""The flat optimizers compute what ``torch.optim`` computes per parameter (the oracle).

Not bit for bit: the kernels run vectorised over whole vectors and in scalar code over each
tensor's last few elements, so the same element may round differently (by an ulp) in one flat
tensor than at the end of a small parameter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.fast.optim import FlatOptimizer
from models.spec import OptimizerSpec

SHAPES = [(7, 3), (7,), (2, 5, 4), (), (1,)]


def reference(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """What the learner used before: fused Adam and SGD, RMSprop's default (single tensor)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, fused=True)
    return torch.optim.RMSprop(params, lr=lr)


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop"])
def test_flat_step_equals_torch_optim_per_parameter(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    size = sum(p.numel() for p in params)
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    grad = torch.zeros(size)
    spec = OptimizerSpec(name=name, lr=0.03)
    ours = FlatOptimizer(spec, size)
    ours.bind(flat, grad)
    theirs = reference(name, params, spec.lr)
    for _ in range(6):
        grads = [torch.randn(p.shape, generator=g) * 3 for p in params]
        for p, gr in zip(params, grads, strict=True):
            p.grad = gr.clone()
        grad.copy_(torch.cat([gr.reshape(-1) for gr in grads]))
        theirs.step()
        ours.step()
        torch.testing.assert_close(flat, torch.cat([p.detach().reshape(-1) for p in params]),
                                   rtol=1e-5, atol=1e-7)
    for key, value in ours.state.items():
        if key == "step":
            assert all(torch.equal(value, theirs.state[p]["step"]) for p in params)
            assert float(value) == 6
        else:
            want = torch.cat([theirs.state[p][key].reshape(-1) for p in params])
            torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-9)
    assert name != "sgd" or not ours.state


def test_bind_rejects_buffers_of_another_size() -> None:
    ours = FlatOptimizer(OptimizerSpec(name="adam"), 4)
    with pytest.raises(ValueError, match="one shape"):
        ours.bind(torch.zeros(5), torch.zeros(5))
