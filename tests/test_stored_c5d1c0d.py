"""A model stored by commit c5d1c0d is served by this code, answering exactly as that code did.

The fixtures in ``tests/data/c5d1c0d/`` were written by c5d1c0d's own code (its README says
how): a learner per cell × normalization method (``OnlineLearner.to_bytes``, one stream context
on its own, the answers that code gave), and three models as a real ``streamnorm serve`` left
them in Redis (a snapshot every 10 updates, contexts under their own keys, a log tail after the
last snapshot). Only stable, public API is used here — ``models`` (``OnlineLearner``,
``ModelSpec``, ``StateError``), the app factory and its settings, HTTP, and Redis keys spelled
out — so these tests keep working while the code behind them moves; the one exception, loading a
single stream context, imports ``models.persist`` inside its test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from fastapi.testclient import TestClient

from models import ModelSpec, OnlineLearner, StateError
from models.fast import switch
from service.api.app import create_app
from service.settings import Settings

from .conftest import as_written, machine, same_answer
from .test_upgrade import restore

DATA = Path(__file__).parent / "data" / "c5d1c0d"
_LEARNERS = json.loads((DATA / "learners.json").read_text())
LEARNERS: dict[str, Any] = _LEARNERS["combos"]
RECORDED_ON: dict[str, str] = _LEARNERS["machine"]  # answers are exact on this machine kind
SERVICE: dict[str, Any] = json.loads((DATA / "service.json").read_text())
NAMES: list[str] = list(SERVICE["specs"])
# the stored streams last moved when the fixture was written: without a long idle expiry they
# would restart from a zero state once the fixture is a week old (STREAMNORM_STREAM_TTL_S)
CENTURY_S = 100 * 365 * 86_400.0


@pytest.fixture(autouse=True)
def _as_written() -> Iterator[None]:
    """Every test here runs the writer's kernels (``as_written``): its answers are exact on its
    kind of machine; ``test_todays_kernels_answer_as_it_did`` checks today's to float rounding."""
    with as_written("c5d1c0d"):
        yield


def ask(learner: OnlineLearner, probe: dict[str, Any]) -> dict[str, Any]:
    """What the fixture recorded for ``probe``: predict_one, and predict_proba_one for
    classifiers (labels as JSON keys)."""
    kwargs = dict(probe)
    x = kwargs.pop("x", None)
    out: dict[str, Any] = {"predict_one": learner.predict_one(x, **kwargs)}
    if learner.spec.task != "regression":
        proba = learner.predict_proba_one(x, **kwargs)
        out["predict_proba_one"] = {str(k): v for k, v in proba.items()}
    return out


def learn(learner: OnlineLearner, body: dict[str, Any]) -> Any:
    """A learn body (stream mode, sequence, or mini-batch) applied to a local learner."""
    if "batch" in body:
        return learner.learn_many([b["sequence"] for b in body["batch"]],
                                  [b["y"] for b in body["batch"]])
    if "sequences" in body:
        return learner.learn_many(body["sequences"], body["ys"])
    if "sequence" in body:
        return learner.learn_one(sequence=body["sequence"], y=body["y"])
    return learner.learn_one(body["x"], body["y"], stream=body["stream"])


def recorded_state(learner: OnlineLearner, combo: dict[str, Any]) -> None:
    assert learner.updates == combo["updates"]
    assert learner.samples == combo["samples"]
    assert learner.metrics.report() == combo["metrics"]
    for probe, answer in zip(combo["probes"], combo["answers"], strict=True):
        assert same_answer(ask(learner, probe), answer, RECORDED_ON), probe


