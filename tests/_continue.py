"""Subprocess half of the save/load test: load each learner, continue its events, report.

Usage: python -m tests._continue DIR. For every DIR/NAME.state it loads the learner, replays
DIR/NAME.events.json from index k and writes DIR/NAME.out.json (predictions, losses) and
DIR/NAME.final (the learner's bytes at the end).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from models import OnlineLearner

torch.set_num_threads(1)


def main(folder: str) -> None:
    for state in sorted(Path(folder).glob("*.state")):
        name = state.stem
        learner = OnlineLearner.from_bytes(state.read_bytes())
        events = json.loads((state.parent / f"{name}.events.json").read_text())
        preds, losses = [], []
        for ev in events:
            res = learner.learn_one(ev["x"], ev["y"], stream=ev["stream"])
            preds.append(res.prediction)
            losses.append(res.loss)
        (state.parent / f"{name}.out.json").write_text(json.dumps({"p": preds, "l": losses}))
        (state.parent / f"{name}.final").write_bytes(learner.to_bytes())


if __name__ == "__main__":
    main(sys.argv[1])
