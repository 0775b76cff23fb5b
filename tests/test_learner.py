"""OnlineLearner: exact save/load across processes, pure predictions, safe failures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from models import InvalidInput, ModelSpec, OnlineLearner, UpdateRejected
from models.persist import context_from_bytes, context_to_bytes
from models.state import StateError

from .conftest import CELLS, METHODS

ROOT = Path(__file__).resolve().parents[1]


def spec(method: str = "streaming", cell: str = "lstm", **kw: Any) -> ModelSpec:
    base: dict[str, Any] = {"name": "t", "task": "regression", "n_features": 3, "cell": cell,
                            "hidden_size": 8, "num_layers": 2, "norm": {"method": method},
                            "window": 4, "seed": 3}
    base.update(kw)
    return ModelSpec.model_validate(base)


def events(n: int, seed: int = 0, streams: tuple[str, ...] = ("a", "b")) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, 3, generator=g).tolist()
    return [{"x": x, "y": float(sum(x)), "stream": streams[i % len(streams)]}
            for i, x in enumerate(xs)]


# -- save after k, load in a new process, continue: bit for bit -----------------------------------
N_EVENTS, K_SAVE = 14, 9


@pytest.fixture(scope="module")
def continued(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every method × cell uninterrupted here, and from event k on in one new process."""
    folder = tmp_path_factory.mktemp("continue")
    evs = events(N_EVENTS)
    reference: dict[str, Any] = {}
    for method in METHODS:
        for cell in CELLS:
            name = f"{method}-{cell}"
            learner = OnlineLearner(spec(method, cell))
            results = []
            for i, ev in enumerate(evs):
                if i == K_SAVE:
                    (folder / f"{name}.state").write_bytes(learner.to_bytes())
                    (folder / f"{name}.events.json").write_text(json.dumps(evs[K_SAVE:]))
                results.append(learner.learn_one(ev["x"], ev["y"], stream=ev["stream"]))
            reference[name] = (results[K_SAVE:], learner.to_bytes())
    subprocess.run([sys.executable, "-m", "tests._continue", str(folder)], cwd=ROOT, check=True,
                   timeout=600)
    return {"folder": folder, "reference": reference}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHODS)
def test_save_load_in_a_new_process_continues_bit_for_bit(continued: dict, method: str,
                                                           cell: str) -> None:
    name = f"{method}-{cell}"
    results, final = continued["reference"][name]
    out = json.loads((continued["folder"] / f"{name}.out.json").read_text())
    assert out["p"] == [r.prediction for r in results]
    assert out["l"] == [r.loss for r in results]
    other = OnlineLearner.from_bytes((continued["folder"] / f"{name}.final").read_bytes())
    mine = OnlineLearner.from_bytes(final)
    for (k, a), (k2, b) in zip(mine.net.state_dict().items(), other.net.state_dict().items(),
                               strict=True):
        assert k == k2 and torch.equal(a, b), k
    assert mine.optimizer.state.keys() == other.optimizer.state.keys()
    for key, value in mine.optimizer.state.items():
        assert torch.equal(value, other.optimizer.state[key]), key
    assert (continued["folder"] / f"{name}.final").read_bytes() == final


# -- predict_one is pure and equals the next learn_one --------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHODS)
def test_predict_one_changes_nothing_and_equals_the_next_learn_one(method: str, cell: str) -> None:
    learner = OnlineLearner(spec(method, cell))
    for ev in events(7):
        before = learner.to_bytes()
        pred = learner.predict_one(ev["x"], stream=ev["stream"])
        assert learner.to_bytes() == before
        assert learner.learn_one(ev["x"], ev["y"], stream=ev["stream"]).prediction == pred
    seq = [[0.1, 0.2, 0.3], [0.0, -1.0, 2.0]]
    before = learner.to_bytes()
    pred = learner.predict_one(sequence=seq)
    assert learner.to_bytes() == before
    assert learner.learn_one(sequence=seq, y=1.0).prediction == pred


def test_classifier_probabilities_and_labels() -> None:
    learner = OnlineLearner(spec(task="multiclass", n_classes=4))
    proba = learner.predict_proba_one([1.0, 2.0, 3.0], stream="s")
    assert sorted(proba) == [0, 1, 2, 3] and math.isclose(sum(proba.values()), 1.0)
    res = learner.learn_one([1.0, 2.0, 3.0], 2, stream="s")
    assert res.prediction == max(proba, key=proba.__getitem__)
    assert res.proba == proba
    assert math.isclose(res.loss, -math.log(proba[2]), rel_tol=1e-5)


