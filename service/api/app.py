"""The FastAPI application: factory, lifespan (one Redis pool), limits, metrics, routers."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import telemetry as metrics
from ..engine import Engine
from ..lifecycle import follow_supervisor
from ..redis.connect import close, connect
from ..redis.store import Store
from ..redis.streams import Streams
from ..settings import Settings
from . import catalog, dashboard, ingest, learning, races, system, versions
from .auth import keys_configured
from .deps import ReadAccess
from .errors import install_handlers
from .fastpath import ROUTE_KEY, FastPath
from .schemas import errors

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Redis comes from ``settings.redis_url`` (``streamnorm serve`` fills it
    in with an embedded server when the environment names none)."""
    settings = settings or Settings()
    torch.set_num_threads(1)  # deterministic training (replay relies on it); scale by process

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        follow_supervisor()  # a uvicorn worker process of `serve --workers N` dies with it
        redis = connect(settings)
        app.state.redis = redis
        app.state.engine = Engine(Store.configured(redis, settings),
                                  Streams(redis, settings.partitions), settings)
        # what exists now (torch, the app) lives for the whole process: keep it out of the
        # collector's full passes, which otherwise stall every request for ~0.1 s
        gc.collect()
        gc.freeze()
        # a learn allocates hundreds of short-lived objects (autograd nodes, tensors) that
        # refcounting frees; young-generation passes that often find nothing cost ~5 % here
        gc.set_threshold(20_000, 20, 100)
        try:
            yield
        finally:
            await app.state.engine.close()
            await close(redis)

    app = FastAPI(
        title="streamnorm", version="0.1.0", lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=None,  # served by system.router, with keys
        description="Online learning for recurrent models (LSTM, GRU, RNN) with batch-free "
                    "normalization, one sample at a time, state in Redis.")
    app.state.settings = settings
    install_handlers(app)
    app.include_router(system.health)  # the probes: open
    app.include_router(dashboard.page)  # the page: open (its data calls carry the key)
    app.include_router(dashboard.router, dependencies=[ReadAccess], responses=errors(401, 403))
    for router in (learning.router, catalog.router, versions.router, races.router,
                   ingest.router, system.router):
        app.include_router(router, dependencies=[ReadAccess],  # a key when keys are set
                           responses=errors(401, 403))
    _document_auth(app, keys_configured(settings))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(FastPath)  # the hot calls skip the rest
    app.add_middleware(RequestMetrics)  # outermost: both doors are counted alike
    return app


def _document_auth(app: FastAPI, required: bool) -> None:
    """The OpenAPI document names the Bearer scheme only where keys are configured (an open
    server would otherwise claim an authentication it does not ask for)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        if not required:
            schema.get("components", {}).pop("securitySchemes", None)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.pop("security", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class BodyLimit:
    """413 for bodies over ``limit`` bytes, by Content-Length or while streaming, before the
    application reads any of it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and not length.isdigit():
            await _reject(send, 400, b"Content-Length is not a number", b"content-length")
            return
        if length is not None and int(length) > self.limit:
            await _reject(send, 413, b"request body is larger than %d bytes" % self.limit,
                          b"body")
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # an HTTPException, so FastAPI's body parsing re-raises it
                    raise HTTPException(413, f"request body is larger than {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


async def _reject(send: Send, status: int, detail: bytes, field: bytes) -> None:
    body = b'{"detail":"%s","field":"%s"}' % (detail, field)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Counts and times every request by route template (``/models/{name}/learn``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), None

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        except BaseException:
            _count(scope, status or 500, start)
            raise
        if status is not None:  # else the client went away before a reply: nothing to count
            _count(scope, status, start)


def _count(scope: Scope, status: int, start: float) -> None:
    path = scope.get(ROUTE_KEY) or getattr(scope.get("route"), "path", "unmatched")
    metrics.REQUESTS.labels(path, scope["method"], str(status)).inc()
    metrics.LATENCY.labels(path).observe(time.perf_counter() - start)
