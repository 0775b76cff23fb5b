"""Versions, rollback and fork over the real app and Redis (design.md, "Versions, rollback,
fork"): a rollback then the same events again gives the same states, version by version."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from models import ModelSpec, OnlineLearner
from service.api.app import create_app
from service.engine.versions import guard_target
from service.redis.keys import model_key
from service.settings import Settings

from .conftest import contents

SPEC = {"task": "regression", "n_features": 2, "cell": "lstm", "hidden_size": 6,
        "norm": {"method": "streaming"}, "window": 3, "seed": 7,
        "optimizer": {"name": "adam", "lr": 0.01}}


def ask(i: int) -> dict[str, Any]:
    return {k: v for k, v in event(i).items() if k != "y"}


def event(i: int) -> dict[str, Any]:
    x = [((i * 5) % 7) / 7, ((i * 3) % 4) / 4 - 0.5]
    return {"stream": "ab"[i % 2], "x": x, "y": x[0] - x[1]}


@pytest.fixture
def versioned(settings: Settings) -> Settings:
    return settings.model_copy(update={"snapshot_every": 5, "keep_snapshots": 3})


@pytest.fixture
def api(versioned: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(versioned)) as client:
        yield client


def everything(r: redis.Redis, name: str) -> dict[bytes, Any]:
    keys = [k for k in r.scan_iter(match=model_key(name, "*"), count=1000)
            if not k.endswith((b":lock", b":wanted"))]
    return {k: contents(r, k) for k in sorted(keys)}


def test_rollback_then_the_same_events_give_the_same_states(
        api: TestClient, versioned: Settings, model_name: str) -> None:
    url = f"/models/{model_name}"
    assert api.post("/models", json={"name": model_name, **SPEC}).status_code == 201
    assert [v["version"] for v in api.get(f"{url}/versions").json()] == [0]
    states = {0: api.get(f"{url}/state").content}
    for i in range(1, 13):
        assert api.post(f"{url}/learn", json=event(i)).json()["version"] == i
        states[i] = api.get(f"{url}/state").content
    listed = api.get(f"{url}/versions").json()
    assert [v["version"] for v in listed] == [10, 5, 0]
    assert listed[1]["updates"] == 5 and listed[1]["metrics"]["n"] == 5
    # a second process that holds the model at version 12, to catch up across the rollback
    with TestClient(create_app(versioned)) as other:
        assert other.post(f"{url}/predict", json=ask(0)).status_code == 200
        r = api.post(f"{url}/rollback", json={"version": 5, "event_id": "rb-1"})
        assert r.status_code == 200, r.text
        assert r.json() == {"version": 13, "restored": 5, "applied": True}
        assert api.get(f"{url}/state").content == states[5]
        assert other.get(f"{url}/state").content == states[5]  # replayed the rollback
        again = api.post(f"{url}/rollback", json={"version": 5, "event_id": "rb-1"}).json()
        assert again == {"version": 13, "restored": 5, "applied": False}
        info = api.get(url).json()
        assert info["version"] == 13 and info["updates"] == 5
        # the same events again, half through each process: the same states as before
        for i in range(6, 13):
            client = (api, other)[i % 2]
            assert client.post(f"{url}/learn", json=event(i)).json()["version"] == i + 8
            assert api.get(f"{url}/state").content == states[i], i
    # the rollback's own snapshot is a version; the oldest went
    assert [v["version"] for v in api.get(f"{url}/versions").json()] == [18, 10, 5]


def test_a_process_whose_version_is_gone_reloads_the_rollbacks_snapshot(
        versioned: Settings, model_name: str, redis_url: str) -> None:
    """Replaying a rollback loads the version it restored; when that is no longer kept (an
    operator lowered STREAMNORM_KEEP_SNAPSHOTS, say) the snapshot written with the rollback
    serves instead."""
    url = f"/models/{model_name}"
    with TestClient(create_app(versioned)) as api, \
            TestClient(create_app(versioned)) as other:
        api.post("/models", json={"name": model_name, **SPEC})
        for i in range(1, 6):
            api.post(f"{url}/learn", json=event(i))
        five = api.get(f"{url}/state").content
        other.post(f"{url}/predict", json=ask(0))  # holds version 5
        for i in range(6, 9):
            api.post(f"{url}/learn", json=event(i))
        api.post(f"{url}/rollback", json={"version": 5})  # version 9, with a snapshot
        r = redis.Redis.from_url(redis_url)
        r.delete(model_key(model_name, "versions"), model_key(model_name, "vindex"))
        assert api.get(f"{url}/versions").json() == []
        assert other.get(f"{url}/state").content == five
        assert other.post(f"{url}/learn", json=event(9)).json()["version"] == 10
        assert api.get(f"{url}/state").content == other.get(f"{url}/state").content


def test_bad_rollbacks_change_nothing(api: TestClient, redis_url: str,
                                      model_name: str) -> None:
    url = f"/models/{model_name}"
    api.post("/models", json={"name": model_name, **SPEC})
    for i in range(1, 4):
        api.post(f"{url}/learn", json=event(i))
    r = redis.Redis.from_url(redis_url)
    before = everything(r, model_name)
    for body, status, field in [({"version": 2}, 404, "version"),  # never retained
                                ({"version": -1}, 422, "version"),
                                ({"version": "0"}, 422, "version"),
                                ({"version": 1.5}, 422, "version"),
                                ({"version": 2**70}, 422, "version"),
                                ({"version": True}, 422, "version"),
                                ({}, 422, "version"),
                                ({"version": 0, "colour": 1}, 422, "colour"),
                                ({"version": 0, "event_id": "a b"}, 422, "event_id")]:
        got = api.post(f"{url}/rollback", json=body)
        assert got.status_code == status, (body, got.text)
        assert got.json()["field"] == field, (body, got.text)
    assert everything(r, model_name) == before
    assert api.post("/models/nobody/rollback", json={"version": 0}).status_code == 404
    assert api.get("/models/nobody/versions").status_code == 404


def test_fork_starts_from_the_state_with_other_optimizer_settings(
        api: TestClient, redis_url: str, model_name: str) -> None:
    url, fork = f"/models/{model_name}", f"{model_name}-f"
    api.post("/models", json={"name": model_name, **SPEC})
    for i in range(1, 8):
        api.post(f"{url}/learn", json=event(i))
    source = OnlineLearner.from_bytes(api.get(f"{url}/state").content)
    r = api.post(f"{url}/fork", json={"name": fork, "optimizer": {"lr": 0.001}})
    try:
        assert r.status_code == 201, r.text
        got = r.json()
        assert got["name"] == fork and got["version"] == 0 and got["updates"] == 7
        assert got["optimizer"]["lr"] == 0.001 and got["optimizer"]["name"] == "adam"
        want = source.with_spec(ModelSpec.model_validate({**SPEC, "name": fork,
                                                          "optimizer": {"name": "adam",
                                                                        "lr": 0.001}}))
        assert api.get(f"/models/{fork}/state").content == want.to_bytes()
        # it learns on its own, with its own learning rate; the source stays as it was
        out = api.post(f"/models/{fork}/learn", json=event(8)).json()
        assert out["prediction"] == source.predict_one(event(8)["x"], stream="a")
        want.learn_one(event(8)["x"], event(8)["y"], stream="a")
        assert api.get(f"/models/{fork}/state").content == want.to_bytes()
        assert api.get(url).json()["version"] == 7
        # from a retained version
        five = f"{model_name}-5"
        assert api.post(f"{url}/fork", json={"name": five, "version": 5}).status_code == 201
        at5 = OnlineLearner.from_bytes(api.get(f"/models/{five}/state").content)
        assert at5.updates == 5 and at5.spec.name == five
        api.delete(f"/models/{five}")
        r_ = redis.Redis.from_url(redis_url)
        before = everything(r_, model_name)
        for body, status, field in [
                ({"name": fork}, 409, "name"),
                ({"name": "x-1", "version": 3}, 404, "version"),
                ({"name": "x-1", "optimizer": {"name": "sgd"}}, 422, "optimizer.name"),
                ({"name": "x-1", "optimizer": {"lr": -1}}, 422, "optimizer.lr"),
                ({"name": ".bad"}, 422, "name"),
                ({"version": 0}, 422, "name")]:
            bad = api.post(f"{url}/fork", json=body)
            assert bad.status_code == status, (body, bad.text)
            assert bad.json()["field"] == field, (body, bad.text)
        assert api.get("/models/x-1").status_code == 404
        assert everything(r_, model_name) == before
    finally:
        api.delete(f"/models/{fork}")


def test_the_guard_rolls_back_after_rejected_updates_in_a_row(
        versioned: Settings, model_name: str) -> None:
    url = f"/models/{model_name}"
    guard = {"rejected_in_row": 3, "min_samples": 3}
    with TestClient(create_app(versioned)) as api:
        assert api.post("/models", json={"name": model_name, **SPEC,
                                         "guard": guard}).status_code == 201
        assert api.get(url).json()["guard"]["rejected_in_row"] == 3
        states = {}
        for i in range(1, 11):
            api.post(f"{url}/learn", json=event(i))
            states[i] = api.get(f"{url}/state").content
        best = min(api.get(f"{url}/versions").json()[:-1],  # 10 and 5 (0 has no loss)
                   key=lambda v: v["metrics"]["MAE"]["rolling"])
        huge = {**event(11), "y": 3e38}  # its squared error overflows: rejected
        for k in range(3):
            r = api.post(f"{url}/learn", json=huge)
            assert r.status_code == 422 and r.json()["field"] == "y"
            assert api.get(url).json()["version"] == 10 + (k == 2)
        assert api.get(f"{url}/state").content == states[best["version"]]
        text = api.get("/metrics").text
        assert f'streamnorm_rollbacks_total{{model="{model_name}",why="guard"}} 1.0' in text


def test_the_guard_rolls_back_when_the_rolling_loss_runs_away(
        versioned: Settings, model_name: str) -> None:
    url = f"/models/{model_name}"
    guard = {"loss_ratio": 20, "min_samples": 5}
    with TestClient(create_app(versioned)) as api:
        api.post("/models", json={"name": model_name, **SPEC, "guard": guard})
        states = {}
        for i in range(1, 11):
            api.post(f"{url}/learn", json=event(i))
            states[i] = api.get(f"{url}/state").content
        listed = {v["version"]: v for v in api.get(f"{url}/versions").json()}
        best = min((5, 10), key=lambda v: listed[v]["metrics"]["MAE"]["rolling"])
        for i in range(11, 15):  # bad, but under the next snapshot
            api.post(f"{url}/learn", json={**event(i), "y": 1e4})
        assert api.get(url).json()["version"] == 14
        api.post(f"{url}/learn", json={**event(15), "y": 1e4})  # snapshot at 15: too far
        info = api.get(url).json()
        assert info["version"] == 16 and info["updates"] == best
        assert api.get(f"{url}/state").content == states[best]
        # a model without a guard keeps its losses
        plain = f"{model_name}-plain"
        api.post("/models", json={"name": plain, **SPEC})
        try:
            for i in range(1, 16):
                api.post(f"/models/{plain}/learn",
                         json={**event(i), **({"y": 1e4} if i > 10 else {})})
            assert api.get(f"/models/{plain}").json()["version"] == 15
        finally:
            api.delete(f"/models/{plain}")


def test_a_guard_needs_a_trigger(api: TestClient, model_name: str) -> None:
    r = api.post("/models", json={"name": model_name, **SPEC, "guard": {"min_samples": 3}})
    assert r.status_code == 422 and r.json()["field"].startswith("guard")
    r = api.post("/models", json={"name": model_name, **SPEC, "guard": {"loss_ratio": 0.5}})
    assert r.status_code == 422 and r.json()["field"] == "guard.loss_ratio"


def test_the_guard_aims_at_the_best_rolling_loss_with_enough_samples() -> None:
    def meta(v: int, rolling: float | None, n: int, name: str = "MAE") -> str:
        return json.dumps({"version": v, "metrics": {name: {"value": rolling,
                                                             "rolling": rolling}, "n": n}})

    metas = [meta(30, 0.9, 30), meta(20, 0.2, 20), meta(10, 0.1, 4), meta(0, None, 0)]
    assert guard_target(metas, 5) == (20, 0.2)  # 10 is better but scored too few
    assert guard_target(metas, 1) == (10, 0.1)
    assert guard_target(metas, 100) == (30, None)  # none qualifies: the newest
    assert guard_target([], 1) is None
    logloss = [meta(5, 0.7, 9, "LogLoss"), meta(3, 0.3, 9, "LogLoss")]
    assert guard_target(logloss, 1) == (3, 0.3)


# -- found in review ------------------------------------------------------------------------------
def test_a_rollback_deletes_the_contexts_dropped_since_the_last_snapshot(
        versioned: Settings, model_name: str, redis_url: str) -> None:
    """A context dropped (the stream cap) after the last snapshot still has its key in Redis: the
    rollback's snapshot deletes it, so another process loads what the writer holds."""
    url = f"/models/{model_name}"
    tight = versioned.model_copy(update={"snapshot_every": 2, "max_streams": 1})
    with TestClient(create_app(tight)) as api:
        api.post("/models", json={"name": model_name, **SPEC})
        for i in (2, 4):
            api.post(f"{url}/learn", json={**event(i), "stream": "a"})  # snapshot: ctx:a
        api.post(f"{url}/learn", json={**event(5), "stream": "b"})  # the cap drops a
        assert api.post(f"{url}/rollback", json={"version": 0}).status_code == 200
        r = redis.Redis.from_url(redis_url)
        assert list(r.scan_iter(match=model_key(model_name, "ctx:*"))) == []
        writer = api.get(f"{url}/state").content
        with TestClient(create_app(tight)) as other:
            assert other.get(f"{url}/state").content == writer
            assert other.post(f"{url}/predict", json=ask(7)).json() == \
                api.post(f"{url}/predict", json=ask(7)).json()


