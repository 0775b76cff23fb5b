"""Group commit (``service.engine.replica``) and the hot-call fast path
(``service.api.fastpath``), through the real ASGI app on a real Redis. Orders are checked
against an independent replay of the log."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import redis
import redis.asyncio

from models import ModelSpec, OnlineLearner
from service.api.app import create_app
from service.api.fastpath import FastPath
from service.redis.keys import model_key
from service.settings import Settings

SPEC = {"task": "regression", "n_features": 3, "cell": "lstm", "hidden_size": 8,
        "norm": {"method": "streaming"}, "window": 4, "seed": 5}


def event(i: int) -> dict[str, Any]:
    x = [((i * 7) % 11) / 11, ((i * 3) % 5) / 5 - 0.5, (i % 2) * 0.3]
    return {"stream": f"s{i % 3}", "x": x, "y": x[0] - x[1], "event_id": f"e-{i}"}


@asynccontextmanager
async def served(settings: Settings, fast: bool = True) -> AsyncIterator[
        tuple[httpx.AsyncClient, Any]]:
    """The app (lifespan run) and an async client over it; ``fast=False`` without the fast
    path, so every request takes FastAPI's full route."""
    app = create_app(settings)
    if not fast:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not FastPath]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     timeout=60.0) as client:
            yield client, app


def replay(redis_url: str, name: str) -> bytes:
    """A fresh learner fed the applied events in the order their versions record (from the
    ids of the applied events, so a trimmed log does not matter)."""
    r = redis.Redis.from_url(redis_url)
    order = r.zrange(model_key(name, "seen"), 0, -1, withscores=True)
    assert [int(v) for _, v in order] == list(range(1, len(order) + 1))
    learner = OnlineLearner(ModelSpec.model_validate({"name": name, **SPEC}))
    for eid, _ in order:
        ev = event(int(eid.decode().split("-")[1]))
        learner.learn_one(ev["x"], ev["y"], stream=ev["stream"])
    return learner.to_bytes()


def count_calls(store: Any, method: str, fail_on: int | None = None,
                delay: float = 0.0) -> dict[str, int]:
    """Count ``store.method`` calls; call ``fail_on`` runs for real and then loses its reply
    (a ConnectionError after the script ran: the hardest case for the caller). ``delay``
    stretches each call's round trip, as a slow or distant Redis would."""
    real: Callable[..., Awaitable[Any]] = getattr(store, method)
    seen = {"calls": 0, "events": 0}

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        seen["calls"] += 1
        seen["events"] += len(args[3]) if method == "commit" else 0
        await asyncio.sleep(delay)
        out = await real(*args, **kwargs)
        if seen["calls"] == fail_on:
            raise redis.exceptions.ConnectionError("connection lost before the reply")
        return out

    setattr(store, method, wrapped)
    return seen


def test_concurrent_learns_commit_in_batches_in_one_order(settings: Settings, name: str,
                                                         redis_url: str) -> None:
    settings = settings.model_copy(update={"snapshot_every": 10})
    n = 60

    async def run() -> tuple[list[httpx.Response], dict[str, int], bytes]:
        async with served(settings) as (client, app):
            assert (await client.post("/models", json={"name": name, **SPEC})).status_code \
                == 201
            # each commit takes >= 50 ms, so learns computed meanwhile must queue and share the
            # next one (on a fast Redis whether they do depends on the machine's timing)
            commits = count_calls(app.state.engine.store, "commit", delay=0.05)
            replies = await asyncio.gather(*(client.post(f"/models/{name}/learn",
                                                         json=event(i)) for i in range(n)))
            state = (await client.get(f"/models/{name}/state")).content
            return list(replies), commits, state

    replies, commits, state = asyncio.run(run())
    assert [r.status_code for r in replies] == [200] * n
    assert sorted(r.json()["version"] for r in replies) == list(range(1, n + 1))
    assert commits["events"] == n and commits["calls"] <= n // 3  # several updates per commit
    assert state == replay(redis_url, name)
    r = redis.Redis.from_url(redis_url)
    assert int(r.hget(model_key(name, "meta"), "updates")) == n
    assert int(r.hget(model_key(name, "meta"), "snapshot_version")) >= n - 10

    async def reload() -> bytes:  # a new process loads the snapshot and replays the tail
        async with served(settings) as (client, _):
            return (await client.get(f"/models/{name}/state")).content

    assert asyncio.run(reload()) == state


