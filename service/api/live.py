"""What the live feeds of models and races share: the ``Last-Event-ID`` they resume from, and
the Server-Sent Events response (an ``id:`` and a ``data:`` line per point, a comment as
keep-alive)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from .errors import ApiError

__all__ = ["resume_from", "sse_response"]


def resume_from(last_event_id: str | None, count: int) -> list[int] | None:
    """The versions a feed resumes after (a model's: one; a race's: one per member, comma
    separated, as its ``id`` lines give them); ``None`` without the header. 422 naming
    ``last-event-id`` for anything but whole numbers, at most ``count`` of them."""
    if last_event_id is None:
        return None
    parts = last_event_id.split(",")
    if len(parts) > count or not all(
            p.isascii() and p.isdigit() and len(p) <= 18 for p in parts):
        raise ApiError(422, "Last-Event-ID: must be the id of a point this feed sent (a "
                            "version, whole number >= 0; a race's: one per member, comma "
                            "separated)", "last-event-id")
    return [int(p) for p in parts]


def sse_response(intro: str, events: AsyncIterator[tuple[str, dict[str, Any]] | None]
                 ) -> StreamingResponse:
    """Server-Sent Events of ``(id, data)`` pairs (``None``: a keep-alive comment), after a
    comment saying what is followed."""

    async def stream() -> AsyncIterator[bytes]:
        yield f": {intro}\n\n".encode()
        async for item in events:
            if item is None:
                yield b": keep-alive\n\n"
            else:
                yield f"id: {item[0]}\ndata: {json.dumps(item[1])}\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
