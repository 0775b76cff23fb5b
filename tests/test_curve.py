"""Learning curves (design.md, "Learning curves and the live view"): a point per
``STREAMNORM_CURVE_EVERY`` updates, written in the commit of the update that closes it, bounded,
in version order; ``GET /models/{name}/curve``. Checked against an independent learner fed the
same events and against the losses the replies carried."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis

from models import ModelSpec, OnlineLearner
from service.redis.keys import model_key
from service.settings import Settings

from .test_writes import SPEC, event, served


def running_mean(losses: list[float]) -> float:
    """The mean as the commit script sums it: in order, from zero, in doubles."""
    total = 0.0
    for loss in losses:
        total += loss
    return total / len(losses)


async def curve(client: httpx.AsyncClient, name: str, **params: int) -> dict[str, Any]:
    r = await client.get(f"/models/{name}/curve", params=params)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_point_every_n_updates_with_the_mean_loss_and_the_metrics_of_its_version(
        settings: Settings, name: str, redis_url: str) -> None:
    every = settings.model_copy(update={"curve_every": 5})

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        async with served(every) as (client, _):
            assert (await client.post("/models", json={"name": name, **SPEC})).status_code \
                == 201
            replies = []
            for i in range(23):
                r = await client.post(f"/models/{name}/learn", json=event(i))
                assert r.status_code == 200, r.text
                replies.append(r.json())
            page = await curve(client, name, after=10, limit=1)
            assert page == {"points": page["points"], "last": 15}
            assert [p["version"] for p in page["points"]] == [15]
            assert await curve(client, name, after=20) == {"points": [], "last": 20}
            return (await curve(client, name))["points"], replies, page

    points, replies, _ = asyncio.run(run())
    assert [p["version"] for p in points] == [5, 10, 15, 20]
    learner = OnlineLearner(ModelSpec.model_validate({"name": name, **SPEC}))
    at: dict[int, dict[str, Any]] = {}
    for i in range(20):
        ev = event(i)
        learner.learn_one(ev["x"], ev["y"], stream=ev["stream"])
        at[i + 1] = learner.metrics.report()
    r = redis.Redis.from_url(redis_url)
    version = int(r.hget(model_key(name, "meta"), "version"))
    for point in points:
        v = point["version"]
        window = [reply["loss"] for reply in replies[v - 5:v]]
        assert point["loss"] == running_mean(window)
        assert point["metrics"] == at[v]  # the metrics as of that very update
        assert point["rejected"] == 0
        assert v <= version and r.zscore(model_key(name, "seen"), f"e-{v - 1}") == v
    assert points[0]["time"] <= points[-1]["time"]


def test_the_curve_keeps_the_newest_points_only(settings: Settings, name: str) -> None:
    bounded = settings.model_copy(update={"curve_every": 1, "curve_points": 3})

    async def run() -> list[int]:
        async with served(bounded) as (client, _):
            assert (await client.post("/models", json={"name": name, **SPEC})).status_code \
                == 201
            for i in range(10):
                assert (await client.post(f"/models/{name}/learn", json=event(i))
                        ).status_code == 200
            return [p["version"] for p in (await curve(client, name))["points"]]

    assert asyncio.run(run()) == [8, 9, 10]


def test_the_mean_loss_spans_updates_applied_by_two_processes(
        settings: Settings, name: str) -> None:
    """The loss since the last point is kept in Redis with the version, so a point closed by
    one process counts the updates another applied (the lease moved between them)."""
    every = settings.model_copy(update={"curve_every": 4})

    async def run() -> tuple[list[dict[str, Any]], list[float]]:
        async with served(every) as (a, _), served(every) as (b, _):
            assert (await a.post("/models", json={"name": name, **SPEC})).status_code == 201
            losses = []
            for i in range(12):
                client = (a, b)[(i // 3) % 2]  # three learns on one, three on the other
                r = await client.post(f"/models/{name}/learn", json=event(i))
                assert r.status_code == 200, r.text
                losses.append(r.json()["loss"])
            return (await curve(b, name))["points"], losses

    points, losses = asyncio.run(run())
    assert [p["version"] for p in points] == [4, 8, 12]
    for p in points:
        assert p["loss"] == running_mean(losses[p["version"] - 4:p["version"]])


def test_a_rejected_update_is_counted_by_the_next_point(settings: Settings, name: str) -> None:
    every = settings.model_copy(update={"curve_every": 2})

    async def run() -> list[dict[str, Any]]:
        async with served(every) as (client, _):
            assert (await client.post("/models", json={"name": name, **SPEC})).status_code \
                == 201
            assert (await client.post(f"/models/{name}/learn", json=event(0))).status_code \
                == 200
            huge = {**event(1), "y": 1e30, "event_id": "huge"}  # its squared error overflows
            r = await client.post(f"/models/{name}/learn", json=huge)
            assert r.status_code == 422 and r.json()["field"] == "y", r.text
            for i in (2, 3, 4):
                assert (await client.post(f"/models/{name}/learn", json=event(i))
                        ).status_code == 200
            return (await curve(client, name))["points"]

    points = asyncio.run(run())
    assert [(p["version"], p["rejected"]) for p in points] == [(2, 1), (4, 1)]


def test_the_curve_refuses_bad_input_and_goes_with_its_model(
        client: Any, name: str, redis_url: str) -> None:
    assert client.get("/models/nobody-here/curve").status_code == 404
    assert client.post("/models", json={"name": name, **SPEC}).status_code == 201
    for params, field in (({"after": -1}, "after"), ({"limit": 0}, "limit"),
                          ({"limit": 10_001}, "limit"), ({"after": "x"}, "after")):
        r = client.get(f"/models/{name}/curve", params=params)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    for i in range(10):
        assert client.post(f"/models/{name}/learn", json=event(i)).status_code == 200
    r = redis.Redis.from_url(redis_url)
    assert r.xlen(model_key(name, "curve")) == 1  # the default: a point every 10
    assert client.delete(f"/models/{name}").status_code == 204
    assert not r.exists(model_key(name, "curve"))
