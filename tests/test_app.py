"""The app through the real ASGI stack: health, readiness, the norms listing, OpenAPI."""

from __future__ import annotations

from fastapi.testclient import TestClient

from models import NORMS
from service.api.app import create_app
from service.settings import Settings


def test_healthz_readyz_and_norms_listing(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}
    listing = client.get("/norms").json()
    assert [entry["method"] for entry in listing] == list(NORMS)
    streaming = next(e for e in listing if e["method"] == "streaming")
    assert streaming["params_schema"]["properties"]["preset"]["default"] == "online"


def test_readyz_is_503_when_redis_is_unreachable() -> None:
    with TestClient(create_app(Settings(redis_url="redis://127.0.0.1:1/0",
                                        redis_timeout_s=0.5))) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        r = client.get("/models/demo")
        assert r.status_code == 503 and "Redis" in r.json()["detail"]


def test_openapi_documents_every_endpoint_with_an_example(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path, method in [("/models", "post"), ("/models/{name}/learn", "post"),
                         ("/models/{name}/predict", "post")]:
        assert method in paths[path]
    body = paths["/models/{name}/learn"]["post"]["requestBody"]["content"]["application/json"]
    schema = spec["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert schema["examples"][0]["event_id"] == "evt-0001"
    assert "example" in paths["/models"]["post"]["requestBody"]["content"]["application/json"]
    for path, ops in paths.items():  # every JSON answer shows a worked example
        for method, op in ops.items():
            contents = [c for r in op["responses"].values()
                        for t, c in r.get("content", {}).items() if t == "application/json"]
            if method != "delete" and contents and path != "/models/{name}/state":
                assert any("example" in c for c in contents), (method, path)
            if method == "post":
                assert "example" in op["requestBody"]["content"]["application/json"], path
