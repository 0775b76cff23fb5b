"""Calibrate and check ``models.cost``: the per-layer-step overhead of every cell × method, the
time per multiply-add, and whether every estimate is an upper bound of the measured time.

    python bench/cost.py            # ~3 min: the table, then estimate vs measured on a grid
    python bench/cost.py --quick    # fewer grid points

One torch thread, medians of 5 after a warm-up. The overhead is measured at hidden size 8 with 1
and 2 layers over 128 steps (sequence mode), the multiply-add time at hidden size 512 and 1024.
The check prints each grid spec's measured and estimated training, prediction and ``learn_many``
(4 sequences) times and fails (exit 1) if a measurement is above its estimate.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import ModelSpec, OnlineLearner, cost

CELLS = ("lstm", "gru", "rnn")
METHODS = ("none", "layer", "streaming", "online", "recurrent_batch", "batch_rnn", "weight",
           "cosine")


def median_ms(f: Callable[[], object], n: int = 5) -> float:
    f()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def learner(cell: str, method: str, hidden: int, layers: int, features: int = 8
            ) -> tuple[ModelSpec, OnlineLearner]:
    spec = ModelSpec.model_validate({
        "name": "cost", "task": "regression", "n_features": features, "hidden_size": hidden,
        "num_layers": layers, "cell": cell, "norm": {"method": method}, "window": 16})
    return spec, OnlineLearner(spec)


def timings(spec: ModelSpec, model: OnlineLearner, steps: int) -> tuple[float, float]:
    seq = [[0.1] * spec.input_size] * steps
    return (median_ms(lambda: model.learn_one(sequence=seq, y=0.5)),
            median_ms(lambda: model.predict_one(sequence=seq)))


def calibrate() -> None:
    print("| cell | method | µs/layer-step (1 layer) | (2 layers, per layer) | table | "
          "batch of 4, µs/step | table |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for cell, method in itertools.product(CELLS, METHODS):
        one = timings(*learner(cell, method, 8, 1), 128)[0] / 128 * 1000
        two = timings(*learner(cell, method, 8, 2), 128)[0] / 128 / 2 * 1000
        model = learner(cell, method, 8, 1)[1]
        seqs = [[[0.1] * 8] * 64] * 4
        batch = median_ms(lambda m=model, s=seqs: m.learn_many(s, [0.5] * 4)) / 64 * 1000
        print(f"| {cell} | {method} | {one:.0f} | {two:.0f} | "
              f"{cost._OVERHEAD_US[cell][method]:.0f} | {batch:.0f} | "
              f"{cost._BATCH_OVERHEAD_US[cell][method]:.0f} |", flush=True)
    print("\n| cell | hidden | ns/madd train | ns/madd predict |")
    print("|---|---:|---:|---:|")
    for cell, hidden in itertools.product(CELLS, (512, 1024)):
        spec, model = learner(cell, "none", hidden, 1)
        train, pred = timings(spec, model, 8)
        madds = cost.madds_per_step(spec) * 8
        print(f"| {cell} | {hidden} | {train * 1e6 / madds:.2f} | {pred * 1e6 / madds:.2f} |",
              flush=True)
    print(f"(table: {cost._NS_PER_MADD} ns/madd training, predictions × {cost._PREDICT})")


def check(points: int, seed: int = 0) -> bool:
    rng = random.Random(seed)
    print("\n| spec | steps | learn ms | est. | predict ms | est. | learn_many ×4 ms | est. |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ok = True
    for _ in range(points):
        cell, method = rng.choice(CELLS), rng.choice(METHODS)
        hidden, layers = rng.choice((8, 32, 64, 128, 256)), rng.choice((1, 2, 3))
        features, steps = rng.choice((1, 8, 64)), rng.choice((4, 16, 64))
        spec, model = learner(cell, method, hidden, layers, features)
        train, pred = timings(spec, model, steps)
        est_train, est_pred = cost.update_ms(spec, [(steps, 1)]), cost.predict_ms(spec, steps)
        seqs = [[[0.1] * features] * steps] * 4
        many = median_ms(lambda m=model, s=seqs: m.learn_many(s, [0.5] * 4))
        est_many = cost.update_ms(spec, [(steps, 4)])
        flag = "" if train <= est_train and pred <= est_pred and many <= est_many else " **over**"
        ok &= not flag
        print(f"| {cell} {method} H{hidden} L{layers} I{features} | {steps} | {train:.2f} | "
              f"{est_train:.2f} | {pred:.2f} | {est_pred:.2f} | {many:.2f} | "
              f"{est_many:.2f}{flag} |", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 grid points instead of 40")
    parser.add_argument("--no-calibrate", action="store_true", help="only the check")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.no_calibrate:
        calibrate()
    sys.exit(0 if check(12 if args.quick else 40) else 1)


if __name__ == "__main__":
    main()
