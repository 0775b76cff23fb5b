"""``POST /events`` and the stream worker, in process, on a real Redis: validation, backpressure,
ordering, dead letters, and a consumer that dies holding entries. The partitions are keys shared
by every model, so these tests run on a Redis this session started (``own_redis``, even when
``REDIS_URL`` is set) and empty it between tests."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis

from models import ModelSpec, OnlineLearner
from service.api.app import create_app
from service.redis.connect import close, connect
from service.redis.keys import model_key
from service.redis.streams import GROUP, Streams, partition_of
from service.settings import Settings
from service.worker import Worker

SPEC = {"task": "regression", "n_features": 3, "cell": "gru", "hidden_size": 6,
        "norm": {"method": "layer"}, "window": 3, "seed": 1}


def event(model: str, i: int, with_id: bool = True) -> dict[str, Any]:
    x = [((i * 5) % 7) / 7, ((i * 3) % 4) / 4 - 0.5, (i % 3) * 0.2]
    out = {"model": model, "stream": f"s{i % 2}", "x": x, "y": x[0] + x[2]}
    if with_id:
        out["event_id"] = f"{model}-{i}"
    return out


def replay(model: str, events: list[dict[str, Any]]) -> bytes:
    """An independent learner fed the model's events in the order they were appended."""
    learner = OnlineLearner(ModelSpec.model_validate({"name": model, **SPEC}))
    for ev in events:
        if ev["model"] == model:
            learner.learn_one(ev["x"], ev["y"], stream=ev["stream"])
    return learner.to_bytes()


@asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://t") as client:
        yield client, app


async def drain_with_worker(settings: Settings, streams: Streams, name: str) -> None:
    """Drain the stream with one worker of its own Redis client (as a worker process has)."""
    redis_w = connect(settings)
    try:
        await drain(streams, Worker(settings, redis_w, name))
    finally:
        await close(redis_w)


async def drain(streams: Streams, *workers: Worker, timeout: float = 30.0) -> None:
    """Run the workers until every partition's backlog is empty, then stop them."""
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while sum(s.backlog for s in await streams.stats()) > 0:
            assert asyncio.get_running_loop().time() < deadline, await streams.stats()
            await asyncio.sleep(0.05)
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks)


def test_post_events_validates_appends_and_pushes_back(stream_settings: Settings) -> None:
    settings = stream_settings.model_copy(update={"max_backlog": 5})
    r = redis.Redis.from_url(settings.redis_url)

    def lengths() -> list[int]:
        return [r.xlen(f"sn:events:{{{p}}}") for p in range(settings.partitions)]

    async def run() -> None:
        async with service(settings) as (client, _):
            assert (await client.post("/models", json={"name": "m1", **SPEC})).status_code \
                == 201
            one = await client.post("/events", json=event("m1", 0))
            assert one.status_code == 202
            assert one.json()["partitions"] == [partition_of("m1", settings.partitions)]
            many = await client.post("/events", json=[event("m1", i) for i in (1, 2)])
            assert many.status_code == 202 and len(many.json()["ids"]) == 2
            assert many.json()["ids"][0] < many.json()["ids"][1]  # appended in order
            before = lengths()
            bad = [
                ([event("m1", 3), {**event("m1", 4), "x": [1, 2]}], 422, "[1].x"),
                ([event("m1", 3), {**event("m1", 4), "x": [1, 2, float("inf")]}], 422,
                 "[1].x[2]"),
                ([event("nobody", 3)], 404, "[0].model"),
                ({**event("m1", 3), "y": "high"}, 422, "y"),
                # finding 6: a schema error inside a list named the union branch, not [i]
                ([event("m1", 3), {**event("m1", 4), "event_id": "has space"}], 422,
                 "[1].event_id"),
                ([event("m1", 3), {**event("m1", 4), "colour": "red"}], 422, "[1].colour"),
                ({"x": [1, 2, 3], "y": 1}, 422, "model"),
                ([], 422, "body"),
            ]
            for body, status, field in bad:
                res = await client.post("/events", content=json.dumps(body),  # Infinity too
                                        headers={"content-type": "application/json"})
                assert res.status_code == status, (body, res.text)
                assert res.json()["field"].startswith(field), (field, res.text)
            assert lengths() == before  # nothing appended by a refused request
            ok = await client.post("/events", json=[event("m1", i) for i in (3, 4)])
            assert ok.status_code == 202  # 5 events: at the bound
            full = await client.post("/events", json=event("m1", 5))
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            assert "behind" in full.json()["detail"]
            assert sum(lengths()) == 5

    asyncio.run(run())