# -- (a) learners stored by c5d1c0d --------------------------------------------------------------
def test_every_cell_and_method_is_stored() -> None:
    assert len(LEARNERS) == 24
    assert {(c["spec"]["cell"], c["spec"]["norm"]["method"]) for c in LEARNERS.values()} == {
        (cell, method) for cell in ("lstm", "gru", "rnn")
        for method in ("streaming", "layer", "online", "recurrent_batch", "batch_rnn", "weight",
                       "cosine", "none")}
    assert {c["spec"]["task"] for c in LEARNERS.values()} == {"regression", "binary",
                                                               "multiclass"}


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_a_stored_learner_loads_and_answers_exactly_as_it_did(name: str) -> None:
    combo = LEARNERS[name]
    spec = ModelSpec.model_validate(combo["spec"])
    learner = OnlineLearner.from_bytes((DATA / f"{name}.learner").read_bytes())
    assert learner.spec == spec
    assert learner.streams == combo["streams"]
    recorded_state(learner, combo)
    # saved again by this code and loaded again: the same learner
    again = OnlineLearner.from_bytes(learner.to_bytes())
    recorded_state(again, combo)
    into = OnlineLearner(spec)  # and loaded into an existing learner of the spec
    into.load_bytes(learner.to_bytes())
    recorded_state(into, combo)
    # both go on learning alike (optimizer moments and statistics came through)
    for body in combo["events"][:3] + combo["events"][-2:]:
        assert learn(learner, body) == learn(again, body)
    for probe in combo["probes"]:
        assert ask(learner, probe) == ask(again, probe)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_todays_kernels_answer_as_it_did(name: str) -> None:
    """With every kernel of today (the numpy windows sum in another order than the writer's
    generic path): the recorded answers to float32 rounding (``same_answer`` off its machine)."""
    combo = LEARNERS[name]
    learner = OnlineLearner.from_bytes((DATA / f"{name}.learner").read_bytes())
    with switch.only(*switch.KERNELS):
        for probe, answer in zip(combo["probes"], combo["answers"], strict=True):
            assert same_answer(ask(learner, probe), answer, None), probe


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_a_stored_stream_context_loads_into_its_learner(name: str) -> None:
    # no public loader of a single context on the learner: the service's own way, imported
    # here so that only this test breaks if it moves
    from models.persist import context_from_bytes

    combo = LEARNERS[name]
    whole = OnlineLearner.from_bytes((DATA / f"{name}.learner").read_bytes())
    learner = OnlineLearner.from_bytes(whole.to_bytes(contexts=False))
    assert learner.streams == []
    stream, context = context_from_bytes(learner, (DATA / f"{name}.ctx").read_bytes())
    assert stream == combo["ctx_stream"]
    learner.contexts[stream] = context
    assert learner.streams == [stream]
    probes = [(p, a) for p, a in zip(combo["probes"], combo["answers"], strict=True)
              if p.get("stream") == stream]
    assert probes
    for probe, answer in probes:
        assert same_answer(ask(learner, probe), answer, RECORDED_ON)


# -- (b) the service's Redis as a real serve of c5d1c0d left it ----------------------------------
def forget(r: redis.Redis) -> None:
    for name in NAMES:
        keys = list(r.scan_iter(match=f"sn:{{{name}}}:*"))
        if keys:
            r.delete(*keys)


