"""Models: create, list, describe, delete, their prequential metrics and their state bytes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from models import ModelSpec

from .deps import EngineDep, ModelName, WriteAccess
from .live import resume_from, sse_response
from .schemas import Curve, ModelInfo, NewModel, errors

router = APIRouter(prefix="/models", tags=["models"])

_INFO_EXAMPLE = {"name": "demo", "task": "regression", "n_features": 3, "cell": "lstm",
                 "hidden_size": 32, "norm": {"method": "streaming", "preset": "online"},
                 "optimizer": {"name": "adam", "lr": 0.005, "clip": 1.0}, "window": 16,
                 "seed": 0, "version": 42, "updates": 42, "samples": 42,
                 "metrics": {"MAE": {"value": 0.31, "rolling": 0.27},
                             "RMSE": {"value": 0.4, "rolling": 0.35}, "n": 42}}
_SPEC_EXAMPLE = {"name": "demo", "task": "regression", "n_features": 3, "cell": "lstm",
                 "hidden_size": 32, "norm": {"method": "streaming", "preset": "online"},
                 "optimizer": {"name": "adam", "lr": 0.005}, "window": 16, "seed": 0}


def model_info(spec_json: str, meta: dict[str, str]) -> dict[str, Any]:
    """A model as ``GET /models/{name}`` shows it, from its spec JSON and meta."""
    return {**json.loads(spec_json), "version": int(meta["version"]),
            "updates": int(meta.get("updates", 0)), "samples": int(meta.get("samples", 0)),
            "metrics": json.loads(meta.get("metrics") or "null")}


@router.post("", status_code=201, response_model=ModelInfo,
             dependencies=[WriteAccess],
             responses={201: {"description": "created", "content": {"application/json": {
                 "example": {**_INFO_EXAMPLE, "version": 0, "updates": 0, "samples": 0,
                             "metrics": None}}}},
                        200: {"model": ModelInfo, "description": "a model of this name and "
                              "the very same spec exists (a retried create): it, as it is now"},
                        **errors(400, 409, 413, 422, 503,
                                 e409="the name is taken by a model of another spec",
                                 e422="invalid spec, or over a limit (the field is named)")},
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "example": _SPEC_EXAMPLE}}}})
async def create_model(body: NewModel, engine: EngineDep, response: Response
                       ) -> dict[str, Any]:
    """Create a model from its spec; it starts at version 0. Sending the same spec again is
    not an error (200, the model as it is), so a create whose reply was lost can be retried."""
    spec = ModelSpec.model_validate(body.model_dump())
    if await engine.create(spec):
        return {**spec.model_dump(mode="json"), "version": 0, "updates": 0, "samples": 0}
    response.status_code = 200
    return await get_model(spec.name, engine)


@router.get("", response_model=list[ModelInfo], responses={**errors(503), 200: {"content": {
    "application/json": {"example": [_INFO_EXAMPLE]}}}})
async def list_models(engine: EngineDep) -> list[dict[str, Any]]:
    """Every model with its spec and progress."""
    return [model_info(*found) for found in await engine.catalogue()]


@router.get("/{name}", response_model=ModelInfo, responses={
    **errors(404, 422, 503),
    200: {"content": {"application/json": {"example": _INFO_EXAMPLE}}}})
async def get_model(name: ModelName, engine: EngineDep) -> dict[str, Any]:
    """The spec, version, number of updates and prequential metrics."""
    return model_info(*await engine.describe(name))


@router.delete("/{name}", status_code=204, dependencies=[WriteAccess],
               responses=errors(404, 422, 503))
async def delete_model(name: ModelName, engine: EngineDep) -> Response:
    """Remove the model and every key it has in Redis."""
    await engine.delete(name)
    return Response(status_code=204)


@router.get("/{name}/metrics", responses={**errors(404, 422, 503), 200: {
    "content": {"application/json": {"example": {
        "version": 42, "updates": 42, "MAE": {"value": 0.31, "rolling": 0.27},
        "RMSE": {"value": 0.4, "rolling": 0.35}, "n": 42}}}}})
async def model_metrics(name: ModelName, engine: EngineDep) -> dict[str, Any]:
    """Prequential metrics (cumulative and over the last 100 samples), as River names them."""
    info = model_info(*await engine.describe(name))
    return {"version": info["version"], "updates": info["updates"], **(info["metrics"] or {})}


@router.get("/{name}/curve", response_model=Curve, responses={
    **errors(404, 422, 503), 200: {"content": {"application/json": {"example": {
        "points": [{"version": 10, "time": 1733500000.123, "loss": 0.21, "rejected": 0,
                    "metrics": {"MAE": {"value": 0.42, "rolling": 0.42},
                                "RMSE": {"value": 0.5, "rolling": 0.5}, "n": 10}}],
        "last": 10}}}}})
async def model_curve(name: ModelName, engine: EngineDep,
                      after: Annotated[int, Query(ge=0, le=2**62, description="points with "
                                                  "a version above this one")] = 0,
                      limit: Annotated[int, Query(ge=1, le=10_000,
                                                  description="points at most")] = 1000
                      ) -> dict[str, Any]:
    """The learning curve: one point per ``STREAMNORM_CURVE_EVERY`` updates (the loss mean
    since the previous point, the prequential metrics, the updates rolled back so far), in
    version order; ``last`` is the version to pass as ``after`` for the next page."""
    points = await engine.curve(name, after, limit)
    return {"points": points, "last": points[-1]["version"] if points else after}


@router.get("/{name}/live", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {"example": (
        'id: 10\ndata: {"version": 10, "time": 1733500000.123, "loss": 0.21, "rejected": 0, '
        '"metrics": {"MAE": {"value": 0.42, "rolling": 0.42}, "n": 10}}\n\n')}},
          "description": "Server-Sent Events: one `data:` line of JSON per new curve point "
                         "(its `id` is the version), a comment at least every 15 s"},
    **errors(404, 422, 503, e503="this process serves STREAMNORM_MAX_LIVE feeds already")})
async def model_live(name: ModelName, engine: EngineDep,
                     last_event_id: Annotated[str | None, Header(
                         alias="Last-Event-ID", description="resume after this version (an "
                         "EventSource sends it when it reconnects); default: new points "
                         "only")] = None) -> StreamingResponse:
    """The model's learning curve as it grows (Server-Sent Events), whichever process
    applies the updates; ends when the model is deleted."""
    resume = resume_from(last_event_id, 1)
    points = await engine.live(name, None if resume is None else resume[0])

    async def events() -> AsyncIterator[tuple[str, dict[str, Any]] | None]:
        async for item in points:
            yield None if item is None else (str(item[1]["version"]), item[1])

    return sse_response(f"following {name}", events())


@router.get("/{name}/state", response_class=Response, dependencies=[WriteAccess], responses={
    200: {"content": {"application/octet-stream": {}},
          "description": "OnlineLearner.to_bytes() at the version in X-Model-Version"},
    **errors(404, 422, 503)})
async def model_state(name: ModelName, engine: EngineDep) -> Response:
    """The model's whole state (safetensors + JSON), loadable offline with
    ``models.OnlineLearner.from_bytes``."""
    data, version = await engine.current_state(name)
    return Response(data, media_type="application/octet-stream",
                    headers={"X-Model-Version": str(version)})