def test_a_batch_redis_refuses_midway_appends_nothing(stream_settings: Settings) -> None:
    """Redis runs out of memory while a 1,000-event batch over several partitions is being
    appended: the reply is a 503 and no partition holds any of it (the XADDs go in one
    MULTI/EXEC), so a producer's retry cannot duplicate a prefix. Or Redis took all of it."""
    r = redis.Redis.from_url(stream_settings.redis_url)
    models = [f"oom{k}" for k in range(8)]
    assert len({partition_of(m, stream_settings.partitions) for m in models}) > 1

    def total() -> int:
        return sum(r.xlen(f"sn:events:{{{p}}}") for p in range(stream_settings.partitions))

    async def run() -> httpx.Response:
        async with service(stream_settings) as (client, _):
            for m in models:
                assert (await client.post("/models", json={"name": m, **SPEC})).status_code \
                    == 201
            batch = [event(models[i % len(models)], i) for i in range(1000)]
            used = int(r.info("memory")["used_memory"])
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", used + 100_000)  # the batch needs several times that
            try:
                return await client.post("/events", json=batch)
            finally:
                r.config_set("maxmemory", 0)

    res = asyncio.run(run())
    if res.status_code == 202:
        assert total() == 1000, "accepted, so all of it is there"
    else:
        assert res.status_code == 503, res.text
        assert total() == 0, "refused, so none of it is there"


def test_worker_applies_in_order_and_dead_letters_poison(stream_settings: Settings) -> None:
    models = ["a1", "b2", "c3"]
    events = [event(models[i % 3], i, with_id=i % 2 == 0) for i in range(90)]
    r = redis.Redis.from_url(stream_settings.redis_url)
    p_a = partition_of("a1", stream_settings.partitions)

    async def run() -> dict[str, bytes]:
        async with service(stream_settings) as (client, app):
            for m in models:
                assert (await client.post("/models", json={"name": m, **SPEC})).status_code \
                    == 201
            assert (await client.post("/events", json=events[:40])).status_code == 202
            poison = [  # what a producer writing to Redis directly could push
                {"model": "a1", "event": "{not json"},
                {"model": "nobody", "event": '{"x": [1, 2, 3], "y": 1}'},
                {"model": "a1", "event": '{"x": [1, 2], "y": 1}'},
                {"model": "a1", "event": '{"x": [1, 2, NaN], "y": 1}'},
                {"model": "a1", "event": '{"x": [1, 2, 3], "y": 1, "colour": "red"}'},
                {"model": "no spaces", "event": '{"x": [1, 2, 3], "y": 1}'},
            ]
            for fields in poison:
                r.xadd(f"sn:events:{{{p_a}}}", fields)
            assert (await client.post("/events", json=events[40:])).status_code == 202
            await drain_with_worker(stream_settings, app.state.engine.streams, "w1")
            return {m: (await client.get(f"/models/{m}/state")).content for m in models}

    states = asyncio.run(run())
    for m in models:
        assert int(r.hget(model_key(m, "meta"), "updates")) == 30
        assert states[m] == replay(m, events)
    dead = r.xrange(f"sn:events:{{{p_a}}}:dead")
    errors = [fields[b"error"].decode() for _, fields in dead]
    assert len(errors) == 6, errors
    for needle, error in zip(["invalid JSON", "no model named 'nobody'", "expected 3 values",
                              "must be finite", "colour", "not a model name"], errors,
                             strict=True):
        assert needle in error, (needle, error)
    assert all(fields[b"source_id"] for _, fields in dead)
    for p in range(stream_settings.partitions):
        assert r.xlen(f"sn:events:{{{p}}}") == 0
        assert r.xpending(f"sn:events:{{{p}}}", GROUP)["pending"] == 0
    for m in models:
        r.delete(*[model_key(m, k) for k in ("spec", "state", "meta", "seen", "log")])


