"""The dashboard (``GET /``): one HTML page and its own script and style files, shipped in the
package (``static/``) so it works offline; and the health of a model's normalization state,
which the page shows next to the model's curve.

The page itself is open (it holds no data); its data calls carry the read key the user types
in, so ``page`` is included without the key dependency and ``router`` with it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from .deps import EngineDep, ModelName
from .errors import ApiError
from .schemas import errors

__all__ = ["page", "router"]

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# every file of static/ read once: the page and its assets are small and never change at run
# time (no-cache still lets a browser revalidate after an upgrade)
_FILES = {entry.name: entry.read_bytes() for entry in resources.files(__package__)
          .joinpath("static").iterdir() if entry.is_file()}
_NO_CACHE = {"Cache-Control": "no-cache"}

page = APIRouter(include_in_schema=False)
router = APIRouter(tags=["models"])


@page.get("/", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    """The dashboard: models and races, their curves live, a model's normalization health."""
    return HTMLResponse(_FILES["dashboard.html"], headers=_NO_CACHE)


@page.get("/static/{file}")
async def static(file: str) -> Response:
    """The page's script and style files."""
    kind = _TYPES.get(file[file.rfind("."):]) if "." in file else None
    if kind is None or file not in _FILES:
        raise ApiError(404, f"no dashboard file named {file!r}", "file")
    return Response(_FILES[file], media_type=kind, headers=_NO_CACHE)


class BufferHealth(BaseModel):
    """One normalization buffer's summary (``models.health``)."""

    name: str = Field(description="the buffer's path in the network (Streaming Norm's memory "
                                  "by row: `.L`, `.S`, `.GL`, `.GS`)")
    shape: list[int]
    min: float | None = Field(description="over the finite elements; null if none is")
    max: float | None
    mean: float | None
    finite: bool = Field(description="whether every element is finite")


class NormState(BaseModel):
    """The health of a model's normalization statistics at a version."""

    version: int
    norm: dict[str, Any] = Field(description="the model's normalization method and parameters")
    buffers: list[BufferHealth] = Field(description="empty for methods without statistics "
                                                    "(layer, weight, cosine, none)")


@router.get("/models/{name}/norm-state", response_model=NormState, responses={
    **errors(404, 422, 503), 200: {"content": {"application/json": {"example": {
        "version": 42, "norm": {"method": "streaming", "preset": "online"},
        "buffers": [{"name": "stack.layers.0.nx.L", "shape": [2, 128], "min": -0.8,
                     "max": 1.9, "mean": 0.41, "finite": True}]}}}}})
async def norm_state(name: ModelName, engine: EngineDep) -> dict[str, Any]:
    """Range, mean and finiteness of each normalization buffer (running statistics, Streaming
    Norm's long- and short-term memories) as of the latest version: whether they stay sane."""
    buffers, version = await engine.norm_state(name)
    spec, _ = await engine.spec(name)
    return {"version": version, "norm": spec.norm.model_dump(mode="json"), "buffers": buffers}
