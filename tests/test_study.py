"""``bench/study.py``: its statistics against hand computations and SciPy, and one ``--quick`` run
of the whole protocol (tuning on the prefix, evaluation on the rest, the paired test), checked
from its JSON output: the configuration chosen is the best of the tuning runs, every method got
the same budget, the evaluation scores only the events after the prefix, and the references are
what an independent count gives.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the study's digits need scikit-learn (dev extra)")
pytest.importorskip("matplotlib", reason="the study's plot needs matplotlib (dev extra)")
scipy_stats = pytest.importorskip("scipy.stats")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import study  # noqa: E402


def test_tuning_images_are_never_scored() -> None:
    for name in ("digits", "digits16", "pdigits"):
        stream = study.STREAMS[name]
        for n in (stream.n - stream.n % stream.batch, stream.quick):
            start = study.prefix(stream, n)
            tuning = study.image_order(stream, start, study.TUNE_SEED)  # what tuning runs see
            for seed in study.SEEDS:
                order = study.image_order(stream, n, seed)
                assert len(set(order)) == len(order) == n
                assert set(order[:start]) == set(tuning)  # the same images, another order
                assert not set(order[start:]) & set(tuning)


def test_every_method_gets_the_same_budget() -> None:
    import models

    for method in models.NORMS:
        grid = study.configs(method)
        assert len(grid) == study.GRID
        assert len({json.dumps(n, sort_keys=True) + str(lr) for n, lr in grid}) == study.GRID


def test_the_char_stream_is_real_text() -> None:
    codes = study.text(2000)
    assert len(codes) == 2001
    decoded = "".join(study.ALPHABET[c] if c < len(study.ALPHABET) else "#" for c in codes)
    words = decoded.split()
    assert {"the", "of", "is"} <= set(words)
    assert decoded.count(" ") / len(decoded) > 0.1


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("study")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "study.py"), "--quick", "--json",
         str(out / "study.json"), "--plot", str(out / "study.png")],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "study.png").stat().st_size > 10_000
    data = json.loads((out / "study.json").read_text())
    data["stdout"], data["path"] = proc.stdout, out / "study.json"
    return data


def test_quick_study_covers_every_stream_cell_and_method(quick: dict[str, Any]) -> None:
    import models

    got = {(c["stream"], c["cell"]) for c in quick["cells"]}
    assert got == {(s.name, s.cells[0]) for s in study.STREAMS.values()}  # --quick: one cell each
    for c in quick["cells"]:
        assert set(c["evals"]) == set(models.NORMS)
        for runs in c["evals"].values():
            assert sorted(r["seed"] for r in runs) == list(study.SEEDS)
            assert all(len(r["scores"]) == c["n"] for r in runs)
            assert all(math.isfinite(s) for r in runs for s in r["scores"])
    for method in models.NORMS:
        assert f"\n| {method} | " in quick["stdout"]


def test_the_chosen_configuration_is_the_best_on_the_prefix(quick: dict[str, Any]) -> None:
    for c in quick["cells"]:
        higher = study.STREAMS[c["stream"]].higher_better
        for method, (norm, lr) in c["chosen"].items():
            tuned = [r for r in c["tuning"] if r["method"] == method]
            assert len(tuned) == study.GRID
            assert all(r["samples"] == c["start"] and r["seed"] == study.TUNE_SEED for r in tuned)
            best = (max if higher else min)(r["metric"] for r in tuned)
            picked = [r for r in tuned if r["norm"] == norm and r["lr"] == lr]
            assert len(picked) == 1 and picked[0]["metric"] == best
            for r in c["evals"][method]:
                assert (r["norm"], r["lr"]) == (norm, lr)


def test_the_paired_test_is_a_t_test_over_the_seeds(quick: dict[str, Any]) -> None:
    for c in quick["cells"]:
        start = c["start"]
        base = {r["seed"]: np.mean(r["scores"][start:]) for r in c["evals"]["none"]}
        for method, runs in c["evals"].items():
            if method == "none":
                continue
            diffs = [np.mean(r["scores"][start:]) - base[r["seed"]] for r in runs]
            mean, p = c["tests"][method]
            assert mean == pytest.approx(np.mean(diffs))
            if np.ptp(diffs) > 0:
                assert p == pytest.approx(scipy_stats.ttest_rel(
                    [np.mean(r["scores"][start:]) for r in runs],
                    [base[r["seed"]] for r in runs]).pvalue)


def test_the_count_references_are_independent_counts() -> None:
    n = 400
    refs = study.references(study.STREAMS["chars"], n)
    codes = study.text(n)
    k = len(study.ALPHABET) + 1
    uni, bi = Counter(), Counter()
    for t in range(n):  # predict codes[t + 1] from the pairs seen before
        a, b = codes[t], codes[t + 1]
        context = sum(bi[(a, x)] for x in range(k))
        assert refs["unigram counts"][t] == pytest.approx(
            -math.log2((uni[b] + 0.5) / (t + 0.5 * k)))
        assert refs["bigram counts"][t] == pytest.approx(
            -math.log2((bi[(a, b)] + 0.5) / (context + 0.5 * k)))
        uni[b] += 1
        bi[(a, b)] += 1
    # on English text the bigram counts beat the unigram counts once they have seen enough
    assert np.mean(refs["bigram counts"][200:]) < np.mean(refs["unigram counts"][200:])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_pytorch_init_draws_what_pytorchs_own_cell_draws(cell: str) -> None:
    """``--init pytorch`` redraws every weight of the cell uniform in ±1/√H and its bias as the
    sum ``b_ih + b_hh`` of two such draws, as the bias a PyTorch cell adds is (a GRU's n gate
    takes only ``b_in``; its ``b_hn`` is drawn once); seeded by the spec; the norm's gains are
    untouched. The spread of each part is checked against a real ``nn.LSTM`` / ``nn.GRU``."""
    import torch

    from models import OnlineLearner

    h = 256  # enough draws that a spread √2 off cannot pass for the right one
    stream = study.STREAMS["memory"]

    def make(seed: int) -> OnlineLearner:
        spec = study.spec(stream, cell, {"method": "layer"}, 0.01, seed)
        return OnlineLearner(spec.model_copy(update={"hidden_size": h}))

    learners = [make(seed) for seed in (3, 3, 4)]
    before = {k: v.clone() for k, v in learners[0].net.named_parameters()}
    for learner in learners:
        study.pytorch_init(learner)
    after = {k: v.detach() for k, v in learners[0].net.named_parameters()}
    redrawn = {k for k in after if not torch.equal(after[k], before[k])}
    layer = "stack.layers.0."
    mine = {layer + k for k in ("lx.weight", "lh.weight", "bias")} | (
        {layer + "bias_hn"} if cell == "gru" else set())
    assert redrawn == mine  # the cell's own, nothing else
    for k in redrawn:  # the same seed draws the same, another seed another
        assert torch.equal(after[k], dict(learners[1].net.named_parameters())[k])
        assert not torch.equal(after[k], dict(learners[2].net.named_parameters())[k])

    torch.manual_seed(0)
    inputs = after[layer + "lx.weight"].shape[1]
    ref = getattr(torch.nn, cell.upper())(inputs, h)  # PyTorch's own draw
    ref_bias = (ref.bias_ih_l0 + ref.bias_hh_l0).detach()
    parts = {"W_x": (after[layer + "lx.weight"], ref.weight_ih_l0.detach()),
             "W_h": (after[layer + "lh.weight"], ref.weight_hh_l0.detach())}
    if cell == "lstm":
        parts["bias"] = (after[layer + "bias"], ref_bias)
    else:
        parts["bias r, z"] = (after[layer + "bias"][:2 * h], ref_bias[:2 * h])
        parts["b_in"] = (after[layer + "bias"][2 * h:], ref.bias_ih_l0.detach()[2 * h:])
        parts["b_hn"] = (after[layer + "bias_hn"], ref.bias_hh_l0.detach()[2 * h:])
    for name, (ours, theirs) in parts.items():
        assert ours.shape == theirs.shape, name
        assert ours.abs().max() <= theirs.abs().max() * 1.2 + 1e-6, name
        assert ours.std() == pytest.approx(float(theirs.std()), rel=0.12), name
    # a sum of two draws spreads by √2 more than one: what the bias check above can tell apart
    assert float(ref_bias.std()) == pytest.approx(math.sqrt(2 / 3) / math.sqrt(h), rel=0.1)


def test_compare_sets_two_initialisations_side_by_side(quick: dict[str, Any], tmp_path: Path
                                                       ) -> None:
    """``--init pytorch`` on one stream, then ``--compare`` against the quick run: each row's
    figure is that run's mean over its seeds, the mark a paired t-test against the first run."""
    pytorch = tmp_path / "pytorch.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "study.py"), "--quick", "--streams", "memory",
         "--methods", "none", "layer", "--init", "pytorch", "--json", str(pytorch), "--plot", ""],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(pytorch.read_text())
    assert theirs["init"] == "pytorch" and quick["init"] == "ours"
    table = study.compare([quick["path"], pytorch])
    mine = next(c for c in quick["cells"] if c["stream"] == "memory")
    (other,) = theirs["cells"]
    start = mine["start"]
    assert table.count("\n| ") == 4  # none and layer, ours and PyTorch's
    assert table.splitlines()[0].count("|") == 3  # the memory column only
    for method in ("none", "layer"):
        a = [np.mean(r["scores"][start:]) for r in mine["evals"][method]]
        b = [np.mean(r["scores"][start:]) for r in other["evals"][method]]
        assert a != b  # another initialisation learns otherwise
        row_a = next(x for x in table.splitlines() if x.startswith(f"| {method}, ours |"))
        row_b = next(x for x in table.splitlines() if x.startswith(f"| {method}, pytorch |"))
        assert f"{np.mean(a):.3f} ± {np.std(a, ddof=1):.3f}" in row_a
        assert f"{np.mean(b):.3f} ± {np.std(b, ddof=1):.3f}" in row_b
        p = scipy_stats.ttest_rel(b, a).pvalue
        marked = "▲" in row_b or "▼" in row_b
        assert marked == (p < study.ALPHA)


