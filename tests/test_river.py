"""``models.river``: River estimators over ``OnlineLearner`` — inside a ``Pipeline`` through
``progressive_val_score`` they predict exactly what the bare learner predicts on the same scaled
inputs; ``clone()``; River's own estimator checks."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

river = pytest.importorskip("river")

from river import checks, datasets, evaluate, metrics, preprocessing  # noqa: E402

from models import ModelSpec, OnlineLearner  # noqa: E402
from models.river import RecurrentClassifier, RecurrentRegressor  # noqa: E402

PARAMS = {"hidden_size": 6, "window": 4, "lr": 0.01, "norm": "layer", "seed": 3}


def bare(task: dict[str, Any], names: list[str]) -> OnlineLearner:
    return OnlineLearner(ModelSpec.model_validate({
        "name": "river", "n_features": len(names), "cell": "lstm", "hidden_size": 6,
        "num_layers": 1, "norm": "layer", "optimizer": {"name": "adam", "lr": 0.01, "clip": 1.0},
        "window": 4, "seed": 3, **task}))


def scaled_stream(dataset: Any) -> Any:
    """What a ``StandardScaler`` in front of a model hands it: the input scaled before the
    sample (to predict) and after learning it (to learn), as ``Pipeline`` does."""
    scaler = preprocessing.StandardScaler()
    for x, y in dataset:
        before = scaler.transform_one(x)
        scaler.learn_one(x)
        yield before, scaler.transform_one(x), y


def vector(x: dict[str, float], names: list[str]) -> list[float]:
    return [float(x.get(n) or 0.0) for n in names]


def test_a_pipeline_regressor_predicts_what_the_bare_learner_predicts() -> None:
    data = list(datasets.TrumpApproval().take(150))
    model = preprocessing.StandardScaler() | RecurrentRegressor(**PARAMS)
    got = [p for _, _, p in ((s["MAE"], s["Step"], s["Prediction"]) for s in
                             evaluate.iter_progressive_val_score(
                                 data, model, metrics.MAE(), step=1, yield_predictions=True))]
    names = sorted(data[0][0])
    learner, want, mae = bare({"task": "regression"}, names), [], metrics.MAE()
    for before, after, y in scaled_stream(data):
        p = learner.predict_one(vector(before, names), stream="default")
        learner.learn_one(vector(after, names), y, stream="default")
        want.append(p)
        mae.update(y, p)
    assert got == want
    final = evaluate.progressive_val_score(data, preprocessing.StandardScaler()
                                           | RecurrentRegressor(**PARAMS), metrics.MAE())
    assert final.get() == mae.get()


def test_a_pipeline_classifier_predicts_what_the_bare_learner_predicts() -> None:
    data = list(datasets.Phishing().take(150))
    model = preprocessing.StandardScaler() | RecurrentClassifier(**PARAMS)
    got = [s["Prediction"] for s in evaluate.iter_progressive_val_score(
        data, model, metrics.Accuracy(), step=1, yield_predictions=True)]
    names = sorted(data[0][0])
    learner, want = bare({"task": "binary"}, names), []
    for before, after, y in scaled_stream(data):
        proba = learner.predict_proba_one(vector(before, names), stream="default")
        learner.learn_one(vector(after, names), int(y), stream="default")
        want.append(bool(max(proba, key=proba.__getitem__)))
    assert got == want
    assert isinstance(got[0], bool)


def test_clone_is_a_fresh_equal_learner() -> None:
    model = RecurrentRegressor(cell="gru", norm={"method": "streaming", "preset": "online"},
                               **{k: v for k, v in PARAMS.items() if k != "norm"})
    data = list(datasets.TrumpApproval().take(20))
    for x, y in data:
        model.learn_one(x, y)
    fresh = model.clone()
    assert fresh._get_params() == model._get_params() and fresh.learner is None
    again = RecurrentRegressor(cell="gru", norm={"method": "streaming", "preset": "online"},
                               **{k: v for k, v in PARAMS.items() if k != "norm"})
    for x, y in data:
        fresh.learn_one(x, y)
        again.learn_one(x, y)
    assert fresh.learner is not None and again.learner is not None
    assert fresh.learner.spec == model.learner.spec  # type: ignore[union-attr]
    assert fresh.learner.to_bytes() == again.learner.to_bytes() == model.learner.to_bytes()


def test_a_feature_keys_the_streams() -> None:
    model = RecurrentRegressor(stream="sensor", **PARAMS)
    learner = bare({"task": "regression"}, ["a", "b"])
    rows = [({"sensor": f"s{i % 3}", "a": 0.1 * i, "b": -0.05 * i}, 0.01 * i) for i in range(12)]
    for x, y in rows:
        model.learn_one(x, y)
        learner.learn_one([x["a"], x["b"]], y, stream=x["sensor"])
    assert model.learner is not None and model.learner.streams == ["s0", "s1", "s2"]
    assert model.learner.to_bytes() == learner.to_bytes()


def test_more_labels_than_n_classes_is_a_clear_error() -> None:
    model = RecurrentClassifier(n_classes=2, **PARAMS)
    model.learn_one({"a": 1.0}, "cat")
    model.learn_one({"a": 0.0}, "dog")
    assert set(model.predict_proba_one({"a": 0.5})) == {"cat", "dog"}
    with pytest.raises(ValueError, match="n_classes=2"):
        model.learn_one({"a": 2.0}, "bird")


# River's checks (river.checks.yield_checks) on a regressor, a binary and a multi-class
# classifier (n_classes 8: the multi-class check dataset, ImageSegments, has 7 labels). None is
# skipped.
ESTIMATORS = {"regressor": RecurrentRegressor(hidden_size=4, window=3),
              "binary": RecurrentClassifier(hidden_size=4, window=3),
              "multiclass": RecurrentClassifier(hidden_size=4, window=3, n_classes=8)}
CHECKS = [(kind, i, check.__name__) for kind, model in ESTIMATORS.items()
          for i, check in enumerate(checks.yield_checks(model))]


@pytest.mark.parametrize(("kind", "index", "check"), CHECKS,
                         ids=[f"{k}-{c}-{i}" for k, i, c in CHECKS])
def test_river_estimator_checks(kind: str, index: int, check: str) -> None:
    model = ESTIMATORS[kind]
    found = next(itertools.islice(checks.yield_checks(model), index, None))
    assert found.__name__ == check
    found(model.clone())


def test_the_pipeline_example_runs() -> None:
    """``examples/river_pipeline.py`` (deep-river's row only when it is installed)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "examples/river_pipeline.py", "--limit", "40"],
                         cwd=root, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| streamnorm LSTM")]
    assert [r.split("|")[1].strip() for r in rows] == [
        "streamnorm LSTM layer", "streamnorm LSTM streaming", "streamnorm LSTM none"]
    for row in rows:
        mae = float(row.split("|")[2])
        assert 0 < mae < 100  # TrumpApproval's target is ~40: a number, not a failure


def test_labels_streams_and_values_found_in_review() -> None:
    binary = RecurrentClassifier(**PARAMS)
    binary.learn_one({"a": 1.0}, 1)  # 0/1 read as False/True
    assert set(binary.predict_proba_one({"a": 1.0})) == {False, True}
    for label in ("yes", -1, 2):
        with pytest.raises(ValueError, match="n_classes"):
            binary.learn_one({"a": 1.0}, label)
    keyed = RecurrentRegressor(stream=0, **PARAMS)  # a stream feature whose key is no string
    for i in range(6):
        keyed.learn_one({0: f"s{i % 2}", 1: 0.1 * i}, 0.0)
    assert keyed.learner is not None and keyed.learner.streams == ["s0", "s1"]
    assert keyed._names == ("1",)
    plain = RecurrentRegressor(stream="id", **PARAMS)
    plain.learn_one({"id": None, "a": None}, 0.0)  # None: the default stream, a 0 input
    plain.learn_one({"a": 1.0}, 0.0)
    assert plain.learner is not None and plain.learner.streams == ["default"]
    assert plain.learner.contexts["default"].inputs.tolist() == [[0.0], [1.0]]
