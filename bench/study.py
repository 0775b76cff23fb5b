"""Which normalization for online recurrent learning? A fair study at batch size 1 and in
mini-batches (issue 14).

Protocol, the same for every method:

- **Tuning on a prefix.** Each method gets the same budget of ``GRID`` (6) configurations per
  stream and cell: six learning rates (Adam), or — for the methods whose paper tunes a knob of
  their own (Streaming Norm's preset, Online Norm's α_b, recurrent BN's γ init) — three learning
  rates × two values of the knob. Each runs once (seed 100) on the stream's first quarter; the
  best prequential metric there wins.
- **Evaluation on the rest.** The chosen configuration runs from the start of the stream with
  seeds 0, 1, 2 (model init; for the memory task and the digits also the stream or its order);
  only events after the prefix are scored. Figures are mean ± std over the seeds.
- **A paired test.** Against ``none`` on the same stream, cell and seed: the difference of the
  scored metric per seed, and a two-sided paired t-test over the seeds marks it (▲ better, ▼
  worse than ``none``) at p < 0.05. The seed is the unit (the events of one run share its
  model, so they are not independent samples); with three seeds only large, consistent
  differences are marked, and nothing corrects for the 7 comparisons of a column (at p < 0.05
  about one mark in twenty is chance).
- **Digit images** are split once (a fixed permutation) into the tuning prefix and the scored
  rest; the seeds shuffle each part, so no image used for tuning is ever scored.

Streams (all ship offline: scikit-learn's digits, River's bundled files, Python's own
documentation text in ``pydoc_data``):

- ``memory``: a one-hot symbol out of 4 per event, label = the symbol two events back (stream
  mode, window 8); accuracy, chance 0.25.
- ``chars``: character-level language modelling on the text of Python's bundled documentation
  (``pydoc_data.topics``: lower-cased, 28 symbols + "other"); each event is one character, the
  label the next one (stream mode, window 16); prequential bits per character. References:
  adaptive unigram and bigram counts (add-½).
- ``digits``: the CBMM protocol at small scale (Liao et al.'s row-MNIST GRU, with
  scikit-learn's 8×8 digits: 8 rows of 8 pixels per sequence), batch size 1, one pass.
- ``digits16``: the same in mini-batches of 16 sequences (``learn_many``: one update per batch,
  batch statistics for the batch-norm methods), one pass; each batch is predicted before it is
  learned.
- ``pdigits``: the digits as 64 single pixels under a fixed permutation (LSTM).
- ``airline``: River's AirlinePassengers, one step ahead (bench/quality.py's features); MAE.
- ``phishing``: River's Phishing (1,250 labelled pages, 9 features), stream mode window 8;
  accuracy. Reference: River's ``LogisticRegression``.

Hidden 32, Adam, clipping 1.0; one torch thread per process, runs in a process pool. The cost
per update is the median over the evaluation runs of (run seconds / updates) on this machine.

    bash bench/setup.sh                          # once: river, scikit-learn, matplotlib
    .venv/bin/python bench/study.py              # ≈ 21 min on 2 cores (1,263 s, 2026-12-07)
    .venv/bin/python bench/study.py --quick      # ≈ 2 min: shorter streams, one cell each
    .venv/bin/python bench/study.py --streams memory digits --methods none layer streaming

Every model starts from our initialisation (the learner's); ``--init pytorch`` draws the cell's
weights and biases as PyTorch's own ``nn.LSTM`` / ``nn.GRU`` do, and ``--compare`` sets the two
runs side by side (three methods: ≈ 8 min, 457 s on 2026-12-07; the full run as above):

    .venv/bin/python bench/study.py --methods none layer streaming --init ours --json ours.json
    .venv/bin/python bench/study.py --methods none layer streaming --init pytorch --json pt.json
    .venv/bin/python bench/study.py --compare ours.json pt.json

Writes markdown tables to stdout, every run's scores to ``--json`` and the learning curves to
``--plot``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import platform
import statistics
import string
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench/: quality's data helpers

from quality import (
    MEMORY_DELAY,
    MEMORY_K,
    Config,
    Running,
    baselines,
    digits,
    memory_stream,
    regression_stream,
    rolling,
)

import models
from models import ModelSpec, OnlineLearner, UpdateRejected
from models.cells import GRUCell

ROOT = Path(__file__).resolve().parents[1]
GRID = 6
LRS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032)
KNOB_LRS = (0.002, 0.008, 0.032)
KNOBS: dict[str, tuple[str, tuple[Any, Any]]] = {  # the knob each method's paper tunes
    "streaming": ("preset", ("online", "sample")),
    "online": ("alpha_b", (1.0, 0.99)),  # the default first: it wins a tie
    "recurrent_batch": ("gain_init", (0.1, 1.0)),
}
TUNE_SEED, SEEDS, SPLIT_SEED, ALPHA = 100, (0, 1, 2), 1234, 0.05
ALPHABET = string.ascii_lowercase + " ."  # chars: these 28 symbols + "other"


@dataclass(frozen=True)
class Stream:
    """One stream of the study: how it is scored and its sizes."""

    name: str
    title: str
    metric: str  # "accuracy" | "bits/char" | "MAE"
    cells: tuple[str, ...]
    n: int  # samples in a full run
    quick: int  # samples with --quick
    window: int = 8
    batch: int = 1
    curve: int = 100  # rolling window of the plotted curves

    @property
    def higher_better(self) -> bool:
        return self.metric == "accuracy"


STREAMS = {s.name: s for s in (
    Stream("memory", "memory: the symbol 2 events back", "accuracy", ("lstm", "gru"), 2000, 300),
    Stream("chars", "characters of Python's docs", "bits/char", ("lstm", "gru"), 2000, 300,
           window=16, curve=300),
    Stream("digits", "digits, 8 rows of 8, batch 1", "accuracy", ("gru", "lstm"), 1797, 240),
    Stream("digits16", "digits, 8 rows, mini-batches of 16", "accuracy", ("gru", "lstm"),
           1797, 320, batch=16, curve=160),
    Stream("pdigits", "digits, 64 permuted pixels", "accuracy", ("lstm",), 600, 40),
    Stream("airline", "AirlinePassengers, one step ahead", "MAE", ("lstm", "gru"), 143, 143,
           curve=12),
    Stream("phishing", "Phishing pages", "accuracy", ("lstm", "gru"), 1250, 240),
)}


@dataclass
class Run:
    """One stream × cell × method × configuration × seed: per-sample scores."""

    stream: str
    cell: str
    method: str
    norm: dict[str, Any]
    lr: float
    seed: int
    samples: int
    scores: list[float] = field(default_factory=list)
    rejected: int = 0
    seconds: float = 0.0
    updates: int = 0

    def metric(self, start: int = 0) -> float:
        return float(np.mean(self.scores[start:])) if len(self.scores) > start else math.nan


def configs(method: str) -> list[tuple[dict[str, Any], float]]:
    """The ``GRID`` configurations (norm spec, learning rate) a method is tuned over."""
    if method in KNOBS:
        knob, values = KNOBS[method]
        return [({"method": method, knob: v}, lr) for v in values for lr in KNOB_LRS]
    return [({"method": method}, lr) for lr in LRS]


def prefix(stream: Stream, n: int) -> int:
    """Samples of the tuning prefix: the first quarter, whole mini-batches."""
    return max(stream.batch, (n // 4) // stream.batch * stream.batch)


# -- data ----------------------------------------------------------------------------------------
def text(n: int) -> list[int]:
    """``n + 1`` character codes of Python's bundled documentation (0..27, 28 = other)."""
    from pydoc_data.topics import topics

    raw = " ".join(topics[k] for k in sorted(topics)).lower()
    codes, space = [], False
    for ch in raw:
        if ch.isspace():
            if not space:
                codes.append(ALPHABET.index(" "))
            space = True
            continue
        space = False
        codes.append(ALPHABET.index(ch) if ch in ALPHABET else len(ALPHABET))
    start = len(codes) // 3  # past the first topics' tables of operators
    return codes[start:start + n + 1]


