"""Errors a client can act on: one JSON shape, ``{"detail": message, "field": name}``.

The engine's domain errors (``service.engine.errors``), invalid input and storage failures are
mapped to statuses here, and only here."""

from __future__ import annotations

import logging

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from models import InvalidInput, StateError

from ..engine.errors import (
    Backlogged,
    Busy,
    Conflict,
    EngineError,
    Rejected,
    Unavailable,
    UnknownModel,
    UnknownPrediction,
    UnknownRace,
    UnknownVersion,
)
from ..redis.store import LeaseLost
from .auth import AccessDenied
from .schemas import EVENTS_TAGS

__all__ = ["ApiError", "install_handlers", "status_of"]

log = logging.getLogger("streamnorm")


# the status of each domain error, and whether a retry may help (then Retry-After: 1)
_STATUS: dict[type[EngineError], tuple[int, bool]] = {
    UnknownModel: (404, False), UnknownRace: (404, False), UnknownPrediction: (404, False),
    UnknownVersion: (404, False), Conflict: (409, False), Rejected: (422, False),
    Backlogged: (429, True), Busy: (503, True), Unavailable: (503, True)}


class ApiError(Exception):
    """An error of the HTTP layer itself, with its status, a message and the field."""

    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field = status, detail, field


def _body(detail: str, field: str | None) -> dict[str, str | None]:
    return {"detail": detail, "field": field}


def _loc(loc: tuple[int | str, ...]) -> str:
    """``("body", "many", 3, "x", 2)`` → ``[3].x[2]`` (a body that is not an object: ``body``)."""
    parts = [p for p in loc if p not in ("body", "path", "query", "header")]
    if loc[:1] == ("body",) and parts[:1] and parts[0] in EVENTS_TAGS:
        parts = parts[1:]  # which branch of POST /events' body: not a field
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or ("body" if loc[:1] == ("body",) else ".".join(str(p) for p in loc))


def _mapped(exc: EngineError) -> tuple[int, bool]:
    """The status of a domain error (by the first class of its MRO mapped) and whether a retry
    may help; 500 for an unmapped one."""
    return next((_STATUS[c] for c in type(exc).__mro__ if c in _STATUS), (500, False))


def status_of(exc: Exception) -> tuple[int, str, str | None]:
    """The status, message and field a failure of one request maps to (the handlers below,
    and a race's per-member results, use it)."""
    if isinstance(exc, EngineError):
        return _mapped(exc)[0], exc.detail, exc.field
    if isinstance(exc, InvalidInput):
        return 422, str(exc), exc.field
    if isinstance(exc, LeaseLost | redis.exceptions.RedisError):
        return 503, f"not committed ({type(exc).__name__}: {exc}); retry it", None
    log.error("unexpected error of a race member: %r", exc)
    return 500, f"internal error ({type(exc).__name__})", None


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed(request: Request) -> list[str]:
    """Every method some route of the app answers on this path (for a 405's ``Allow``)."""
    routes = request.app.router.routes
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
                   for route in routes)]


def install_handlers(app: FastAPI) -> None:
    """Map every failure to a 4xx/503 with a message; nothing leaks a traceback."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_body(exc.detail, exc.field), exc.status)

    @app.exception_handler(EngineError)
    async def engine_error(_: Request, exc: EngineError) -> JSONResponse:
        status, retry = _mapped(exc)
        return JSONResponse(_body(exc.detail, exc.field), status,
                            headers={"Retry-After": "1"} if retry else None)

    @app.exception_handler(AccessDenied)
    async def access_denied(_: Request, exc: AccessDenied) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(_body(exc.detail, "authorization"), exc.status, headers=headers)

    @app.exception_handler(InvalidInput)
    async def invalid_input(_: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse(_body(str(exc), exc.field), 422)

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _loc(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid"))
        if first.get("type") == "json_invalid":
            field, msg = "body", f"invalid JSON: {first.get('ctx', {}).get('error', msg)}"
        return JSONResponse({**_body(f"{field}: {msg}", field),
                             "errors": [{"field": _loc(tuple(e.get("loc", ()))),
                                         "message": str(e.get("msg"))} for e in errors[:20]]},
                            422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, ValueError | RecursionError):
            # FastAPI turns a body json.loads rejects oddly (too many digits, bad UTF-8, deep
            # nesting) into a bare 400; it is invalid JSON like any other
            msg = "nested too deeply" if isinstance(cause, RecursionError) else str(cause)[:200]
            return JSONResponse(_body(f"body: invalid JSON: {msg}", "body"), 422)
        field = "body" if exc.status_code == 413 else None
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names only the methods of the first route found
            headers = {**(headers or {}), "Allow": ", ".join(_allowed(request))}
        return JSONResponse(_body(str(exc.detail), field), exc.status_code, headers=headers)

    @app.exception_handler(redis.exceptions.RedisError)
    async def redis_down(_: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        log.warning("redis error: %r", exc)
        return JSONResponse(_body(f"Redis is unavailable ({type(exc).__name__}); retry later",
                                  None), 503, headers={"Retry-After": "1"})

    @app.exception_handler(LeaseLost)
    async def lease_lost(_: Request, exc: LeaseLost) -> JSONResponse:
        return JSONResponse(_body(f"the update was not committed ({exc}); retry it (an "
                                  "event_id makes retries safe)", None), 503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(StateError)
    async def bad_state(_: Request, exc: StateError) -> JSONResponse:
        log.error("stored state unreadable: %s", exc)
        return JSONResponse(_body(f"the stored model state is unreadable: {exc}", None), 500)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(_body(f"internal error ({type(exc).__name__})", None), 500)