# -- bad inputs: a documented exception naming the problem, nothing changed ------------------------
BAD: list[tuple[dict, Any, str]] = [
    ({}, {"x": [1.0, 2.0]}, "x"),
    ({}, {"x": [1.0, float("nan"), 2.0]}, "x[1]"),
    ({}, {"x": [1.0, float("inf"), 2.0]}, "x[1]"),
    ({}, {"x": [1.0, 2.0, 1e39]}, "x[2]"),
    ({}, {"x": [1.0, "2", 3.0]}, "x[1]"),
    ({}, {"x": [1.0, 2.0, 3.0], "y": float("nan")}, "y"),
    ({}, {"x": [1.0, 2.0, 3.0], "y": "high"}, "y"),
    ({}, {"x": "1,2,3"}, "x"),
    ({"features": ["a", "b", "c"], "n_features": None}, {"x": {"a": 1, "b": 2}}, "missing"),
    ({"features": ["a", "b", "c"], "n_features": None},
     {"x": {"a": 1, "b": 2, "c": 3, "d": 4}}, "unknown"),
    ({"task": "multiclass", "n_classes": 3}, {"x": [1.0, 2.0, 3.0], "y": 3}, "y"),
    ({"task": "multiclass", "n_classes": 3}, {"x": [1.0, 2.0, 3.0], "y": 1.5}, "y"),
    ({"task": "multiclass", "n_classes": 3}, {"x": [1.0, 2.0, 3.0], "y": True}, "y"),
    ({"task": "binary"}, {"x": [1.0, 2.0, 3.0], "y": 2}, "y"),
    ({}, {"sequence": []}, "sequence"),
    ({}, {"sequence": [[1.0, 2.0, 3.0], [1.0, 2.0]]}, "sequence[1]"),
]


@pytest.mark.parametrize(("overrides", "call", "named"), BAD)
def test_bad_inputs_raise_invalid_input_and_leave_the_learner_byte_identical(
        overrides: dict, call: dict, named: str) -> None:
    learner = OnlineLearner(spec(**overrides))
    x0 = {"a": 0.5, "b": 0.1, "c": 0.2} if learner.spec.features else [0.5, 0.1, 0.2]
    learner.learn_one(x0, 1 if learner.spec.task != "regression" else 0.5, stream="s")
    before = learner.to_bytes()
    kwargs = {"y": 1 if learner.spec.task != "regression" else 0.5, "stream": "s", **call}
    with pytest.raises(InvalidInput, match=named.replace("[", r"\[").replace("]", r"\]")):
        learner.learn_one(**kwargs)
    if "y" not in call:
        with pytest.raises(InvalidInput):
            learner.predict_one(**{k: v for k, v in kwargs.items() if k != "y"})
    assert learner.to_bytes() == before


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy reports the overflow it computes
def test_a_step_that_would_go_non_finite_is_rolled_back() -> None:
    learner = OnlineLearner(spec("streaming", optimizer={"name": "sgd", "lr": 1.0, "clip": None}))
    for ev in events(5):
        learner.learn_one(ev["x"], ev["y"], stream=ev["stream"])
    before = learner.to_bytes()
    with pytest.raises(UpdateRejected):  # x² overflows float32 inside the raw moments
        learner.learn_one([3e38, -3e38, 3e38], 1.0, stream="a")
    assert learner.to_bytes() == before
    learner.learn_one([0.1, 0.2, 0.3], 1.0, stream="a")  # still usable


# -- metrics --------------------------------------------------------------------------------------
def test_prequential_regression_metrics_are_computed_from_the_returned_predictions() -> None:
    learner = OnlineLearner(spec("layer"))
    errs = []
    for ev in events(30):
        res = learner.learn_one(ev["x"], ev["y"], stream=ev["stream"])
        errs.append(ev["y"] - res.prediction)
    report = learner.metrics.report()
    assert report["n"] == 30
    assert math.isclose(report["MAE"]["value"], sum(abs(e) for e in errs) / 30, rel_tol=1e-9)
    assert math.isclose(report["RMSE"]["value"], math.sqrt(sum(e * e for e in errs) / 30),
                        rel_tol=1e-9)


def test_prequential_classification_metrics() -> None:
    learner = OnlineLearner(spec("layer", task="binary"))
    hits, logloss = 0, 0.0
    for ev in events(20):
        y = int(ev["y"] > 0)
        res = learner.learn_one(ev["x"], y, stream="s")
        hits += int(res.prediction == y)
        logloss -= math.log(res.proba[y])
    report = learner.metrics.report()
    assert math.isclose(report["Accuracy"]["value"], hits / 20)
    assert math.isclose(report["LogLoss"]["value"], logloss / 20, rel_tol=1e-9)


# -- learn_many, contexts, bytes -------------------------------------------------------------------
def test_learn_many_takes_one_step_for_several_sequences() -> None:
    learner = OnlineLearner(spec("recurrent_batch"))
    seqs = [[[0.1, 0.2, 0.3]] * 3, [[1.0, 0.0, 0.0]] * 3, [[0.5, 0.5, 0.5]] * 2]
    results = learner.learn_many(seqs, [1.0, 2.0, 3.0])
    assert len(results) == 3 and learner.updates == 1 and learner.samples == 3
    assert learner.metrics.report()["n"] == 3


