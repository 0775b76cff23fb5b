"""Shared test settings: one torch thread (as the service runs), a fixed seed per test, and a
real Redis server (plus the real ASGI app over it) for the service tests."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from fastapi.testclient import TestClient

from models.fast import switch
from service.api.app import create_app
from service.engine.replica import Replica
from service.redis.embedded import EmbeddedRedis
from service.redis.keys import model_key
from service.settings import Settings

torch.set_num_threads(1)

METHODS = ["none", "layer", "streaming", "online", "recurrent_batch", "batch_rnn", "weight",
           "cosine"]
CELLS = ["lstm", "gru", "rnn"]


def machine() -> dict[str, str]:
    """What decides the last bits of a float32 result here: the processor (torch, MKL and
    OpenBLAS pick their kernels by its model and instruction sets) and the libraries' versions.
    A fixture records it beside the answers it stores."""
    info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()
                if ":" in line) if Path("/proc/cpuinfo").exists() else {}
    flags = sorted(info.get("flags\t\t", info.get("flags", "")).split())
    return {"cpu": info.get("model name\t", platform.processor()).strip(),
            "flags": hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16],
            "torch": torch.__version__, "numpy": np.__version__}


# fixture writers that had no numpy kernel at all; every other one had models.fast.lstm_kernel
# and none of the later ones (issue 15's GRU, RNN and other-method windows, ``xsite``)
BEFORE_THE_KERNEL = {"c106db3"}


def as_written(commit: str) -> contextlib.AbstractContextManager[None]:
    """Only the kernels the fixture's writer at ``commit`` had: its arithmetic, so that its
    answers are exact on its kind of machine (the later kernels sum in another order)."""
    return switch.only() if commit in BEFORE_THE_KERNEL else switch.only("lstm_kernel")


def same_answer(got: Any, want: Any, recorded_on: dict[str, str] | None) -> bool:
    """``got == want`` on the kind of machine that recorded ``want``. Elsewhere the kernels
    differ and so may the last bits: a model written on an Intel VM predicted 0.4541562795639038
    there and 0.4541563391685486 on an AMD EPYC from the same bytes and events, whatever
    MKL_CBWR / OPENBLAS_CORETYPE / ATEN_CPU_CAPABILITY said; there, equal to float32 rounding
    grown over a stream: 5e-5 relative, 5e-6 absolute (measured: a Streaming Norm ``sample``
    GRU of schema-learner-1/b1bd267, its writer's code and path, gives a probability of
    0.1041037 on an Intel Xeon where the AMD EPYC gave 0.1041051, 1.3e-5 apart)."""
    if recorded_on == machine():
        return bool(got == want)
    return _close(got, want)


def _close(got: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(
            _close(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list | tuple) and len(got) == len(want) and all(
            _close(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=5e-5, abs_tol=5e-6)
    return bool(got == want)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


# -- a real Redis for the service tests ----------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` when set (tests only touch keys of models they create and delete them),
    else a ``redis-server`` of our own for the session (``service.redis.embedded``)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``redis-server`` of our own even when ``REDIS_URL`` is set: the stream tests share
    keys across models (partitions, the worker set) and empty the database between tests,
    which is only ever done to a server this session started."""
    with EmbeddedRedis(tmp_path_factory.mktemp("own-redis")) as server:
        yield server.url


@pytest.fixture
def db14(own_redis: str) -> Iterator[str]:
    """Database 14 of a Redis this session started, emptied before and after (stream keys are
    shared by every model)."""
    url = own_redis.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, api_keys=(), snapshot_every=100)


@pytest.fixture
def stream_settings(own_redis: str) -> Iterator[Settings]:
    """Settings for stream tests: 4 partitions, fast leases, a server this session started
    (flushed before and after: never REDIS_URL's)."""
    r = redis.Redis.from_url(own_redis)
    r.flushdb()
    yield Settings(redis_url=own_redis, partitions=4, heartbeat_s=0.1, partition_lease_ms=600,
                   worker_batch=32)
    r.flushdb()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The real ASGI app (lifespan included) over the session's Redis."""
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def model_name(client: TestClient) -> Iterator[str]:
    """A fresh model name; every key of the model is removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    client.delete(f"/models/{name}")


@pytest.fixture
def name(redis_url: str) -> Iterator[str]:
    """A fresh model name; every key of it is deleted afterwards."""
    model = f"m-{uuid.uuid4().hex[:12]}"
    yield model
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=model_key(model, "*"), count=1000))
    if keys:
        r.delete(*keys)


def contents(r: redis.Redis, key: bytes | str) -> tuple[bytes, Any]:
    """A key's type and content (not its DUMP bytes: a hash of more than 8 fields is a
    hashtable whose DUMP order moves as Redis rehashes it, the content the same); ``(b"none",
    None)`` for a key that is gone."""
    kind = r.type(key)
    read: dict[bytes, Callable[[Any], Any]] = {
        b"string": r.get, b"hash": r.hgetall, b"stream": r.xrange,
        b"zset": lambda k: r.zrange(k, 0, -1, withscores=True), b"none": lambda k: None}
    return kind, read[kind](key)


@pytest.fixture
def no_shutdown_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes that stop without snapshotting what they hold (the next one replays the log,
    as after a crash)."""

    async def keep_nothing(*_: Any) -> None:
        return None

    monkeypatch.setattr(Replica, "close", keep_nothing)
