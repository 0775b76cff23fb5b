"""``POST /models/{name}/predict`` and ``/learn`` served without FastAPI's routing, dependency
and body-parsing layers, which cost ~0.2 ms of a ~1 ms learn on the CPUs this runs on.

Only a request that is plainly well formed takes this path: a JSON body with a Content-Length
within the limit, a valid model name, a body the request schema accepts. Anything else goes,
body and all, to the full application, which answers it as documented, so there is one error
contract. The engine call and the reply are the routes' own (``learning.predict_reply`` /
``learn_reply``), and an error they raise is answered by the application's exception handler
for it. It sits inside ``RequestMetrics`` and names the route it served in the scope, so a
request is counted and timed under its route whichever door it took.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import Access, authorize
from .learning import learn_reply, predict_access, predict_reply
from .schemas import MODEL_NAME_PATTERN, LearnRequest, PredictRequest

__all__ = ["ROUTE_KEY", "FastPath"]

ROUTE_KEY = "streamnorm.route"  # the route template a request served here is counted under


_PATH = re.compile(r"/models/(" + MODEL_NAME_PATTERN.strip("^$") + r")/(learn|predict)")
_SCHEMA: dict[str, type[BaseModel]] = {"learn": LearnRequest, "predict": PredictRequest}
_HEADERS = (b"content-type", b"content-length", b"authorization")
_ROUTE = {"learn": "/models/{name}/learn", "predict": "/models/{name}/predict"}
# bodies above this are parsed with orjson (~4x faster); below, json.loads, as the full app
# does, so that even the messages of odd inputs (integers past 64 bits) are the same
_LARGE = 65_536


class FastPath:
    """ASGI middleware: the hot calls directly, everything else to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.fullmatch(scope["path"]) if scope["type"] == "http" \
            and scope["method"] == "POST" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        limit = app.state.settings.max_body_bytes
        found: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            if key in _HEADERS and key not in found:  # the first, as Starlette reads them
                found[key] = value
        ctype, length = found.get(b"content-type", b""), found.get(b"content-length", b"")
        auth = found.get(b"authorization", b"").decode("latin-1")
        if ctype.partition(b";")[0].strip().lower() != b"application/json" \
                or not length.isdigit() or int(length) > limit:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                break
        body = b"".join(chunks)
        name, op = match.group(1), match.group(2)
        try:  # a large body: orjson (json.loads of 1 MB holds the GIL, so the loop, ~35 ms)
            parsed = orjson.loads(body) if len(body) > _LARGE else json.loads(body)
            request = _SCHEMA[op].model_validate(parsed)
        except Exception:  # the full application names what is wrong
            await self.app(scope, _replay(body, more, receive), send)
            return
        scope[ROUTE_KEY] = _ROUTE[op]  # what RequestMetrics labels the request with
        try:
            engine = app.state.engine
            if op == "learn":
                authorize(app.state.settings, auth, Access.WRITE)
                reply = await learn_reply(engine, name, request)  # type: ignore[arg-type]
            else:
                authorize(app.state.settings, auth, predict_access(request))  # type: ignore[arg-type]
                reply = await predict_reply(engine, name, request)  # type: ignore[arg-type]
        except Exception as exc:
            response = await _handler(app, exc)(Request(scope), exc)
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(reply)).encode())]})
        await send({"type": "http.response.body", "body": reply})


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    """``receive`` as it was before this middleware read ``body`` from it."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replayed


def _handler(app: Any, exc: Exception) -> Callable[..., Any]:
    """The application's exception handler for ``exc`` (the nearest class in its MRO)."""
    handlers = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]  # type: ignore[no-any-return]
    return handlers[Exception]  # type: ignore[no-any-return]