def test_stream_context_keeps_window_minus_one_inputs_and_round_trips_alone() -> None:
    learner = OnlineLearner(spec("layer", window=3))
    for ev in events(5, streams=("s",)):
        learner.learn_one(ev["x"], ev["y"], stream="s")
    ctx = learner.contexts["s"]
    assert ctx.inputs.shape == (2, 3) and ctx.state is not None
    name, again = context_from_bytes(learner, context_to_bytes(learner, "s"))
    assert name == "s" and torch.equal(again.inputs, ctx.inputs)
    assert all(torch.equal(a, b) for a, b in zip(again.state, ctx.state, strict=True))


@pytest.mark.parametrize("blob", [b"", b"junk" * 10, b"\x80\x04\x95" + b"\x00" * 40])
def test_from_bytes_rejects_malformed_bytes(blob: bytes) -> None:
    with pytest.raises(StateError):
        OnlineLearner.from_bytes(blob)


def test_from_bytes_rejects_oversized_bytes_before_parsing() -> None:
    blob = OnlineLearner(spec()).to_bytes()
    with pytest.raises(StateError, match="over the limit"):
        OnlineLearner.from_bytes(blob, max_bytes=len(blob) - 1)


def test_load_bytes_in_place_restores_an_equal_learner_and_rejects_other_specs() -> None:
    a = OnlineLearner(spec("layer"))
    for ev in events(6):
        a.learn_one(ev["x"], ev["y"], stream=ev["stream"])
    blob = a.to_bytes()
    b = OnlineLearner(spec("layer"))
    b.learn_one([1.0, 2.0, 3.0], 0.0, stream="other")
    b.load_bytes(blob)
    assert b.to_bytes() == blob and b.streams == ["a", "b"]
    c = OnlineLearner(spec("layer", hidden_size=9))
    before = c.to_bytes()
    with pytest.raises(StateError, match="different spec"):
        c.load_bytes(blob)
    assert c.to_bytes() == before


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHODS)
def test_from_bytes_copies_share_nothing_mutable(method: str, cell: str) -> None:
    """``from_bytes`` copies a cached per-spec template: copies must not share memory or module
    objects with it or with each other, and must learn exactly like a constructed learner."""
    evs = events(8)
    source = OnlineLearner(spec(method, cell))
    for ev in evs[:3]:
        source.learn_one(ev["x"], ev["y"], stream=ev["stream"])
    data = source.to_bytes()
    a, b = OnlineLearner.from_bytes(data), OnlineLearner.from_bytes(data)
    built = OnlineLearner(spec(method, cell))
    built.load_bytes(data)

    def storages(learner: OnlineLearner) -> set[int]:
        tensors = [*learner.net.parameters(), *learner.net.buffers(), learner.flat.grad,
                   *learner.flat.flats.values()]
        return {t.untyped_storage().data_ptr() for t in tensors}

    assert not storages(a) & storages(b)
    assert not {id(m) for m in a.net.modules()} & {id(m) for m in b.net.modules()}
    for ev in evs[3:]:
        got = a.learn_one(ev["x"], ev["y"], stream=ev["stream"])
        want = built.learn_one(ev["x"], ev["y"], stream=ev["stream"])
        assert got == want
    assert a.to_bytes() == built.to_bytes() != data
    assert b.to_bytes() == data  # untouched by a's learning
    assert OnlineLearner.from_bytes(data).to_bytes() == data  # and so is the template


def test_from_bytes_accepts_an_equivalent_spec_text_and_rejects_an_invalid_one() -> None:
    """The stored spec text keys the template cache; other spellings of the same spec still load
    (validated), and an invalid spec is a ``StateError``, not a crash."""
    learner = OnlineLearner(spec("streaming"))
    for ev in events(5):
        learner.learn_one(ev["x"], ev["y"], stream=ev["stream"])
    canonical = learner.to_bytes()
    learner.spec_json = json.dumps(json.loads(learner.spec_json), indent=2)
    respelled = learner.to_bytes()
    assert respelled != canonical
    assert OnlineLearner.from_bytes(respelled).to_bytes() == canonical
    other = OnlineLearner(spec("streaming"))
    other.load_bytes(respelled)
    assert other.to_bytes() == canonical
    learner.spec_json = learner.spec_json.replace('"lstm"', '"transformer"')
    with pytest.raises(StateError, match="invalid spec"):
        OnlineLearner.from_bytes(learner.to_bytes())
    with pytest.raises(StateError, match="invalid spec"):
        other.load_bytes(learner.to_bytes())
    assert other.to_bytes() == canonical