def phishing(n: int) -> list[tuple[list[float], int]]:
    """River's Phishing, features standardized by running statistics of the past."""
    from river import datasets

    cols: list[Running] = []
    out = []
    for x, y in list(datasets.Phishing())[:n]:
        vals = [float(v) for v in x.values()]
        cols = cols or [Running() for _ in vals]
        out.append(([(v - c.mean) / c.std for c, v in zip(cols, vals, strict=True)], int(y)))
        for c, v in zip(cols, vals, strict=True):
            c.update(v)
    return out


def image_order(stream: Stream, n: int, seed: int) -> list[int]:
    """The digit images of a run: one fixed split into the tuning prefix and the scored rest
    (the same for every seed, so no tuning image is ever scored), each part in the seed's order.
    """
    chosen = np.random.RandomState(SPLIT_SEED).permutation(1797)[:n]
    head, rest = chosen[:prefix(stream, n)], chosen[prefix(stream, n):]
    rng = np.random.RandomState(seed)
    return [int(i) for i in (*rng.permutation(head), *rng.permutation(rest))]


def samples(stream: Stream, n: int, seed: int) -> Iterator[tuple[dict[str, Any], Any, Any]]:
    """``(inputs for learn_one, target, context for scoring)`` per sample."""
    if stream.name == "memory":
        symbols = memory_stream(n, seed)
        for t, s in enumerate(symbols):
            x = [0.0] * MEMORY_K
            x[s] = 1.0
            y = symbols[t - MEMORY_DELAY] if t >= MEMORY_DELAY else 0
            yield {"x": x, "stream": "s"}, y, None
    elif stream.name == "chars":
        codes = text(n)
        for a, b in itertools.pairwise(codes):
            x = [0.0] * (len(ALPHABET) + 1)
            x[a] = 1.0
            yield {"x": x, "stream": "s"}, b, None
    elif stream.name in ("digits", "digits16", "pdigits"):
        seqs, labels = digits(stream.name == "pdigits", True)
        for i in image_order(stream, n, seed):
            yield {"sequence": seqs[i]}, labels[i], None
    elif stream.name == "airline":
        for x, target, prev, sd in regression_stream("airline", n + 1):
            yield {"x": x, "stream": "s"}, target, (prev, sd)
    else:
        for x, y in phishing(n):
            yield {"x": x, "stream": "s"}, y, None


