"""The health of a learner's normalization state: a small summary of each statistics buffer.

Running statistics are where a batch-free normalization goes wrong quietly (a variance drifting
to zero, a long-term memory turned NaN while the weights still look fine), so the dashboard shows
the range of every buffer the normalization modules register. Streaming Norm keeps its four
memories in one ``memory`` buffer; it is summarized row by row, under the names the site gives
them (``L``, ``S``, ``GL``, ``GS``: long- and short-term statistics and their gradients).

Examples
--------
>>> from models import ModelSpec, OnlineLearner
>>> from models.health import summary
>>> learner = OnlineLearner(ModelSpec(name="demo", task="regression", n_features=2,
...                                   hidden_size=4, norm="online", seed=0))
>>> rows = summary(learner)
>>> [row["name"] for row in rows]  # Online Norm's running statistics and its controls
['stack.layers.0.npre.mean', 'stack.layers.0.npre.var', 'stack.layers.0.npre.u',
 'stack.layers.0.npre.v']
>>> rows[1]
{'name': 'stack.layers.0.npre.var', 'shape': [16], 'min': 1.0, 'max': 1.0, 'mean': 1.0,
 'finite': True}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .norms.streaming import MEMORIES, StreamingSite

if TYPE_CHECKING:
    from .learner import OnlineLearner

__all__ = ["buffers", "describe", "summary"]

_NORMS_PACKAGE = "models.norms"


def summary(learner: OnlineLearner) -> list[dict[str, Any]]:
    """``{"name", "shape", "min", "max", "mean", "finite"}`` of each normalization buffer of
    ``learner``, in module order; empty for methods that keep no statistics."""
    return [describe(name, tensor) for name, tensor in buffers(learner.net)]


def buffers(net: nn.Module) -> list[tuple[str, Tensor]]:
    """The buffers registered by the normalization modules of ``net`` (not the cells' own
    helpers), with Streaming Norm's ``memory`` split into its named rows."""
    out: list[tuple[str, Tensor]] = []
    for prefix, module in net.named_modules():
        if not type(module).__module__.startswith(_NORMS_PACKAGE):
            continue
        for name, tensor in module.named_buffers(prefix=prefix, recurse=False):
            if isinstance(module, StreamingSite) and name.endswith(".memory"):
                stem = name[:-len("memory")]
                out.extend((stem + row, part)
                           for row, part in zip(MEMORIES, tensor.unbind(0), strict=True))
            else:
                out.append((name, tensor))
    return out


def describe(name: str, tensor: Tensor) -> dict[str, Any]:
    """One buffer's summary. ``min``, ``max`` and ``mean`` are over its finite elements (JSON
    has no NaN), ``None`` when it has none; ``finite`` says whether every element is."""
    values = tensor.detach().to(torch.float64).reshape(-1)
    finite = torch.isfinite(values)
    kept = values[finite]
    stats: dict[str, float | None] = {"min": None, "max": None, "mean": None}
    if kept.numel():
        stats = {"min": float(kept.min()), "max": float(kept.max()),
                 "mean": float(kept.mean())}
    return {"name": name, "shape": list(tensor.shape), **stats,
            "finite": bool(finite.all())}
