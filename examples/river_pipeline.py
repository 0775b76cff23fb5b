"""A River pipeline with a streamnorm LSTM, side by side with deep-river, on one River dataset.

The same River code for each contender: ``preprocessing.StandardScaler() | model`` through
``evaluate.progressive_val_score`` on River's bundled ``TrumpApproval`` (1,001 daily polls, 6
features, a regression target), each contender timed in the same run:

- ``models.river.RecurrentRegressor`` with ``layer``, ``streaming`` and ``none`` normalization
  (hidden 16, window 16, Adam lr 0.01);
- deep-river's ``RollingRegressor`` over a plain ``nn.LSTM`` of the same size, window and
  optimizer (no normalization, no carried state), when deep-river is installed
  (``bash bench/setup.sh``; it pins an old torch, so it is not a dependency).

    .venv/bin/python examples/river_pipeline.py            # ~30 s on 2 cores
    .venv/bin/python examples/river_pipeline.py --limit 300

It prints a table: prequential MAE (the target in its own units) and events per second.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from river import datasets, evaluate, metrics, preprocessing
from torch import nn

from models.river import RecurrentRegressor

HIDDEN, WINDOW, LR = 16, 16, 0.01


class LSTMHead(nn.Module):
    """deep-river's module: ``[T, 1, I]`` → ``nn.LSTM`` → last step → ``Linear``."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, HIDDEN)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[-1])


def contenders() -> dict[str, Any]:
    """The models, by the name the table shows."""
    out: dict[str, Any] = {
        f"streamnorm LSTM {norm}": RecurrentRegressor(hidden_size=HIDDEN, window=WINDOW,
                                                      lr=LR, norm=norm, seed=0)
        for norm in ("layer", "streaming", "none")}
    try:
        from deep_river.regression import RollingRegressor
    except ImportError:
        return out
    out["deep-river RollingRegressor (nn.LSTM)"] = RollingRegressor(
        module=LSTMHead(6), optimizer_fn="adam", lr=LR, window_size=WINDOW, seed=0)
    return out


def score(model: Any, limit: int | None) -> tuple[float, float]:
    """Prequential MAE and events per second of ``StandardScaler() | model``."""
    data = datasets.TrumpApproval()
    rows = list(data.take(limit) if limit else data)
    start = time.perf_counter()
    mae = evaluate.progressive_val_score(rows, preprocessing.StandardScaler() | model,
                                         metrics.MAE())
    return mae.get(), len(rows) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=None, help="the first N samples only")
    args = p.parse_args()
    torch.set_num_threads(1)
    models = contenders()
    if not any(name.startswith("deep-river") for name in models):
        print("(deep-river is not installed: `bash bench/setup.sh` adds it)")
    print("| model (StandardScaler | model, TrumpApproval) | MAE | events/s |")
    print("|---|---:|---:|")
    for name, model in models.items():
        mae, rate = score(model, args.limit)
        print(f"| {name} | {mae:.3f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