def spec(stream: Stream, cell: str, norm: dict[str, Any], lr: float, seed: int) -> ModelSpec:
    """The model of one run: hidden 32, Adam at ``lr``, clipping 1.0."""
    task: dict[str, Any] = {
        "memory": {"task": "multiclass", "n_classes": MEMORY_K, "n_features": MEMORY_K},
        "chars": {"task": "multiclass", "n_classes": len(ALPHABET) + 1,
                  "n_features": len(ALPHABET) + 1},
        "digits": {"task": "multiclass", "n_classes": 10, "n_features": 8},
        "digits16": {"task": "multiclass", "n_classes": 10, "n_features": 8},
        "pdigits": {"task": "multiclass", "n_classes": 10, "n_features": 1},
        "airline": {"task": "regression", "n_features": 4},
        "phishing": {"task": "binary", "n_features": 9},
    }[stream.name]
    return ModelSpec(name="study", **task, cell=cell, hidden_size=32, window=stream.window,
                     norm=norm, seed=seed, optimizer={"name": "adam", "lr": lr})


# -- one run -------------------------------------------------------------------------------------
Job = tuple[str, str, str, dict[str, Any], float, int, int]  # stream cell method norm lr seed n


def score(stream: Stream, result: Any, target: Any, context: Any) -> float:
    """A sample's score: hit, bits of the true symbol, or absolute error in original units."""
    if stream.metric == "bits/char":
        p = result.proba[int(target)]
        return -math.log2(p if math.isfinite(p) and p > 1e-12 else 1e-12)
    if stream.metric == "MAE":
        sd = context[1]
        pred = result.prediction if math.isfinite(result.prediction) else 0.0  # persistence
        return abs(pred - target) * sd
    return float(result.prediction == target)


class _Predicted:
    """What a rejected update is scored by: the prediction of the unchanged model."""

    def __init__(self, learner: OnlineLearner, kwargs: dict[str, Any]) -> None:
        self.prediction = learner.predict_one(**kwargs)
        self.proba = (learner.predict_proba_one(**kwargs)
                      if learner.spec.task == "multiclass" else None)


