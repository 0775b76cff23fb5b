"""Prequential speed of ``OnlineLearner`` against deep-river's ``RollingRegressor``, and the cost
of a ``to_bytes`` + ``from_bytes`` round trip.

Same run, same events, one torch thread, LSTM hidden 64 (1 layer, linear head on the last step),
window 16, Adam:

- streamnorm: ``OnlineLearner(ModelSpec(cell="lstm", hidden_size=64, window=16, norm=...))``,
  one ``learn_one(x, y, stream="s")`` per event; its returned prediction is the prequential one.
- deep-river 0.3.4: ``RollingRegressor(module=<LSTM instance>, window_size=16,
  optimizer_fn="adam")``, ``predict_one(x)`` then ``learn_one(x, y)`` per event, as its users
  run it. (Also shown, not a target: its ``learn_one`` alone, no prediction.)

Every contender gets a fresh model per round, learns ``--warmup`` events untimed, then the timed
``--events``; rounds rotate the order of the contenders so load on the machine hits all alike.
Rates are medians over ``--repeats`` rounds; a ratio is the median of the per-round ratios.
With ``--cells``, every method runs on each cell (GRU and RNN of the same hidden size, window and
head). Targets: LSTM ``none`` ≥ 1.2× deep-river (issue 3); LSTM ``layer`` and ``streaming`` ≥
1.0× deep-river (issue 15; was 0.6×); every method ≥ 0.5× the ``none`` learner of its cell (issue
15); ``to_bytes`` + ``from_bytes`` < 0.5 ms (median over ``--roundtrips``).

Install the comparison's dependencies once with ``bash bench/setup.sh``, then::

    .venv/bin/python bench/learner.py                  # ~1 min
    .venv/bin/python bench/learner.py --quick          # ~15 s
    .venv/bin/python bench/learner.py --all-methods --profile
    .venv/bin/python bench/learner.py --all-methods --cells lstm gru rnn --repeats 3  # ~10 min
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models
from models import ModelSpec, OnlineLearner

HIDDEN, WINDOW = 64, 16
TARGETS = {"lstm none": 1.2, "lstm layer": 1.0, "lstm streaming": 1.0}  # × deep-river
OF_NONE = 0.5  # every method × the none learner of its cell
ROUNDTRIP_MS = 0.5
DR, DR_LEARN = "deep-river", "deep-river learn_one only"
Event = tuple[dict[str, float], float]

NOTE = """\
## What each side computes per event
- **streamnorm** `learn_one(x, y, stream)`: input validation, a save point of the whole state,
  one training forward over the stream's window (the recurrent state stored at the window's
  start, then the last ≤15 inputs and `x`) whose output is both the returned prediction and the
  loss input; backward through that window, gradient clipping (norm 1.0, the default), one fused
  Adam step, a finiteness check of the loss, weights, statistics and optimizer moments (rolled
  back if not finite), the normalization sites notified of the step, prequential metrics
  updated, and the state after the window's first step kept as the next window's start
  (`models/learner.py`). One forward per event, and the context carries state across windows.
- **deep-river** `predict_one(x)`: `module.eval()`, then under `torch.inference_mode()` a
  forward over its deque of the last ≤15 inputs plus `x` from a **zero** state (`nn.LSTM` with no
  `h0`); then `learn_one(x, y)`: `x` is appended to the deque and `_learn` runs a second forward
  over the same window, again from a zero state, with grad, MSE, backward, plain (non-fused) Adam
  step; no clipping, no normalization, nothing carried across windows
  (`deep_river/regression/rolling_regressor.py`, `deep_river/base.py: DeepEstimator._learn`).