def test_the_guard_neither_undoes_a_rollback_nor_spends_the_history(
        versioned: Settings, model_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"/models/{model_name}"
    guard = {"rejected_in_row": 1, "loss_ratio": 1.01, "min_samples": 2}
    keep4 = versioned.model_copy(update={"keep_snapshots": 4})
    with TestClient(create_app(keep4)) as api:
        api.post("/models", json={"name": model_name, **SPEC, "guard": guard})
        for i in range(1, 16):
            api.post(f"{url}/learn", json=event(i))
        kept = [v["version"] for v in api.get(f"{url}/versions").json()]
        version = api.get(url).json()["version"]
        # a rollback asked for stays, whatever the guard thinks of that version's loss
        r = api.post(f"{url}/rollback", json={"version": kept[-2]}).json()
        assert r["applied"] and api.get(url).json()["version"] == version + 1
        assert OnlineLearner.from_bytes(api.get(f"{url}/state").content).updates == kept[-2]
        # rejected updates right after: nothing learned since the rollback, nothing to undo
        for _ in range(4):
            assert api.post(f"{url}/learn", json={**event(1), "y": 3e38}).status_code == 422
        assert api.get(url).json()["version"] == version + 1
        assert [v["version"] for v in api.get(f"{url}/versions").json()] == kept
        # the guard failing to read Redis does not fail the update it follows
        from service.redis.store import Store

        async def down(*_: Any) -> Any:
            raise redis.exceptions.ConnectionError("injected")

        monkeypatch.setattr(Store, "versions", down)
        api.post(f"{url}/learn", json=event(2))
        ok = api.post(f"{url}/learn", json={**event(3), "y": 3e38})
        assert ok.status_code == 422 and ok.json()["field"] == "y"  # rejected, not a 503
        assert api.post(f"{url}/learn", json=event(4)).status_code == 200