def pytorch_init(learner: OnlineLearner, which: tuple[str, ...] = ("wx", "wh", "bias")) -> None:
    """Redraw the cells' ``W_x`` (``wx``), ``W_h`` (``wh``), biases (``bias``) as PyTorch's
    ``nn.LSTM`` / ``nn.GRU`` draw theirs: every weight uniform in ±1/√H, and two bias vectors
    ``b_ih``, ``b_hh`` uniform in ±1/√H whose sum is the cell's bias (a GRU's ``b_hn`` is its own:
    it sits inside ``r ⊙ (…)``). Ours: ``W_h`` orthogonal, zero biases with an LSTM's forget gate
    at 1. Seeded by the spec, so any process draws the same."""
    if learner.spec.norm.method == "weight":  # its W are (g, v) pairs: not redrawn here
        raise ValueError("PyTorch's initialisation is not defined here for weight norm")
    bound = 1 / math.sqrt(learner.spec.hidden_size)
    gen = torch.Generator().manual_seed(learner.spec.seed)

    def draw(t: torch.Tensor) -> torch.Tensor:
        return t.uniform_(-bound, bound, generator=gen)

    with torch.no_grad():
        for layer in learner.net.stack.layers:
            if "wx" in which:
                draw(layer.lx.weight)
            if "wh" in which:
                draw(layer.lh.weight)
            if "bias" in which:
                b_ih, b_hh = draw(torch.empty_like(layer.bias)), draw(torch.empty_like(layer.bias))
                if isinstance(layer, GRUCell):
                    h = layer.hidden_size
                    layer.bias_hn.copy_(b_hh[2 * h:])
                    b_hh[2 * h:] = 0.0
                layer.bias.copy_(b_ih + b_hh)


def run(job: Job, init: str = "ours") -> Run:
    """Learn ``samples`` of a stream prequentially with one configuration and seed, from our
    initialisation or (``init="pytorch"``) PyTorch's."""
    name, cell, method, norm, lr, seed, n = job
    torch.set_num_threads(1)
    stream = STREAMS[name]
    out = Run(name, cell, method, norm, lr, seed, n)
    learner = OnlineLearner(spec(stream, cell, norm, lr, seed))
    if init == "pytorch":
        pytorch_init(learner)
    start = time.perf_counter()
    batch: list[tuple[dict[str, Any], Any, Any]] = []
    for sample in samples(stream, n, seed):
        batch.append(sample)
        if len(batch) < stream.batch:
            continue
        try:
            if stream.batch == 1:
                results = [learner.learn_one(y=batch[0][1], **batch[0][0])]
            else:
                results = learner.learn_many([kw["sequence"] for kw, _, _ in batch],
                                             [y for _, y, _ in batch])
        except UpdateRejected:
            out.rejected += 1
            results = [_Predicted(learner, kw) for kw, _, _ in batch]
        out.scores += [score(stream, r, y, c) for r, (_, y, c) in zip(results, batch, strict=True)]
        out.updates += 1
        batch = []
    out.seconds = time.perf_counter() - start
    return out


# -- references ----------------------------------------------------------------------------------
@functools.cache
def references(stream: Stream, n: int) -> dict[str, list[float]]:
    """Per-sample scores of what a model that learns little would reach (computed once: the
    report and the plot ask for them per cell and per reference)."""
    if stream.name == "memory":
        return {"chance": [1 / MEMORY_K] * n}
    if stream.name in ("digits", "digits16", "pdigits"):
        return {"chance": [0.1] * n}
    if stream.name == "chars":
        k = len(ALPHABET) + 1
        uni, bi = np.full(k, 0.5), np.full((k, k), 0.5)
        u_bits, b_bits = [], []
        codes = text(n)
        for a, b in itertools.pairwise(codes):
            u_bits.append(-math.log2(uni[b] / uni.sum()))
            b_bits.append(-math.log2(bi[a, b] / bi[a].sum()))
            uni[b] += 1
            bi[a, b] += 1
        return {"unigram counts": u_bits, "bigram counts": b_bits}
    if stream.name == "airline":  # bench/quality.py's references (its Airline is all 143 events)
        refs = baselines("airline", Config())
        return {"persistence": refs["persistence (no change)"][:n],
                "River LinearRegression": refs["River LinearRegression"][:n]}
    from river import linear_model

    model, hits, ys = linear_model.LogisticRegression(), [], []
    for x, y in phishing(n):
        xd = dict(enumerate(x))
        hits.append(float(model.predict_one(xd) == bool(y)))
        model.learn_one(xd, bool(y))
        ys.append(y)
    majority = [float(y == (sum(ys[:i]) * 2 > i)) for i, y in enumerate(ys)]
    return {"majority so far": majority, "River LogisticRegression": hits}


