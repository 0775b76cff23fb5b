"""The optimizers (Adam, RMSprop, SGD) as one update over the flat parameter buffer.

Every parameter is a view of one flat buffer and so is every gradient (``models.fast.flat``); these
optimizers are elementwise, so one update over the flat buffers computes what
``torch.optim.Adam(fused=True)`` / ``SGD(fused=True)`` / ``RMSprop()`` compute per parameter, with
the same kernels (equal up to an ulp where a vector lane rounds unlike a per-tensor scalar tail;
tests/test_optim.py), one moment tensor per kind instead of one per parameter (fewer tensors to
build on load) and none of ``torch.optim``'s per-step bookkeeping.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..spec import OptimizerSpec

__all__ = ["FlatOptimizer"]

_ADAM = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}  # torch.optim.Adam's defaults
_RMSPROP_ALPHA, _RMSPROP_EPS = 0.99, 1e-8  # torch.optim.RMSprop's defaults


class FlatOptimizer:
    """One optimizer over ``params`` / ``grad`` (flat views, bound by the learner); its state
    (``state``: step count and moments, each one flat tensor) is re-homed by ``FlatState``."""

    def __init__(self, spec: OptimizerSpec, size: int) -> None:
        self.spec = spec
        self.state: dict[str, Tensor] = {}
        if spec.name == "adam":
            self.state.update(step=torch.tensor(0.0), exp_avg=torch.zeros(size),
                              exp_avg_sq=torch.zeros(size))
        elif spec.name == "rmsprop":
            self.state.update(step=torch.tensor(0.0), square_avg=torch.zeros(size))
        self.params = self.grad = torch.empty(0)

    def bind(self, params: Tensor, grad: Tensor) -> None:
        """Point the optimizer at the flat parameter values and gradients it updates."""
        if params.shape != grad.shape or any(t.shape != params.shape
                                            for k, t in self.state.items() if k != "step"):
            raise ValueError("parameters, gradients and moments must have one shape")
        self.params, self.grad = params, grad

    def copy(self, state: dict[str, Tensor], params: Tensor, grad: Tensor) -> FlatOptimizer:
        """An optimizer like this one over other buffers (``models.fast.clone``)."""
        new = object.__new__(FlatOptimizer)
        new.spec, new.state = self.spec, state
        new.bind(params, grad)
        return new

    def step(self) -> None:
        """One update of ``params`` from ``grad``."""
        spec, s = self.spec, self.state
        if spec.name == "adam":
            s["step"].add_(1)
            torch._fused_adam_([self.params], [self.grad], [s["exp_avg"]], [s["exp_avg_sq"]],
                               [], [s["step"]], amsgrad=False, lr=spec.lr, weight_decay=0.0,
                               maximize=False, grad_scale=None, found_inf=None, **_ADAM)
        elif spec.name == "rmsprop":
            s["step"].add_(1)
            square_avg = s["square_avg"]
            square_avg.mul_(_RMSPROP_ALPHA).addcmul_(self.grad, self.grad,
                                                      value=1 - _RMSPROP_ALPHA)
            self.params.addcdiv_(self.grad, square_avg.sqrt().add_(_RMSPROP_EPS), value=-spec.lr)
        else:
            torch._fused_sgd_([self.params], [self.grad], [], weight_decay=0.0, momentum=0.0,
                              lr=spec.lr, dampening=0.0, nesterov=False, maximize=False,
                              is_first_step=False, grad_scale=None, found_inf=None)
