"""``POST /events``: append learn events to the stream partitions the workers consume."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from models import InvalidInput, ModelSpec

from ..deps import EngineDep, WriteAccess
from ..errors import ApiError
from ..events import canonical_event
from ..schemas import EventsAccepted, EventsBody, errors
from ..streams import Streams, partition_of

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
async def post_events(request: Request, engine: EngineDep, body: EventsBody) -> dict[str, Any]:
    """Validate events against their models' specs and append them to the stream (202): a
    worker applies them in order, exactly once per ``event_id`` (events without one get their
    entry id). All or none are appended when valid; 429 when the stream is too far behind."""
    many = isinstance(body, list)
    events = body if isinstance(body, list) else [body]
    specs: dict[str, ModelSpec] = {}
    out: list[tuple[str, str]] = []
    for i, ev in enumerate(events):
        where = f"[{i}]." if many else ""
        if ev.model not in specs:
            try:
                specs[ev.model] = (await engine.spec(ev.model))[0]
            except ApiError as exc:
                raise ApiError(exc.status, exc.detail, f"{where}model") from None
        payload = ev.model_dump(exclude_unset=True, exclude={"model"}, warnings=False)
        try:
            event = canonical_event(specs[ev.model], payload)
        except InvalidInput as exc:
            raise ApiError(422, f"{where}{exc}", f"{where}{exc.field}") from None
        body_out = dict(event.body)
        if event.event_id is not None:
            body_out["event_id"] = event.event_id
        out.append((ev.model, json.dumps(body_out, separators=(",", ":"))))
    streams: Streams = request.app.state.streams
    limit = request.app.state.settings.max_backlog
    backlog = await streams.backlog({partition_of(model, streams.partitions)
                                     for model, _ in out})
    full = {p: n for p, n in backlog.items() if n >= limit}
    if full:
        raise ApiError(429, f"the stream is behind: partition(s) {sorted(full)} hold "
                            f"{max(full.values())} unacknowledged events (limit {limit}); "
                            "retry later", "body", headers={"Retry-After": "1"})
    appended = await streams.append(out)
    return {"ids": [eid for _, eid in appended], "partitions": [p for p, _ in appended]}
