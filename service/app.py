"""The FastAPI application (placeholder until the HTTP service issue: health and norms only)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from models import norms

__all__ = ["create_app"]


def create_app() -> FastAPI:
    """Build the app; the Redis-backed endpoints arrive with the service issue."""
    app = FastAPI(title="streamnorm", version="0.1.0",
                  description="Online learning for recurrent models with batch-free normalization")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/norms")
    def list_norms() -> list[dict[str, Any]]:
        """Every normalization method with its description and parameter schema."""
        return norms.describe()

    return app
