"""Prequential quality of every normalization method × {LSTM, GRU} on data that ships offline.

Tasks (same hyper-parameters for every method: hidden 32, Adam, gradient clipping 1.0):

- ``digits``: scikit-learn's bundled 8×8 digits (1,797) as 8 steps of 8 pixels, sequence mode
  (``learn_one(sequence=..., y=label)``), one pass in a seeded order; prequential accuracy.
  Pixels are scaled to [−1, 1] (``--pixels unit``: [0, 1], where blank rows and pixels are exact
  zeros; see the report on rejected updates).
- ``pdigits``: the same images as 64 steps of 1 pixel under one fixed pixel permutation (a small
  permuted pixel-MNIST); prequential accuracy over the first ``--pdigits-n`` shuffled images.
- ``airline`` / ``trump``: River's bundled AirlinePassengers (144 months) and TrumpApproval (1,001
  days), stream mode, window 8, one step ahead. Target: ``y_t − y_{t−1}`` over the running std of
  past changes; features: last level and last change (running statistics of the past), plus month
  sin/cos or TrumpApproval's six columns (running standardization); prediction ``y_{t−1} +
  change``; prequential MAE in original units. Baselines: persistence (what a model that learns
  nothing predicts) and River's ``LinearRegression`` on the same features and target.
- ``memory``: a one-hot symbol out of 4 per event, label = the symbol two events earlier (as in
  tests/test_memory_task.py), stream mode, window 8; prequential accuracy (chance 0.25).

Every figure is the cumulative prequential metric, mean ± std over the seeds (model init, the
digits order, the memory stream). ``models.UpdateRejected`` is counted (the sample is then scored
with ``predict_one``), never fatal. Runs go to a process pool, one torch thread per process.

    bash bench/setup.sh                       # once: river, scikit-learn, matplotlib
    .venv/bin/python bench/quality.py         # ~9–11 min on 2 cores
    .venv/bin/python bench/quality.py --quick # ~1.5 min smoke run
    .venv/bin/python bench/quality.py --datasets digits memory --methods none layer --cells lstm

It prints markdown tables and saves the learning curves to ``bench/out/quality.png`` (``--plot``).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models
from models import ModelSpec, OnlineLearner, UpdateRejected

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("digits", "pdigits", "airline", "trump", "memory")
# column name, plot title, rolling window of the curves, decimals
INFO = {"digits": ("digits acc ↑", "digits 8×8 (8 steps × 8), accuracy ↑", 100, 3),
        "pdigits": ("perm. digits acc ↑", "permuted digits (64 steps × 1), accuracy ↑", 100, 3),
        "airline": ("Airline MAE ↓", "AirlinePassengers, MAE ↓", 12, 2),
        "trump": ("Trump MAE ↓", "TrumpApproval, MAE ↓", 50, 3),
        "memory": ("memory acc ↑", "memory: symbol 2 events back, accuracy ↑", 100, 3)}
REGRESSION = ("airline", "trump")
MEMORY_K, MEMORY_DELAY = 4, 2


@dataclass
class Config:
    """Sizes and hyper-parameters shared by every run."""

    hidden: int = 32
    window: int = 8
    lr: float = 0.005
    digits_n: int = 1797
    pdigits_n: int = 600
    trump_n: int = 1001
    memory_n: int = 2000
    pixels: str = "signed"


@dataclass
class Result:
    """One (dataset, method, cell, seed) run: per-event scores (hit or absolute error)."""

    dataset: str
    method: str
    cell: str
    seed: int
    scores: list[float] = field(default_factory=list)
    rejected: int = 0
    nonfinite: int = 0
    seconds: float = 0.0

    @property
    def metric(self) -> float:
        return float(np.nanmean(self.scores)) if self.scores else math.nan


# -- data ----------------------------------------------------------------------------------------
class Running:
    """Running mean and std (Welford); std is 1 until two values were seen."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, v: float) -> None:
        self.n += 1
        d = v - self.mean
        self.mean += d / self.n
        self.m2 += d * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n >= 2 and self.m2 > 0 else 1.0


