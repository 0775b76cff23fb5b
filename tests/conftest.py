"""Shared test settings: one torch thread (as the service runs), a fixed seed per test, and a
real Redis server (plus the real ASGI app over it) for the service tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.embedded import EmbeddedRedis
from service.settings import Settings

torch.set_num_threads(1)

METHODS = ["none", "layer", "streaming", "online", "recurrent_batch", "batch_rnn", "weight",
           "cosine"]
CELLS = ["lstm", "gru", "rnn"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


# -- a real Redis for the service tests ----------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` when set (tests only touch keys of models they create and delete them),
    else a ``redis-server`` of our own for the session (``service.embedded``)."""
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
