"""``POST /events``: append learn events to the stream partitions the workers consume."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .deps import EngineDep, WriteAccess
from .errors import ApiError
from .schemas import EventsAccepted, EventsBody, errors

router = APIRouter(tags=["events"])

_EXAMPLE = [{"model": "demo", "stream": "sensor-7", "x": [0.1, 0.2, 0.3], "y": 1.5,
             "event_id": "evt-0001"},
            {"model": "demo", "stream": "sensor-7", "x": [0.2, 0.1, 0.0], "y": 1.2,
             "event_id": "evt-0002"}]


@router.post("/events", status_code=202, response_model=EventsAccepted,
             dependencies=[WriteAccess],
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "example": _EXAMPLE}}}},
             responses={202: {"content": {"application/json": {"example": {
                 "ids": ["1732500000000-0", "1732500000000-1"], "partitions": [5, 5]}}}},
                 **errors(400, 404, 413, 422, 429, 503,
                          e404="an event names an unknown model or race ([i].model, [i].race)",
                          e422="an event does not fit its model (the field is named: [i].x)",
                          e429="a partition's backlog is over STREAMNORM_MAX_BACKLOG; retry "
                               "after Retry-After seconds")})
async def post_events(engine: EngineDep, body: EventsBody) -> dict[str, Any]:
    """Validate events against their models' specs and append them to the stream (202): a
    worker applies them in order, exactly once per ``event_id`` (events without one get their
    entry id). An event naming a ``race`` instead of a ``model`` is applied to every member,
    once each. All or none are appended when valid; 429 when the stream is too far behind."""
    events = body if isinstance(body, list) else [body]
    numbered = isinstance(body, list)
    items = []
    for i, ev in enumerate(events):
        if (ev.model is None) == (ev.race is None):
            raise ApiError(422, "an event names one model or one race",
                           f"[{i}].model" if numbered else "model")
        kind, name = ("model", ev.model) if ev.model is not None else ("race", ev.race)
        items.append((kind, name, ev.model_dump(exclude_unset=True, exclude={"model", "race"},
                                                 warnings=False)))
    appended = await engine.submit(items, numbered=numbered)
    return {"ids": [eid for _, eid in appended], "partitions": [p for p, _ in appended]}