def _made_up_run(init: str, shift: dict[str, float]) -> dict[str, Any]:
    """A study JSON with two columns of known scores: memory (higher is better) and chars (lower
    is better), 10 samples of which the last 5 are scored, seeds 0-2, one method."""
    cells = []
    for stream, base in (("memory", 0.5), ("chars", 3.0)):
        runs = [{"stream": stream, "cell": "lstm", "method": "none", "norm": {"method": "none"},
                 "lr": 0.01, "seed": seed, "samples": 10, "rejected": 0, "seconds": 1.0,
                 "updates": 10,
                 "scores": [9.0] * 5 + [base + shift[stream] + 0.01 * seed * (init == "b")] * 5}
                for seed in study.SEEDS]
        cells.append({"stream": stream, "cell": "lstm", "n": 10, "start": 5,
                      "evals": {"none": runs}})
    return {"init": init, "cells": cells}


def test_compare_marks_the_direction_and_counts(tmp_path: Path) -> None:
    """Run b beats a on memory (+0.3 accuracy) and loses on chars (+0.5 bits): ▲ there, ▼ here
    (the prefix's 9.0s are not scored), and the summary counts one better column of two."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_made_up_run("a", {"memory": 0.0, "chars": 0.0})))
    b.write_text(json.dumps(_made_up_run("b", {"memory": 0.3, "chars": 0.5})))
    lines = study.compare([a, b]).splitlines()
    assert lines[0].startswith("| method | memory LSTM accuracy ↑ | chars LSTM bits/char ↓ |")
    row_a = next(x for x in lines if x.startswith("| none, a |"))
    row_b = next(x for x in lines if x.startswith("| none, b |"))
    assert row_a == "| none, a | 0.500 ± 0.000 | 3.000 ± 0.000 |"
    assert row_b == "| none, b | 0.810 ± 0.010 ▲ | 3.510 ± 0.010 ▼ |"
    assert "- none, b: better than a on 1 of 2 columns (1 significantly)" in lines
    # the same run twice: named by position, nothing better, no mark
    same = study.compare([a, a]).splitlines()
    assert sum(x.startswith("| none, ") for x in same) == 2
    assert not any("▲" in x or "▼" in x for x in same)
    assert "- none, a.json #2: better than a.json #1 on 0 of 2 columns (0 significantly)" in same


def test_pytorch_init_refuses_weight_norm_before_running() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "study.py"), "--quick", "--init",
                           "pytorch", "--methods", "none", "weight"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "leave weight out of --methods" in proc.stderr
    assert "tuning" not in proc.stderr  # nothing ran
