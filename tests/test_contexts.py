"""Bounded stream contexts (finding 5 of the abuse probe: 30,000 stream ids grew the state from
70 KB to 5.4 MB, never expired, and every snapshot re-serialized all of them): a cap, an idle
expiry, snapshots that write only the contexts that moved, and replays that drop exactly what
the writer dropped (``service.engine.contexts``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import redis

from models import ModelSpec, OnlineLearner
from service.redis.keys import model_key
from service.settings import Settings
from tests.test_writes import SPEC, served


def event(stream: str, i: int) -> dict[str, Any]:
    x = [((i * 7) % 11) / 11, ((i * 3) % 5) / 5 - 0.5, (i % 2) * 0.3]
    return {"stream": stream, "x": x, "y": x[0] - x[1]}


def test_a_cap_keeps_the_most_recent_streams_and_snapshots_write_only_what_moved(
        settings: Settings, name: str, redis_url: str) -> None:
    cap, every, n = 20, 10, 100
    settings = settings.model_copy(update={"max_streams": cap, "snapshot_every": every})
    events = [event(f"user-{i}@example.com", i) for i in range(n)]  # every event a new stream
    written: list[int] = []
    sizes: dict[int, int] = {}

    async def run() -> tuple[bytes, bytes]:
        async with served(settings) as (client, app):
            store = app.state.engine.store
            real = store.write_snapshot

            async def counted(*args: Any, **kwargs: Any) -> bool:
                contexts = args[4] if len(args) > 4 else kwargs["contexts"]
                written.append(len(contexts.put))
                sizes[args[2]] = len(args[3])
                return await real(*args, **kwargs)

            store.write_snapshot = counted
            assert (await client.post("/models", json={"name": name, **SPEC})).status_code \
                == 201
            for ev in events:
                assert (await client.post(f"/models/{name}/learn", json=ev)).status_code == 200
            first = (await client.get(f"/models/{name}/state")).content
        async with served(settings) as (client, _):  # another process: snapshot + contexts
            second = (await client.get(f"/models/{name}/state")).content
        return first, second

    first, second = asyncio.run(run())
    local = OnlineLearner(ModelSpec.model_validate({"name": name, **SPEC}))
    for ev in events:  # the oracle: the least recently moved context goes beyond the cap
        if ev["stream"] not in local.contexts and len(local.contexts) == cap:
            del local.contexts[next(iter(local.contexts))]
        local.learn_one(ev["x"], ev["y"], stream=ev["stream"])
    assert first == local.to_bytes() == second
    assert len(OnlineLearner.from_bytes(first).streams) == cap
    assert written[:n // every] == [every] * (n // every)  # each snapshot: the 10 that moved
    one = OnlineLearner(ModelSpec.model_validate({"name": name, **SPEC}))
    for ev in events:  # the same events on one stream: the same state size, but for the
        one.learn_one(ev["x"], ev["y"], stream="only")  # digits of the metrics in its header
    assert sizes[n] == len(local.to_bytes(contexts=False))
    assert abs(sizes[n] - len(one.to_bytes(contexts=False))) < 100  # 100 contexts: ~15 KB
    r = redis.Redis.from_url(redis_url)
    kept = {f"user-{i}@example.com" for i in range(n - cap, n)}
    assert {m.decode() for m in r.zrange(model_key(name, "streams"), 0, -1)} == kept
    ctx = {k.decode().split(":ctx:")[1] for k in r.scan_iter(match=model_key(name, "ctx:*"))}
    assert ctx == kept  # dropped contexts are deleted with the snapshot after their drop
    logged = [json.loads(f[b"event"]) for _, f in r.xrange(model_key(name, "log"))]
    assert logged[-1]["drop"] == [f"user-{n - cap - 1}@example.com"]


def test_an_idle_stream_restarts_from_a_zero_state_and_replays_agree(
        settings: Settings, name: str) -> None:
    settings = settings.model_copy(update={"stream_ttl_s": 0.5, "snapshot_every": 1000})
    probe = {"x": [0.3, -0.2, 0.1]}

    async def run() -> dict[str, Any]:
        async with served(settings) as (client, _):
            assert (await client.post("/models", json={"name": name, **SPEC})).status_code \
                == 201
            for i in range(6):
                ev = event("idle", i)
                assert (await client.post(f"/models/{name}/learn", json=ev)).status_code == 200
            out: dict[str, Any] = {}
            warm = await client.post(f"/models/{name}/predict", json={"stream": "idle", **probe})
            out["warm"] = warm.json()["prediction"]
            await asyncio.sleep(0.6)
            out["fresh"] = (await client.post(f"/models/{name}/predict",
                                              json={"stream": "never", **probe})).json()
            out["idle"] = (await client.post(f"/models/{name}/predict",
                                             json={"stream": "idle", **probe})).json()
            learned = await client.post(f"/models/{name}/learn",
                                        json={"stream": "idle", **probe, "y": 0.0})
            out["learned"] = learned.json()
            out["state"] = (await client.get(f"/models/{name}/state")).content
        async with served(settings) as (client, _):  # replays the log, drops included
            out["replayed"] = (await client.get(f"/models/{name}/state")).content
        return out

    out = asyncio.run(run())
    assert out["idle"]["prediction"] == out["fresh"]["prediction"] != out["warm"]
    assert out["learned"]["prediction"] == out["idle"]["prediction"]  # learn saw a zero state
    assert out["state"] == out["replayed"]
    restored = OnlineLearner.from_bytes(out["state"])
    assert restored.streams == ["idle"] and restored.contexts["idle"].inputs.shape[0] == 1


def test_a_prediction_never_changes_the_book(settings: Settings, name: str) -> None:
    """Predicting an expired stream uses a zero state but keeps its context until a learn
    drops it (a prediction changes nothing, in memory or in Redis)."""
    settings = settings.model_copy(update={"stream_ttl_s": 0.3})

    async def run() -> tuple[bytes, bytes]:
        async with served(settings) as (client, _):
            await client.post("/models", json={"name": name, **SPEC})
            await client.post(f"/models/{name}/learn", json=event("a", 1))
            await asyncio.sleep(0.4)
            before = (await client.get(f"/models/{name}/state")).content
            await client.post(f"/models/{name}/predict", json={"stream": "a", "x": [0, 0, 0]})
            return before, (await client.get(f"/models/{name}/state")).content

    before, after = asyncio.run(run())
    assert before == after and OnlineLearner.from_bytes(after).streams == ["a"]


def test_a_failed_snapshot_leaves_no_later_one_without_its_contexts(
        settings: Settings, name: str) -> None:
    """A snapshot takes the contexts that moved since the last one when it is queued. If one
    fails after the next was queued, the next must not be written without the failed one's
    contexts: another process would load a learner missing them (found in review)."""
    settings = settings.model_copy(update={"snapshot_every": 2})

    async def run() -> tuple[bytes, bytes]:
        async with served(settings) as (writer, app):
            store = app.state.engine.store
            real, calls = store.write_snapshot, {"n": 0}

            async def first_fails(*args: Any, **kwargs: Any) -> bool:
                calls["n"] += 1
                if calls["n"] == 1:  # slow, then lost: later snapshots are queued meanwhile
                    await asyncio.sleep(0.3)
                    raise redis.exceptions.ConnectionError("lost")
                return await real(*args, **kwargs)

            store.write_snapshot = first_fails
            assert (await writer.post("/models", json={"name": name, **SPEC})).status_code \
                == 201
            evs = [event(s, i) for i, s in enumerate("abcdef")]  # a, b in the failed one
            replies = await asyncio.gather(*(writer.post(f"/models/{name}/learn", json=ev)
                                             for ev in evs))
            assert all(r.status_code == 200 for r in replies)
            want = (await writer.get(f"/models/{name}/state")).content
            async with served(settings) as (reader, _):  # loads while the writer lives
                got = (await reader.get(f"/models/{name}/state")).content
        return want, got

    want, got = asyncio.run(run())
    assert OnlineLearner.from_bytes(want).streams == sorted("abcdef")
    assert got == want


def test_a_model_with_large_contexts_keeps_fewer_streams(settings: Settings, name: str) -> None:
    """STREAMNORM_MAX_CONTEXT_BYTES bounds the contexts of a model together: ~17 KB each
    (64 features, window 64) under a 64 KiB bound: 3 streams, not STREAMNORM_MAX_STREAMS."""
    wide = {**SPEC, "n_features": 64, "window": 64}
    settings = settings.model_copy(update={"max_context_bytes": 2**16})

    async def run() -> bytes:
        async with served(settings) as (client, _):
            assert (await client.post("/models", json={"name": name, **wide})).status_code \
                == 201
            for i in range(6):
                r = await client.post(f"/models/{name}/learn",
                                      json={"stream": f"s{i}", "x": [0.01 * i] * 64, "y": 0.1})
                assert r.status_code == 200, r.text
            return (await client.get(f"/models/{name}/state")).content

    assert OnlineLearner.from_bytes(asyncio.run(run())).streams == ["s3", "s4", "s5"]


def test_a_catch_up_cancelled_midway_leaves_no_half_counted_learner(
        settings: Settings, name: str, no_shutdown_snapshot: None) -> None:
    """A request cancelled while the compute thread replays a logged event: the event is in the
    learner but its version was never counted, so the next catch-up would apply it twice. The
    learner is dropped instead and loaded afresh (found in review)."""
    quiet = settings.model_copy(update={"snapshot_every": 1000})
    offload = quiet.model_copy(update={"inline_ms": 0.0})

    async def run() -> tuple[bytes, bytes]:
        async with served(quiet) as (client, app):
            assert (await client.post("/models", json={"name": name, **SPEC})).status_code \
                == 201
            for i in range(40):
                await client.post(f"/models/{name}/learn", json=event(f"s{i % 3}", i))
            want = (await client.get(f"/models/{name}/state")).content
        async with served(offload) as (client, app):
            probe = asyncio.create_task(app.state.engine.predict(
                name, {"stream": "s0", "x": [0.1, 0.2, 0.3]}))
            await asyncio.sleep(0.02)  # replaying on the compute thread by now
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            got = (await client.get(f"/models/{name}/state")).content
        return want, got

    want, got = asyncio.run(run())
    assert got == want