"""


class DeepRiverLSTM(nn.Module):
    """The module handed to deep-river: ``[T, 1, I]`` → ``nn.LSTM`` → last step → ``Linear``."""

    def __init__(self, n_features: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, num_layers=1)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[-1])  # [1, 1]


def synthetic_stream(n: int, n_features: int = 6, seed: int = 0) -> list[Event]:
    """AR(1) features; the target mixes the current and a 3-step-old feature, plus noise."""
    rng = random.Random(seed)
    names = [f"f{i}" for i in range(n_features)]
    state = [0.0] * n_features
    past: list[list[float]] = []
    events: list[Event] = []
    for _ in range(n):
        state = [0.8 * s + rng.gauss(0, 0.6) for s in state]
        past.append(state)
        old = past[-4] if len(past) >= 4 else [0.0] * n_features
        y = 0.5 * state[0] - 0.7 * old[1] + 0.3 * state[2] * old[3] + rng.gauss(0, 0.1)
        events.append((dict(zip(names, state, strict=True)), y))
    return events


def trump_stream(n: int) -> list[Event]:
    """River's bundled TrumpApproval (1,001 events, 6 features), standardized, cycled to ``n``."""
    from river import datasets

    rows = list(datasets.TrumpApproval())
    keys = list(rows[0][0])
    stats = {k: (statistics.fmean(x[k] for x, _ in rows), statistics.pstdev(x[k] for x, _ in rows))
             for k in keys}
    ym, ys = statistics.fmean(y for _, y in rows), statistics.pstdev(y for _, y in rows)
    std = [({k: (x[k] - stats[k][0]) / (stats[k][1] or 1.0) for k in keys}, (y - ym) / ys)
           for x, y in rows]
    return [std[i % len(std)] for i in range(n)]


def streamnorm_spec(contender: str, features: list[str], lr: float) -> ModelSpec:
    """The streamnorm model under test: ``contender`` is ``"<cell> <method>"``."""
    cell, norm = contender.split()
    return ModelSpec(name="bench", task="regression", features=tuple(features), cell=cell,
                     hidden_size=HIDDEN, window=WINDOW, norm=norm, seed=0,
                     optimizer={"name": "adam", "lr": lr})


def run_streamnorm(contender: str, events: list[Event], warmup: int, lr: float
                   ) -> tuple[float, float, OnlineLearner]:
    """Events per second and prequential MAE over the timed events; the learner afterwards."""
    learner = OnlineLearner(streamnorm_spec(contender, list(events[0][0]), lr))
    learn = learner.learn_one
    for x, y in events[:warmup]:
        learn(x, y, stream="s")
    err = 0.0
    start = time.perf_counter()
    for x, y in events[warmup:]:
        err += abs(learn(x, y, stream="s").prediction - y)
    seconds = time.perf_counter() - start
    n = len(events) - warmup
    return n / seconds, err / n, learner


def run_deep_river(events: list[Event], warmup: int, lr: float, predict: bool = True
                   ) -> tuple[float, float]:
    """Events per second and prequential MAE (nan without ``predict``) of deep-river."""
    from deep_river.regression import RollingRegressor

    model = RollingRegressor(module=DeepRiverLSTM(len(events[0][0])), optimizer_fn="adam", lr=lr,
                             window_size=WINDOW, seed=0)
    for x, y in events[:warmup]:
        model.predict_one(x)
        model.learn_one(x, y)
    err = 0.0
    start = time.perf_counter()
    if predict:
        for x, y in events[warmup:]:
            err += abs(model.predict_one(x) - y)
            model.learn_one(x, y)
    else:
        for x, y in events[warmup:]:
            model.learn_one(x, y)
    seconds = time.perf_counter() - start
    n = len(events) - warmup
    return n / seconds, (err / n if predict else math.nan)


