"""States written by earlier streamnorm code load here and predict exactly what they predicted
(design.md, "Stored state across versions"); a state of a newer schema is refused; a future
change to a norm's buffers ships as one upgrade step.

The fixtures under ``tests/data/schema-{kind}-{n}/{commit}/`` were written by the code of that
commit (``tests/data/make_state_fixtures.py``; each folder's README names the command), with
what that code predicted right after writing them (``expected.json``).
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from models import OnlineLearner, RecurrentStack, persist, upgrades
from models import state as module_state
from models.codec import Stored, decode, read_header
from models.fast import clone
from models.norms.layer import LayerNormSite
from models.persist import context_from_bytes, context_to_bytes
from models.state import StateError, module_from_bytes, module_to_bytes, read_meta
from models.upgrades import CONTEXT, LEARNER, MODULE

from .conftest import as_written, same_answer

DATA = Path(__file__).parent / "data"
ALPHA_B_WAS_0_99 = {"b1bd267", "5f11ef6", "c2b34fd", "c5d1c0d"}  # writers before issue 14
FOLDERS = sorted(p.parent for p in DATA.glob("schema-*/*/expected.json"))
EXPECTED = {f: json.loads((f / "expected.json").read_text()) for f in FOLDERS}
LEARNERS = [(f, name) for f in FOLDERS for name in EXPECTED[f]["learners"]]
MODULES = [(f, name) for f in FOLDERS for name in EXPECTED[f]["modules"]]
# writers whose learners stepped with torch.optim, per parameter (today's flat optimizer: 5f11ef6)
TORCH_OPTIM = {"b1bd267", "c2b34fd", "f977a4f", "81e3b7d", "5481e78"}
# the fast LSTM kernel (5b1a369) rounds a few outputs one ulp away from the generic loop that
# c106db3's code ran; those fixtures are compared on that loop (and to the kernel within 1e-6)


def machine_of(folder: Path) -> dict[str, str] | None:
    """The machine its writer ran on: answers are exact there (``conftest.same_answer``)."""
    return EXPECTED[folder].get("machine")  # type: ignore[no-any-return]


def _id(item: tuple[Path, str]) -> str:
    return f"{item[0].parent.name}/{item[0].name}/{item[1]}"


# -- the generator's probes, as tests/data/make_state_fixtures.py makes them -------------------
def feature(k: int) -> list[float]:
    return [round(math.sin(0.7 * k + j), 4) for j in range(3)]


def target(task: str, k: int) -> float | int:
    s = sum(feature(k))
    return round(s, 4) if task == "regression" else int(s > 0) if task == "binary" else k % 3


def predictions(learner: OnlineLearner, task: str) -> dict[str, Any]:
    probe, sequence = feature(100), [feature(101), feature(102), feature(103)]
    out: dict[str, Any] = {f"stream:{s}": learner.predict_one(probe, stream=s)
                           for s in ("a", "b", "fresh")}
    out["sequence"] = learner.predict_one(sequence=sequence)
    if task != "regression":
        for s in ("a", "b"):
            out[f"proba:{s}"] = [list(p) for p in sorted(
                learner.predict_proba_one(probe, stream=s).items())]
        out["proba:sequence"] = [list(p) for p in sorted(
            learner.predict_proba_one(sequence=sequence).items())]
    return out


def stack_outputs(net: RecurrentStack) -> dict[str, Any]:
    window = torch.tensor([feature(200 + t) for t in range(3)]).unsqueeze(1)
    result = {}
    for mode in ("eval", "train"):
        net.train(mode == "train")
        with torch.no_grad():
            y, state = net(window, None)
        result[mode] = {"out": y.tolist(), "state": [s.tolist() for s in state]}
    return result


def per_parameter_optimizer(blob: bytes) -> bool:
    """Whether the writer kept torch.optim's state per parameter (before 5f11ef6)."""
    stored = decode(blob, read_header(blob, LEARNER, persist.SCHEMA, len(blob)))
    return any(re.fullmatch(r"optim\.\d+\..+", name) for name in stored.tensors)