# -- statistics ----------------------------------------------------------------------------------
def paired(evals: dict[str, list[Run]], start: int, against: str = "none"
           ) -> dict[str, tuple[float, float]]:
    """Per key: (mean over seeds of its scored metric minus ``against``'s on the same seed,
    two-sided p of a paired t-test over the seeds). The seed is the unit: two runs of one seed
    share the stream, so blocks or events of one run are not independent samples."""
    from scipy.stats import ttest_1samp

    if against not in evals:
        return {}
    base = {r.seed: r.metric(start) for r in evals[against]}
    out = {}
    for method, runs in evals.items():
        if method == against:
            continue
        diffs = [r.metric(start) - base[r.seed] for r in runs]
        p = float(ttest_1samp(diffs, 0.0).pvalue) if np.ptp(diffs) > 0 else (
            1.0 if not any(diffs) else 0.0)  # identical non-zero differences: no variance
        out[method] = (statistics.fmean(diffs), p)
    return out


# -- the study -----------------------------------------------------------------------------------
@dataclass
class Cell:
    """Everything measured for one stream × cell."""

    stream: str
    cell: str
    n: int
    start: int
    chosen: dict[str, tuple[dict[str, Any], float]] = field(default_factory=dict)
    tuning: list[Run] = field(default_factory=list)
    evals: dict[str, list[Run]] = field(default_factory=dict)
    tests: dict[str, tuple[float, float]] = field(default_factory=dict)
    # knob methods with the recommended knob (the best learning rate among its prefix runs):
    # the runs of ``evals`` where the stream chose that knob, new runs where it did not
    with_knob: dict[str, list[Run]] = field(default_factory=dict)
    knob_tests: dict[str, tuple[float, float]] = field(default_factory=dict)

    def best(self, method: str, knob: Any = None) -> tuple[dict[str, Any], float]:
        """The configuration of the best prefix run (of those with ``knob``, if given)."""
        runs = [r for r in self.tuning if r.method == method
                and (knob is None or r.norm[KNOBS[method][0]] == knob)]
        sign = 1.0 if STREAMS[self.stream].higher_better else -1.0
        pick = max(runs, key=lambda r: sign * r.metric() if math.isfinite(r.metric())
                   else -math.inf)  # the first of a tie; a run that went non-finite never wins
        return pick.norm, pick.lr


def _pooled(pool: ProcessPoolExecutor, jobs: list[tuple[Cell, Job]], cost: list[float],
            init: str) -> list[tuple[Cell, Run]]:
    """Run ``jobs`` longest first (so no long run starts last), results in the jobs' order."""
    order = sorted(range(len(jobs)), key=lambda i: -cost[i])
    futures = {i: pool.submit(run, jobs[i][1], init) for i in order}
    return [(jobs[i][0], futures[i].result()) for i in range(len(jobs))]


def study(streams: list[str], methods: list[str], cells: list[str] | None, quick: bool,
          workers: int, init: str = "ours", log: Any = sys.stderr) -> list[Cell]:
    """Tune every method on each stream's prefix, evaluate the chosen configurations, then the
    knob methods with their recommended knob where a stream chose the other one."""
    out: list[Cell] = []
    for name in streams:
        s = STREAMS[name]
        n = s.quick if quick else s.n
        n -= n % s.batch
        mine = [c for c in s.cells if cells is None or c in cells][:1 if quick else None]
        out += [Cell(name, c, n, prefix(s, n)) for c in mine]
    wall = time.perf_counter()

    def done(what: str, count: int) -> None:
        print(f"  {what} done ({count} runs, {time.perf_counter() - wall:.0f} s)", file=log,
              flush=True)

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        tune = [(c, (c.stream, c.cell, m, norm, lr, TUNE_SEED, c.start))
                for c in out for m in methods for norm, lr in configs(m)]
        steps = {"pdigits": 64, "chars": 16}  # a rough cost: samples × steps, GRU twice
        cost = [j[6] * steps.get(j[0], 8) * (2 if j[1] == "gru" else 1) for _, j in tune]
        for c, r in _pooled(pool, tune, cost, init):
            c.tuning.append(r)
        done("tuning", len(tune))
        for c in out:
            c.chosen = {m: c.best(m) for m in methods}
        # an evaluation run costs about its tuning run's seconds × n / prefix
        seconds = {(c.stream, c.cell, r.method, json.dumps(r.norm), r.lr): r.seconds * c.n / c.start
                   for c in out for r in c.tuning}
        evals = [(c, (c.stream, c.cell, m, *c.chosen[m], seed, c.n))
                 for c in out for m in methods for seed in SEEDS]
        for c, r in _pooled(pool, evals, [seconds[(*j[:3], json.dumps(j[3]), j[4])]
                                          for _, j in evals], init):
            c.evals.setdefault(r.method, []).append(r)
        done("evaluation", len(evals))
        knobs = {m: r["norm"] for m, r in recommended(out, methods).items() if m in KNOBS}
        extra = []
        for c in out:
            for m, norm in knobs.items():
                if c.chosen[m][0] == norm:
                    c.with_knob[m] = c.evals[m]
                else:
                    extra += [(c, (c.stream, c.cell, m, *c.best(m, norm[KNOBS[m][0]]), seed, c.n))
                              for seed in SEEDS]
        for c, r in _pooled(pool, extra, [seconds[(*j[:3], json.dumps(j[3]), j[4])]
                                          for _, j in extra], init):
            c.with_knob.setdefault(r.method, []).append(r)
        done("recommended knobs", len(extra))
    for c in out:
        c.tests = paired(c.evals, c.start)
        if "none" in c.evals:
            c.knob_tests = paired({"none": c.evals["none"], **c.with_knob}, c.start)
    return out