@pytest.fixture
def stored(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    forget(r)
    restore(r, SERVICE["keys"])
    yield r
    forget(r)
    r.close()


def new_events(name: str) -> list[dict[str, Any]]:
    """More learns after the stored ones (HTTP, event ids of their own)."""
    spec = SERVICE["specs"][name]
    out = []
    for k in range(4):
        x = [0.1 * k - 0.2, 0.3 - 0.05 * k, 0.25 * (k % 3)]
        y: float | int = (round(0.4 - 0.1 * k, 6) if spec["task"] == "regression"
                          else k % 2 if spec["task"] == "binary" else k % 3)
        body: dict[str, Any] = {"stream": ["s1", "s0", "fresh", "s2"][k], "y": y,
                                "event_id": f"after-c5d1c0d-{k}"}
        body["x"] = dict(zip(spec["features"], x, strict=True)) if spec.get("features") else x
        out.append(body)
    return out


def subset(body: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """``body`` on the recorded keys (a later version may add fields to a reply)."""
    return {k: body.get(k) for k in recorded}


def test_the_stored_service_state_is_the_one_to_test(stored: redis.Redis) -> None:
    """A log tail after the snapshot, contexts under their own keys, ids remembered."""
    for name in NAMES:
        meta = {k.decode(): v.decode() for k, v in stored.hgetall(f"sn:{{{name}}}:meta").items()}
        version = int(meta["version"])
        assert version == len(SERVICE["applied"][name])
        assert 0 < int(meta["snapshot_version"]) < version
        assert stored.xlen(f"sn:{{{name}}}:log") >= version - int(meta["snapshot_version"])
        streams = sorted(m.decode() for m in stored.zrange(f"sn:{{{name}}}:streams", 0, -1))
        assert streams == ["s0", "s1", "s2"]
        assert all(stored.exists(f"sn:{{{name}}}:ctx:{s}") for s in streams)
        for v, body in enumerate(SERVICE["applied"][name], 1):  # each id: the version it made
            if "event_id" in body:
                assert stored.zscore(f"sn:{{{name}}}:seen", body["event_id"]) == v


def test_a_model_stored_by_c5d1c0d_serves_and_learns_on(stored: redis.Redis,
                                                       redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, api_keys=(), read_keys=(),
                        snapshot_every=SERVICE["snapshot_every"], stream_ttl_s=CENTURY_S)
    replies: dict[str, list[dict[str, Any]]] = {}
    states: dict[str, bytes] = {}
    served: dict[str, ModelSpec] = {}
    with TestClient(create_app(settings)) as client:
        for name in NAMES:
            record = SERVICE["records"][name]
            info = client.get(f"/models/{name}")
            assert info.status_code == 200, info.text
            assert subset(info.json(), record["model"]) == record["model"]
            # the spec as stored, with its writer's defaults (Online Norm's alpha_b was 0.99)
            served[name] = ModelSpec.model_validate(
                {k: v for k, v in info.json().items() if k in ModelSpec.model_fields})
            assert served[name].norm.method != "online" or served[name].norm.alpha_b == 0.99
            metrics = client.get(f"/models/{name}/metrics").json()
            assert subset(metrics, record["metrics"]) == record["metrics"]
            for probe, answer in zip(record["probes"], record["answers"], strict=True):
                reply = client.post(f"/models/{name}/predict", json=probe)
                assert reply.status_code == 200, reply.text
                assert same_answer(subset(reply.json(), answer), answer,
                                   SERVICE["machine"]), (name, probe)
        # a repeat of an event c5d1c0d applied (over HTTP or from the stream): not applied again
        for repeat in SERVICE["repeats"]:
            reply = client.post(f"/models/{repeat['model']}/learn", json=repeat["body"])
            assert reply.status_code == 200, reply.text
            assert reply.json()["applied"] is False
            assert reply.json()["version"] == repeat["reply"]["version"]
        for name in NAMES:
            version = SERVICE["records"][name]["model"]["version"]
            replies[name] = []
            for body in new_events(name):
                reply = client.post(f"/models/{name}/learn", json=body)
                assert reply.status_code == 200, reply.text
                version += 1
                assert reply.json()["applied"] is True
                assert reply.json()["version"] == version
                replies[name].append(reply.json())
            state = client.get(f"/models/{name}/state")
            assert state.status_code == 200
            assert int(state.headers["x-model-version"]) == version
            states[name] = state.content
    for name in NAMES:
        # the same learner as one trained here from scratch on the same events, in the order
        # they were applied (the fixture recorded it; its writer checked it against the state)
        local = OnlineLearner(served[name])
        for body in SERVICE["applied"][name]:
            learn(local, body)
        here = SERVICE["machine"] == machine()  # else the last bits may differ: same_answer
        for body, reply in zip(new_events(name), replies[name], strict=True):
            result = learn(local, body)
            assert same_answer(reply["prediction"], result.prediction, SERVICE["machine"])
            assert same_answer(reply["loss"], result.loss, SERVICE["machine"])
        if here:
            assert states[name] == local.to_bytes(), name
        else:
            assert same_learner(OnlineLearner.from_bytes(states[name]), local), name
        assert OnlineLearner.from_bytes(states[name]).to_bytes() == states[name]
    # this code snapshotted the models on its way out, over c5d1c0d's layout: it loads them
    with TestClient(create_app(settings)) as client:
        for name in NAMES:
            assert client.get(f"/models/{name}/state").content == states[name]


def same_learner(a: OnlineLearner, b: OnlineLearner) -> bool:
    """Equal but for the last bits of the floats (two kinds of processor)."""
    return a.spec == b.spec and a.updates == b.updates and a.streams == b.streams and all(
        torch.allclose(a.flat.flats[k], b.flat.flats[k], rtol=1e-4, atol=1e-6)
        for k in a.flat.flats)


# -- (c) a state from a newer version ------------------------------------------------------------
def with_schema(blob: bytes, bump: int) -> bytes:
    """``blob`` with the schema number in its header raised by ``bump`` (the safetensors
    header: an 8-byte little-endian length, then JSON whose ``__metadata__.streamnorm`` is JSON
    text holding ``schema``); the tensor data is untouched."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    info = json.loads(header["__metadata__"]["streamnorm"])
    schema = info["schema"]
    info["schema"] = type(schema)(int(schema) + bump)
    header["__metadata__"]["streamnorm"] = json.dumps(info)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def test_rewriting_the_header_alone_changes_nothing() -> None:
    """The rewrite that (c) uses is itself harmless: only the schema number can be refused."""
    name = "lstm-streaming"
    learner = OnlineLearner.from_bytes(with_schema((DATA / f"{name}.learner").read_bytes(), 0))
    recorded_state(learner, LEARNERS[name])


def test_a_state_from_a_newer_version_is_refused_saying_so() -> None:
    name = "lstm-streaming"
    combo = LEARNERS[name]
    newer = with_schema((DATA / f"{name}.learner").read_bytes(), 1000)
    with pytest.raises(StateError, match="newer"):
        OnlineLearner.from_bytes(newer)
    learner = OnlineLearner.from_bytes((DATA / f"{name}.learner").read_bytes())
    with pytest.raises(StateError, match="newer"):
        learner.load_bytes(newer)
    recorded_state(learner, combo)  # unchanged