# -- every fixture -------------------------------------------------------------------------------
def test_every_schema_ever_written_has_fixtures() -> None:
    """Learner and context schemas 1-3 and module schemas 1-2 were written by real code; each
    has fixtures written by that code (and today's schemas by the starting commit c5d1c0d)."""
    found = {(f.parent.name, f.name) for f in FOLDERS}
    for kind, schemas in (("learner", (1, 2, 3)), ("module", (1, 2))):
        for n in schemas:
            assert any(k == f"schema-{kind}-{n}" for k, _ in found), (kind, n)
    assert ("schema-learner-3", "c5d1c0d") in found and ("schema-module-2", "c5d1c0d") in found


@pytest.mark.parametrize("item", LEARNERS, ids=_id)
def test_a_stored_learner_predicts_what_its_writer_predicted(item: tuple[Path, str]) -> None:
    folder, name = item
    expected = EXPECTED[folder]["learners"][name]
    blob = (folder / expected["learner"]).read_bytes()
    task = expected["spec"]["task"]

    learner = OnlineLearner.from_bytes(blob)
    # the stored norm parameters, not today's defaults: fixtures written while Online Norm's
    # alpha_b defaulted to 0.99 (1 since issue 14) keep their backward control
    stored = learner.spec.norm.model_dump()
    assert {k: stored[k] for k in expected["spec"]["norm"]} == expected["spec"]["norm"]
    if stored["method"] == "online" and folder.name in ALPHA_B_WAS_0_99:
        assert stored["alpha_b"] == 0.99
    with as_written(folder.name):  # the writer's arithmetic: exact on its kind of machine
        assert same_answer(predictions(learner, task), expected["predictions"],
                           machine_of(folder))
    # every kernel of today: the same model, to float32 rounding
    assert same_answer(predictions(learner, task), expected["predictions"], None)
    assert (learner.updates, learner.samples) == (expected["updates"], expected["samples"])
    assert learner.metrics.to_dict() == expected["metrics"]
    assert learner.streams == ["a", "b"]

    again = OnlineLearner(learner.spec)  # the stored spec: its writer's defaults, not today's
    again.load_bytes(blob)  # the in-place loader upgrades too
    assert again.to_bytes() == learner.to_bytes()
    # what it writes is today's schema, and reads back as it is
    assert OnlineLearner.from_bytes(learner.to_bytes()).to_bytes() == learner.to_bytes()

    learner.contexts.clear()  # each stream's context on its own, as the service stores them
    for stream, file in expected["contexts"].items():
        got, context = context_from_bytes(learner, (folder / file).read_bytes())
        assert got == stream
        learner.contexts[got] = context
    with as_written(folder.name):
        assert same_answer(predictions(learner, task), expected["predictions"],
                           machine_of(folder))


@pytest.mark.parametrize("item", LEARNERS, ids=_id)
def test_a_stored_learner_carries_on_learning(item: tuple[Path, str]) -> None:
    """The next update after loading: exactly what the writer's next update did, for writers
    with today's flat optimizer (5f11ef6 on). Before, torch.optim updated and clipped each
    parameter on its own (rounding differently) and skipped parameters without a gradient (a
    lower step count, merged on upgrade: ``optimizer_state_as_flat_vectors``): close (1 %),
    not equal."""
    folder, name = item
    expected = EXPECTED[folder]["learners"][name]
    blob = (folder / expected["learner"]).read_bytes()
    task = expected["spec"]["task"]
    learner = OnlineLearner.from_bytes(blob)
    result = learner.learn_one(feature(300), target(task, 300), stream="a")
    continued = expected["continued"]
    if folder.name not in TORCH_OPTIM:
        assert same_answer([result.prediction, result.loss],
                           [continued["prediction"], continued["loss"]], machine_of(folder))
        assert same_answer(predictions(learner, task), continued["predictions"],
                           machine_of(folder))
        return
    assert result.prediction == pytest.approx(continued["prediction"], rel=1e-6)
    for key, value in predictions(learner, task).items():
        torch.testing.assert_close(torch.tensor(value, dtype=torch.float64),
                                   torch.tensor(continued["predictions"][key],
                                                dtype=torch.float64), rtol=1e-2, atol=0)


@pytest.mark.parametrize("item", [i for i in LEARNERS if per_parameter_optimizer(
    (i[0] / EXPECTED[i[0]]["learners"][i[1]]["learner"]).read_bytes())], ids=_id)