def test_a_worker_takes_over_entries_a_dead_consumer_held(stream_settings: Settings) -> None:
    """A consumer read a batch, applied part of it and died without acknowledging: the next
    holder of the partition applies the rest once, in order."""
    model = f"t{uuid.uuid4().hex[:8]}"
    events = [event(model, i, with_id=False) for i in range(30)]
    r = redis.Redis.from_url(stream_settings.redis_url)

    async def run() -> bytes:
        async with service(stream_settings) as (client, app):
            assert (await client.post("/models", json={"name": model, **SPEC})).status_code \
                == 201
            assert (await client.post("/events", json=events)).status_code == 202
            p = partition_of(model, stream_settings.partitions)
            streams: Streams = app.state.engine.streams
            await streams.ensure_group(p)
            assert await streams.hold(p, "dead-token", 600)  # its lease, left to expire
            held = await streams.read(p, "dead-one", "dead-token", None, 20, 600)
            assert held is not None  # read, never acknowledged
            assert len(held) == 20
            dead = Worker(stream_settings, app.state.redis, "dead-one")
            first = [events[model] for _, events in await dead._prepared(p, held[:12])]
            assert all(not isinstance(o, Exception)  # applied, then it died
                       for o in await dead.engine.learn(model, first))
            await drain_with_worker(stream_settings, streams, "heir")
            return (await client.get(f"/models/{model}/state")).content

    state = asyncio.run(run())
    assert int(r.hget(model_key(model, "meta"), "updates")) == 30  # 12 were not re-applied
    assert state == replay(model, events)


def test_a_worker_stops_reading_a_partition_whose_lease_it_lost(
        stream_settings: Settings) -> None:
    """Another holder took the partition (this worker was paused past its lease): no new entry
    is read here, so the group cannot split a model's events between two workers."""
    model = f"f{uuid.uuid4().hex[:8]}"
    p = partition_of(model, stream_settings.partitions)
    r = redis.Redis.from_url(stream_settings.redis_url)

    async def run() -> tuple[int, int, int]:
        async with service(stream_settings) as (client, app):
            assert (await client.post("/models", json={"name": model, **SPEC})).status_code \
                == 201
            redis_w = connect(stream_settings)
            worker = Worker(stream_settings, redis_w, "fenced")
            task = asyncio.create_task(worker.run())
            try:
                while p not in worker.held:
                    await asyncio.sleep(0.02)
                r.set(f"sn:events:{{{p}}}:owner", "intruder", px=60_000)  # taken elsewhere
                await asyncio.sleep(0.3)
                events = [event(model, i) for i in range(10)]
                assert (await client.post("/events", json=events)).status_code == 202
                await asyncio.sleep(1.0)
                stats = (await app.state.engine.streams.stats())[p]
                r.delete(f"sn:events:{{{p}}}:owner")  # the intruder goes away
                await drain(app.state.engine.streams, worker)
                updates = int(r.hget(model_key(model, "meta"), "updates"))
                return stats.backlog, stats.pending, updates
            finally:
                worker.stop()
                await task
                await close(redis_w)

    backlog, pending, updates = asyncio.run(run())
    assert (backlog, pending) == (10, 0)  # nothing read while fenced out
    assert updates == 10  # taken back and applied once the lease was free


