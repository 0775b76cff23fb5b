"""The cost budget and the compute thread (finding 3 of the abuse probe: requests that stall
everyone). Estimates are checked against measurements in ``bench/cost.py``; here, that what is
over the limits is refused before it is allocated or computed, and that what is accepted and
heavy leaves the event loop free."""

from __future__ import annotations

import asyncio
import resource
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from models import ModelSpec, cost
from service.api.app import create_app
from service.settings import Settings
from tests.test_writes import served

# the probe's spec: it validated, blocked the loop 14-15 s and peaked at 5-7.6 GB of RSS, and
# its state is over Redis's 512 MB value limit, so no retry could ever succeed
HUGE = {"task": "regression", "n_features": 10_000, "hidden_size": 1024, "num_layers": 8,
        "window": 1024}
# heavy but accepted: a wide GRU (3.1 M multiply-adds a step, 38 MB of state with Adam's
# moments): ~1-3 ms a training step, ~0.5-1 ms a predicted one, bound by memory bandwidth
HEAVY = {"task": "regression", "n_features": 2, "cell": "gru", "hidden_size": 1024,
         "norm": {"method": "streaming"}, "window": 4}


@pytest.fixture
def fresh(client: TestClient) -> Iterator[str]:
    name = f"b-{uuid.uuid4().hex[:12]}"
    yield name
    client.delete(f"/models/{name}")


