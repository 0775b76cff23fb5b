"""Process health and readiness (open: probes carry no key), Prometheus metrics, the catalogue
of normalization methods, and the OpenAPI document with its page (behind keys when set)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from models import norms

from .. import telemetry as metrics
from .deps import EngineDep

log = logging.getLogger("streamnorm")

health = APIRouter(tags=["system"])
router = APIRouter(tags=["system"])


@health.get("/healthz", responses={200: {"content": {"application/json": {
    "example": {"status": "ok"}}}}})
async def healthz() -> dict[str, str]:
    """The process is alive (does not touch Redis)."""
    return {"status": "ok"}


@health.get("/readyz", responses={
    200: {"content": {"application/json": {"example": {"status": "ok"}}}},
    503: {"description": "Redis is unreachable", "content": {"application/json": {
        "example": {"status": "unavailable", "detail": "ConnectionError"}}}}})
async def readyz(engine: EngineDep) -> Response:
    """Ready when Redis answers PING."""
    try:
        await engine.ping()
    except Exception as exc:  # any failure to reach Redis means not ready
        return JSONResponse({"status": "unavailable", "detail": type(exc).__name__}, 503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics", response_class=Response, responses={200: {"content": {
    "text/plain": {"example": "streamnorm_updates_applied_total{model=\"demo\"} 42.0\n"}}}})
async def prometheus(engine: EngineDep) -> Response:
    """Prometheus text: requests and latency per route, updates, lease waits, state loads,
    and each stream partition's backlog (lag), pending and dead-letter counts."""
    try:
        for p, stats in enumerate(await engine.stream_stats()):
            metrics.BACKLOG.labels(str(p)).set(stats.backlog)
            metrics.PENDING.labels(str(p)).set(stats.pending)
            metrics.DEAD.labels(str(p)).set(stats.dead)
            metrics.APPLIED.labels(str(p)).set(stats.done)
    except Exception as exc:  # Redis away: the process's own metrics still matter
        log.warning("stream stats unavailable: %r", exc)
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)


@router.get("/norms", responses={200: {"content": {"application/json": {"example": [
    {"method": "layer", "description": "Layer Normalization (Ba et al. 2016) ...",
     "params_schema": {"type": "object", "properties": {"eps": {"default": 1e-05}}}}]}}}})
async def list_norms() -> list[dict[str, Any]]:
    """Every normalization method with its description and parameter JSON schema."""
    return norms.describe()


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI document of this server."""
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    """Swagger UI over ``/openapi.json``."""
    return get_swagger_ui_html(openapi_url="/openapi.json", title="streamnorm API")