def time_roundtrip(learner: OnlineLearner, repeats: int) -> dict[str, float]:
    """Median ms of ``to_bytes``, ``from_bytes`` and (where the learner has it) ``load_bytes``
    into an existing learner of the same spec, as a service holding the model in memory would."""
    data = learner.to_bytes()
    restored = OnlineLearner.from_bytes(data)
    assert restored.to_bytes() == data, "round trip changed the state"
    load = getattr(restored, "load_bytes", None)
    times: dict[str, list[float]] = {"to": [], "from": [], "load": []}
    clock = time.perf_counter
    for _ in range(repeats):
        t0 = clock()
        data = learner.to_bytes()
        t1 = clock()
        OnlineLearner.from_bytes(data)
        t2 = clock()
        if load is not None:
            load(data)
        t3 = clock()
        for key, sec in (("to", t1 - t0), ("from", t2 - t1), ("load", t3 - t2)):
            times[key].append(1e3 * sec)
    out = {k: statistics.median(v) for k, v in times.items()}
    if load is None:
        out["load"] = math.nan
    else:
        assert restored.to_bytes() == data, "load_bytes changed the state"
    return {**out, "total": out["to"] + out["from"], "kb": len(data) / 1024}


def profile_from_bytes(learner: OnlineLearner, repeats: int, top: int = 25) -> str:
    """cProfile of ``from_bytes``: the functions with the most cumulative time."""
    data = learner.to_bytes()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(repeats):
        OnlineLearner.from_bytes(data)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).strip_dirs().sort_stats("cumulative").print_stats(top)
    text = out.getvalue()
    return text[text.find("ncalls"):].rstrip() if "ncalls" in text else text


def fmt_rate(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=None, help="timed events (default 2000)")
    p.add_argument("--warmup", type=int, default=None, help="untimed events first (default 200)")
    p.add_argument("--repeats", type=int, default=None, help="rounds (default 5)")
    p.add_argument("--roundtrips", type=int, default=None,
                   help="to_bytes+from_bytes repeats (default 300)")
    p.add_argument("--stream", choices=["synthetic", "trump"], default="synthetic",
                   help="synthetic AR stream (6 features) or River's TrumpApproval, cycled")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, both sides")
    p.add_argument("--methods", nargs="+", default=None, choices=list(models.NORMS),
                   help="streamnorm methods (default: none layer streaming)")
    p.add_argument("--all-methods", action="store_true", help="every method in models.NORMS")
    p.add_argument("--cells", nargs="+", default=["lstm"], choices=["lstm", "gru", "rnn"],
                   help="cells to run every method on (default lstm; deep-river's is an LSTM)")
    p.add_argument("--no-learn-only", action="store_true",
                   help="skip the informational deep-river learn_one-only row")
    p.add_argument("--profile", action="store_true", help="cProfile from_bytes and print it")
    p.add_argument("--quick", action="store_true",
                   help="500 events after 100, 3 rounds, 100 round trips, unless given")
    args = p.parse_args(argv)
    q = args.quick
    args.events = args.events or (500 if q else 2000)
    args.warmup = args.warmup if args.warmup is not None else (100 if q else 200)
    args.repeats = args.repeats or (3 if q else 5)
    args.roundtrips = args.roundtrips or (100 if q else 300)
    if args.all_methods:
        args.methods = list(models.NORMS)
    args.methods = args.methods or ["none", "layer", "streaming"]
    args.methods.sort(key=lambda m: (m != "none", m != "layer", m != "streaming", m))
    if len(args.cells) > 1 and "none" not in args.methods:
        args.methods.insert(0, "none")  # the baseline of each cell
    args.runs = [f"{c} {m}" for c in args.cells for m in args.methods]
    return args


