"""Replies that say what happened: an atomic create whose retry is not an error, and an
``event_id`` that names one event only (finding 4 of the abuse probe)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from service.redis.keys import model_key
from service.settings import Settings
from tests.test_writes import SPEC, count_calls, event, served

from .conftest import contents


@pytest.fixture
def fresh(redis_url: str) -> Iterator[str]:
    name = f"r-{uuid.uuid4().hex[:12]}"
    yield name
    r = redis.Redis.from_url(redis_url)
    keys = [k for k in r.scan_iter(match=f"sn:{{{name}}}:*", count=1000)]
    if keys:
        r.delete(*keys)


def model_keys(r: redis.Redis, name: str) -> list[tuple[bytes, Any]]:
    return sorted((k, contents(r, k)) for k in r.scan_iter(match=f"sn:{{{name}}}:*", count=1000)
                  if not k.endswith((b":lock", b":wanted")))


def test_a_create_whose_reply_is_lost_answers_201_and_its_retry_200(
        settings: Settings, fresh: str, redis_url: str) -> None:
    """Finding 4: `POST /models` answered 503 for a model it had in fact created (the reply of
    the create script was lost), and the client's retry then got 409 for its own model."""

    async def run() -> list[tuple[int, dict[str, Any]]]:
        async with served(settings) as (client, app):
            count_calls(app.state.engine.store, "create", fail_on=1)  # ran, reply lost
            out = []
            for body in ({"name": fresh, **SPEC}, {"name": fresh, **SPEC},
                         {"name": fresh, **SPEC, "hidden_size": 9}):
                r = await client.post("/models", json=body)
                out.append((r.status_code, r.json()))
            return out

    (first, created), (second, again), (third, other) = asyncio.run(run())
    assert first == 201 and created["version"] == 0 and created["hidden_size"] == 8
    assert second == 200 and again == {**created, "metrics": again["metrics"]}
    assert third == 409 and other["field"] == "name"
    meta = redis.Redis.from_url(redis_url).hgetall(model_key(fresh, "meta"))
    assert meta[b"version"] == b"0"


def test_an_identical_create_retry_is_answered_with_the_model_as_it_is(
        client: TestClient, model_name: str) -> None:
    body = {"name": model_name, **SPEC}
    assert client.post("/models", json=body).status_code == 201
    assert client.post(f"/models/{model_name}/learn", json=event(1)).status_code == 200
    r = client.post("/models", json=body)
    assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["updates"] == 1
    r = client.post("/models", json={**body, "window": 5})
    assert r.status_code == 409 and r.json()["field"] == "name"


def test_an_event_id_reused_for_another_event_is_a_conflict_that_changes_nothing(
        client: TestClient, model_name: str, redis_url: str) -> None:
    """Finding 4: an `event_id` sent again with a *different* body was answered
    `applied: false`, as if that update were in; it is a 409 naming `event_id` now (the same
    body again is still an ordinary repeat)."""
    assert client.post("/models", json={"name": model_name, **SPEC}).status_code == 201
    first = client.post(f"/models/{model_name}/learn", json=event(1))
    assert first.status_code == 200 and first.json()["version"] == 1
    r = redis.Redis.from_url(redis_url)
    before = model_keys(r, model_name)
    other = {**event(2), "event_id": event(1)["event_id"]}
    for body in (other, {**event(1), "y": event(1)["y"] + 1}, {**event(1), "stream": "zz"}):
        conflict = client.post(f"/models/{model_name}/learn", json=body)
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["field"] == "event_id"
        assert "version 1" in conflict.json()["detail"]
    assert model_keys(r, model_name) == before
    repeat = client.post(f"/models/{model_name}/learn", json=event(1))
    assert repeat.status_code == 200 and repeat.json() == {
        "prediction": None, "loss": None, "version": 1, "applied": False, "proba": None}
    # the same int-valued float is the same event (canonical form), not a conflict
    same = {**event(1), "x": [float(v) for v in event(1)["x"]]}
    assert client.post(f"/models/{model_name}/learn", json=same).json()["applied"] is False


def test_an_event_id_reused_inside_one_concurrent_burst_is_a_conflict(
        settings: Settings, fresh: str) -> None:
    """The same id for two different events in flight together: the first is applied, the
    other answered 409 (checked against the queued update, before it reaches Redis)."""

    bodies = [event(1), {**event(2), "event_id": event(1)["event_id"]}, event(1)]

    async def run() -> list[tuple[int, Any]]:
        async with served(settings) as (client, _):
            assert (await client.post("/models", json={"name": fresh, **SPEC})).status_code \
                == 201
            replies = await asyncio.gather(*(client.post(f"/models/{fresh}/learn", json=b)
                                             for b in bodies))
            return [(r.status_code, r.json()) for r in replies]

    replies = asyncio.run(run())
    won = [b for b, (status, reply) in zip(bodies, replies, strict=True)
           if status == 200 and reply["applied"]]
    assert len(won) == 1  # one of the two events holds the id
    for body, (status, reply) in zip(bodies, replies, strict=True):
        if body is won[0]:
            continue
        if body == won[0]:  # the same event again: a repeat
            assert status == 200 and reply["applied"] is False and reply["version"] == 1
        else:
            assert status == 409 and reply["field"] == "event_id"


def test_a_repeated_event_id_in_one_worker_batch_is_applied_once_while_it_computes(
        settings: Settings, fresh: str) -> None:
    """The stream worker's batch [X, Y, Z, X]: when each update runs on the compute thread,
    X's commit can land (and leave the in-flight ids) while Y or Z computes; the second X is a
    repeat all the same, not a fourth update (found in review)."""
    offload = settings.model_copy(update={"inline_ms": 0.0})

    async def run() -> list[Any]:
        async with served(offload) as (client, app):
            assert (await client.post("/models", json={"name": fresh, **SPEC})).status_code \
                == 201
            batch = [event(1), event(2), event(3), event(1)]
            engine = app.state.engine
            return await engine.learn(fresh, await engine.prepare(fresh, batch))

    out = asyncio.run(run())
    assert [o.applied for o in out] == [True, True, True, False]
    assert [o.version for o in out] == [1, 2, 3, 1]
