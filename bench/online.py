"""Why Online Norm does not learn at batch size 1 in a recurrent stream: an ablation (issue 14).

Tasks (``--tasks``): ``memory`` — the memory task of ``tests/test_memory_task.py`` /
``bench/quality.py`` (a one-hot symbol out of 4 per event, label = the symbol two events back;
chance 0.25), stream mode, window 8; ``digits`` — scikit-learn's 8×8 digits as 8 rows of 8,
sequence mode, one pass over all 1,797 in a seeded order (chance 0.1); ``pdigits`` — the same
images as 64 permuted pixels of 1, the first 600. LSTM (and GRU with ``--cells lstm gru``),
hidden 32, Adam; the same learning rate and budget for every variant.
Variants change one thing of Online Norm's default at a time — the forward decay α_f, the
backward-control decay α_b (1 = no backward control), the error check (layer scaling, clamping,
none) — beside ``none`` and ``layer``. Printed: accuracy over the last 500 events and over all,
mean ± std over the seeds, and the rejected updates.

    .venv/bin/python bench/online.py                 # memory, LSTM: ~1.5 min on 2 cores
    .venv/bin/python bench/online.py --cells lstm gru --tasks memory digits pdigits  # ~15 min
    (digits need scikit-learn: bash bench/setup.sh)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench/: quality.digits

import study
from quality import MEMORY_K as K

from models import ModelSpec, OnlineLearner, UpdateRejected

TAIL = 500
PAPER = {"alpha_f": 1 - 2 ** -13, "alpha_b": 1 - 2 ** -5}  # Chiley et al.'s PTB LSTM values
BASE = {"method": "online", "alpha_b": 0.99}  # the paper's defaults (α_f 0.999, layer scaling)
VARIANTS: dict[str, dict[str, Any]] = {
    "online, the paper's defaults (α_f 0.999, α_b 0.99, layer scaling)": BASE,
    "online, the paper's PTB α_f, α_b": {**BASE, **PAPER},
    "online, α_f 0.99": {**BASE, "alpha_f": 0.99},
    "online, clamping (±5) instead of layer scaling": {
        **BASE, "layer_scaling": False, "clamp": 5.0},
    "online, no error check": {**BASE, "layer_scaling": False},
    "online, α_b 0.9": {**BASE, "alpha_b": 0.9},
    "online, α_b 0.999": {**BASE, "alpha_b": 0.999},
    "online, no backward control (α_b 1, the default since issue 14)": {**BASE, "alpha_b": 1.0},
    "online, no backward control, no error check": {
        **BASE, "alpha_b": 1.0, "layer_scaling": False},
    "online, no backward control, clamping (±5)": {
        **BASE, "alpha_b": 1.0, "layer_scaling": False, "clamp": 5.0},
    "none": {"method": "none"},
    "layer": {"method": "layer"},
}


def run(job: tuple[str, str, str, dict[str, Any], int, int, float, int]
        ) -> tuple[str, str, str, int, float, float, int]:
    """One task × variant × cell × seed: (task, variant, cell, seed, tail accuracy, accuracy,
    rejected updates)."""
    task, name, cell, norm, hidden, events, lr, seed = job
    torch.set_num_threads(1)
    if task == "memory":
        stream = study.STREAMS["memory"]  # one-hot symbols, the label two events back
        classes, width = K, K
        samples = [(kw, y) for kw, y, _ in study.samples(stream, events, seed)]
    else:
        from quality import digits  # scikit-learn: only for these tasks

        seqs, labels = digits(task == "pdigits", True)
        order = np.random.RandomState(seed).permutation(len(seqs))[:600 if task == "pdigits"
                                                                   else len(seqs)]
        classes, width = 10, len(seqs[0][0])
        samples = [({"sequence": seqs[i]}, labels[i]) for i in order]
    learner = OnlineLearner(ModelSpec(name="m", task="multiclass", n_classes=classes,
                                      n_features=width, cell=cell, hidden_size=hidden,
                                      norm=norm, window=8, seed=seed,
                                      optimizer={"name": "adam", "lr": lr}))
    hits, rejected = [], 0
    for kwargs, y in samples:
        try:
            pred = learner.learn_one(y=y, **kwargs).prediction
        except UpdateRejected:
            rejected += 1
            pred = learner.predict_one(**kwargs)
        hits.append(pred == y)
    return task, name, cell, seed, sum(hits[-TAIL:]) / TAIL, sum(hits) / len(hits), rejected


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--cells", nargs="+", default=["lstm"], choices=["lstm", "gru", "rnn"])
    p.add_argument("--tasks", nargs="+", default=["memory"],
                   choices=["memory", "digits", "pdigits"])
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                   help="only the variants whose name contains one of these")
    args = p.parse_args(argv)
    start = time.perf_counter()
    variants = {n: v for n, v in VARIANTS.items()
                if args.only is None or any(t in n for t in args.only)}
    jobs = [(task, name, cell, norm, args.hidden, args.events, args.lr, seed)
            for task in args.tasks for cell in args.cells for name, norm in variants.items()
            for seed in args.seeds]
    results: dict[tuple[str, str, str], list[tuple[float, float, int]]] = {}
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for task, name, cell, _seed, tail, acc, rejected in pool.map(run, jobs):
            results.setdefault((task, name, cell), []).append((tail, acc, rejected))
    print(f"# bench/online.py — memory {args.events} events (chance {1 / K:.2f}); digits "
          f"(chance 0.10); window 8, hidden {args.hidden}, Adam lr {args.lr}, seeds "
          f"{args.seeds}, torch {torch.__version__}\n")
    for task, cell in [(t, c) for t in args.tasks for c in args.cells]:
        print(f"| {task}, {cell.upper()}: variant | last {TAIL} acc | all acc | rejected |")
        print("|---|---:|---:|---:|")
        for name in variants:
            rows = results[(task, name, cell)]

            def fmt(values: list[float]) -> str:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                return f"{statistics.fmean(values):.3f} ± {sd:.3f}"

            print(f"| {name} | {fmt([r[0] for r in rows])} | {fmt([r[1] for r in rows])} | "
                  f"{sum(r[2] for r in rows)} |")
        print()
    print(f"(wall time {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
