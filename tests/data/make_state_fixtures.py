"""Write state fixtures with whatever ``models`` is on the path, and what that code predicted.

Run with the code of the commit to capture (a worktree of it on ``PYTHONPATH``), from anywhere::

    git worktree add /tmp/old-<sha> <sha>
    PYTHONPATH=/tmp/old-<sha> python tests/data/make_state_fixtures.py OUT_DIR [--cells ...]

It only uses what every version of ``models`` has had since the first state format
(``RecurrentStack``, ``models.state.module_to_bytes``; from the learner's first commit on,
``OnlineLearner`` and ``models.persist.context_to_bytes``), so the same script serves every
commit. ``OUT_DIR/expected.json`` records, per blob, what that code predicted right after writing
it: ``tests/test_stored_states.py`` checks today's code predicts exactly the same from the blob.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import models
from models import NORMS, RecurrentStack
from models.state import module_to_bytes

try:  # the learner and its state formats arrived after the module format
    from models import OnlineLearner
    from models.persist import context_to_bytes
except ImportError:
    OnlineLearner = None  # type: ignore[assignment, misc]
    context_to_bytes = None  # type: ignore[assignment]

CELLS = ("lstm", "gru", "rnn")
# each cell with another task and optimizer, so the fixtures cover every head and optimizer state
TASKS = {"lstm": ("regression", None, "adam"), "gru": ("multiclass", 3, "rmsprop"),
         "rnn": ("binary", None, "sgd")}
N_FEATURES, HIDDEN, LAYERS, WINDOW = 3, 3, 2, 4
# every method with its defaults (small running-statistic tables for recurrent_batch), and
# Streaming Norm's per-sample statistics too (its buffers have another shape)
NORMS_USED = {**{m: {"method": m} for m in sorted(NORMS)},
              "recurrent_batch": {"method": "recurrent_batch", "t_max": 6},
              "streaming_sample": {"method": "streaming", "preset": "sample"}}


def feature(k: int) -> list[float]:
    """A deterministic input row (the same on every version)."""
    return [round(math.sin(0.7 * k + j), 4) for j in range(N_FEATURES)]


def target(task: str, k: int) -> float | int:
    s = sum(feature(k))
    if task == "regression":
        return round(s, 4)
    if task == "binary":
        return int(s > 0)
    return k % 3


def spec_for(norm: str, cell: str) -> dict[str, Any]:
    task, n_classes, optimizer = TASKS[cell]
    spec: dict[str, Any] = {
        "name": f"fx-{norm.replace('_', '-')}-{cell}", "task": task, "n_features": N_FEATURES,
        "cell": cell, "hidden_size": HIDDEN, "num_layers": LAYERS, "norm": NORMS_USED[norm],
        "optimizer": {"name": optimizer, "lr": 0.05}, "window": WINDOW, "seed": 7}
    if n_classes:
        spec["n_classes"] = n_classes
    return spec


def predictions(learner: Any, task: str) -> dict[str, Any]:
    """What the learner predicts on fixed probes: streams with and without a context, and a
    sequence (plus class probabilities for classifiers)."""
    probe, sequence = feature(100), [feature(101), feature(102), feature(103)]
    out: dict[str, Any] = {}
    for stream in ("a", "b", "fresh"):
        out[f"stream:{stream}"] = learner.predict_one(probe, stream=stream)
    out["sequence"] = learner.predict_one(sequence=sequence)
    if task != "regression":
        for stream in ("a", "b"):
            out[f"proba:{stream}"] = sorted(learner.predict_proba_one(probe, stream=stream)
                                            .items())
        out["proba:sequence"] = sorted(learner.predict_proba_one(sequence=sequence).items())
    return out


def write_learner(out: Path, norm: str, cell: str) -> dict[str, Any]:
    spec = spec_for(norm, cell)
    task = spec["task"]
    learner = OnlineLearner(spec)
    k = 0
    for stream, n in (("a", 6), ("b", 2), ("a", 1)):  # "a" past a full window, "b" not
        for _ in range(n):
            learner.learn_one(feature(k), target(task, k), stream=stream)
            k += 1
    learner.learn_one(sequence=[feature(k), feature(k + 1)], y=target(task, k + 1))
    learner.learn_many([[feature(k + 2)], [feature(k + 3), feature(k + 4)]],
                       [target(task, k + 2), target(task, k + 4)])
    name = f"{norm}-{cell}"
    (out / f"learner-{name}.bin").write_bytes(learner.to_bytes())
    contexts = {}
    for stream in ("a", "b"):
        file = f"context-{name}-{stream}.bin"
        (out / file).write_bytes(context_to_bytes(learner, stream))
        contexts[stream] = file
    written = {"spec": spec, "learner": f"learner-{name}.bin", "contexts": contexts,
               "updates": learner.updates, "samples": learner.samples,
               # the writer's parameter order: per-parameter optimizer state is indexed by it
               "param_order": [n for n, _ in learner.net.named_parameters()],
               "metrics": learner.metrics.to_dict(), "predictions": predictions(learner, task)}
    # one more update, and what it predicted and left behind: how that code carried on
    result = learner.learn_one(feature(300), target(task, 300), stream="a")
    written["continued"] = {"prediction": result.prediction, "loss": result.loss,
                            "predictions": predictions(learner, task)}
    return written


def stack_outputs(net: RecurrentStack) -> dict[str, Any]:
    """The stack's output on a fixed window in eval mode, then in train mode (which may move
    running statistics: last)."""
    window = torch.tensor([feature(200 + t) for t in range(3)]).unsqueeze(1)
    result = {}
    for mode in ("eval", "train"):
        net.train(mode == "train")
        with torch.no_grad():
            y, state = net(window, None)
        result[mode] = {"out": y.tolist(), "state": [s.tolist() for s in state]}
    return result


def write_module(out: Path, norm: str, cell: str) -> dict[str, Any]:
    torch.manual_seed(3)
    net = RecurrentStack(cell, N_FEATURES, HIDDEN, LAYERS, NORMS_USED[norm])
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for w in range(3):  # a few updates: statistics and weights away from their start
        window = torch.tensor([feature(10 * w + t) for t in range(WINDOW)]).unsqueeze(1)
        y, _ = net(window, None)
        y.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        models.notify_optimizer_step(net)
    file = f"module-{norm}-{cell}.bin"
    (out / file).write_bytes(module_to_bytes(net, {"norm": norm, "cell": cell}))
    return {"module": file, "args": [cell, N_FEATURES, HIDDEN, LAYERS, NORMS_USED[norm]],
            "meta": {"norm": norm, "cell": cell}, "outputs": stack_outputs(net)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--norms", nargs="+", default=list(NORMS_USED), choices=list(NORMS_USED))
    parser.add_argument("--kinds", nargs="+", default=["learner", "module"],
                        choices=["learner", "module"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tree = Path(models.__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    torch.set_num_threads(1)
    expected: dict[str, Any] = {"commit": commit, "command": " ".join(sys.argv),
                                "learners": {}, "modules": {}}
    for norm in args.norms:
        for cell in args.cells:
            for kind, write in (("learner", write_learner), ("module", write_module)):
                if kind not in args.kinds or (kind == "learner" and OnlineLearner is None):
                    continue
                try:
                    expected[f"{kind}s"][f"{norm}-{cell}"] = write(args.out, norm, cell)
                except Exception as exc:  # a configuration that code could not run: say so
                    expected.setdefault("failed", {})[f"{kind}-{norm}-{cell}"] = repr(exc)
                    for prefix in ("learner", "context") if kind == "learner" else (kind,):
                        for leftover in args.out.glob(f"{prefix}-{norm}-{cell}*.bin"):
                            leftover.unlink()
    (args.out / "expected.json").write_text(json.dumps(expected, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