def test_a_spec_over_the_state_limit_is_refused_without_allocating_it(
        client: TestClient, fresh: str) -> None:
    """Finding 3: the probe's spec was accepted and built (GBs of RSS) before failing."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    r = client.post("/models", json={"name": fresh, **HUGE})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "n_features"
    assert "STREAMNORM_MAX_STATE_BYTES" in r.json()["detail"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # < ~100 MB
    assert client.get(f"/models/{fresh}").status_code == 404


# narrow, so that the per-step overhead, not the weights, drives its estimate (~0.1 ms a step)
NARROW = {**HEAVY, "hidden_size": 16}


@pytest.mark.parametrize(("change", "field", "limit"), [
    ({"hidden_size": 1024, "num_layers": 2}, "hidden_size", "STREAMNORM_MAX_STATE_BYTES"),
    ({"window": 1000}, "window", "STREAMNORM_MAX_UPDATE_MS"),
    ({"num_layers": 4, "window": 200}, "num_layers", "STREAMNORM_MAX_UPDATE_MS"),
])
def test_a_spec_over_a_limit_names_the_field_and_the_setting(
        settings: Settings, fresh: str, change: dict[str, Any], field: str, limit: str) -> None:
    """Over the update limit (50 ms here: no 2,048-step window of one layer costs the default
    2 s since every method runs a numpy window), the field named is what drives the estimate."""
    spec = {**NARROW, **change}
    with TestClient(create_app(settings.model_copy(update={"max_update_ms": 50}))) as c:
        r = c.post("/models", json={"name": fresh, **spec})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and limit in r.json()["detail"]


def test_the_limits_are_settings(settings: Settings, fresh: str) -> None:
    """A deployment that wants bigger models raises the limits (and one that wants smaller ones
    lowers them); the same spec is then accepted (refused)."""
    body = {"name": fresh, **HEAVY, "window": 1000}
    spec = ModelSpec.model_validate(body)
    assert settings.max_update_ms < cost.update_ms(spec, [(1000, 1)]) < 60_000
    roomy = settings.model_copy(update={"max_update_ms": 60_000})
    with TestClient(create_app(roomy)) as c:
        assert c.post("/models", json=body).status_code == 201
        assert c.delete(f"/models/{fresh}").status_code == 204
    tight = settings.model_copy(update={"max_steps": 100, "max_update_ms": 60_000})
    with TestClient(create_app(tight)) as c:
        r = c.post("/models", json=body)
        assert r.status_code == 422 and r.json()["field"] == "window"
        assert "STREAMNORM_MAX_STEPS" in r.json()["detail"]


def test_a_sequence_or_batch_over_the_limits_is_refused_before_it_is_read(
        client: TestClient, fresh: str) -> None:
    """Finding 3: a 10,000-step predict (no key needed then) froze /healthz for seconds."""
    assert client.post("/models", json={"name": fresh, **HEAVY}).status_code == 201
    long = [[0.1, 0.2]] * 2049
    for op in ("predict", "learn"):
        r = client.post(f"/models/{fresh}/{op}", json={"sequence": long, "y": 1.0}
                        if op == "learn" else {"sequence": long})
        assert r.status_code == 422 and r.json()["field"] == "sequence", r.text
        assert "2049 steps" in r.json()["detail"] and "STREAMNORM_MAX_STEPS" in r.json()["detail"]
    # not one long sequence: many that add up (the estimate counts each distinct length once)
    batch = [{"sequence": [[0.1, 0.2]] * (600 + i), "y": 0.5} for i in range(4)]
    r = client.post(f"/models/{fresh}/learn", json={"batch": batch})
    assert r.status_code == 422 and r.json()["field"] == "batch", r.text
    assert "STREAMNORM_MAX_UPDATE_MS" in r.json()["detail"]
    bad = [{"sequence": [[0.1, 0.2]] * 3, "y": 0.5}, {"sequence": long, "y": 0.5}]
    r = client.post(f"/models/{fresh}/learn", json={"batch": bad})
    assert r.status_code == 422 and r.json()["field"] == "batch[1].sequence", r.text
    info = client.get(f"/models/{fresh}").json()
    assert info["version"] == 0


def test_the_loop_answers_while_a_heavy_request_computes(settings: Settings, fresh: str) -> None:
    """Finding 3: learning and prediction ran on the event loop, so one heavy request held
    every other one. A heavy prediction now runs on the compute thread: /healthz, sent after
    it started, is answered before it ends."""
    steps = 400  # ~0.5-1 s of compute: the estimate is ~1.5 s, well over STREAMNORM_INLINE_MS
    spec = ModelSpec.model_validate({"name": fresh, **HEAVY})
    assert 200 < cost.predict_ms(spec, steps) < settings.max_update_ms

    async def run() -> list[str]:
        async with served(settings) as (client, _):
            assert (await client.post("/models", json={"name": fresh, **HEAVY})).status_code \
                == 201
            order: list[str] = []

            async def heavy() -> None:
                r = await client.post(f"/models/{fresh}/predict",
                                      json={"sequence": [[0.1, 0.2]] * steps})
                assert r.status_code == 200, r.text
                order.append("predict")

            async def probe() -> None:
                await asyncio.sleep(0.1)
                assert (await client.get("/healthz")).status_code == 200
                order.append("healthz")

            await asyncio.gather(heavy(), probe())
            await client.delete(f"/models/{fresh}")
            return order

    assert asyncio.run(run()) == ["healthz", "predict"]


def test_an_update_longer_than_the_lease_is_committed(settings: Settings, fresh: str) -> None:
    """Finding 3: a model whose one update took longer than the write lease answered 503
    "lease expired" to every learn, forever. The lease is renewed while the compute thread
    works, so the update is committed."""
    lease = settings.model_copy(update={"lease_ms": 200, "lock_wait_s": 30})
    batch = [{"sequence": [[0.1, 0.2]] * 300, "y": 0.5}]  # ~0.3-0.6 s: longer than the lease

    async def run() -> tuple[int, Any, float]:
        async with served(lease) as (client, _):
            assert (await client.post("/models", json={"name": fresh, **HEAVY})).status_code \
                == 201
            start = time.monotonic()
            r = await client.post(f"/models/{fresh}/learn", json={"batch": batch})
            took = time.monotonic() - start
            info = (await client.get(f"/models/{fresh}")).json()
            await client.delete(f"/models/{fresh}")
            return r.status_code, info, took

    status, info, took = asyncio.run(run())
    assert took > 0.2  # the update did outlast the lease
    assert status == 200 and info["version"] == 1 and info["updates"] == 1


def test_a_logged_update_over_todays_limits_still_replays(
        settings: Settings, fresh: str, no_shutdown_snapshot: None) -> None:
    """What a process with roomier limits accepted is in the log: a process with tighter ones
    replays it (the limits refuse requests, never history)."""
    roomy = settings.model_copy(update={"max_update_ms": 60_000, "snapshot_every": 1000})
    batch = [{"sequence": [[0.1, 0.2]] * (600 + i), "y": 0.5} for i in range(4)]

    async def run() -> tuple[bytes, bytes]:
        async with served(roomy) as (client, _):
            assert (await client.post("/models", json={"name": fresh, **HEAVY})).status_code \
                == 201
            r = await client.post(f"/models/{fresh}/learn", json={"batch": batch})
            assert r.status_code == 200, r.text
            await client.post(f"/models/{fresh}/learn", json={"stream": "s", "x": [0.1, 0.2],
                                                              "y": 0.3})
            first = (await client.get(f"/models/{fresh}/state")).content
        tight = settings.model_copy(update={"snapshot_every": 1000})
        async with served(tight) as (client, _):
            second = (await client.get(f"/models/{fresh}/state")).content
            await client.delete(f"/models/{fresh}")
        return first, second

    first, second = asyncio.run(run())
    assert first == second
    replayed = REGISTRY.get_sample_value("streamnorm_replayed_updates_total", {"model": fresh})
    assert replayed == 2  # both logged updates, the batch over today's limit included



def test_a_long_replay_under_the_lease_keeps_it(
        settings: Settings, fresh: str, no_shutdown_snapshot: None) -> None:
    """A process far behind on a heavy model replays the log under its lease before its own
    update: the lease is renewed meanwhile, or its commit would be refused every time (the
    replay starts again from the snapshot on each retry: 503 forever)."""
    short = settings.model_copy(update={"lease_ms": 200, "lock_wait_s": 30,
                                        "snapshot_every": 1000})
    batch = [{"sequence": [[0.1, 0.2]] * 150, "y": 0.5}]  # ~0.1-0.3 s each: 3 outlast a lease

    async def run() -> tuple[int, int]:
        async with served(short) as (client, _):
            assert (await client.post("/models", json={"name": fresh, **HEAVY})).status_code \
                == 201
            for _ in range(3):
                r = await client.post(f"/models/{fresh}/learn", json={"batch": batch})
                assert r.status_code == 200, r.text
        async with served(short) as (client, _):
            start = time.monotonic()
            r = await client.post(f"/models/{fresh}/learn", json={"stream": "s",
                                                                  "x": [0.1, 0.2], "y": 0.3})
            assert time.monotonic() - start > 0.2  # it did replay for longer than a lease
            version = r.json().get("version", -1)
            await client.delete(f"/models/{fresh}")
            return r.status_code, version

    assert asyncio.run(run()) == (200, 4)
