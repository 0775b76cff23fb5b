"""Why deep-river's ``RollingRegressor`` predicts better on ``bench/learner.py``'s stream: an
ablation of what it does differently (issue 14).

Same stream (``learner.synthetic_stream``: AR(1) features, a target mixing current and 3-step-old
features), same LSTM (hidden 64, window 16, linear head), the same Adam rate for both (0.001,
learner.py's; ``--lrs`` for a column per rate), prequential MAE over 2,000 events after 200
warm-up ones. deep-river differs from our ``none`` in four ways
(``bench/learner.py``'s NOTE): PyTorch's LSTM initialisation (every weight and bias uniform in
±1/√H; ours: orthogonal ``W_h``, ``W_x`` by ``nn.Linear``'s rule, zero biases with the forget
gate's at 1), no gradient clipping (ours: norm 1.0), every window from a zero state (ours: the
state carried from the previous window), and a second forward for the prediction. Each variant
changes one thing of ours (``zerostate``: sequence mode over the last 16 inputs, so each window
starts from zero, as deep-river's; ``const``: a constant input feature 1.0, so a normalization of
``W_x x`` keeps the inputs' magnitude relative to it; ``sample``: Streaming Norm's per-sample
preset, the one bench/study.py chose most often).

The question the answer raises — does PyTorch's initialisation help on other streams too, once
each method's rate is tuned? — is answered by ``bench/study.py --init pytorch`` (README).

    bash bench/setup.sh                                  # once: deep-river
    .venv/bin/python bench/learner_gap.py                # ~1.5 min on 2 cores
    .venv/bin/python bench/learner_gap.py --lrs 0.001 0.002 0.004 0.008   # ~8 min
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench/: learner's stream and runner

from learner import HIDDEN, WINDOW, run_deep_river, synthetic_stream
from study import pytorch_init

from models import ModelSpec, OnlineLearner

EVENTS, WARMUP, LR = 2200, 200, 1e-3  # LR: bench/learner.py's
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
    "layer without its x site (W_x x not normalized)": "layer/nox",
    "streaming": "streaming",
    "streaming, a constant input feature 1.0": "streaming/const",
    "streaming, per-sample preset": "streaming/sample",
    "streaming, per-sample preset, a constant input": "streaming/sample/const",
    "streaming, all of PyTorch's LSTM initialisation": "streaming/wx/wh/bias",
    "streaming, per-sample preset and PyTorch's initialisation": "streaming/sample/wx/wh/bias",
}


def ours(variant: str, seed: int, lr: float) -> float:
    """Prequential MAE of one variant of our learner."""
    norm, *changes = variant.split("/")
    events = synthetic_stream(EVENTS)
    if "const" in changes:  # a constant input: the x-term's scale survives a normalization
        events = [({**x, "one": 1.0}, y) for x, y in events]
    learner = OnlineLearner(ModelSpec(
        name="gap", task="regression", features=tuple(events[0][0]), cell="lstm",
        hidden_size=HIDDEN, window=WINDOW, seed=seed,
        norm={"method": norm, "preset": "sample"} if "sample" in changes else norm,
        optimizer={"name": "adam", "lr": lr, "clip": None if "noclip" in changes else 1.0}))
    pytorch_init(learner, tuple(changes))
    if "nox" in changes:  # W_x x enters unnormalized, its scale with it
        for layer in learner.net.stack.layers:
            layer.nx = None
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


def job(args: tuple[str, int, float]) -> tuple[str, float, float]:
    variant, seed, lr = args
    torch.set_num_threads(1)
    if variant == "deep-river":
        torch.manual_seed(seed)
        return variant, lr, run_deep_river(synthetic_stream(EVENTS), WARMUP, lr)[1]
    return variant, lr, ours(variant, seed, lr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lrs", type=float, nargs="+", default=[LR],
                   help="Adam learning rates, the same for every variant (a column each)")
    args = p.parse_args(argv)
    names = {"deep-river RollingRegressor": "deep-river", **VARIANTS}
    got: dict[tuple[str, float], list[float]] = {}
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for variant, lr, mae in pool.map(job, [(v, s, lr) for v in names.values()
                                               for lr in args.lrs for s in args.seeds]):
            got.setdefault((variant, lr), []).append(mae)
    print(f"# bench/learner_gap.py — prequential MAE over {EVENTS - WARMUP} events, LSTM hidden "
          f"{HIDDEN}, window {WINDOW}, seeds {args.seeds}; a column per Adam learning rate\n")
    print("| variant | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |")
    print("|---|" + "---:|" * len(args.lrs))
    for name, variant in names.items():
        cells = []
        for lr in args.lrs:
            values = got[(variant, lr)]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f} ± {sd:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