def test_an_unreadable_model_state_is_dead_lettered_not_retried_forever(
        stream_settings: Settings) -> None:
    good, broken = "g1", "b1"
    r = redis.Redis.from_url(stream_settings.redis_url)
    stream_settings = stream_settings.model_copy(update={"partitions": 1})

    async def run() -> None:
        async with service(stream_settings) as (client, app):
            for m in (good, broken):
                assert (await client.post("/models", json={"name": m, **SPEC})).status_code \
                    == 201
            r.set(model_key(broken, "state"), b"\x00not safetensors")
            events = [event((good, broken)[i % 2], i) for i in range(20)]
            assert (await client.post("/events", json=events)).status_code == 202
            await drain_with_worker(stream_settings, app.state.engine.streams, "w")

    asyncio.run(run())
    assert int(r.hget(model_key(good, "meta"), "updates")) == 10
    dead = r.xrange("sn:events:{0}:dead")
    assert len(dead) == 10
    assert all(b"StateError" in fields[b"error"] for _, fields in dead)


def test_an_event_id_reused_for_another_event_is_dead_lettered(
        stream_settings: Settings) -> None:
    """Finding 4 (stream side): an event whose `event_id` an earlier, different event already
    used was acknowledged and counted as applied, as a repeat is; it goes to the dead letters
    with the reason now. A true repeat (same body) is still acknowledged as applied once."""
    r = redis.Redis.from_url(stream_settings.redis_url)
    p = partition_of("m1", stream_settings.partitions)
    first = [event("m1", i) for i in range(6)]
    reused = {**event("m1", 7), "event_id": first[2]["event_id"]}  # another body, an old id
    repeat = first[4]  # the very same event again

    async def run() -> None:
        async with service(stream_settings) as (client, app):
            assert (await client.post("/models", json={"name": "m1", **SPEC})).status_code \
                == 201
            for batch in (first, [reused, repeat, event("m1", 8)]):
                assert (await client.post("/events", json=batch)).status_code == 202
                await drain_with_worker(stream_settings, app.state.engine.streams, "w")

    asyncio.run(run())
    assert int(r.hget(model_key("m1", "meta"), "updates")) == 7
    dead = r.xrange(f"sn:events:{{{p}}}:dead")
    assert len(dead) == 1
    fields = dead[0][1]
    assert json.loads(fields[b"event"])["x"] == reused["x"]
    assert b"Conflict" in fields[b"error"] and b"event_id" in fields[b"error"]
    assert int(r.get(f"sn:events:{{{p}}}:done")) == 8  # 6 + the repeat + event 8
    assert r.xlen(f"sn:events:{{{p}}}") == 0


