"""The HTTP service over a real Redis: models, predict, learn, idempotency, state, metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from models import ModelSpec, OnlineLearner
from models.persist import context_to_bytes
from service.redis.keys import model_key
from service.settings import Settings

from .conftest import contents


def make(client: TestClient, name: str, **kw: Any) -> dict[str, Any]:
    body = {"name": name, "task": "regression", "n_features": 3, "cell": "lstm",
            "hidden_size": 8, "norm": {"method": "layer"}, "window": 4, "seed": 1, **kw}
    r = client.post("/models", json=body)
    assert r.status_code == 201, r.text
    return body


def xs(n: int) -> list[list[float]]:
    return [[0.1 * i, (-1) ** i * 0.2, 0.05 * (i % 5)] for i in range(n)]


def test_create_get_list_delete(client: TestClient, model_name: str) -> None:
    make(client, model_name)
    got = client.get(f"/models/{model_name}").json()
    assert got["version"] == 0 and got["updates"] == 0 and got["norm"]["method"] == "layer"
    assert model_name in [m["name"] for m in client.get("/models").json()]
    assert client.post("/models", json={"name": model_name, "task": "regression",
                                        "n_features": 3}).status_code == 409
    assert client.delete(f"/models/{model_name}").status_code == 204
    assert client.get(f"/models/{model_name}").status_code == 404
    assert client.delete(f"/models/{model_name}").status_code == 404


def test_learn_matches_an_in_process_learner_bit_for_bit(client: TestClient,
                                                         model_name: str) -> None:
    spec = make(client, model_name)
    local = OnlineLearner(ModelSpec.model_validate(spec))
    for i, x in enumerate(xs(12)):
        stream = "a" if i % 3 else "b"
        p = client.post(f"/models/{model_name}/predict", json={"stream": stream, "x": x}).json()
        r = client.post(f"/models/{model_name}/learn",
                        json={"stream": stream, "x": x, "y": sum(x)}).json()
        want = local.learn_one(x, sum(x), stream=stream)
        assert p["prediction"] == r["prediction"] == want.prediction
        assert r["loss"] == want.loss and r["version"] == i + 1 and r["applied"]
    state = client.get(f"/models/{model_name}/state")
    assert state.headers["x-model-version"] == "12"
    assert state.content == local.to_bytes()
    info = client.get(f"/models/{model_name}/metrics").json()
    assert info["version"] == 12 and info["n"] == 12
    text = client.get("/metrics").text  # 12 learns, 12 predicts, 1 export: loaded once
    assert f'streamnorm_state_loads_total{{model="{model_name}"}} 1.0' in text
    assert f'streamnorm_updates_applied_total{{model="{model_name}"}} 12.0' in text
    assert info["MAE"] == local.metrics.report()["MAE"]


def test_a_repeated_event_id_is_not_applied_twice(client: TestClient, model_name: str) -> None:
    make(client, model_name)
    body = {"stream": "s", "x": [1.0, 2.0, 3.0], "y": 0.5, "event_id": "e-1"}
    first = client.post(f"/models/{model_name}/learn", json=body).json()
    again = client.post(f"/models/{model_name}/learn", json=body).json()
    assert first["applied"] and first["version"] == 1
    assert again == {"prediction": None, "loss": None, "version": 1, "applied": False,
                     "proba": None}
    assert client.get(f"/models/{model_name}").json()["updates"] == 1


def test_classifier_sequence_and_batch_modes(client: TestClient, model_name: str) -> None:
    make(client, model_name, task="multiclass", n_classes=3, norm="streaming")
    seq = xs(5)
    p = client.post(f"/models/{model_name}/predict", json={"sequence": seq}).json()
    assert set(p["proba"]) == {"0", "1", "2"} and abs(sum(p["proba"].values()) - 1) < 1e-9
    assert p["prediction"] == max(range(3), key=lambda k: p["proba"][str(k)])
    r = client.post(f"/models/{model_name}/learn", json={"sequence": seq, "y": 2}).json()
    assert r["prediction"] == p["prediction"] and r["version"] == 1
    b = client.post(f"/models/{model_name}/learn", json={
        "batch": [{"sequence": seq, "y": 1}, {"sequence": seq[:3], "y": 0}]}).json()
    assert b["applied"] and b["version"] == 2
    got = client.get(f"/models/{model_name}").json()
    assert got["updates"] == 2 and got["samples"] == 3


def test_snapshots_trim_the_log_and_a_new_process_replays_to_the_same_state(
        redis_url: str, model_name: str, client: TestClient) -> None:
    settings = Settings(redis_url=redis_url, snapshot_every=5)
    from service.api.app import create_app

    r = redis.Redis.from_url(redis_url)
    with TestClient(create_app(settings)) as writer:
        make(writer, model_name)
        for i, x in enumerate(xs(13)):
            writer.post(f"/models/{model_name}/learn", json={"stream": "s", "x": x, "y": i})
        want = writer.get(f"/models/{model_name}/state").content
        meta = r.hgetall(model_key(model_name, "meta"))
        assert int(meta[b"snapshot_version"]) == 10 and int(meta[b"version"]) == 13
        # the log keeps the snapshot_every entries up to the snapshot, then what followed it
        assert [e[0] for e in r.xrange(model_key(model_name, "log"))] == [
            f"{v}-0".encode() for v in range(6, 14)]
        # the state holds no context; the stream's own key holds its context as of the
        # snapshot (an independent learner fed the first 10 events says what it is)
        at_snapshot = OnlineLearner.from_bytes(r.get(model_key(model_name, "state")))
        assert at_snapshot.updates == 10 and at_snapshot.streams == []
        local = OnlineLearner(at_snapshot.spec)
        for i, x in enumerate(xs(10)):
            local.learn_one(x, i, stream="s")
        assert r.get(model_key(model_name, "ctx:s")) == context_to_bytes(local, "s")
        assert local.to_bytes(contexts=False) == r.get(model_key(model_name, "state"))
        assert r.zrange(model_key(model_name, "streams"), 0, -1) == [b"s"]
        # another process (empty cache): loads the snapshot at 10 and replays 11..13
        with TestClient(create_app(settings)) as reader:
            assert reader.get(f"/models/{model_name}/state").content == want
            text = reader.get("/metrics").text
        assert f'streamnorm_replayed_updates_total{{model="{model_name}"}} 3.0' in text
    # on the way out a process snapshots what is ahead of the snapshot: the next replays nothing
    assert int(r.hget(model_key(model_name, "meta"), "snapshot_version")) == 13
    final = OnlineLearner.from_bytes(want)
    assert r.get(model_key(model_name, "state")) == final.to_bytes(contexts=False)
    assert r.get(model_key(model_name, "ctx:s")) == context_to_bytes(final, "s")
    assert json.loads(r.get(model_key(model_name, "spec")))["name"] == model_name


def test_redis_going_down_answers_503_quickly_and_recovers(tmp_path: Path) -> None:
    """Redis stops mid-service: requests get 503 within the timeouts (no hang, no 500);
    once it is back on the same port with its AOF, the model carries on."""
    from service.api.app import create_app
    from service.redis.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path).start()
    port = server.port
    try:
        settings = Settings(redis_url=server.url, redis_timeout_s=0.5, lock_wait_s=2.0)
        with TestClient(create_app(settings)) as client:
            make(client, "outage")
            body = {"stream": "s", "x": [0.1, 0.2, 0.3], "y": 1.0}
            assert client.post("/models/outage/learn", json=body).status_code == 200
            # the lease is handed back 5 ms after the learn; stopped before that, Redis would
            # keep it (AOF) and the learn after the restart wait for it to expire
            deadline = time.monotonic() + 2.0
            while redis.Redis.from_url(server.url).exists(model_key("outage", "lock")):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            server.stop()
            for method, path, payload in [("post", "/models/outage/learn", body),
                                          ("post", "/models/outage/predict", {"x": [0, 0, 0]}),
                                          ("get", "/models/outage", None)]:
                start = time.monotonic()
                r = client.request(method.upper(), path, json=payload)
                assert r.status_code == 503, r.text
                assert time.monotonic() - start < 5.0
            assert client.get("/readyz").status_code == 503
            server = EmbeddedRedis(tmp_path, port=port).start()
            r = client.post("/models/outage/learn", json=body)
            assert r.status_code == 200 and r.json()["version"] == 2, r.text
    finally:
        server.stop()


def test_a_model_re_created_elsewhere_is_validated_against_its_new_spec(
        redis_url: str, model_name: str, client: TestClient) -> None:
    from service.api.app import create_app

    make(client, model_name)
    with TestClient(create_app(Settings(redis_url=redis_url))) as other:
        body = {"stream": "s", "x": [0.1, 0.2, 0.3], "y": 1.0}
        assert other.post(f"/models/{model_name}/learn", json=body).status_code == 200
        assert client.delete(f"/models/{model_name}").status_code == 204
        make(client, model_name, n_features=4)  # the other app still caches 3 features
        r = other.post(f"/models/{model_name}/learn", json={**body, "x": [0.1, 0.2, 0.3, 0.4]})
        assert r.status_code == 200 and r.json()["version"] == 1, r.text


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")
def test_a_non_finite_prediction_is_a_422_not_invalid_json(client: TestClient,
                                                          model_name: str) -> None:
    """Finite float32 inputs this large overflow Streaming Norm's moments: the reply must not
    be ``{"prediction": NaN}`` (not JSON) but a 422 naming the input."""
    make(client, model_name, norm="streaming")
    r = client.post(f"/models/{model_name}/predict", json={"x": [3e38, 3e38, -3e38]})
    assert r.status_code == 422 and r.json()["field"] == "x", r.text


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")
def test_a_rejected_update_is_a_422_that_changes_nothing_and_is_counted(
        client: TestClient, model_name: str, redis_url: str) -> None:
    """An event whose update would go non-finite (these finite float32 inputs overflow
    Streaming Norm's raw moments) is rolled back: 422, the stored model and its version stay as
    they were, the next good event is version 2, and the model's rejection counter shows it."""
    make(client, model_name, norm="streaming")
    assert client.post(f"/models/{model_name}/learn",
                       json={"stream": "s", "x": xs(1)[0], "y": 0.5}).status_code == 200
    r = redis.Redis.from_url(redis_url)
    before = {part: contents(r, model_key(model_name, part)) for part in ("meta", "state", "log")}
    state = client.get(f"/models/{model_name}/state").content
    bad = client.post(f"/models/{model_name}/learn",
                      json={"stream": "s", "x": [3e38, -3e38, 3e38], "y": 1.0})
    assert bad.status_code == 422 and "update rejected" in bad.json()["detail"], bad.text
    assert {part: contents(r, model_key(model_name, part)) for part in before} == before
    assert client.get(f"/models/{model_name}/state").content == state
    text = client.get("/metrics").text
    assert f'streamnorm_updates_rejected_total{{model="{model_name}"}} 1.0' in text
    good = client.post(f"/models/{model_name}/learn",
                       json={"stream": "s", "x": xs(2)[1], "y": 0.5})
    assert good.status_code == 200 and good.json()["version"] == 2, good.text
