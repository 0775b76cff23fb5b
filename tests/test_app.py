"""The placeholder app through the real ASGI stack: health and the norms listing."""

from __future__ import annotations

from fastapi.testclient import TestClient

from models import NORMS
from service.app import create_app


def test_healthz_and_norms_listing() -> None:
    client = TestClient(create_app())
    assert client.get("/healthz").json() == {"status": "ok"}
    listing = client.get("/norms").json()
    assert [entry["method"] for entry in listing] == list(NORMS)
    streaming = next(e for e in listing if e["method"] == "streaming")
    assert streaming["params_schema"]["properties"]["preset"]["default"] == "online"
