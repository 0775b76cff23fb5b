"""Delayed labels in ``models``: a kept prediction's label makes exactly the update ``learn_one``
would have made on that window with the weights current when the label arrives."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from models import KeptPrediction, ModelSpec, OnlineLearner, StateError

from .conftest import CELLS, METHODS


def spec(method: str, cell: str, task: str = "regression", **kw: Any) -> ModelSpec:
    base: dict[str, Any] = {"name": "k", "task": task, "n_features": 3, "cell": cell,
                            "hidden_size": 8, "num_layers": 2, "norm": {"method": method},
                            "window": 4, "seed": 5, "optimizer": {"name": "adam", "lr": 0.01}}
    if task == "multiclass":
        base["n_classes"] = 3
    base.update(kw)
    return ModelSpec.model_validate(base)


def xs(n: int, seed: int) -> list[list[float]]:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed)).tolist()


def target(task: str, x: list[float]) -> float | int:
    return float(sum(x)) if task == "regression" else int(abs(sum(x) * 7)) % 3


def flats(learner: OnlineLearner) -> dict[str, torch.Tensor]:
    """Weights, optimizer moments and normalization statistics: everything an update moves."""
    return {k: v.clone() for k, v in learner.flat.flats.items()}


@pytest.mark.parametrize("task", ["regression", "multiclass"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHODS)
def test_label_equals_learn_one_on_the_kept_window_with_todays_weights(
        method: str, cell: str, task: str) -> None:
    learner = OnlineLearner(spec(method, cell, task))
    data = xs(24, 1)
    for i, x in enumerate(data[:12]):  # some history on two streams: "a" is past its window
        learner.learn_one(x, target(task, x), stream="ab"[i % 2])
    before_keep = OnlineLearner.from_bytes(learner.to_bytes())
    context_then = copy.deepcopy(learner.contexts["a"])
    x_kept = data[12]
    prediction, proba, kept = learner.keep_one(x_kept, stream="a")
    assert kept.state is not None and kept.capture == 0
    # keeping predicts what predict_one predicts, and moves the context on as learn_one would
    assert prediction == before_keep.predict_one(x_kept, stream="a")
    assert flats(learner).keys() == flats(before_keep).keys()
    assert all(torch.equal(a, b) for a, b in zip(flats(learner).values(),
                                                 flats(before_keep).values(), strict=True))
    moved = OnlineLearner.from_bytes(before_keep.to_bytes())
    moved.learn_one(x_kept, target(task, x_kept), stream="a")
    assert torch.equal(learner.contexts["a"].inputs, moved.contexts["a"].inputs)
    assert (learner.contexts["a"].state is None) == (moved.contexts["a"].state is None)
    if moved.contexts["a"].state is not None:
        assert all(torch.equal(p, q) for p, q in zip(learner.contexts["a"].state,
                                                     moved.contexts["a"].state, strict=True))
    # the world goes on before the label comes
    for i, x in enumerate(data[13:19]):
        learner.learn_one(x, target(task, x), stream="ab"[i % 2])
    # the oracle: learn_one at the prediction's window, with the weights of now
    oracle = OnlineLearner.from_bytes(learner.to_bytes())
    oracle.contexts["a"] = context_then
    oracle.learn_one(x_kept, target(task, x_kept), stream="a")
    context_now = copy.deepcopy(learner.contexts["a"])
    n_before, updates = learner.metrics.report()["n"], learner.updates
    # the label arrives (through bytes, as the service stores it)
    again = learner.kept_from_bytes(kept.to_bytes())
    result = learner.learn_kept(again, target(task, x_kept))
    assert all(torch.equal(a, b) for a, b in zip(flats(learner).values(),
                                                 flats(oracle).values(), strict=True))
    assert learner.updates == updates + 1 == oracle.updates
    # it scored the kept prediction, not a new one; the stream's context did not move
    assert result.prediction == prediction and result.proba == proba
    assert learner.metrics.report()["n"] == n_before + 1
    if task == "regression":
        assert result.loss == pytest.approx((prediction - target(task, x_kept)) ** 2, rel=1e-6)
    else:
        assert result.loss == pytest.approx(-torch.log(torch.tensor(
            proba[target(task, x_kept)], dtype=torch.float64)).item(), rel=1e-5)
    assert torch.equal(learner.contexts["a"].inputs, context_now.inputs)


def test_sequence_mode_keep_trains_the_sequence() -> None:
    learner = OnlineLearner(spec("layer", "gru"))
    seq = xs(5, 2)
    oracle = OnlineLearner.from_bytes(learner.to_bytes())
    prediction, _, kept = learner.keep_one(sequence=seq)
    assert learner.streams == [] and kept.state is None and kept.capture is None
    result = learner.learn_kept(kept, 0.25)
    reference = oracle.learn_one(sequence=seq, y=0.25)
    assert result.prediction == prediction == reference.prediction
    assert all(torch.equal(a, b) for a, b in zip(flats(learner).values(),
                                                 flats(oracle).values(), strict=True))


def test_a_record_that_does_not_fit_is_refused() -> None:
    learner = OnlineLearner(spec("streaming", "lstm"))
    for x in xs(5, 3):
        learner.learn_one(x, 0.0, stream="s")
    _, _, kept = learner.keep_one(xs(1, 4)[0], stream="s")
    data = kept.to_bytes()
    assert learner.kept_from_bytes(data).window.shape == (4, 3)
    other = OnlineLearner(spec("streaming", "lstm", n_features=2))
    with pytest.raises(StateError, match="window"):
        other.kept_from_bytes(data)
    wider = OnlineLearner(spec("streaming", "lstm", hidden_size=16))
    with pytest.raises(StateError, match="state"):
        wider.kept_from_bytes(data)
    with pytest.raises(StateError):
        learner.kept_from_bytes(data[:-3])
    with pytest.raises(StateError):
        learner.kept_from_bytes(learner.to_bytes())  # a learner state is not a record
    short = KeptPrediction(kept.window, kept.state, 7, kept.logits)  # capture past the window
    with pytest.raises(StateError, match="capture"):
        learner.kept_from_bytes(short.to_bytes())
