"""FastAPI dependencies: the engine, the model name in the path, and write authorization."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Path, Request

from models.spec import NAME_PATTERN

from .engine import Engine
from .errors import ApiError
from .settings import Settings

__all__ = ["EngineDep", "ModelName", "check_writer", "require_writer"]


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


EngineDep = Annotated[Engine, Depends(get_engine)]
ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="model name",
                                examples=["demo"])]


async def require_writer(request: Request) -> None:
    """With ``STREAMNORM_API_KEYS`` set, writes need ``Authorization: Bearer <key>``."""
    check_writer(request.app.state.settings, request.headers.get("authorization", ""))


def check_writer(settings: Settings, header: str) -> None:
    """401 without a Bearer key, 403 with a wrong one (when keys are configured); keys are
    compared in constant time."""
    if not settings.api_keys:
        return
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "this endpoint needs 'Authorization: Bearer <api key>'",
                       "authorization", headers={"WWW-Authenticate": "Bearer"})
    given_b = given.strip().encode()
    ok = False
    for key in settings.api_keys:  # no early exit: every key is compared
        ok |= hmac.compare_digest(given_b, key.encode())
    if not ok:
        raise ApiError(403, "the API key is not valid", "authorization")
