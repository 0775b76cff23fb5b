"""Shared batch-norm arithmetic for the batch-statistics baselines."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["bn_step"]


def bn_step(a: Tensor, mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor | None, *,
            training: bool, momentum: float, eps: float) -> Tensor:
    """Batch-normalize ``a`` ``[N, F]`` with the running ``mean``/``var`` views it updates.

    Training with ``N > 1``: true batch statistics, running ones updated as PyTorch does.
    Training with ``N == 1`` (one sample: batch statistics are degenerate): normalize with the
    running statistics, then move them by an exponential moving mean and variance
    (``δ = a − μ; μ += m·δ; σ² = (1 − m)(σ² + m·δ²)``). Eval: running statistics, no update.
    """
    if training and a.shape[0] > 1:
        # batch statistics; the running ones are updated apart so that no graph holds them
        out = F.batch_norm(a, None, None, weight, bias, True, 0.0, eps)
        with torch.no_grad():
            flat = a.detach()
            mean.mul_(1.0 - momentum).add_(flat.mean(0), alpha=momentum)
            var.mul_(1.0 - momentum).add_(flat.var(0, unbiased=True), alpha=momentum)
        return out
    if not training:
        return F.batch_norm(a, mean, var, weight, bias, False, 0.0, eps)
    # backward reads the statistics it normalized with, so give it copies before the update
    out = F.batch_norm(a, mean.clone(), var.clone(), weight, bias, False, 0.0, eps)
    with torch.no_grad():
        delta = a[0].detach() - mean
        mean.add_(momentum * delta)
        var.add_(momentum * delta * delta).mul_(1.0 - momentum)
    return out
