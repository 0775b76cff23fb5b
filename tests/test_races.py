"""Races (design.md, "Races"): the same events for several member models, each applied once;
the leader by rolling metric with a margin serves. Through the real ASGI app and Redis; the
members' states are checked against independent learners fed the same events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from models import ModelSpec, OnlineLearner
from service.api.app import create_app
from service.engine.race import choose_leader
from service.redis.keys import model_key, race_key
from service.settings import Settings

from .test_stream import drain_with_worker, service

SPEC = {"task": "regression", "n_features": 2, "cell": "lstm", "hidden_size": 4, "window": 3,
        "seed": 5}
NORMS = ("streaming", "layer", "none")


def event(i: int) -> dict[str, Any]:
    x = [((i * 7) % 11) / 11, ((i * 3) % 5) / 5 - 0.5]
    return {"stream": f"s{i % 2}", "x": x, "y": x[0] - 2 * x[1], "event_id": f"ev-{i}"}


def keys_of(r: redis.Redis, race: str) -> list[bytes]:
    return [*r.scan_iter(match=f"sn:{{{race}*", count=1000),
            *r.scan_iter(match=race_key(race), count=1000)]


@pytest.fixture
def race(redis_url: str) -> Iterator[str]:
    """A fresh race name; every key of the race and of models named after it goes after."""
    name = f"r-{uuid.uuid4().hex[:10]}"
    yield name
    r = redis.Redis.from_url(redis_url)
    found = keys_of(r, name)
    if found:
        r.delete(*found)


def new_race(client: TestClient, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "spec": SPEC, "members": [{"norm": n} for n in NORMS], **extra}
    r = client.post("/races", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def learner(member: str, norm: str) -> OnlineLearner:
    return OnlineLearner(ModelSpec.model_validate({**SPEC, "name": member, "norm": norm}))


def test_a_race_is_members_that_are_ordinary_models(client: TestClient, race: str) -> None:
    made = new_race(client, race, metric="RMSE", min_updates=7, margin=0.1)
    names = [f"{race}.{n}" for n in NORMS]
    assert [m["name"] for m in made["members"]] == names
    assert [m["norm"] for m in made["members"]] == list(NORMS)
    assert (made["metric"], made["min_updates"], made["margin"], made["leader"]) == \
        ("RMSE", 7, 0.1, None)
    for member, norm in zip(names, NORMS, strict=True):
        info = client.get(f"/models/{member}").json()
        assert info["norm"]["method"] == norm and info["hidden_size"] == 4
        assert info["version"] == 0
    assert race in [r["name"] for r in client.get("/races").json()]
    assert client.get(f"/races/{race}").json() == made
    # a retried create is not an error; another definition under the name is
    body = {"name": race, "spec": SPEC, "members": [{"norm": n} for n in NORMS],
            "metric": "RMSE", "min_updates": 7, "margin": 0.1}
    assert client.post("/races", json=body).status_code == 200
    other = f"{race}-d"  # defaults written out are the same race as defaults left out
    try:
        new_race(client, other)
        same = {"name": other, "spec": SPEC, "members": [{"norm": n} for n in NORMS],
                "metric": "MAE", "min_updates": 100, "margin": 0.02}
        assert client.post("/races", json=same).status_code == 200
    finally:
        client.delete(f"/races/{other}")
    r = client.post("/races", json={**body, "margin": 0.2})
    assert r.status_code == 409 and r.json()["field"] == "name"


def test_each_member_learns_each_event_once_as_a_learner_of_its_own_would(
        client: TestClient, race: str) -> None:
    new_race(client, race)
    oracles = {f"{race}.{n}": learner(f"{race}.{n}", n) for n in NORMS}
    for i in range(12):
        body = client.post(f"/races/{race}/learn", json=event(i)).json()
        for member, oracle in oracles.items():
            ev = event(i)
            want = oracle.learn_one(ev["x"], ev["y"], stream=ev["stream"])
            got = body["results"][member]
            assert got["applied"] and got["version"] == i + 1
            assert (got["prediction"], got["loss"]) == (want.prediction, want.loss)
        assert body["model"] == f"{race}.streaming"  # no leader yet: the first member serves
        assert body["prediction"] == body["results"][body["model"]]["prediction"]
    again = client.post(f"/races/{race}/learn", json=event(3)).json()  # a retry
    assert all(not r["applied"] and r["version"] == 4 for r in again["results"].values())
    for member, oracle in oracles.items():
        state = client.get(f"/models/{member}/state").content
        assert state == oracle.to_bytes()  # bit for bit: applied once each, in order
    # a member-scoped id is the member's own: the same id on a member alone is the race's
    r = client.post(f"/models/{race}.layer/learn", json={**event(5), "event_id": "ev-5@" +
                                                          f"{race}.layer"})
    assert r.status_code == 200 and r.json()["applied"] is False


def test_a_member_whose_update_is_rejected_holds_no_other_back(client: TestClient,
                                                               race: str) -> None:
    new_race(client, race)
    huge = {"stream": "s", "x": [1e30, -1e30], "y": 1.0}  # Streaming Norm's statistics overflow
    body = client.post(f"/races/{race}/learn", json=huge).json()
    assert body["results"][f"{race}.streaming"]["status"] == 422
    assert body["results"][f"{race}.layer"]["applied"] is True
    assert body["results"][f"{race}.none"]["applied"] is True
    versions = {m["name"]: m["version"] for m in client.get(f"/races/{race}").json()["members"]}
    assert versions == {f"{race}.streaming": 0, f"{race}.layer": 1, f"{race}.none": 1}
    # a member deleted by hand answers 404 in the results; the others go on
    assert client.delete(f"/models/{race}.layer").status_code == 204
    body = client.post(f"/races/{race}/learn", json=event(0)).json()
    assert body["results"][f"{race}.layer"]["status"] == 404
    assert body["results"][f"{race}.none"]["version"] == 2


def test_bad_input_changes_no_member(client: TestClient, race: str, redis_url: str) -> None:
    new_race(client, race)
    r = redis.Redis.from_url(redis_url)
    before = {k: r.hgetall(k) for k in keys_of(r, race) if k.endswith(b":meta")}
    for body, field in [({"stream": "s", "x": [1.0], "y": 1.0}, "x"),
                        ({"stream": "s", "x": [1.0, float("nan")], "y": 1.0}, "x[1]"),
                        ({"stream": "s", "x": [1.0, 2.0]}, "y"),
                        ({"stream": "s", "x": [1.0, 2.0], "y": 1, "extra": 1}, "extra")]:
        res = client.post(f"/races/{race}/learn",
                          content=json.dumps(body, allow_nan=True),
                          headers={"content-type": "application/json"})
        assert res.status_code == 422, (body, res.text)
        assert res.json()["field"].startswith(field), res.json()
    assert {k: r.hgetall(k) for k in before} == before
    assert client.post("/races/nobody-here/learn", json=event(0)).status_code == 404
    assert client.post("/races/nobody-here/predict", json={"stream": "s", "x": [0, 1]}
                       ).status_code == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"members": [{"norm": "streaming"}, {"norm": "bogus"}]}, "members[1].norm"),
    ({"members": [{"norm": "layer", "task": "binary"}]}, "members[0].task"),
    ({"members": [{"n_features": 3}]}, "members[0].n_features"),
    ({"members": [{"hidden_size": 0}]}, "members[0].hidden_size"),
    ({"members": [{"hidden_size": 1024, "num_layers": 8}]}, "members[0].hidden_size"),
    ({"members": [{"name": "same"}, {"name": "same", "norm": "layer"}]}, "members[1].name"),
    ({"members": [{"name": ".dot"}]}, "members[0].name"),
    ({"members": []}, "members"),
    ({"members": [{}] * 17}, "members"),
    ({"spec": {**SPEC, "name": "x"}}, "spec.name"),
    ({"spec": {**SPEC, "cell": "transformer"}}, "spec.cell"),
    ({"spec": {"n_features": 2}}, "spec.task"),
    ({"metric": "Accuracy"}, "metric"),
    ({"metric": "F1"}, "metric"),
    ({"margin": -0.1}, "margin"),
    ({"min_updates": -1}, "min_updates"),
    ({"name": "x" * 60}, "members[0].name"),  # its default member names would be too long
])
def test_an_invalid_race_creates_nothing(client: TestClient, redis_url: str, race: str,
                                         body: dict[str, Any], field: str) -> None:
    full = {"name": race, "spec": SPEC, "members": [{"norm": "streaming"}], **body}
    res = client.post("/races", json=full)
    assert res.status_code == 422, res.text
    assert res.json()["field"] == field, res.json()
    r = redis.Redis.from_url(redis_url)
    assert keys_of(r, full["name"]) == []
    assert not r.exists(race_key(full["name"]))


def test_a_taken_member_name_creates_nothing_and_touches_nothing(
        client: TestClient, redis_url: str, race: str) -> None:
    taken = f"{race}.layer"
    assert client.post("/models", json={"name": taken, **SPEC, "norm": "none"}).status_code \
        == 201
    assert client.post(f"/models/{taken}/learn", json=event(0)).status_code == 200
    r = redis.Redis.from_url(redis_url)
    before = r.hgetall(model_key(taken, "meta"))
    res = client.post("/races", json={"name": race, "spec": SPEC,
                                      "members": [{"norm": n} for n in NORMS]})
    assert res.status_code == 409 and res.json()["field"] == "members[1].name"
    assert not r.exists(race_key(race))
    assert not r.exists(model_key(f"{race}.streaming", "meta"))
    assert r.hgetall(model_key(taken, "meta")) == before


def test_deleting_a_race_removes_its_members_keys(client: TestClient, redis_url: str,
                                                  race: str) -> None:
    new_race(client, race)
    for i in range(12):
        client.post(f"/races/{race}/learn", json=event(i))
    r = redis.Redis.from_url(redis_url)
    assert len(keys_of(r, race)) > 10
    assert client.delete(f"/races/{race}").status_code == 204
    assert keys_of(r, race) == []
    assert client.get(f"/races/{race}").status_code == 404
    assert client.delete(f"/races/{race}").status_code == 404
    assert client.get(f"/models/{race}.layer").status_code == 404


def test_the_leader_serves_and_moves_only_past_the_margin(client: TestClient,
                                                          race: str) -> None:
    new_race(client, race, min_updates=5, margin=0.0)
    for i in range(40):
        body = client.post(f"/races/{race}/learn", json=event(i)).json()
        standing = client.get(f"/races/{race}").json()
        best = min(standing["members"], key=lambda m: m["rolling"])
        assert body["leader"] == standing["leader"]
        if i >= 4:  # ready: with no margin the leader is always the best
            assert standing["leader"] == best["name"] and best["rank"] == 1
    pred = client.post(f"/races/{race}/predict", json={"stream": "s0", "x": [0.1, 0.2]}).json()
    alone = client.post(f"/models/{pred['model']}/predict",
                        json={"stream": "s0", "x": [0.1, 0.2]}).json()
    assert pred["model"] == standing["leader"]
    assert (pred["prediction"], pred["version"]) == (alone["prediction"], alone["version"])


def test_the_members_a_race_may_have_are_configured(settings: Settings, race: str) -> None:
    few = settings.model_copy(update={"max_race_members": 2})
    with TestClient(create_app(few)) as c:
        res = c.post("/races", json={"name": race, "spec": SPEC,
                                     "members": [{"norm": n} for n in NORMS]})
        assert res.status_code == 422 and res.json()["field"] == "members"
        assert "STREAMNORM_MAX_RACE_MEMBERS" in res.json()["detail"]
        assert c.get(f"/races/{race}").status_code == 404
        new_race_of = {"name": race, "spec": SPEC, "members": [{"norm": "layer"}, {}]}
        assert c.post("/races", json=new_race_of).status_code == 201
        bad = c.get(f"/races/{race}/live", headers={"Last-Event-ID": "1,2,3"})
        assert bad.status_code == 422 and bad.json()["field"] == "last-event-id"


def test_a_leader_is_kept_until_beaten_by_the_margin(client: TestClient, race: str) -> None:
    new_race(client, race, min_updates=3, margin=1.0)  # a challenger needs a rolling MAE of 0
    first = None
    for i in range(30):
        body = client.post(f"/races/{race}/learn", json=event(i)).json()
        if i == 2:
            first = body["leader"]
            assert first is not None
        if i > 2:
            assert body["leader"] == first  # however the ranking moves
    ranks = {m["name"]: m["rank"] for m in client.get(f"/races/{race}").json()["members"]}
    assert sorted(ranks.values()) == [1, 2, 3]


@pytest.mark.parametrize(("current", "values", "metric", "want"), [
    ("a", {"a": (9, 1.0), "b": (9, 0.981)}, "MAE", "a"),  # within the margin: stays
    ("a", {"a": (9, 1.0), "b": (9, 0.979)}, "MAE", "b"),  # past it: moves
    ("a", {"a": (9, 0.50), "b": (9, 0.505)}, "Accuracy", "a"),
    ("a", {"a": (9, 0.50), "b": (9, 0.511)}, "Accuracy", "b"),  # higher is better
    ("a", {"a": (9, 1.0), "b": (2, 0.1)}, "MAE", "a"),  # b is not ready
    ("", {"a": (2, 1.0), "b": (2, 0.1)}, "MAE", ""),  # nobody is
    ("gone", {"a": (9, 1.0), "b": (9, 0.9)}, "RMSE", "b"),  # the leader was deleted
    ("a", {"a": (9, None), "b": (9, 0.9)}, "LogLoss", "b"),  # it has no value
    ("", {"a": (9, 0.3), "b": (9, 0.3)}, "MAE", "a"),  # ties: the first member
    ("a", {"a": (9, 0.99), "b": (9, 1.0)}, "Accuracy", "b"),  # the margin is on the error
    ("a", {"a": (9, 0.99), "b": (9, 0.9901)}, "Accuracy", "a"),
])
def test_choose_leader(current: str, values: dict[str, tuple[int, float | None]],
                       metric: str, want: str) -> None:
    assert choose_leader(current, values, metric, 0.02, 5) == want


def test_race_events_through_the_stream_apply_once_per_member(stream_settings: Settings,
                                                              race: str) -> None:
    events = [{"race": race, **event(i)} for i in range(20)]
    no_id = {"race": race, **{k: v for k, v in event(99).items() if k != "event_id"}}

    async def run() -> dict[str, Any]:
        async with service(stream_settings) as (c, app):
            body = {"name": race, "spec": SPEC, "members": [{"norm": n} for n in NORMS],
                    "min_updates": 3}
            assert (await c.post("/races", json=body)).status_code == 201
            assert (await c.post("/events", json=events[:12])).status_code == 202
            assert (await c.post("/events", json=events[8:])).status_code == 202  # 4 twice
            assert (await c.post("/events", json=no_id)).status_code == 202
            await drain_with_worker(stream_settings, app.state.engine.streams, "w-race")
            bad = await c.post("/events", json=[{"model": f"{race}.layer", **event(1)},
                                                 {"race": race, "model": "x", **event(2)}])
            assert bad.status_code == 422 and bad.json()["field"] == "[1].model"
            bad = await c.post("/events", json=[{"race": "nobody-here", **event(1)}])
            assert bad.status_code == 404 and bad.json()["field"] == "[0].race"
            bad = await c.post("/events", json={"race": race, "stream": "s", "x": [1.0],
                                                "y": 0.0})
            assert bad.status_code == 422 and bad.json()["field"] == "x"
            states = {n: (await c.get(f"/models/{race}.{n}/state")).content for n in NORMS}
            return {"race": (await c.get(f"/races/{race}")).json(), "states": states}

    got = asyncio.run(run())
    assert [m["updates"] for m in got["race"]["members"]] == [21, 21, 21]
    assert got["race"]["leader"] is not None  # the worker looked at the leader too
    for norm in NORMS:
        oracle = learner(f"{race}.{norm}", norm)
        for ev in [event(i) for i in range(20)] + [event(99)]:
            oracle.learn_one(ev["x"], ev["y"], stream=ev["stream"])
        assert got["states"][norm] == oracle.to_bytes()


def test_a_race_re_created_elsewhere_is_served_as_it_is_now(settings: Settings,
                                                            race: str) -> None:
    """One process holds the members hot; another deletes the race and creates it again with
    other inputs: the first validates against the members as they are now."""
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        new_race(a, race)
        assert a.post(f"/races/{race}/learn", json=event(0)).status_code == 200
        assert b.delete(f"/races/{race}").status_code == 204
        wide = {**SPEC, "n_features": 3}
        assert b.post("/races", json={"name": race, "spec": wide, "members": [
            {"norm": n} for n in NORMS]}).status_code == 201
        body = {"stream": "s", "x": [0.1, 0.2, 0.3], "y": 1.0}
        res = a.post(f"/races/{race}/learn", json=body)
        assert res.status_code == 200, res.text
        assert all(r["version"] == 1 for r in res.json()["results"].values())
        assert a.post("/events", json={"race": race, **body}).status_code == 202
        assert a.post(f"/races/{race}/predict", json={"stream": "s", "x": [0.1, 0.2, 0.3]}
                      ).json()["version"] == 1


def test_a_member_deleted_alone_is_left_out(client: TestClient, race: str) -> None:
    new_race(client, race, min_updates=0)
    assert client.delete(f"/models/{race}.streaming").status_code == 204  # the first member
    pred = client.post(f"/races/{race}/predict", json={"stream": "s", "x": [0.1, 0.2]})
    assert pred.status_code == 200 and pred.json()["model"] == f"{race}.layer"
    assert client.post("/events", json={"race": race, **event(0)}).status_code == 202
    body = client.post(f"/races/{race}/learn", json=event(1)).json()
    assert body["results"][f"{race}.streaming"]["status"] == 404
    assert body["leader"] in (f"{race}.layer", f"{race}.none")
    for member in (f"{race}.layer", f"{race}.none"):
        assert client.delete(f"/models/{member}").status_code == 204
    res = client.post(f"/races/{race}/learn", json=event(2))  # nobody left to learn
    assert res.status_code == 404 and res.json()["field"] == "name"
    res = client.post("/events", json={"race": race, **event(2)})
    assert res.status_code == 404 and res.json()["field"] == "race"


def test_a_retried_race_event_does_not_run_a_rejected_update_again(
        stream_settings: Settings, race: str) -> None:
    """E1 is rejected by one member while another's lease is busy (a transient failure): the
    entry stays pending; its retry does not run E1 again on the first member, after E2."""
    settings = stream_settings.model_copy(update={"lock_wait_s": 0.2})
    r = redis.Redis.from_url(settings.redis_url)
    huge = {"stream": "s0", "x": [1e30, -1e30], "y": 1.0, "event_id": "huge"}
    events = [{"race": race, **huge}, {"race": race, **event(2)}]

    async def run() -> dict[str, Any]:
        async with service(settings) as (c, app):
            body = {"name": race, "spec": SPEC,
                    "members": [{"norm": "streaming"}, {"norm": "none"}]}
            assert (await c.post("/races", json=body)).status_code == 201
            r.set(model_key(f"{race}.none", "lock"), "someone-else", px=60_000)
            assert (await c.post("/events", json=events)).status_code == 202
            worker_task = asyncio.create_task(drain_with_worker(settings,
                                                                app.state.engine.streams,
                                                                "w-retry"))
            await asyncio.sleep(1.5)  # E1 rejected by streaming, none busy: retried meanwhile
            r.delete(model_key(f"{race}.none", "lock"))
            await worker_task
            assert (await c.post(f"/races/{race}/learn", json=event(3))).status_code == 200
            p = app.state.engine.streams.partitions
            dead = [f for k in range(p) for _, f in r.xrange(f"sn:events:{{{k}}}:dead")]
            return {"dead": dead, "meta": {n: r.hgetall(model_key(f"{race}.{n}", "meta"))
                                           for n in ("streaming", "none")}}

    got = asyncio.run(run())
    assert len(got["dead"]) == 1 and got["dead"][0][b"error"].startswith(
        f"{race}.streaming: Rejected".encode())
    assert REGISTRY.get_sample_value("streamnorm_updates_rejected_total",
                                     {"model": f"{race}.streaming"}) == 1  # run once, though
    # the entry was retried meanwhile (this process's counter: the worker runs in it)
    assert int(got["meta"]["streaming"][b"updates"]) == 2  # E2, E3
    assert int(got["meta"]["none"][b"updates"]) == 3
