"""Predict and learn: the two calls on a model's data path.

Replies are encoded here directly (``response_model`` documents them): re-validating a reply
we just built would cost as much as the HTTP parsing itself on this hot path.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response

from ..engine import Engine, LearnOutcome
from .auth import Access, authorize
from .deps import EngineDep, ModelName, WriteAccess
from .errors import ApiError
from .schemas import (
    LabelRequest,
    LearnRequest,
    LearnResponse,
    PredictRequest,
    PredictResponse,
    errors,
)

router = APIRouter(prefix="/models/{name}", tags=["learning"])

_PREDICT_OK = {200: {"content": {"application/json": {"example": {
    "prediction": 1.37, "version": 42, "proba": None}}}}}
_LEARN_OK = {200: {"content": {"application/json": {"example": {
    "prediction": 1.37, "loss": 0.017, "version": 43, "applied": True, "proba": None}}}}}
_ERRORS = errors(400, 404, 413, 422, 503, e422="the input does not fit the model, or is over "
                                               "a limit (the field is named)")


def reply_json(content: dict[str, Any]) -> bytes:
    try:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # finite inputs far outside what the model saw can overflow it
        raise ApiError(422, "the model's output for this input is not finite (inputs far "
                            "outside the range it has learned from?)", "x") from None


def proba_json(proba: dict[int, float] | None) -> dict[str, float] | None:
    return None if proba is None else {str(k): v for k, v in proba.items()}


async def predict_reply(engine: Engine, name: str, body: PredictRequest) -> bytes:
    """The JSON reply of ``predict`` (also served by ``fastpath``); a kept prediction's
    carries its ``prediction_id``."""
    payload = body.model_dump(exclude_unset=True, warnings=False)
    if body.keeps():
        out, pid = await engine.keep(name, payload)
        return reply_json({"prediction": out.prediction, "version": out.version,
                           "proba": proba_json(out.proba), "prediction_id": pid})
    pred, proba, version = await engine.predict(name, payload)
    return reply_json({"prediction": pred, "version": version, "proba": proba_json(proba)})


def predict_access(body: PredictRequest) -> Access:
    """What a predict needs: keeping a prediction is a write (it moves the stream on)."""
    return Access.WRITE if body.keeps() else Access.READ


def _learned(out: LearnOutcome) -> bytes:
    return reply_json({"prediction": out.prediction, "loss": out.loss,
                       "version": out.version, "applied": out.applied,
                       "proba": proba_json(out.proba)})


async def learn_reply(engine: Engine, name: str, body: LearnRequest | LabelRequest) -> bytes:
    """The JSON reply of ``learn`` or ``label`` (also served by ``fastpath``)."""
    event = (await engine.prepare(name, [body.model_dump(exclude_unset=True, warnings=False)]))[0]
    if isinstance(event, Exception):  # refused before any lease: bad input costs nothing
        raise event
    out = (await engine.learn(name, [event]))[0]  # a batch of one, as the worker's
    if isinstance(out, Exception):
        raise out
    return _learned(out)


_KEPT_409 = errors(409, e409="prediction_id was kept for another input, or is spent (labelled "
                              "or expired)")


@router.post("/predict", response_model=PredictResponse,
             responses={**_PREDICT_OK, **_ERRORS, **_KEPT_409},
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "example": {"stream": "sensor-7", "x": [0.1, 0.2, 0.3]}}}}})
async def predict(name: ModelName, body: PredictRequest, engine: EngineDep,
                  request: Request) -> Response:
    """Exactly the prediction ``learn`` would return for this input now; changes nothing —
    unless ``keep`` (or a ``prediction_id``): then the prediction is kept for its delayed label
    (``POST /models/{name}/label``) and, in stream mode, ``x`` joins the stream's context."""
    authorize(request.app.state.settings, request.headers.get("authorization", ""),
              predict_access(body))
    return Response(await predict_reply(engine, name, body), media_type="application/json")


@router.post("/learn", response_model=LearnResponse, dependencies=[WriteAccess],
             responses={**_LEARN_OK, **_ERRORS, **errors(
                 409, e409="event_id names another event already applied")},
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "example": {"stream": "sensor-7", "x": [0.1, 0.2, 0.3], "y": 1.5,
                             "event_id": "evt-0001"}}}}})
async def learn(name: ModelName, body: LearnRequest, engine: EngineDep) -> Response:
    """Test-then-train: the prediction before the update, then one optimizer step, committed
    to Redis before the reply. A repeated ``event_id`` returns ``applied: false``."""
    return Response(await learn_reply(engine, name, body), media_type="application/json")


@router.post("/label", response_model=LearnResponse, dependencies=[WriteAccess],
             responses={**_LEARN_OK, **_ERRORS, **errors(
                 404, e404="no such model, or no kept prediction of that id (unknown or "
                           "expired: the field is prediction_id)")},
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "example": {"prediction_id": "forecast-0001", "y": 1.5}}}}})
async def label(name: ModelName, body: LabelRequest, engine: EngineDep) -> Response:
    """The delayed label of a kept prediction: one update on exactly the window that
    prediction saw (with today's weights), scoring the kept prediction (the reply's
    ``prediction`` and ``loss``). A second label of the same id: ``applied: false``."""
    return Response(await learn_reply(engine, name, body), media_type="application/json")