@functools.cache
def digits(permuted: bool, signed: bool) -> tuple[list[list[list[float]]], list[int]]:
    """Digit images as sequences: 8 rows of 8, or 64 permuted pixels of 1."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X = data.data.astype(np.float64) / 16.0
    X = 2 * X - 1 if signed else X
    if permuted:
        X = X[:, np.random.RandomState(1234).permutation(64)].reshape(-1, 64, 1)
    else:
        X = X.reshape(-1, 8, 8)
    return X.tolist(), [int(v) for v in data.target]


@functools.cache
def regression_stream(name: str, n: int) -> list[tuple[list[float], float, float, float]]:
    """``(features, scaled target, last level, change scale)`` per event, past statistics only."""
    from river import datasets

    if name == "airline":
        raw = [([math.sin(2 * math.pi * x["month"].month / 12),
                 math.cos(2 * math.pi * x["month"].month / 12)], float(y), False)
               for x, y in datasets.AirlinePassengers()]
    else:
        raw = [(list(x.values()), float(y), True) for x, y in datasets.TrumpApproval()]
    raw = raw[:n]
    level, change = Running(), Running()
    cols = [Running() for _ in raw[0][0]]
    out: list[tuple[list[float], float, float, float]] = []
    prev, last_change = raw[0][1], 0.0
    level.update(prev)
    for feats, y, scale_feats in raw[1:]:
        if scale_feats:
            for c, v in zip(cols, feats, strict=True):
                c.update(v)
            feats = [(v - c.mean) / c.std for c, v in zip(cols, feats, strict=True)]
        sd = change.std
        x = [*feats, (prev - level.mean) / level.std, last_change / sd]
        out.append((x, (y - prev) / sd, prev, sd))
        last_change = y - prev
        change.update(last_change)
        level.update(y)
        prev = y
    return out


def memory_stream(n: int, seed: int) -> list[int]:
    """Random symbols out of ``MEMORY_K``."""
    return torch.randint(0, MEMORY_K, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# -- one run -------------------------------------------------------------------------------------
def make_learner(dataset: str, method: str, cell: str, seed: int, cfg: Config,
                 n_features: int) -> OnlineLearner:
    if dataset in REGRESSION:
        task: dict[str, Any] = {"task": "regression"}
    else:
        task = {"task": "multiclass", "n_classes": MEMORY_K if dataset == "memory" else 10}
    return OnlineLearner(ModelSpec(name="q", **task, n_features=n_features, cell=cell,
                                   hidden_size=cfg.hidden, window=cfg.window, norm=method,
                                   seed=seed, optimizer={"name": "adam", "lr": cfg.lr}))


def _learn(learner: OnlineLearner, res: Result, y: Any, **kw: Any) -> float | int:
    """``learn_one``'s prequential prediction; a rejected update is counted and predicted."""
    try:
        return learner.learn_one(y=y, **kw).prediction
    except UpdateRejected:
        res.rejected += 1
        return learner.predict_one(**kw)


def run_task(dataset: str, method: str, cell: str, seed: int, cfg: Config) -> Result:
    """Run one dataset × method × cell × seed and return its per-event scores."""
    torch.set_num_threads(1)
    res = Result(dataset, method, cell, seed)
    start = time.perf_counter()
    if dataset in ("digits", "pdigits"):
        seqs, labels = digits(dataset == "pdigits", cfg.pixels == "signed")
        n = cfg.digits_n if dataset == "digits" else cfg.pdigits_n
        order = np.random.RandomState(seed).permutation(len(seqs))[:n]
        learner = make_learner(dataset, method, cell, seed, cfg, len(seqs[0][0]))
        for i in order:
            pred = _learn(learner, res, labels[i], sequence=seqs[i])
            res.scores.append(float(pred == labels[i]))
    elif dataset in REGRESSION:
        stream = regression_stream(dataset, cfg.trump_n if dataset == "trump" else 144)
        learner = make_learner(dataset, method, cell, seed, cfg, len(stream[0][0]))
        for x, target, prev, sd in stream:
            pred = float(_learn(learner, res, target, x=x, stream="s"))
            if not math.isfinite(pred):
                res.nonfinite += 1
            res.scores.append(abs(prev + pred * sd - (prev + target * sd)))
    else:
        symbols = memory_stream(cfg.memory_n, seed)
        learner = make_learner(dataset, method, cell, seed, cfg, MEMORY_K)
        for t, s in enumerate(symbols):
            x = [0.0] * MEMORY_K
            x[s] = 1.0
            y = symbols[t - MEMORY_DELAY] if t >= MEMORY_DELAY else 0
            res.scores.append(float(_learn(learner, res, y, x=x, stream="s") == y))
    res.seconds = time.perf_counter() - start
    return res


def baselines(dataset: str, cfg: Config) -> dict[str, list[float]]:
    """Reference scores per event: chance / majority, persistence, River LinearRegression."""
    if dataset in REGRESSION:
        from river import linear_model

        stream = regression_stream(dataset, cfg.trump_n if dataset == "trump" else 144)
        lr = linear_model.LinearRegression()
        persist, river = [], []
        for x, target, _prev, sd in stream:
            xd = dict(enumerate(x))
            river.append(abs(lr.predict_one(xd) - target) * sd)
            lr.learn_one(xd, target)
            persist.append(abs(target) * sd)
        return {"persistence (no change)": persist, "River LinearRegression": river}
    if dataset == "memory":
        return {"chance": [1 / MEMORY_K] * cfg.memory_n}
    return {"chance": [0.1] * (cfg.digits_n if dataset == "digits" else cfg.pdigits_n)}


