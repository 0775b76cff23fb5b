"""FastAPI dependencies: the engine, the model name in the path, and access control."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPBearer

from ..engine import Engine
from .auth import Access, authorize
from .schemas import MODEL_NAME_PATTERN

__all__ = ["EngineDep", "ModelName", "ReadAccess", "WriteAccess"]


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


EngineDep = Annotated[Engine, Depends(get_engine)]
ModelName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, description="model name",
                                examples=["demo"])]

# declares the scheme in the OpenAPI document; the header itself is checked by ``authorize``
_BEARER = HTTPBearer(auto_error=False, description="an API key (STREAMNORM_API_KEYS for "
                                                   "writes, STREAMNORM_READ_KEYS to read)")


async def _read(request: Request, _: object = Security(_BEARER)) -> None:
    authorize(request.app.state.settings, request.headers.get("authorization", ""),
              Access.READ)


async def _write(request: Request, _: object = Security(_BEARER)) -> None:
    authorize(request.app.state.settings, request.headers.get("authorization", ""),
              Access.WRITE)


ReadAccess = Depends(_read)  # every route but the health probes (create_app adds it)
WriteAccess = Depends(_write)  # the routes that change a model, or export its state
