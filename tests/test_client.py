"""``service.client`` against a real server process: every call, typed errors naming the
field, retries through a Redis outage without applying an update twice; the async client;
``service.remote``: a hosted model driven by River's ``progressive_val_score``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from models import ModelSpec, OnlineLearner
from service.client import (
    AsyncClient,
    Client,
    Conflict,
    Invalid,
    NotFound,
    ServiceError,
    Unavailable,
)
from service.redis.embedded import EmbeddedRedis
from service.redis.keys import model_key

from .test_processes import Server

SPEC = {"task": "regression", "n_features": 2, "cell": "gru", "hidden_size": 6, "window": 3,
        "norm": "layer", "seed": 1}


@pytest.fixture(scope="module")
def server(redis_url: str) -> Iterator[Server]:
    started = Server(redis_url)
    yield started
    started.kill(signal.SIGTERM)


@pytest.fixture
def sn(server: Server) -> Iterator[Client]:
    with Client(server.url) as client:
        yield client


def fresh() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


def test_every_model_call(sn: Client) -> None:
    name = fresh()
    try:
        created = sn.create_model({"name": name, **SPEC})
        assert created["version"] == 0 and sn.create_model({"name": name, **SPEC})
        assert sn.get_model(name)["hidden_size"] == 6
        assert name in [m["name"] for m in sn.list_models()]
        assert "layer" in [n["method"] for n in sn.norms()]
        first = sn.learn(name, x=[0.1, 0.2], y=0.5, stream="s")
        assert first["applied"] and first["version"] == 1
        again = sn.learn(name, x=[0.1, 0.2], y=0.5, stream="s", event_id="e-1")
        assert sn.learn(name, x=[0.1, 0.2], y=0.5, stream="s", event_id="e-1")["applied"] \
            is False and again["applied"]
        assert sn.learn(name, sequence=[[0.1, 0.1], [0.2, 0.2]], y=0.1)["version"] == 3
        assert sn.learn(name, batch=[{"sequence": [[0.1, 0.1]], "y": 0.2}])["version"] == 4
        p = sn.predict(name, x=[0.3, 0.1], stream="s")
        assert p["version"] == 4 and "prediction_id" not in p
        kept = sn.predict(name, x=[0.3, 0.1], stream="s", keep=True)
        assert kept["prediction_id"] and kept["version"] == 5
        labelled = sn.label(name, kept["prediction_id"], 0.7)
        assert labelled["applied"] and labelled["prediction"] == kept["prediction"]
        assert sn.label(name, kept["prediction_id"], 0.7)["applied"] is False
        assert sn.metrics(name)["n"] == 5
        assert [v["version"] for v in sn.versions(name)] == [0]
        rolled = sn.rollback(name, 0)
        assert rolled["applied"] and rolled["restored"] == 0 and rolled["version"] == 7
        fork = sn.fork(name, f"{name}-f", optimizer={"lr": 0.001})
        assert fork["optimizer"]["lr"] == 0.001
        sn.delete_model(f"{name}-f")
        ids = sn.events([{"model": name, "stream": "s", "x": [0.1, 0.1], "y": 0.0}])
        assert len(ids["ids"]) == 1
        assert sn.curve(name)["points"] == []  # a point every 10 versions: none yet
    finally:
        sn.delete_model(name)
    with pytest.raises(NotFound):  # a delete of nothing on its first try is an error
        sn.delete_model(name)
    with pytest.raises(NotFound) as err:
        sn.get_model(name)
    assert err.value.field == "name" and err.value.status == 404


def test_race_calls(sn: Client) -> None:
    race = fresh()
    made = sn.create_race({"name": race, "spec": SPEC, "members": [{"norm": "layer"},
                                                                   {"norm": "none"}]})
    try:
        assert len(made["members"]) == 2 and race in [r["name"] for r in sn.list_races()]
        assert set(sn.race_learn(race, x=[0.1, 0.2], y=0.3, stream="s")["results"]) == \
            {f"{race}.layer", f"{race}.none"}
        kept = sn.race_predict(race, x=[0.2, 0.2], stream="s", keep=True)
        assert kept["model"] == f"{race}.layer"
        results = sn.race_label(race, kept["prediction_id"], 0.4)["results"]
        assert all(r["applied"] for r in results.values())
        assert sn.get_race(race)["members"][0]["updates"] == 2
    finally:
        sn.delete_race(race)


def test_errors_are_typed_and_name_the_field(sn: Client) -> None:
    name = fresh()
    sn.create_model({"name": name, **SPEC})
    try:
        with pytest.raises(Invalid) as err:
            sn.learn(name, x=[0.1, 0.2, 0.3], y=1.0, stream="s")
        assert err.value.field == "x" and err.value.status == 422
        with pytest.raises(Conflict) as conflict:
            sn.create_model({"name": name, **SPEC, "hidden_size": 8})
        assert conflict.value.field == "name"
        with pytest.raises(NotFound) as missing:
            sn.label(name, "never-kept", 1.0)
        assert missing.value.field == "prediction_id"
        with pytest.raises(NotFound) as version:
            sn.rollback(name, 99)
        assert version.value.field == "version"
        assert sn.get_model(name)["version"] == 0  # nothing changed
    finally:
        sn.delete_model(name)


def test_retries_through_a_redis_outage_apply_once(tmp_path: Path) -> None:
    """Redis stops; a learn gets 503s, waits (Retry-After) and retries with its event_id; Redis
    comes back on the same port with its AOF: the learn is applied exactly once."""
    store = EmbeddedRedis(tmp_path).start()
    port = store.port
    server = Server(store.url, STREAMNORM_REDIS_TIMEOUT_S="0.5", STREAMNORM_LOCK_WAIT_S="2")
    waits: list[float] = []
    try:
        with Client(server.url, retries=20, max_wait_s=0.5, sleep=lambda s: (
                waits.append(s), time.sleep(s))[1]) as sn:
            sn.create_model({"name": "outage", **SPEC})
            assert sn.learn("outage", x=[0.1, 0.2], y=0.5, stream="s")["version"] == 1
            store.stop()
            holder: dict[str, Any] = {}

            def learn() -> None:  # Redis comes back from this (the main) thread: a server
                holder["out"] = sn.learn(  # started from a thread dies with it (PDEATHSIG);
                    "outage", x=[0.2, 0.1], y=0.3, stream="s")  # the id: the client's own

            thread = threading.Thread(target=learn)
            thread.start()
            time.sleep(1.5)
            store = EmbeddedRedis(tmp_path, port=port).start()
            thread.join(60)
            out = holder["out"]
            assert out["applied"] and out["version"] == 2
            assert waits, "no retry happened"
            info = sn.get_model("outage")
            assert info["updates"] == 2 and info["version"] == 2  # applied once
            r = redis.Redis.from_url(store.url)
            assert r.zcard(model_key("outage", "seen")) == 2  # each learn's one id
    finally:
        server.kill(signal.SIGTERM)
        store.stop()


def test_the_async_client(server: Server) -> None:
    name = fresh()

    async def run() -> None:
        async with AsyncClient(server.url) as sn:
            await sn.create_model({"name": name, **SPEC})
            outs = await asyncio.gather(*(sn.learn(name, x=[0.1 * i, 0.2], y=0.1, stream="s")
                                          for i in range(8)))
            assert sorted(o["version"] for o in outs) == list(range(1, 9))
            kept = await sn.predict(name, x=[0.1, 0.1], stream="s", prediction_id="a-1")
            assert (await sn.label(name, "a-1", 0.2))["prediction"] == kept["prediction"]
            with pytest.raises(Invalid) as err:
                await sn.predict(name, x=[0.1], stream="s")
            assert err.value.field == "x"
            await sn.delete_model(name)

    asyncio.run(run())


def test_progressive_val_score_drives_a_hosted_model(sn: Client, server: Server) -> None:
    """A remote model in a River pipeline predicts exactly what the local River estimator of
    the same parameters predicts."""
    river = pytest.importorskip("river")
    from river import datasets, evaluate, metrics, preprocessing

    from models.river import RecurrentRegressor
    from service.remote import RemoteRegressor

    data = list(datasets.TrumpApproval().take(60))
    name = fresh()
    sn.create_model({"name": name, "task": "regression", "n_features": len(data[0][0]),
                     "cell": "lstm", "hidden_size": 6, "window": 4, "norm": "layer",
                     "optimizer": {"name": "adam", "lr": 0.01, "clip": 1.0}, "seed": 3})
    try:
        def predictions(model: Any) -> list[float]:
            return [s["Prediction"] for s in evaluate.iter_progressive_val_score(
                data, preprocessing.StandardScaler() | model, metrics.MAE(), step=1,
                yield_predictions=True)]

        remote = predictions(RemoteRegressor(url=server.url, model=name))
        local = predictions(RecurrentRegressor(hidden_size=6, window=4, norm="layer", lr=0.01,
                                               seed=3))
        assert remote == local
        assert sn.get_model(name)["updates"] == 60
        assert river is not None
    finally:
        sn.delete_model(name)


def test_the_client_example_runs(server: Server) -> None:
    import subprocess
    import sys

    from .test_processes import ROOT

    name = fresh()
    try:
        out = subprocess.run([sys.executable, "examples/client.py", "--url", server.url,
                              "--model", name, "--steps", "30"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=True).stdout
        assert f"{name}: version 32, 31 updates" in out, out
        assert "refused as expected" in out and "(field x)" in out, out
        assert f"forked {name}-slow at 31 updates, lr 0.001" in out, out
    finally:
        with Client(server.url) as sn:
            for made in (name, f"{name}-slow"):
                with contextlib.suppress(NotFound):
                    sn.delete_model(made)


# -- the retry logic on its own (httpx.MockTransport answers; found in review) ---------------------
def scripted(answers: list[Any], seen: list[httpx.Request]) -> httpx.MockTransport:
    """A transport that answers each request with the next of ``answers``: a status (with
    Retry-After 0.01), a ``(status, body)``, or an exception to raise."""
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body = answer if isinstance(answer, tuple) else (answer, {"detail": "busy"})
        return httpx.Response(status, json=body, headers={"retry-after": "0.01"})
    return httpx.MockTransport(handle)


def test_retries_keep_the_id_they_made_and_honour_retry_after() -> None:
    seen: list[httpx.Request] = []
    waits: list[float] = []
    ok = (200, {"version": 1, "applied": True})
    with Client("http://sn", transport=scripted([503, 429, ok], seen), sleep=waits.append) as sn:
        assert sn.learn("m", x=[1.0], y=1.0)["applied"]
    ids = {json.loads(r.content)["event_id"] for r in seen}
    assert len(seen) == 3 and len(ids) == 1  # one generated id, sent three times
    assert waits == [0.01, 0.01]


def test_connect_retries_count_failed_connections_and_a_fork_is_sent_once() -> None:
    refused = httpx.ConnectError("refused")
    seen: list[httpx.Request] = []
    with Client("http://sn", retries=5, connect_retries=1, sleep=lambda _: None,
                transport=scripted([503, 503, refused, (200, {"ok": 1})], seen)) as sn:
        assert sn.get_model("m") == {"ok": 1}  # one failed connection is allowed
    seen.clear()
    with Client("http://sn", retries=5, connect_retries=1, sleep=lambda _: None,
                transport=scripted([refused, refused, (200, {})], seen)) as sn, \
            pytest.raises(Unavailable) as err:
        sn.get_model("m")
    assert err.value.status == 0 and len(seen) == 2
    seen.clear()
    with Client("http://sn", sleep=lambda _: None,
                transport=scripted([httpx.ReadTimeout("lost"), (201, {})], seen)) as sn, \
            pytest.raises(Unavailable):
        sn.fork("m", "m-2")
    assert len(seen) == 1


def test_events_get_ids_and_bad_replies_are_typed() -> None:
    seen: list[httpx.Request] = []
    ok = (202, {"ids": ["1-0"]})
    with Client("http://sn", transport=scripted([ok, ok], seen)) as sn:
        sn.events({"model": "m", "x": [1.0], "y": 1.0, "event_id": None})
        sn.events([{"model": "m", "prediction_id": "p", "y": 1.0},
                   {"model": "m", "x": [1.0], "y": 1.0, "prediction_id": None}])
    first, second = (json.loads(r.content) for r in seen)
    assert len(first) == 1 and first[0]["event_id"]
    assert "event_id" not in second[0] and second[1]["event_id"]

    def odd(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/nan"):
            return httpx.Response(503, text="down", headers={"retry-after": "nan"})
        return httpx.Response(200, text="<html>proxy</html>")

    waits: list[float] = []
    with Client("http://sn", retries=1, sleep=waits.append,
                transport=httpx.MockTransport(odd)) as sn:
        with pytest.raises(ServiceError, match="not JSON"):
            sn.request("GET", "/models")
        with pytest.raises(Unavailable) as err:
            sn.request("GET", "/nan")
        assert err.value.detail == "down" and waits == [0.1]  # NaN ignored: the back-off
    with pytest.raises(httpx.UnsupportedProtocol), Client("sn-without-scheme") as sn:
        sn.get_model("m")  # not retried: it cannot work


def test_the_async_client_retries_too() -> None:
    seen: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            return httpx.Response(503, json={"detail": "busy"}, headers={"retry-after": "0"})
        return httpx.Response(200, json={"applied": True})

    async def run() -> Any:
        async with AsyncClient("http://sn", transport=httpx.MockTransport(handle)) as sn:
            return await sn.learn("m", x=[1.0], y=1.0)

    assert asyncio.run(run()) == {"applied": True}
    assert len({json.loads(r.content)["event_id"] for r in seen}) == 1 and len(seen) == 3


def test_a_remote_estimator_reads_the_models_features_even_after_a_failed_first_call(
        sn: Client, server: Server) -> None:
    pytest.importorskip("river")
    from service.remote import RemoteRegressor

    name = fresh()
    remote = RemoteRegressor(url=server.url, model=name, api_key="s3cr3t")
    assert "s3cr3t" not in repr(remote)
    with pytest.raises(NotFound):
        remote.learn_one({"b": 1.0, "a": 0.0}, 1.0)  # the model is not there yet
    sn.create_model({"name": name, "task": "regression", "features": ["b", "a"],
                     "hidden_size": 4, "window": 3})
    try:
        remote.learn_one({"a": 0.0, "b": 1.0}, 1.0)
        learner = OnlineLearner(ModelSpec.model_validate(
            {"name": name, "task": "regression", "features": ["b", "a"], "hidden_size": 4,
             "window": 3}))
        learner.learn_one({"b": 1.0, "a": 0.0}, 1.0, stream="default")
        got = OnlineLearner.from_bytes(httpx.get(f"{server.url}/models/{name}/state").content)
        assert got.flat.flats.keys() == learner.flat.flats.keys()
        assert all(got.flat.flats[k].equal(v) for k, v in learner.flat.flats.items())
        remote.close()
    finally:
        sn.delete_model(name)