def test_an_event_posted_to_the_api_is_validated_there_once(
        stream_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event enters once and is validated where it enters (design.md): ``POST /events``
    appends it canonical, marked with the model incarnation it fits (``valid_for``), and the
    worker takes it as it is (it was validated four times before). Validated again: an entry
    marked for an incarnation the name no longer has (re-created with another spec meanwhile:
    dead-lettered, it does not fit); and a marked entry that does not fit after all (a producer
    forging the mark) is refused by the learner and dead-lettered alone, the rest applied."""
    from service.engine import host

    checked: list[int] = []
    validate = host.canonical_event

    def counting(spec: ModelSpec, payload: dict[str, Any]) -> Any:
        checked.append(1)
        return validate(spec, payload)

    monkeypatch.setattr(host, "canonical_event", counting)
    settings = stream_settings.model_copy(update={"partitions": 1})
    r = redis.Redis.from_url(settings.redis_url)

    async def run() -> tuple[int, int]:
        async with service(settings) as (client, app):
            assert (await client.post("/models", json={"name": "m1", **SPEC})).status_code \
                == 201
            assert (await client.post("/events", json=[event("m1", i) for i in range(4)])
                    ).status_code == 202
            at_api = len(checked)
            fields = r.xrange("sn:events:{0}")[0][1]
            assert fields[b"valid_for"] == r.hget(model_key("m1", "meta"), "uid")
            await drain_with_worker(settings, app.state.engine.streams, "w")
            in_worker = len(checked) - at_api
            # a forged mark between good events: only it is refused
            uid = r.hget(model_key("m1", "meta"), "uid")
            r.xadd("sn:events:{0}", {"model": "m1", "valid_for": uid, "event": json.dumps(
                {"stream": "s0", "x": [0.1, 0.2], "y": 0.5, "event_id": "forged"})})
            # one not even of the canonical form (no y, a stray key): validated as a
            # producer's entry (found in review: it failed the whole batch of its model)
            r.xadd("sn:events:{0}", {"model": "m1", "valid_for": uid, "event": json.dumps(
                {"stream": "s0", "x": [0.1, 0.2, 0.3], "drop": ["s1"], "event_id": "odd"})})
            assert (await client.post("/events", json=[event("m1", 4)])).status_code == 202
            await drain_with_worker(settings, app.state.engine.streams, "w")
            # appended for m1 as it was; m1 re-created with 2 features before the worker ran
            assert (await client.post("/events", json=[event("m1", 5)])).status_code == 202
            assert (await client.delete("/models/m1")).status_code == 204
            assert (await client.post("/models", json={"name": "m1", **SPEC, "n_features": 2})
                    ).status_code == 201
            await drain_with_worker(settings, app.state.engine.streams, "w2")
            return at_api, in_worker

    at_api, in_worker = asyncio.run(run())
    assert (at_api, in_worker) == (4, 0)
    assert int(r.hget(model_key("m1", "meta"), "updates")) == 0  # the new incarnation
    dead = r.xrange("sn:events:{0}:dead")
    assert [json.loads(f[b"event"]).get("event_id") for _, f in dead] == ["forged", "odd",
                                                                         "m1-5"]
    errors = [f[b"error"].decode() for _, f in dead]
    assert "InvalidInput: x:" in errors[0] and "InvalidInput: x:" in errors[2], errors
    assert "event.drop" in errors[1], errors  # the schema of a learn body refused it
    assert int(r.get("sn:events:{0}:done")) == 5  # events 0-4 applied


def test_labels_through_the_stream(stream_settings: Settings) -> None:
    """A label as a stream event: validated at ``POST /events`` (its ``y``; a keep is not an
    event), applied once by the worker even when sent twice, an unknown id dead-lettered
    naming ``prediction_id``."""
    settings = stream_settings.model_copy(update={"partitions": 1})
    r = redis.Redis.from_url(settings.redis_url)

    async def run() -> dict[str, Any]:
        async with service(settings) as (client, app):
            assert (await client.post("/models", json={"name": "lb", **SPEC})).status_code \
                == 201
            kept = (await client.post("/models/lb/predict", json={
                "stream": "s", "x": [0.1, 0.2, 0.3], "prediction_id": "k1"})).json()
            bad = [({"model": "lb", "prediction_id": "k1", "y": "high"}, "y"),
                   ({"model": "lb", "prediction_id": "k1", "y": 1.0, "x": [1, 2, 3]},
                    "prediction_id"),
                   ({"model": "lb", "stream": "s", "x": [1, 2, 3], "keep": True, "y": 1.0},
                    "keep"),
                   ({"model": "lb", "prediction_id": "a b", "y": 1.0}, "prediction_id")]
            for body, field in bad:
                res = await client.post("/events", json=body)
                assert res.status_code == 422 and res.json()["field"] == field, res.text
            label = {"model": "lb", "prediction_id": "k1", "y": 0.5}
            unknown = {"model": "lb", "prediction_id": "nobody", "y": 0.5}
            assert (await client.post("/events", json=[label, unknown, label])).status_code \
                == 202
            await drain_with_worker(settings, app.state.engine.streams, "w")
            return {"kept": kept, "info": (await client.get("/models/lb")).json(),
                    "metrics": (await client.get("/metrics")).text}

    out = asyncio.run(run())
    assert out["info"]["updates"] == 1 and out["info"]["version"] == 2
    dead = r.xrange("sn:events:{0}:dead")
    assert len(dead) == 1
    assert "UnknownPrediction" in dead[0][1][b"error"].decode()
    assert "prediction_id" in dead[0][1][b"error"].decode()
    assert 'streamnorm_labels_total{model="lb",outcome="unknown"} 1.0' in out["metrics"]
    assert 'streamnorm_labels_total{model="lb",outcome="applied"} 1.0' in out["metrics"]
