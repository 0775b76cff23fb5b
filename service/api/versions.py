"""A model's history: its retained versions, a rollback to one, a fork from one (design.md,
"Versions, rollback, fork")."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .catalog import model_info
from .deps import EngineDep, ModelName, WriteAccess
from .schemas import (
    ForkRequest,
    ModelInfo,
    RollbackRequest,
    RollbackResponse,
    VersionInfo,
    errors,
)

router = APIRouter(prefix="/models/{name}", tags=["versions"])


def _example(value: Any) -> dict[str, Any]:
    return {"content": {"application/json": {"example": value}}}


def _body(value: Any) -> dict[str, Any]:
    return {"requestBody": _example(value)}


@router.get("/versions", response_model=list[VersionInfo], responses={
    **errors(404, 422, 503), 200: _example([{"version": 300, "time": 1733580000.0,
                                             "updates": 300, "metrics": {"n": 300}}])})
async def versions(name: ModelName, engine: EngineDep) -> list[dict[str, Any]]:
    """The retained versions, newest first: the snapshots kept to roll back to or fork from
    (the last ``STREAMNORM_KEEP_SNAPSHOTS``; version 0 until it is trimmed)."""
    return await engine.versions(name)


@router.post("/rollback", response_model=RollbackResponse, dependencies=[WriteAccess],
             responses={**errors(404, 409, 422, 503, e404="no such model, or that version is "
                                                           "not kept (the field is version)"),
                        200: _example({"version": 431, "restored": 300, "applied": True})},
             openapi_extra=_body({"version": 300, "event_id": "rollback-after-bad-batch"}))
async def rollback(name: ModelName, body: RollbackRequest, engine: EngineDep
                   ) -> dict[str, Any]:
    """Weights, optimizer state, statistics and stream contexts as they were at a retained
    version. The version counter moves forward: a rollback is itself an update, logged and
    ordered with the others, applied once per ``event_id``."""
    out = await engine.rollback(name, body.version, body.event_id)
    return {"version": out.version, "restored": body.version, "applied": out.applied}


@router.post("/fork", status_code=201, response_model=ModelInfo, dependencies=[WriteAccess],
             responses=errors(404, 409, 422, 503, e409="the new name is taken"),
             openapi_extra=_body({"name": "demo-lr-low", "optimizer": {"lr": 0.001}}))
async def fork(name: ModelName, body: ForkRequest, engine: EngineDep) -> dict[str, Any]:
    """A new model starting from this one's state (latest, or a retained ``version``):
    weights, optimizer moments, statistics, stream contexts, counters and metrics, optionally
    with other optimizer settings. It starts at version 0 and learns on its own from then."""
    spec = await engine.fork(name, body.name, body.version, body.optimizer)
    return model_info(*await engine.describe(spec.name))