# -- report --------------------------------------------------------------------------------------
def knob_text(norm: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in norm.items() if k != "method")


def fmt(values: list[float], metric: str) -> str:
    digits_ = 2 if metric == "MAE" else 3
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits_}f} ± {sd:.{digits_}f}"


def _cell_text(c: Cell, runs: list[Run], test: tuple[float, float] | None) -> str:
    """``mean ± std`` of the scored part, ▲/▼ where the paired test says it differs from none."""
    s = STREAMS[c.stream]
    txt = fmt([r.metric(c.start) for r in runs], s.metric)
    if test is not None and test[1] < ALPHA:
        txt += " ▲" if (test[0] > 0) == s.higher_better else " ▼"
    return txt


def _mean(c: Cell, runs: list[Run]) -> float:
    return statistics.fmean(r.metric(c.start) for r in runs)


def _table(result: list[Cell], rows: dict[str, list[str]], align: str = "---:|",
           metric: bool = False) -> list[str]:
    """A markdown table: a row per key, a column per stream × cell (with its metric)."""
    head = " | ".join(f"{c.stream} {c.cell.upper()}" + (
        f" {STREAMS[c.stream].metric} {'↑' if STREAMS[c.stream].higher_better else '↓'}"
        if metric else "") for c in result)
    return [f"| method | {head} |", "|---|" + align * len(result),
            *(f"| {k} | " + " | ".join(v) + " |" for k, v in rows.items())]


def report(result: list[Cell], methods: list[str]) -> str:
    """Markdown: quality with the paired test, the chosen configurations, the recommended knobs,
    cost per update."""
    rows: dict[str, list[str]] = {}
    for m in methods:
        rows[m] = []
        for c in result:
            txt = _cell_text(c, c.evals[m], c.tests.get(m))
            pick = max if STREAMS[c.stream].higher_better else min
            best = pick(methods, key=lambda k, c=c: _mean(c, c.evals[k]))
            rows[m].append(f"**{txt}**" if m == best else txt)
    for ref in sorted({k for c in result for k in references(STREAMS[c.stream], c.n)}):
        rows[f"*{ref}*"] = []
        for c in result:
            refs = references(STREAMS[c.stream], c.n)
            digits_ = 2 if STREAMS[c.stream].metric == "MAE" else 3
            rows[f"*{ref}*"].append(f"{np.mean(refs[ref][c.start:]):.{digits_}f}"
                                    if ref in refs else "")
    lines = _table(result, rows, metric=True)
    chosen = {m: [f"{c.chosen[m][1]:g}" + (f"; {knob_text(c.chosen[m][0])}"
                                           if knob_text(c.chosen[m][0]) else "") for c in result]
              for m in methods}
    lines += ["", "Chosen on the prefix (learning rate; the method's knob):", "",
              *_table(result, chosen, "---|")]
    knobbed = [m for m in methods if m in KNOBS]
    if knobbed and result[0].with_knob:
        with_knob = {}
        for m in knobbed:
            label = f"{m}: {knob_text(result[0].with_knob[m][0].norm)}"
            with_knob[label] = [
                _cell_text(c, c.with_knob[m], c.knob_tests.get(m))
                + (f" ({rej} rej.)" if (rej := sum(r.rejected for r in c.with_knob[m])) else "")
                for c in result]
        lines += ["", "With the knob chosen most often at batch size 1 on every stream (its best "
                  "learning rate on the prefix; rejected updates over the seeds):", "",
                  *_table(result, with_knob)]
    cost = {m: [f"{statistics.median(1000 * r.seconds / max(r.updates, 1) for r in c.evals[m]):.1f}"
                + (f" ({rej} rej.)" if (rej := sum(r.rejected for r in c.evals[m])) else "")
                for c in result] for m in methods}
    lines += ["", "Cost: milliseconds per learn call (median over the evaluation runs; one torch "
              "thread; a rejected update counts) and rejected updates over the three seeds:", "",
              *_table(result, cost)]
    return "\n".join(lines)


