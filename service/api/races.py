"""Races: create, list, describe, delete; learn (every member), predict (the leader), live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.responses import StreamingResponse

from ..engine import LearnOutcome, UnknownRace
from .auth import authorize
from .deps import EngineDep, WriteAccess
from .errors import status_of
from .learning import predict_access, proba_json, reply_json
from .live import resume_from, sse_response
from .schemas import (
    MODEL_NAME_PATTERN,
    LabelRequest,
    LearnRequest,
    NewRace,
    PredictRequest,
    RaceInfo,
    RaceLearnResponse,
    RacePredictResponse,
    errors,
)

router = APIRouter(prefix="/races", tags=["races"])

RaceName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, description="race name",
                               examples=["demo"])]
_E404 = "no race of that name (field `name`)"
_NEW = {"name": "demo", "spec": {"task": "regression", "n_features": 3, "hidden_size": 32},
        "members": [{"norm": "streaming"}, {"norm": "layer"}, {"norm": "none"}]}
_MEMBER = {"name": "demo.layer", "norm": "layer", "rank": 1, "version": 120, "updates": 120,
           "rolling": 0.27, "metrics": {"MAE": {"value": 0.31, "rolling": 0.27},
                                        "RMSE": {"value": 0.4, "rolling": 0.35}, "n": 120}}
_RACE = {"name": "demo", "metric": "MAE", "leader": "demo.layer", "min_updates": 100,
         "margin": 0.02, "spec": _NEW["spec"], "members": [_MEMBER]}
_LEARN = {"stream": "sensor-7", "x": [0.1, 0.2, 0.3], "y": 1.5, "event_id": "evt-0001"}


def _example(value: Any) -> dict[str, Any]:
    return {"content": {"application/json": {"example": value}}}


def _body(value: Any) -> dict[str, Any]:
    return {"requestBody": _example(value)}


@router.post("", status_code=201, response_model=RaceInfo, dependencies=[WriteAccess],
             openapi_extra=_body(_NEW),
             responses={201: {"description": "created", **_example(_RACE)},
                        200: {"model": RaceInfo, "description": "the very same race exists (a "
                              "retried create): it, as it is now", **_example(_RACE)},
                        **errors(400, 409, 413, 422, 503,
                                 e409="the race's name, or a member's, is taken",
                                 e422="an invalid spec or member (the field is named: "
                                      "spec.hidden_size, members[2].norm)")})
async def create_race(body: NewRace, engine: EngineDep, response: Response) -> dict[str, Any]:
    """Create a race and its member models (each an ordinary model), all or nothing."""
    request = body.model_dump(exclude_none=True)
    request["members"] = [m.model_dump(exclude_none=True) for m in body.members]
    if not await engine.races.create(request):
        response.status_code = 200
    return await engine.races.describe(body.name)


@router.get("", response_model=list[RaceInfo], responses={**errors(503),
                                                         200: _example([_RACE])})
async def list_races(engine: EngineDep) -> list[dict[str, Any]]:
    """Every race with its members' standings."""
    out = []
    for name in await engine.races.names():
        try:
            out.append(await engine.races.describe(name))
        except UnknownRace:  # deleted meanwhile
            continue
    return out


@router.get("/{name}", response_model=RaceInfo, responses={
    **errors(404, 422, 503, e404=_E404), 200: _example(_RACE)})
async def get_race(name: RaceName, engine: EngineDep) -> dict[str, Any]:
    """The race: its metric, its leader, and its members ranked by the rolling metric."""
    return await engine.races.describe(name)


@router.delete("/{name}", status_code=204, dependencies=[WriteAccess],
               responses=errors(404, 422, 503, e404=_E404))
async def delete_race(name: RaceName, engine: EngineDep) -> Response:
    """Delete the race and its member models (every key of each)."""
    await engine.races.delete(name)
    return Response(status_code=204)


def _result(out: Any) -> dict[str, Any]:
    if isinstance(out, LearnOutcome):
        return {"prediction": out.prediction, "loss": out.loss, "version": out.version,
                "applied": out.applied, "proba": proba_json(out.proba)}
    status, detail, field = status_of(out)
    return {"status": status, "detail": detail, "field": field}


@router.post("/{name}/learn", response_model=RaceLearnResponse, dependencies=[WriteAccess],
             openapi_extra=_body(_LEARN),
             responses={**errors(400, 404, 413, 422, 503, e404=_E404,
                                 e422="the input fits no member (the field is named)"),
                        200: _example({"results": {
                            "demo.layer": {"prediction": 1.37, "loss": 0.017, "version": 121,
                                           "applied": True, "proba": None},
                            "demo.none": {"status": 422, "detail": "update rejected: ...",
                                          "field": "y"}},
                            "leader": "demo.layer", "prediction": 1.37,
                            "model": "demo.layer"})})