# -- report --------------------------------------------------------------------------------------
def rolling(scores: list[float], w: int) -> np.ndarray:
    """Mean of the last ``w`` scores at every event (fewer at the start)."""
    c = np.cumsum(np.insert(np.nan_to_num(np.asarray(scores, dtype=np.float64)), 0, 0.0))
    n = np.arange(1, len(scores) + 1)
    lo = np.maximum(n - w, 0)
    return (c[n] - c[lo]) / (n - lo)


def fmt(values: list[float], dataset: str) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{INFO[dataset][3]}f} ± {std:.{INFO[dataset][3]}f}"


def tables(results: list[Result], base: dict[str, dict[str, list[float]]], datasets: list[str],
           methods: list[str], cells: list[str], n_seeds: int) -> str:
    """One markdown table per cell: methods (rows) × datasets (columns); best in bold."""
    out = []
    for cell in cells:
        out.append(f"\n### {cell.upper()}\n")
        out.append("| method | " + " | ".join(INFO[d][0] for d in datasets) + " | s per seed |")
        out.append("|---|" + "---:|" * (len(datasets) + 1))
        means: dict[str, dict[str, float]] = {}
        cells_txt: dict[str, list[str]] = {}
        for m in methods:
            row, secs = [], []
            for d in datasets:
                runs = [r for r in results if (r.dataset, r.method, r.cell) == (d, m, cell)]
                secs += [r.seconds for r in runs]
                vals = [r.metric for r in runs]
                means.setdefault(d, {})[m] = statistics.fmean(vals) if vals else math.nan
                row.append(fmt(vals, d) if vals else "–")
            cells_txt[m] = [*row, f"{sum(secs) / n_seeds:.0f}"]
        for j, d in enumerate(datasets):
            finite = {m: v for m, v in means[d].items() if math.isfinite(v)}
            if finite:
                best = (min if d in REGRESSION else max)(finite, key=finite.__getitem__)
                cells_txt[best][j] = f"**{cells_txt[best][j]}**"
        out += [f"| {m} | " + " | ".join(cells_txt[m]) + " |" for m in methods]
        names = sorted({n for d in datasets for n in base[d]})
        for n in names:
            vals = [f"{statistics.fmean(base[d][n]):.{INFO[d][3]}f}"
                    if n in base[d] else "" for d in datasets]
            out.append(f"| *{n}* | " + " | ".join(vals) + " | |")
    return "\n".join(out)