def compare(paths: list[Path]) -> str:
    """Markdown: the methods of two or more full runs side by side (e.g. ``--init ours`` and
    ``--init pytorch``), each run's tuning its own; ▲/▼: the paired test over the seeds against the
    first run's same method."""
    loaded = [json.loads(p.read_text()) for p in paths]
    labels = [r.get("init", p.stem) for r, p in zip(loaded, paths, strict=True)]
    if len(set(labels)) < len(labels):  # runs of one initialisation: name them by position
        labels = [f"{p.name} #{i + 1}" for i, p in enumerate(paths)]
    runs = [{(c["stream"], c["cell"], c["n"]): c for c in r["cells"]} for r in loaded]
    keys = [k for k in runs[0] if all(k in r for r in runs)]  # the columns all runs have
    if not keys:
        raise ValueError("the runs share no stream × cell × length to compare")
    cells = [Cell(*k, runs[0][k]["start"]) for k in keys]
    methods = [m for m in runs[0][keys[0]]["evals"] if all(m in r[k]["evals"]
                                                          for r in runs for k in keys)]
    rows: dict[str, list[str]] = {}
    better: dict[str, list[bool]] = {}
    for m in methods:
        for i, (label, run_) in enumerate(zip(labels, runs, strict=True)):
            rows[f"{m}, {label}"] = []
            for c, k in zip(cells, keys, strict=True):
                c.evals[label] = [Run(**r) for r in run_[k]["evals"][m]]
            if i:
                better[f"{m}, {label}"] = []
            for c in cells:
                test = paired(c.evals, c.start, against=labels[0]).get(label) if i else None
                rows[f"{m}, {label}"].append(_cell_text(c, c.evals[label], test))
                if test is not None and test[0] != 0 and (
                        test[0] > 0) == STREAMS[c.stream].higher_better:
                    better[f"{m}, {label}"].append(test[1] < ALPHA)
    lines = _table(cells, rows, metric=True)
    lines += ["", *(f"- {k}: better than {labels[0]} on {len(v)} of {len(cells)} columns "
                    f"({sum(v)} significantly)" for k, v in better.items())]
    return "\n".join(lines)


