"""``models.health.summary``: the dashboard's view of a learner's normalization statistics,
checked against sums done by hand on buffers set to known values."""

from __future__ import annotations

import math

import pytest
import torch

from models import ModelSpec, OnlineLearner, norms
from models.health import summary
from models.norms.streaming import MEMORIES


def learner(norm: str) -> OnlineLearner:
    return OnlineLearner(ModelSpec(name="h", task="regression", n_features=2, hidden_size=2,
                                   window=3, norm={"method": norm}, seed=0))


def by_name(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(row["name"]): row for row in rows}


def test_a_buffer_set_by_hand_is_summarized_as_computed_by_hand() -> None:
    model = learner("batch_rnn")  # running_mean / running_var of the input site, width 4·2
    site = model.net.stack.layers[0].nx
    with torch.no_grad():
        site.running_mean.copy_(torch.tensor([1.0, -3.0, 0.5, 2.0, 0.0, 0.0, 4.0, -0.5]))
    rows = by_name(summary(model))
    assert set(rows) == {"stack.layers.0.nx.running_mean", "stack.layers.0.nx.running_var"}
    row = rows["stack.layers.0.nx.running_mean"]
    # min -3, max 4, mean (1 - 3 + 0.5 + 2 + 0 + 0 + 4 - 0.5) / 8 = 4 / 8
    assert row == {"name": "stack.layers.0.nx.running_mean", "shape": [8], "min": -3.0,
                   "max": 4.0, "mean": 0.5, "finite": True}
    assert rows["stack.layers.0.nx.running_var"]["mean"] == 1.0  # initialised to ones


def test_streaming_memory_is_split_into_its_long_and_short_term_rows() -> None:
    model = learner("streaming")  # the online preset: L starts at m1 = 0, m2 = 1
    rows = by_name(summary(model))
    long_term = rows["stack.layers.0.nh.L"]
    assert long_term["shape"] == [2, 8]  # (m1, m2) per unit of 4 gates x 2 units
    assert (long_term["min"], long_term["max"], long_term["mean"]) == (0.0, 1.0, 0.5)
    assert [n.rsplit(".", 1)[1] for n in rows if n.startswith("stack.layers.0.nh.")] \
        == [*MEMORIES, "counters"]
    assert not any(n.endswith(".memory") for n in rows)
    # learning moves the statistics the summary reads (the fast kernels share the buffers)
    for t in range(5):
        model.learn_one([math.sin(t), 1.0], 0.5, stream="s")
    short = by_name(summary(model))["stack.layers.0.nx.S"]
    site = model.net.stack.layers[0].nx
    assert short["max"] == pytest.approx(float(site.S.max()))
    assert short["mean"] == pytest.approx(float(site.S.double().mean()))
    assert short["max"] != 0.0


def test_non_finite_elements_are_flagged_and_left_out_of_the_range() -> None:
    model = learner("online")
    site = model.net.stack.layers[0].npre
    with torch.no_grad():
        site.mean.copy_(torch.tensor([2.0, float("nan"), -1.0, float("inf"),
                                      0.0, 0.0, 0.0, 5.0]))
        site.u.fill_(float("nan"))
    rows = by_name(summary(model))
    mean = rows["stack.layers.0.npre.mean"]
    assert mean["finite"] is False
    assert (mean["min"], mean["max"], mean["mean"]) == (-1.0, 5.0, 1.0)  # 6 / 6 finite ones
    assert rows["stack.layers.0.npre.u"] == {
        "name": "stack.layers.0.npre.u", "shape": [8], "min": None, "max": None, "mean": None,
        "finite": False}
    assert rows["stack.layers.0.npre.var"]["finite"] is True


@pytest.mark.parametrize("method", sorted(norms.NORMS))
def test_every_method_lists_only_its_statistics(method: str) -> None:
    rows = summary(learner(method))
    stateless = method in {"layer", "weight", "cosine", "none"}
    assert (rows == []) is stateless, rows
    assert all(not r["name"].endswith("_zeros") for r in rows)  # a cell's helper, not a norm's
    assert all(r["finite"] for r in rows)
