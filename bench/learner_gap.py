"""Why deep-river's ``RollingRegressor`` predicts better on ``bench/learner.py``'s stream: an
ablation of what it does differently (issue 14).

Same stream (``learner.synthetic_stream``: AR(1) features, a target mixing current and 3-step-old
features), same LSTM (hidden 64, window 16, linear head), Adam lr 0.001, prequential MAE over
2,000 events after 200 warm-up ones. deep-river differs from our ``none`` in four ways
(``bench/learner.py``'s NOTE): PyTorch's LSTM initialisation (every weight and bias uniform in
±1/√H; ours: orthogonal ``W_h``, ``W_x`` by ``nn.Linear``'s rule, zero biases with the forget
gate's at 1), no gradient clipping (ours: norm 1.0), every window from a zero state (ours: the
state carried from the previous window), and a second forward for the prediction. Each variant
changes one thing of ours (``zerostate``: sequence mode over the last 16 inputs, so each window
starts from zero, as deep-river's; ``const``: a constant input feature 1.0, so a normalization of
``W_x x`` keeps the inputs' magnitude relative to it; ``sample``: Streaming Norm's per-sample
preset, the one bench/study.py chose most often).

Then (``--elsewhere``) the question the answer raises: does PyTorch's initialisation help on the
other streams too, or only here? ``none``, ``layer``, ``streaming`` with ours and PyTorch's, on
bench/study.py's memory, chars and digits streams (LSTM, each at the learning rate the study chose
most often for ``none``, 0.008; seeds 0–2; scored after the prefix as in the study).

    bash bench/setup.sh                                  # once: deep-river
    .venv/bin/python bench/learner_gap.py                # ~1.5 min on 2 cores
    .venv/bin/python bench/learner_gap.py --elsewhere    # + ~4 min
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench/: learner's stream and runner

from learner import HIDDEN, WINDOW, run_deep_river, synthetic_stream

from models import ModelSpec, OnlineLearner

EVENTS, WARMUP, LR = 2200, 200, 1e-3
VARIANTS = {
    "none (ours: orthogonal W_h, forget bias 1, clip 1.0, carried state)": "none",
    "none, no clipping": "none/noclip",
    "none, every window from a zero state": "none/zerostate",
    "none, W_x as PyTorch's LSTM": "none/wx",
    "none, W_h as PyTorch's LSTM": "none/wh",
    "none, biases as PyTorch's LSTM": "none/bias",
    "none, all of PyTorch's LSTM initialisation": "none/wx/wh/bias",
    "none, a constant input feature 1.0": "none/const",
    "layer": "layer",
    "layer, all of PyTorch's LSTM initialisation": "layer/wx/wh/bias",
    "layer, a constant input feature 1.0": "layer/const",
    "layer, a constant input and PyTorch's initialisation": "layer/const/wx/wh/bias",
    "streaming": "streaming",
    "streaming, a constant input feature 1.0": "streaming/const",
    "streaming, per-sample preset": "streaming/sample",
    "streaming, per-sample preset, a constant input": "streaming/sample/const",
    "streaming, all of PyTorch's LSTM initialisation": "streaming/wx/wh/bias",
}


def pytorch_init(learner: OnlineLearner, which: list[str]) -> None:
    """Draw the cell's ``W_x`` (``wx``), ``W_h`` (``wh``), biases (``bias``) as PyTorch's LSTM."""
    bound = 1 / math.sqrt(learner.spec.hidden_size)
    gen = torch.Generator().manual_seed(learner.spec.seed)  # the same draw in any process
    with torch.no_grad():
        for name, p in learner.net.named_parameters():  # the cell's own, not its norms'
            kind = {"lx.weight": "wx", "lh.weight": "wh"}.get(".".join(name.split(".")[-2:]))
            if re.fullmatch(r"stack\.layers\.\d+\.bias", name):
                kind = "bias"
            if kind in which:
                p.uniform_(-bound, bound, generator=gen)


def elsewhere(job: tuple[str, str, bool, int]) -> tuple[str, str, bool, float]:
    """One method (LSTM, lr 0.008) on one of bench/study.py's streams, ours or PyTorch's init."""
    import study

    method, name, torch_init, seed = job
    torch.set_num_threads(1)
    stream = study.STREAMS[name]
    learner = OnlineLearner(study.spec(stream, "lstm", {"method": method}, 0.008, seed))
    if torch_init:
        pytorch_init(learner, ["wx", "wh", "bias"])
    scores = [study.score(stream, learner.learn_one(y=y, **kw), y, c)
              for kw, y, c in study.samples(stream, stream.n, seed)]
    return method, name, torch_init, float(sum(scores[study.prefix(stream, stream.n):])
                                   / (stream.n - study.prefix(stream, stream.n)))


def ours(variant: str, seed: int) -> float:
    """Prequential MAE of one variant of our learner."""
    norm, *changes = variant.split("/")
    events = synthetic_stream(EVENTS)
    if "const" in changes:  # a constant input: the x-term's scale survives a normalization
        events = [({**x, "one": 1.0}, y) for x, y in events]
    learner = OnlineLearner(ModelSpec(
        name="gap", task="regression", features=tuple(events[0][0]), cell="lstm",
        hidden_size=HIDDEN, window=WINDOW, seed=seed,
        norm={"method": norm, "preset": "sample"} if "sample" in changes else norm,
        optimizer={"name": "adam", "lr": LR, "clip": None if "noclip" in changes else 1.0}))
    pytorch_init(learner, changes)
    err, window = 0.0, []
    for i, (x, y) in enumerate(events):
        if "zerostate" in changes:
            window = [*window, list(x.values())][-WINDOW:]
            pred = learner.learn_one(sequence=window, y=y).prediction
        else:
            pred = learner.learn_one(x, y, stream="s").prediction
        if i >= WARMUP:
            err += abs(pred - y)
    return err / (EVENTS - WARMUP)


def job(args: tuple[str, int]) -> tuple[str, int, float]:
    variant, seed = args
    torch.set_num_threads(1)
    if variant == "deep-river":
        torch.manual_seed(seed)
        return variant, seed, run_deep_river(synthetic_stream(EVENTS), WARMUP, LR)[1]
    return variant, seed, ours(variant, seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--elsewhere", action="store_true",
                   help="also none with ours / PyTorch's init on bench/study.py's streams")
    args = p.parse_args(argv)
    names = {"deep-river RollingRegressor": "deep-river", **VARIANTS}
    got: dict[str, list[float]] = {}
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for variant, _seed, mae in pool.map(job, [(v, s) for v in names.values()
                                                  for s in args.seeds]):
            got.setdefault(variant, []).append(mae)
    print(f"# bench/learner_gap.py — prequential MAE over {EVENTS - WARMUP} events, Adam lr "
          f"{LR}, LSTM hidden {HIDDEN}, window {WINDOW}, seeds {args.seeds}\n")
    print("| variant | MAE |\n|---|---:|")
    for name, variant in names.items():
        values = got[variant]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {name} | {statistics.fmean(values):.4f} ± {sd:.4f} |")
    if args.elsewhere:
        streams, methods = ("memory", "chars", "digits"), ("none", "layer", "streaming")
        with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            found: dict[tuple[str, str, bool], list[float]] = {}
            for method, name, torch_init, value in pool.map(elsewhere, [
                    (m, n, t, s) for m in methods for n in streams for t in (False, True)
                    for s in args.seeds]):
                found.setdefault((method, name, torch_init), []).append(value)
        print("\nLSTM, lr 0.008, on bench/study.py's streams (scored after the prefix):\n")
        print("| method, initialisation | memory acc. ↑ | chars bits/char ↓ | digits acc. ↑ |")
        print("|---|---:|---:|---:|")
        for method in methods:
            for torch_init, label in ((False, "ours"), (True, "PyTorch's LSTM")):
                cells = []
                for n in streams:
                    v = found[(method, n, torch_init)]
                    cells.append(f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}"
                                 if len(v) > 1 else f"{v[0]:.3f}")
                print(f"| {method}, {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