def recommended(result: list[Cell], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: the knob value and learning rate chosen most often at batch size 1 (ties: the
    method's default comes first in ``configs``, then the smaller rate)."""
    out = {}
    for m in methods:
        picks = [c.chosen[m] for c in result if STREAMS[c.stream].batch == 1]
        if not picks:  # only mini-batch streams: nothing to recommend for batch size 1
            continue
        norms = [n for n, _ in picks]
        lrs = sorted(lr for _, lr in picks)
        candidates = list({json.dumps(n): n for n, _ in configs(m)}.values())
        out[m] = {"norm": max(candidates, key=norms.count),  # max keeps the first of a tie
                  "lr": max(lrs, key=lrs.count), "lr median": statistics.median(lrs)}
    return out


def plot(result: list[Cell], methods: list[str], path: Path) -> None:
    """Rolling prequential metric of each method's chosen configuration, mean over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(models.NORMS, plt.get_cmap("tab10").colors, strict=False))
    cols = 3
    rows = math.ceil(len(result) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.3 * rows + 0.7), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, c in zip(axes.flat, result, strict=False):
        s = STREAMS[c.stream]
        w = min(s.curve, max(c.n // 5, 1))
        x = np.arange(1, c.n + 1)
        lo = w // 2
        for m in methods:
            curve = np.mean([rolling(r.scores, w) for r in c.evals[m]], axis=0)
            handles[m] = ax.plot(x[lo:], curve[lo:], color=colors[m], lw=1.2, label=m)[0]
        refs = references(s, c.n)
        for k, (ref, scores) in enumerate(refs.items()):
            ax.plot(x[lo:], rolling(scores, w)[lo:], color="0.35", lw=1.0, ls=("--", ":")[k % 2],
                    label=ref)
        ax.axvline(c.start, color="0.6", lw=0.8)
        ax.set_title(f"{c.cell.upper()} · {s.title}", fontsize=10)
        ax.set_xlabel("samples (grey line: end of the tuning prefix)", fontsize=8)
        ax.set_ylabel(f"rolling {s.metric} ({w}) {'↑' if s.higher_better else '↓'}", fontsize=8)
        if s.metric == "MAE":
            ax.set_ylim(0, 80)
        ax.legend(fontsize=7, loc="best", handles=[h for h in ax.get_lines()
                                                   if h.get_label() in refs])
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(result):]:
        ax.axis("off")
    fig.legend(handles=list(handles.values()), loc="upper center", ncol=len(handles), fontsize=9,
               title="each method's configuration chosen on the prefix; mean over seeds 0–2",
               title_fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / (3.3 * rows + 0.7)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the study; print the tables, write the JSON and the plot."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    p.add_argument("--methods", nargs="+", default=list(models.NORMS), choices=list(models.NORMS))
    p.add_argument("--cells", nargs="+", default=None, choices=["lstm", "gru"],
                   help="default: each stream's own (LSTM and GRU; permuted digits LSTM)")
    p.add_argument("--quick", action="store_true",
                   help="shorter streams, each stream's first cell only; the same protocol")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--init", choices=["ours", "pytorch"], default="ours",
                   help="every model's initialisation: ours (the learner's) or PyTorch's "
                        "(uniform ±1/√H for W_x, W_h and the biases)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "study.json")
    p.add_argument("--plot", type=lambda v: Path(v) if v else None,
                   default=ROOT / "bench" / "out" / "study.png", help='"": no plot')
    p.add_argument("--compare", type=Path, nargs="+", metavar="JSON",
                   help="print the methods of these runs' JSON side by side, then stop")
    args = p.parse_args(argv)
    if args.init == "pytorch" and "weight" in args.methods:
        p.error("--init pytorch does not redraw weight norm's (g, v): leave weight out of "
                "--methods")
    if args.compare:
        print(compare(args.compare))
        return 0
    wall = time.perf_counter()
    print(f"# bench/study.py{' --quick' if args.quick else ''} — torch {torch.__version__}, "
          f"Python {platform.python_version()} (its pydoc_data text), "
          f"{args.workers} processes; grid of {GRID} per method, tuning seed {TUNE_SEED}, "
          f"evaluation seeds {list(SEEDS)}; {args.init} initialisation; "
          f"load average {os.getloadavg()[0]:.1f}\n", flush=True)
    result = study(args.streams, args.methods, args.cells, args.quick, args.workers, args.init)
    print(report(result, args.methods))
    rec = recommended(result, args.methods)
    print("\nMost often chosen at batch size 1 (knob; learning rate, median):\n")
    for m, r in rec.items():
        print(f"- {m}: {knob_text(r['norm']) or '-'}; lr {r['lr']:g} (median {r['lr median']:g})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "quick": args.quick, "init": args.init, "recommended": rec, "cells": [
        {**{k: v for k, v in asdict(c).items() if k not in ("tuning", "evals", "with_knob")},
         "tuning": [asdict(r) | {"scores": None, "metric": r.metric()} for r in c.tuning],
         "evals": {m: [asdict(r) for r in runs] for m, runs in c.evals.items()},
        "with_knob": {m: [asdict(r) for r in runs] for m, runs in c.with_knob.items()}}
        for c in result]}))
    if args.plot:
        plot(result, args.methods, args.plot)
    print(f"\nwall time {time.perf_counter() - wall:.0f} s; load average now "
          f"{os.getloadavg()[0]:.1f}; scores: {args.json}; curves: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