def _draw(ax: Any, curve: np.ndarray, w: int, **kw: Any) -> Any:
    """Plot a rolling curve, skipping the first events where it averages only a few samples."""
    s = min(w // 2, len(curve) // 5)
    return ax.plot(np.arange(s + 1, len(curve) + 1), curve[s:], **kw)[0]


def plot(results: list[Result], base: dict[str, dict[str, list[float]]], datasets: list[str],
         methods: list[str], cells: list[str], path: Path) -> None:
    """Rolling prequential metric vs events: a row per dataset, a column per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(models.NORMS, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(len(datasets), len(cells), figsize=(6.5 * len(cells),
                             3.2 * len(datasets) + 0.6), squeeze=False)
    lines: dict[str, Any] = {}
    for i, d in enumerate(datasets):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            hi, refs = [], []
            for m in methods:
                runs = [r for r in results if (r.dataset, r.method, r.cell) == (d, m, cell)]
                if runs:
                    curve = np.mean([rolling(r.scores, INFO[d][2]) for r in runs], axis=0)
                    hi.append(np.nanpercentile(curve, 97))
                    lines[m] = _draw(ax, curve, INFO[d][2], lw=1.3, color=colors[m], label=m)
            for k, (name, scores) in enumerate(base[d].items()):
                refs.append(_draw(ax, rolling(scores, INFO[d][2]), INFO[d][2], color="0.3", lw=1.2,
                                  ls=("--", ":")[k % 2], label=name))
            if d in REGRESSION and hi:
                ax.set_ylim(0, 1.6 * max(hi))
            ax.set_title(f"{cell.upper()} · {INFO[d][1]}", fontsize=10)
            ax.set_xlabel("sequences" if "digits" in d else "events", fontsize=8)
            ax.set_ylabel(f"rolling {'MAE' if d in REGRESSION else 'accuracy'} ({INFO[d][2]})",
                          fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
            ax.legend(handles=refs, fontsize=7, loc="best")
    fig.legend(handles=list(lines.values()), loc="upper center", ncol=len(lines), fontsize=9,
               title="mean over seeds of the rolling prequential metric", title_fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / (3.2 * len(datasets) + 0.6)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cost(dataset: str, method: str, cell: str, cfg: Config) -> float:
    """Rough relative cost of a run, to start the longest first."""
    generic = (cell == "gru" and method not in ("none", "weight")) or method in (
        "online", "recurrent_batch", "cosine", "batch_rnn")
    per = (10.0 if cell == "gru" and method == "streaming" else 3.0 if generic else 1.0)
    n = {"digits": cfg.digits_n, "pdigits": cfg.pdigits_n * 8, "airline": 144,
         "trump": cfg.trump_n, "memory": cfg.memory_n}[dataset]
    return per * n


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(models.NORMS), choices=list(models.NORMS))
    p.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru", "rnn"])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    for name, kind, default in (("hidden", int, 32), ("window", int, 8), ("lr", float, 0.005)):
        p.add_argument(f"--{name}", type=kind, default=default, help=f"default {default}")
    p.add_argument("--digits-n", type=int, default=None, help="digit sequences (default 1797)")
    p.add_argument("--pdigits-n", type=int, default=None, help="permuted ones (default 600)")
    p.add_argument("--pixels", choices=["signed", "unit"], default="signed",
                   help="pixel scale: [-1, 1] (default) or [0, 1]")
    p.add_argument("--trump-n", type=int, default=None, help="TrumpApproval events (1001)")
    p.add_argument("--memory-n", type=int, default=None, help="memory events (default 2000)")
    p.add_argument("--plot", type=Path, default=ROOT / "bench" / "out" / "quality.png")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (~1.5 min): seed 0, 300 digits, 60 permuted, 300 memory/Trump")
    args = p.parse_args(argv)
    q = args.quick
    args.seeds = args.seeds or ([0] if q else [0, 1, 2])
    args.cfg = Config(args.hidden, args.window, args.lr,
                      args.digits_n or (300 if q else 1797), args.pdigits_n or (60 if q else 600),
                      args.trump_n or (300 if q else 1001), args.memory_n or (300 if q else 2000),
                      args.pixels)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run everything in a process pool; print tables and save the plot."""
    args = parse(argv)
    cfg: Config = args.cfg
    wall = time.perf_counter()
    datasets = [d for d in DATASETS if d in args.datasets]
    methods, cells = list(args.methods), list(args.cells)
    jobs = [(d, m, c, s) for d in datasets for m in methods for c in cells for s in args.seeds]
    jobs.sort(key=lambda j: -cost(j[0], j[1], j[2], cfg))
    print(f"# bench/quality.py — torch {torch.__version__}, {len(jobs)} runs on {args.workers} "
          f"processes (1 torch thread each); hidden {cfg.hidden}, Adam lr {cfg.lr:g}, clip 1.0, "
          f"stream window {cfg.window}; seeds {args.seeds}; digits {cfg.digits_n}, permuted "
          f"{cfg.pdigits_n} ({cfg.pixels} pixels), Airline 143, Trump {cfg.trump_n - 1}, memory "
          f"{cfg.memory_n} events; load average {os.getloadavg()[0]:.1f}", flush=True)
    results: list[Result] = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = [pool.submit(run_task, *j, cfg) for j in jobs]
        for k, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            results.append(r)
            print(f"  [{k}/{len(jobs)} {time.perf_counter() - wall:5.0f} s] {r.dataset} "
                  f"{r.method} {r.cell} seed {r.seed}: {r.metric:.3f} ({r.seconds:.1f} s"
                  f"{f', {r.rejected} rejected' if r.rejected else ''})", file=sys.stderr,
                  flush=True)
    base = {d: baselines(d, cfg) for d in datasets}
    print("\n## Prequential quality (mean ± std over seeds; cumulative over one pass)")
    print(tables(results, base, datasets, methods, cells, len(args.seeds)))
    bad = [r for r in results if r.rejected or r.nonfinite or not math.isfinite(r.metric)]
    print("\n## Rejected updates (`UpdateRejected`) / non-finite predictions\n")
    print("\n".join(f"- {r.dataset} {r.method} {r.cell} seed {r.seed}: {r.rejected} of "
                    f"{len(r.scores)} updates rejected, {r.nonfinite} non-finite predictions"
                    for r in bad) or "none in any run")
    if args.plot:
        plot(results, base, datasets, methods, cells, args.plot)
        print(f"\nlearning curves: {args.plot}")
    busy = sum(r.seconds for r in results)
    print(f"\nwall time {time.perf_counter() - wall:.0f} s ({busy:.0f} s of runs on "
          f"{args.workers} processes; load average now {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
