"""A model stored by an earlier streamnorm is served by this one (design.md, "Stored state across
versions"): the fixture is a model as the service of commit 9210e7e left it in Redis
(``tests/data/make_service_fixture.py`` wrote it, with that code): a snapshot whose state holds
every context, ctx keys without an index, a log to replay."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from models import OnlineLearner
from models.persist import context_to_bytes
from service.api.app import create_app
from service.redis.keys import model_key
from service.settings import Settings

from .conftest import same_answer

FIXTURE = json.loads((Path(__file__).parent / "data" / "service-0.1.0.json").read_text())
NAME = FIXTURE["spec"]["name"]


def restore(r: redis.Redis, keys: dict[str, Any]) -> None:
    for key, item in keys.items():
        kind, value = item["type"], item["value"]
        if kind == "string":
            r.set(key, base64.b64decode(value))
        elif kind == "hash":
            r.hset(key, mapping=value)
        elif kind == "zset":
            r.zadd(key, {m: s for m, s in value})
        else:
            for entry_id, fields in value:
                r.xadd(key, fields, id=entry_id)


@pytest.fixture
def legacy(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    gone = list(r.scan_iter(match=f"sn:{{{NAME}}}:*"))
    if gone:
        r.delete(*gone)
    restore(r, FIXTURE["keys"])
    yield r
    r.delete(*r.scan_iter(match=f"sn:{{{NAME}}}:*"))


def test_a_model_stored_by_the_previous_version_serves_and_learns_on(
        legacy: redis.Redis, redis_url: str) -> None:
    assert legacy.hget(model_key(NAME, "meta"), "snapshot_version") == b"20"
    assert not legacy.exists(model_key(NAME, "streams"))  # the old layout had no index
    settings = Settings(redis_url=redis_url, snapshot_every=10)
    more = [{"stream": f"s{i % 3}", "x": [0.1 * i, -0.2, 0.05], "y": 0.3, "event_id": f"m-{i}"}
            for i in range(5)]
    with TestClient(create_app(settings)) as client:
        # the same predictions as the code that stored it gave (snapshot 20 + replay of 21..25)
        for probe, answer in zip(FIXTURE["probes"], FIXTURE["answers"], strict=True):
            got = client.post(f"/models/{NAME}/predict", json=probe).json()
            assert same_answer(got, answer, FIXTURE.get("machine")), (probe, got, answer)
        # a repeat of an event the old code applied (no digest was kept then): applied: false
        repeat = client.post(f"/models/{NAME}/learn", json=FIXTURE["events"][24]).json()
        assert repeat["applied"] is False and repeat["version"] == 25
        for ev in more:
            assert client.post(f"/models/{NAME}/learn", json=ev).json()["version"] > 25
        state = client.get(f"/models/{NAME}/state").content
    # the stored snapshot (version 20, every context inside) carried on here, independently:
    # a replay from scratch would equal it only on the kind of machine that wrote the fixture
    # (the kernels, and so the last bits, differ per processor: see conftest.same_answer)
    local = OnlineLearner.from_bytes(base64.b64decode(
        FIXTURE["keys"][model_key(NAME, "state")]["value"]))
    assert local.updates == 20 and local.streams == ["s0", "s1", "s2"]
    for ev in FIXTURE["events"][20:] + more:
        local.learn_one(ev["x"], ev["y"], stream=ev["stream"])
    assert state == local.to_bytes()  # every context carried over, bit for bit
    # the snapshot written on the way out is in today's layout: contexts under their own keys
    assert legacy.hget(model_key(NAME, "meta"), "snapshot_version") == b"30"
    assert legacy.get(model_key(NAME, "state")) == local.to_bytes(contexts=False)
    assert sorted(legacy.zrange(model_key(NAME, "streams"), 0, -1)) == [b"s0", b"s1", b"s2"]
    for stream in ("s0", "s1", "s2"):
        assert legacy.get(model_key(NAME, f"ctx:{stream}")) == context_to_bytes(local, stream)
    with TestClient(create_app(settings)) as client:  # and it loads from there
        assert client.get(f"/models/{NAME}/state").content == state