def test_a_failed_commit_fails_the_updates_behind_it_and_loses_nothing_acknowledged(
        settings: Settings, name: str, redis_url: str) -> None:
    n = 40

    async def run() -> tuple[list[httpx.Response], list[httpx.Response], bytes]:
        async with served(settings) as (client, app):
            assert (await client.post("/models", json={"name": name, **SPEC})).status_code \
                == 201
            count_calls(app.state.engine.store, "commit", fail_on=3)
            first = await asyncio.gather(*(client.post(f"/models/{name}/learn",
                                                       json=event(i)) for i in range(n)))
            # the replica that failed to commit was dropped: the cache forgets it at once
            # (found in review: a dropped replica stayed cached, learner and contexts, until
            # evicted)
            assert name not in app.state.engine.cached()
            retried = [await client.post(f"/models/{name}/learn", json=event(i))
                       for i, r in enumerate(first) if r.status_code != 200]
            state = (await client.get(f"/models/{name}/state")).content
            return list(first), retried, state

    first, retried, state = asyncio.run(run())
    assert {r.status_code for r in first} == {200, 503}  # the chain behind the failure fails
    assert all(r.status_code == 200 for r in retried)
    r = redis.Redis.from_url(redis_url)
    seen = {k.decode(): int(v) for k, v in r.zrange(model_key(name, "seen"), 0, -1,
                                                    withscores=True)}
    for i, reply in enumerate(first):  # every acknowledged update is in Redis, as replied
        if reply.status_code == 200:
            assert seen[f"e-{i}"] == reply.json()["version"]
    # the lost reply's batch was applied: its retries say so instead of applying it again
    assert any(not x.json()["applied"] for x in retried)
    assert sorted(seen.values()) == list(range(1, n + 1))
    assert int(r.hget(model_key(name, "meta"), "updates")) == n
    assert state == replay(redis_url, name)


def test_the_fast_path_answers_exactly_as_the_full_application(settings: Settings,
                                                               redis_url: str) -> None:
    keyed = settings.model_copy(update={"api_keys": ("k1",), "read_keys": ("r1",)})
    auth, read = {"authorization": "Bearer k1"}, {"authorization": "Bearer r1"}
    cases: list[tuple[str, str, Any, Any]] = [
        ("learn", "m", event(1), auth),
        ("learn", "m", event(2), auth),
        ("predict", "m", {"stream": "s1", "x": [0.1, 0.2, 0.3]}, read),
        ("predict", "m", {"sequence": [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]}, auth),
        ("learn", "m", event(1), auth),  # a repeat
        ("learn", "m", event(3), {}),  # 401
        ("learn", "m", event(3), {"authorization": "Bearer nope"}),  # 403
        ("learn", "m", event(3), read),  # 403: a read key
        ("predict", "m", {"stream": "s1", "x": [0.1, 0.2, 0.3]}, {}),  # 401
        ("learn", "nobody", event(3), auth),  # 404
        ("predict", "m", {"stream": "s1", "x": [0.1, 0.2]}, read),  # 422: length
        ("predict", "m", {"stream": "s1", "x": [0.1, 0.2, 0.3], "extra": 1}, read),  # schema
        ("learn", "m", {"x": [0.1, 0.2, 0.3], "y": "high"}, auth),  # 422: y
        ("learn", "bad name!", event(3), auth),  # 422: path
        ("learn", "m", event(4), [("authorization", "Bearer nope"),  # the first one counts
                                  ("authorization", "Bearer k1")]),
    ]

    async def answers(fast: bool, model: str) -> list[tuple[int, Any]]:
        async with served(keyed, fast) as (client, _):
            r = await client.post("/models", json={"name": model, **SPEC}, headers=auth)
            assert r.status_code == 201
            out = []
            for op, who, body, headers in cases:
                who = model if who == "m" else who
                r = await client.post(f"/models/{who}/{op}", json=body, headers=headers)
                out.append((r.status_code, r.json()))
            await client.delete(f"/models/{model}", headers=auth)
            return out

    fast = asyncio.run(answers(True, f"w-{uuid.uuid4().hex[:12]}"))
    full = asyncio.run(answers(False, f"w-{uuid.uuid4().hex[:12]}"))
    assert fast == full
    assert [s for s, _ in fast] == [200, 200, 200, 200, 200, 401, 403, 403, 401, 404, 422, 422,
                                    422, 422, 403]


def test_fast_path_requests_are_counted_under_their_route(client: Any, model_name: str) -> None:
    assert client.post("/models", json={"name": model_name, **SPEC}).status_code == 201
    for i in range(3):
        assert client.post(f"/models/{model_name}/learn", json=event(i)).status_code == 200
    assert client.post(f"/models/{model_name}/learn", content=b'{"x": [1, 2, 3], "y": NaN}',
                       headers={"content-type": "application/json"}).status_code == 422
    text = client.get("/metrics").text

    def count(status: str) -> float:
        line = next(ln for ln in text.splitlines() if ln.startswith(
            'streamnorm_requests_total{method="POST",route="/models/{name}/learn",'
            f'status="{status}"}}'))
        return float(line.rsplit(" ", 1)[1])

    assert count("200") >= 3 and count("422") >= 1