def test_per_parameter_optimizer_state_lands_on_its_parameter(item: tuple[Path, str]) -> None:
    """``optim.{i}.{key}`` was indexed by the writer's parameter order: it is today's, and each
    parameter's moments are its slice of the flat vectors; the step count is the updates'."""
    folder, name = item
    expected = EXPECTED[folder]["learners"][name]
    blob = (folder / expected["learner"]).read_bytes()
    learner = OnlineLearner.from_bytes(blob)
    assert [n for n, _ in learner.net.named_parameters()] == expected["param_order"]
    stored = decode(blob, read_header(blob, LEARNER, persist.SCHEMA, len(blob))).tensors
    offset = 0
    for i, (_, p) in enumerate(learner.net.named_parameters()):
        for key, flat in learner.optimizer.state.items():
            if key != "step":
                assert torch.equal(flat[offset:offset + p.numel()].view(p.shape),
                                   stored[f"optim.{i}.{key}"])
        offset += p.numel()
    if "step" in learner.optimizer.state:
        assert float(learner.optimizer.state["step"]) == expected["updates"]


@pytest.mark.parametrize("item", MODULES, ids=_id)
def test_a_stored_module_state_computes_what_its_writer_computed(item: tuple[Path, str]
                                                                 ) -> None:
    folder, name = item
    expected = EXPECTED[folder]["modules"][name]
    blob = (folder / expected["module"]).read_bytes()
    net = RecurrentStack(*expected["args"])
    assert module_from_bytes(net, blob) == expected["meta"] == read_meta(blob)
    with as_written(folder.name):  # the writer's arithmetic: exact on its kind of machine
        assert same_answer(stack_outputs(net), expected["outputs"], machine_of(folder))
    module_from_bytes(net, blob)
    kernel = stack_outputs(net)  # every kernel of today: the same model, to float32 rounding
    for mode in ("eval", "train"):
        torch.testing.assert_close(torch.tensor(kernel[mode]["out"]),
                                   torch.tensor(expected["outputs"][mode]["out"]),
                                   rtol=1e-5, atol=1e-5)
    again = RecurrentStack(*expected["args"])
    module_from_bytes(again, module_to_bytes(net, expected["meta"]))
    for key, value in net.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])