def main(argv: list[str] | None = None, emit: Callable[[str], Any] = print) -> int:
    """Run the benchmark; print the tables and the targets."""
    args = parse(argv)
    torch.set_num_threads(1)
    n = args.warmup + args.events
    events = trump_stream(n) if args.stream == "trump" else synthetic_stream(n)
    emit(f"# bench/learner.py — torch {torch.__version__}, Python {platform.python_version()}, "
         f"{os.cpu_count()} CPUs, 1 torch thread; hidden {HIDDEN}, window {WINDOW}, Adam "
         f"lr {args.lr:g}; {args.stream} stream, {len(events[0][0])} features; {args.events} "
         f"timed events after {args.warmup}, {args.repeats} rounds")
    wall = time.perf_counter()
    contenders = [*args.runs, DR] + ([] if args.no_learn_only else [DR_LEARN])
    rates: dict[str, list[float]] = {c: [] for c in contenders}
    maes: dict[str, list[float]] = {c: [] for c in contenders}
    learners: dict[str, OnlineLearner] = {}
    for rnd in range(args.repeats):
        k = rnd % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            if c == DR:
                rate, mae = run_deep_river(events, args.warmup, args.lr)
            elif c == DR_LEARN:
                rate, mae = run_deep_river(events, args.warmup, args.lr, predict=False)
            else:
                rate, mae, learners[c] = run_streamnorm(c, events, args.warmup, args.lr)
            rates[c].append(rate)
            maes[c].append(mae)
    emit("\n## Prequential events per second (median, min–max over rounds)\n")
    emit("| contender | events/s | × deep-river (median of per-round ratios) | target | "
         "× `none` of its cell | prequential MAE | result |")
    emit("|---|---:|---:|---:|---:|---:|---|")
    verdicts: list[str] = []

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    for c in contenders:
        of_dr = ratio(c, DR)
        target = TARGETS.get(c)
        ok = target is None or of_dr >= target
        if target is not None:
            verdicts.append(f"- `{c}` ≥ {target}× deep-river: {of_dr:.2f}× → "
                            f"{'PASS' if ok else 'FAIL'}")
        base = f"{c.split()[0]} none" if c not in (DR, DR_LEARN) else None
        of_none = ratio(c, base) if base in rates and base != c else None
        if of_none is not None:
            ok = ok and of_none >= OF_NONE
            verdicts.append(f"- `{c}` ≥ {OF_NONE}× `{base}`: {of_none:.2f}× → "
                            f"{'PASS' if of_none >= OF_NONE else 'FAIL'}")
        verdict = "–" if target is None and of_none is None else ("PASS" if ok else "FAIL")
        name = f"streamnorm `{c}`" if c not in (DR, DR_LEARN) else c
        mae = statistics.median(maes[c])
        emit(f"| {name} | {fmt_rate(rates[c])} | {of_dr:.2f} | "
             f"{'–' if target is None else f'≥ {target}'} | "
             f"{'–' if of_none is None else f'{of_none:.2f}'} | "
             f"{'–' if math.isnan(mae) else f'{mae:.3f}'} | {verdict} |")
    emit("\n## to_bytes + from_bytes (model + Adam state + one stream context; median of "
         f"{args.roundtrips})\n")
    emit("| method | state KB | to_bytes ms | from_bytes ms | together ms | target | result | "
         "load_bytes ms (into an existing learner) | to_bytes + load_bytes ms |")
    emit("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for c in args.runs:
        rt = time_roundtrip(learners[c], args.roundtrips)
        verdict = "PASS" if rt["total"] < ROUNDTRIP_MS else "FAIL"
        verdicts.append(f"- `{c}` to_bytes + from_bytes < {ROUNDTRIP_MS} ms: "
                        f"{rt['total']:.3f} ms → {verdict}")
        emit(f"| {c} | {rt['kb']:.0f} | {rt['to']:.3f} | {rt['from']:.3f} | {rt['total']:.3f} "
             f"| < {ROUNDTRIP_MS} | {verdict} | {rt['load']:.3f} | {rt['to'] + rt['load']:.3f} |")
    emit("\n## Targets\n")
    emit("\n".join(verdicts))
    if args.profile:
        emit(f"\n## cProfile of from_bytes (`{args.runs[0]}`, 200 calls, cumulative)\n")
        emit("```\n" + profile_from_bytes(learners[args.runs[0]], 200) + "\n```")
    emit("\n" + NOTE)
    emit(f"(wall time {time.perf_counter() - wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
