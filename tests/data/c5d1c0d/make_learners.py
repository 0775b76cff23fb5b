"""Write the learner fixtures of this folder: for every cell × normalization method, a small
``OnlineLearner`` as commit c5d1c0d saved it (``{cell}-{method}.learner``, ``to_bytes()``), one
of its stream contexts on its own (``{cell}-{method}.ctx``, ``models.persist.context_to_bytes``)
and, in ``learners.json``, its spec, the events it learned, probes and the exact answers that
code gave for them (``tests/test_stored_c5d1c0d.py`` loads them with today's code).

Run it with the code of c5d1c0d first on the path (it refuses any other):

    cd /path/to/checkout-at-c5d1c0d
    PYTHONPATH=$PWD python /path/to/tests/data/c5d1c0d/make_learners.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import models
from models import ModelSpec, OnlineLearner, norms
from models.persist import context_to_bytes

COMMIT = "c5d1c0d"
HERE = Path(__file__).resolve().parent
CELLS = ["lstm", "gru", "rnn"]
STREAMS = ["s0", "s1", "s2"]
CTX_STREAM = "s1"
FEATURES = ["temp", "load", "rate"]


def written_by() -> str:
    """The commit of the ``models`` package on the path: c5d1c0d, unmodified, or exit."""
    tree = Path(models.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "models",
                            "service"], check=True, capture_output=True, text=True).stdout
    if not head.startswith(COMMIT) or dirty.strip():
        sys.exit(f"models comes from {tree} at {head} (changes: {dirty.strip() or 'none'}); "
                 f"run this with an unmodified checkout of {COMMIT} first on PYTHONPATH")
    return head


def spec_for(i: int, cell: str, method: str) -> dict[str, Any]:
    """Combo ``i``'s spec: mostly regression, every 6th from 1 binary, every 6th from 4
    multiclass (3 classes); two layers, other optimizers and named features for a few."""
    task = "binary" if i % 6 == 1 else "multiclass" if i % 6 == 4 else "regression"
    spec: dict[str, Any] = {"name": f"{cell}-{method}", "task": task, "n_features": 3,
                            "cell": cell, "hidden_size": 8, "window": 4, "norm": method,
                            "seed": 1000 + i}
    if task == "multiclass":
        spec["n_classes"] = 3
    if i % 5 == 2:
        spec["num_layers"] = 2
    if i % 8 == 5:
        spec["optimizer"] = {"name": "rmsprop", "lr": 0.01, "clip": 0.5}
    elif i % 8 == 7:
        spec["optimizer"] = {"name": "sgd", "lr": 0.05, "clip": None}
    if i % 7 == 3:
        spec["features"] = FEATURES
    return spec


def features(k: int, named: bool) -> list[float] | dict[str, float]:
    x = [((k * 7) % 11) / 11 - 0.4, ((k * 3) % 5) / 5 - 0.5, (k % 4) * 0.25]
    return dict(zip(FEATURES, x, strict=True)) if named else x


def target(x: list[float], task: str) -> float | int:
    if task == "regression":
        return round(x[0] - 0.5 * x[1] + 0.1, 6)
    if task == "binary":
        return int(x[0] + x[2] > 0.2)
    return int((x[0] + 0.5) * 3) % 3


def sequence(k: int, steps: int) -> list[list[float]]:
    return [[float(v) for v in features(k + t, False)] for t in range(steps)]


def events(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """30 stream-mode events over 3 streams, then a sequence-mode learn and a learn_many of
    two equal-length sequences (applied in this order)."""
    named, task = "features" in spec, spec["task"]
    out: list[dict[str, Any]] = []
    for k in range(30):
        x = features(k, named)
        plain = list(x.values()) if isinstance(x, dict) else x
        out.append({"stream": STREAMS[k % 3] if k % 5 else STREAMS[(k // 5) % 3], "x": x,
                    "y": target(plain, task)})
    seq = sequence(40, 5)
    out.append({"sequence": seq, "y": target(seq[-1], task)})
    many = [sequence(50, 3), sequence(60, 3)]
    out.append({"sequences": many, "ys": [target(s[-1], task) for s in many]})
    return out


def apply(learner: OnlineLearner, ev: dict[str, Any]) -> None:
    if "sequences" in ev:
        learner.learn_many(ev["sequences"], ev["ys"])
    elif "sequence" in ev:
        learner.learn_one(sequence=ev["sequence"], y=ev["y"])
    else:
        learner.learn_one(ev["x"], ev["y"], stream=ev["stream"])


def probes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    named = "features" in spec
    out: list[dict[str, Any]] = [{"stream": s, "x": features(90 + j, named)}
                                 for j, s in enumerate(STREAMS)]
    out.append({"stream": "never-seen", "x": features(95, named)})
    out.append({"sequence": sequence(97, 4)})
    return out


def answer(learner: OnlineLearner, probe: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(probe)
    x = kwargs.pop("x", None)
    out: dict[str, Any] = {"predict_one": learner.predict_one(x, **kwargs)}
    if learner.spec.task != "regression":
        proba = learner.predict_proba_one(x, **kwargs)
        out["predict_proba_one"] = {str(k): v for k, v in proba.items()}
    return out


def main() -> None:
    torch.set_num_threads(1)  # as the service and the test suite run
    head = written_by()
    combos: dict[str, Any] = {}
    methods = [d["method"] for d in norms.describe()]
    assert sorted(methods) == sorted(models.NORMS), methods
    i = 0
    for cell in CELLS:
        for method in methods:
            given = spec_for(i, cell, method)
            learner = OnlineLearner(ModelSpec.model_validate(given))
            evs = events(given)
            for ev in evs:
                apply(learner, ev)
            name = f"{cell}-{method}"
            blob = learner.to_bytes()
            (HERE / f"{name}.learner").write_bytes(blob)
            (HERE / f"{name}.ctx").write_bytes(context_to_bytes(learner, CTX_STREAM))
            assert OnlineLearner.from_bytes(blob).to_bytes() == blob, name
            ps = probes(given)
            combos[name] = {
                "spec": json.loads(learner.spec_json), "ctx_stream": CTX_STREAM,
                "streams": learner.streams, "events": evs, "probes": ps,
                "answers": [answer(learner, p) for p in ps],
                "updates": learner.updates, "samples": learner.samples,
                "metrics": learner.metrics.report()}
            i += 1
    out = {"written_by": head, "torch": torch.__version__, "combos": combos}
    (HERE / "learners.json").write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    print(f"{len(combos)} learners written to {HERE} by {head}")


if __name__ == "__main__":
    main()