# -- newer schemas, unknown ones ------------------------------------------------------------------
def with_header(blob: bytes, **changes: Any) -> bytes:
    """``blob`` with fields of its streamnorm header replaced (tensors untouched)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    info = json.loads(header["__metadata__"]["streamnorm"])
    info.update(changes)
    header["__metadata__"]["streamnorm"] = json.dumps(info)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def small_learner(method: str = "layer") -> OnlineLearner:
    learner = OnlineLearner({"name": "s", "task": "regression", "n_features": 3,
                             "hidden_size": 4, "norm": {"method": method}, "window": 3})
    for k in range(5):
        learner.learn_one(feature(k), target("regression", k), stream="a")
    return learner


def test_a_state_of_a_newer_schema_is_refused_saying_so() -> None:
    learner = small_learner()
    newer = with_header(learner.to_bytes(), schema=str(persist.SCHEMA + 1))
    message = (f"written by a newer streamnorm \\(schema {persist.SCHEMA + 1}\\); this one "
               f"reads schemas up to {persist.SCHEMA}")
    with pytest.raises(StateError, match=message):
        OnlineLearner.from_bytes(newer)
    before = learner.to_bytes()
    with pytest.raises(StateError, match=message):
        learner.load_bytes(newer)
    assert learner.to_bytes() == before
    with pytest.raises(StateError, match="newer streamnorm"):
        context_from_bytes(learner, with_header(context_to_bytes(learner, "a"),
                                                schema=str(persist.SCHEMA + 1)))
    net = RecurrentStack("gru", 3, 4, 1, "layer")
    with pytest.raises(StateError, match=f"newer streamnorm \\(schema "
                                         f"{module_state.SCHEMA_VERSION + 1}\\)"):
        module_from_bytes(net, with_header(module_to_bytes(net),
                                           schema=str(module_state.SCHEMA_VERSION + 1)))


@pytest.mark.parametrize("schema", ["0", "x", "", "-1", "²"])
def test_a_state_of_no_known_schema_is_a_state_error(schema: str) -> None:
    blob = with_header(small_learner().to_bytes(), schema=schema)
    with pytest.raises(StateError):
        OnlineLearner.from_bytes(blob)


# -- a future change to a norm's buffers: one step ------------------------------------------------
SEEN = 7  # what the made-up step fills the new buffer with (a fresh site would hold 0)


def layer_norm_sites_count_calls(state: Stored) -> Stored:
    """Made-up schema N+1: every Layer Norm site gains an int64 buffer ``seen``."""
    if state.meta["spec"]["norm"]["method"] != "layer":
        return state
    tensors = dict(state.tensors)
    for name in state.tensors:
        site = re.fullmatch(r"(model\.stack\.layers\.\d+\.n[xhc])\.weight", name)
        if site:
            tensors[f"{site[1]}.seen"] = torch.tensor(SEEN)
    return replace(state, tensors=tensors)


def test_a_buffer_added_to_a_norm_ships_as_one_upgrade_step(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Written today, loaded by a made-up next version whose Layer Norm sites hold one more
    buffer: the real loaders (``from_bytes``, ``load_bytes``, ``context_from_bytes``) run the
    one step registered for it, and nothing else changes."""
    learner = small_learner("layer")
    blob, context = learner.to_bytes(), context_to_bytes(learner, "a")
    expected = predictions(learner, "regression")
    calls: list[int] = []

    def step(state: Stored) -> Stored:
        calls.append(state.schema)
        return layer_norm_sites_count_calls(state)

    def init(self: LayerNormSite, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

    original = LayerNormSite.__init__
    monkeypatch.setattr(LayerNormSite, "__init__", init)
    monkeypatch.setattr(persist, "SCHEMA", persist.SCHEMA + 1)
    monkeypatch.setattr(clone, "_templates", OrderedDict())  # no template of today's layout
    with pytest.raises(StateError, match=f"no upgrade of streamnorm.learner states from "
                                         f"schema {persist.SCHEMA - 1}"):
        OnlineLearner.from_bytes(blob)
    monkeypatch.setitem(upgrades._STEPS, (LEARNER, persist.SCHEMA - 1), [step])
    monkeypatch.setitem(upgrades._STEPS, (CONTEXT, persist.SCHEMA - 1), [lambda s: s])

    loaded = OnlineLearner.from_bytes(blob)
    assert calls == [persist.SCHEMA - 1]
    sites = [m for m in loaded.net.modules() if isinstance(m, LayerNormSite)]
    assert sites and all(int(m.seen) == SEEN for m in sites)
    assert predictions(loaded, "regression") == expected
    fresh = OnlineLearner(learner.spec)
    assert all(int(m.seen) == 0 for m in fresh.net.modules() if isinstance(m, LayerNormSite))
    fresh.load_bytes(blob)
    assert fresh.to_bytes() == loaded.to_bytes()
    written = loaded.to_bytes()  # in the new schema: loads without the step
    assert read_header(written, LEARNER, persist.SCHEMA, len(written))["schema"] == str(
        persist.SCHEMA)
    assert OnlineLearner.from_bytes(written).to_bytes() == written and len(calls) == 2
    loaded.contexts.clear()
    stream, ctx = context_from_bytes(loaded, context)
    loaded.contexts[stream] = ctx
    assert predictions(loaded, "regression") == expected


def test_a_module_state_upgrade_runs_its_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module loader runs the chain too: a made-up step of the current module schema."""
    net = RecurrentStack("lstm", 3, 4, 1, "layer")
    blob = module_to_bytes(net, {"k": 1})
    monkeypatch.setattr(module_state, "SCHEMA_VERSION", module_state.SCHEMA_VERSION + 1)
    monkeypatch.setitem(upgrades._STEPS, (MODULE, module_state.SCHEMA_VERSION - 1),
                        [lambda s: replace(s, meta={**s.meta, "upgraded": True})])
    assert module_from_bytes(RecurrentStack("lstm", 3, 4, 1, "layer"), blob) == {
        "k": 1, "upgraded": True}