async def race_learn(name: RaceName, body: LearnRequest, engine: EngineDep) -> Response:
    """Test-then-train every member on this event, each exactly once per ``event_id``; a
    member that fails (its update rejected, say) gets its error in ``results`` and holds no
    other back."""
    return await _race_learned(name, body, engine)


@router.post("/{name}/label", response_model=RaceLearnResponse, dependencies=[WriteAccess],
             openapi_extra=_body({"prediction_id": "forecast-0001", "y": 1.5}),
             responses=errors(400, 404, 413, 422, 503, e404=_E404))
async def race_label(name: RaceName, body: LabelRequest, engine: EngineDep) -> Response:
    """The delayed label of a prediction the race kept: every member trains on the window it
    kept, once (a member that never kept it answers 404 in ``results``)."""
    return await _race_learned(name, body, engine)


async def _race_learned(name: str, body: LearnRequest | LabelRequest, engine: EngineDep
                        ) -> Response:
    learned = await engine.races.learn(name, body.model_dump(exclude_unset=True,
                                                             warnings=False))
    served = learned.prediction
    return Response(reply_json({
        "results": {m: _result(out) for m, out in learned.results.items()},
        "leader": learned.leader or None,
        "prediction": served.prediction if isinstance(served, LearnOutcome) else None,
        "model": learned.serving}), media_type="application/json")


@router.post("/{name}/predict", response_model=RacePredictResponse,
             openapi_extra=_body({"stream": "sensor-7", "x": [0.1, 0.2, 0.3]}),
             responses={**errors(400, 404, 409, 413, 422, 503, e404=_E404,
                                 e409="prediction_id was kept for another input, or is "
                                      "spent"), 200: _example({
                 "prediction": 1.37, "version": 121, "proba": None, "model": "demo.layer"})})
async def race_predict(name: RaceName, body: PredictRequest, engine: EngineDep,
                       request: Request) -> Response:
    """The leader's prediction (the first member's until one has ``min_updates`` updates).
    With ``keep`` (or a ``prediction_id``) every member keeps its own prediction under one id,
    for one delayed label (``POST /races/{name}/label``) to train them all."""
    authorize(request.app.state.settings, request.headers.get("authorization", ""),
              predict_access(body))
    payload = body.model_dump(exclude_unset=True, warnings=False)
    if body.keeps():
        kept = await engine.races.keep(name, payload)
        out = kept.outcome
        reply = {"prediction": out.prediction, "version": out.version,
                 "proba": proba_json(out.proba), "model": kept.serving,
                 "prediction_id": kept.prediction_id}
        if kept.failed:
            reply["failed"] = {m: _result(exc) for m, exc in kept.failed.items()}
        return Response(reply_json(reply), media_type="application/json")
    member, (pred, proba, version) = await engine.races.predict(name, payload)
    return Response(reply_json({"prediction": pred, "version": version,
                                "proba": proba_json(proba), "model": member}),
                    media_type="application/json")


@router.get("/{name}/live", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {"example": (
        'id: 10,0\ndata: {"model": "demo.layer", "version": 10, "time": 1733500000.1, '
        '"loss": 0.21, "rejected": 0, "metrics": {"MAE": {"value": 0.4, "rolling": 0.4}}}\n\n')}},
          "description": "Server-Sent Events: one `data:` line per new curve point of any "
                         "member (with its `model`); the `id` lists each member's last "
                         "version, so `Last-Event-ID` resumes; a comment at least every 15 s"},
    **errors(404, 422, 503, e404=_E404)})
async def race_live(name: RaceName, engine: EngineDep,
                    last_event_id: Annotated[str | None, Header(
                        alias="Last-Event-ID", description="resume after these versions (an "
                        "EventSource sends it when it reconnects)")] = None
                    ) -> StreamingResponse:
    """Every member's learning curve as it grows, whichever process applies the updates;
    ends when the race is deleted."""
    points = await engine.races.live(name, resume_from(last_event_id,
                                                               engine.settings.max_race_members))

    async def events() -> AsyncIterator[tuple[str, dict[str, Any]] | None]:
        async for item in points:
            if item is None:
                yield None
            else:
                member, point, at = item
                yield ",".join(map(str, at)), {"model": member, **point}

    return sse_response(f"following race {name}", events())
