"""``POST /events``: append learn events to the stream partitions the workers consume."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .deps import EngineDep, WriteAccess
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
                          e404="an event names an unknown model ([i].model)",
                          e422="an event does not fit its model (the field is named: [i].x)",
                          e429="a partition's backlog is over STREAMNORM_MAX_BACKLOG; retry "
                               "after Retry-After seconds")})
async def post_events(engine: EngineDep, body: EventsBody) -> dict[str, Any]:
    """Validate events against their models' specs and append them to the stream (202): a
    worker applies them in order, exactly once per ``event_id`` (events without one get their
    entry id). All or none are appended when valid; 429 when the stream is too far behind."""
    events = body if isinstance(body, list) else [body]
    appended = await engine.submit([
        (ev.model, ev.model_dump(exclude_unset=True, exclude={"model"}, warnings=False))
        for ev in events], numbered=isinstance(body, list))
    return {"ids": [eid for _, eid in appended], "partitions": [p for p, _ in appended]}
