"""Access control with keys configured: every route but the health probes needs a key, read keys
read, admin keys also write (``service.api.auth``). Through the real app on a real Redis, and a
real worker process for its metrics port."""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from service.api.app import create_app
from service.settings import Settings
from tests.test_processes import free_port
from tests.test_stream_processes import WorkerProcess

ADMIN, READER = "admin-key-1", "read-key-1"
SPEC = {"task": "regression", "n_features": 3, "hidden_size": 8, "window": 4}
BODIES = {  # a valid body for every POST route (a 401/403 must come before the body matters)
    "/models": {"name": "<new>", **SPEC},
    "/models/{name}/predict": {"stream": "s", "x": [0.1, 0.2, 0.3]},
    "/models/{name}/learn": {"stream": "s", "x": [0.1, 0.2, 0.3], "y": 0.5},
    "/models/{name}/label": {"prediction_id": "p-1", "y": 0.5},
    "/models/{name}/rollback": {"version": 0},
    "/models/{name}/fork": {"name": "<new>"},
    "/races/{name}/label": {"prediction_id": "p-1", "y": 0.5},
    "/events": {"model": "<name>", "stream": "s", "x": [0.1, 0.2, 0.3], "y": 0.5},
    "/races": {"name": "<new>", "spec": SPEC, "members": [{"norm": "layer"}]},
    "/races/{name}/predict": {"stream": "s", "x": [0.1, 0.2, 0.3]},
    "/races/{name}/learn": {"stream": "s", "x": [0.1, 0.2, 0.3], "y": 0.5},
}
OPEN = {"/healthz", "/readyz", "/", "/static/{file}"}  # probes; the dashboard page (no data)
WRITES = {("POST", "/models"), ("DELETE", "/models/{name}"), ("POST", "/models/{name}/learn"),
          ("POST", "/models/{name}/label"), ("POST", "/models/{name}/rollback"),
          ("POST", "/models/{name}/fork"), ("POST", "/races/{name}/label"),
          ("POST", "/events"), ("GET", "/models/{name}/state"), ("POST", "/races"),
          ("DELETE", "/races/{name}"), ("POST", "/races/{name}/learn")}


@pytest.fixture(scope="module")
def api(redis_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, api_keys=(ADMIN,), read_keys=(READER,))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def name(api: TestClient) -> Iterator[str]:
    """A model, and a race of the same name (the routes of both take it)."""
    model = f"auth-{uuid.uuid4().hex[:10]}"
    r = api.post("/models", json={"name": model, **SPEC}, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    r = api.post("/races", json={"name": model, "spec": SPEC, "members": [{}]},
                 headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    yield model
    for made in (model, f"{model}-new"):
        api.delete(f"/models/{made}", headers=bearer(ADMIN))
        api.delete(f"/races/{made}", headers=bearer(ADMIN))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def every_route(api: TestClient) -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves, the undocumented ones too."""
    out = []
    for entry in api.app.routes:  # type: ignore[attr-defined]
        # an included router is one entry (FastAPI >= 0.16x): its routes carry their paths
        routes = getattr(entry, "original_router", None)
        for route in (routes.routes if routes is not None else [entry]):
            assert isinstance(route, APIRoute | Route), route
            out += [(m, route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return out


def call(api: TestClient, method: str, template: str, name: str,
         headers: dict[str, str]) -> httpx.Response:
    path = template.replace("{name}", name).replace("{file}", "dashboard.js")
    body = BODIES.get(template) if method == "POST" else None
    if body is not None:
        body = {k: (v.replace("<name>", name).replace("<new>", f"{name}-new")
                    if isinstance(v, str) else v) for k, v in body.items()}
    return api.request(method, path, json=body, headers=headers)


def test_every_route_but_the_probes_needs_a_key(api: TestClient, name: str) -> None:
    """Finding 2: with STREAMNORM_API_KEYS set, `GET /models/{name}/state` (weights, moments,
    stream names, their last inputs), `GET /models` and `/metrics` answered without a key;
    so did predict. Now every route the app has, documented or not, asks for one."""
    routes = every_route(api)
    assert {p for _, p in routes} >= {"/models/{name}/state", "/models", "/metrics",
                                      "/openapi.json", "/docs", "/models/{name}/predict"}
    for method, template in routes:
        r = call(api, method, template, name, {})
        if template in OPEN:
            assert r.status_code == 200, (method, template, r.status_code)
            continue
        assert r.status_code == 401, (method, template, r.status_code, r.text)
        assert r.json()["field"] == "authorization"
        assert r.headers["www-authenticate"] == "Bearer"
        r = call(api, method, template, name, bearer("not-a-key"))
        assert r.status_code == 403, (method, template, r.status_code)


def test_a_read_key_reads_and_only_an_admin_key_writes(api: TestClient, name: str) -> None:
    for method, template in every_route(api):
        if template in OPEN:
            continue
        if template.endswith("/live"):  # a live feed of a model that exists never ends: the
            # key is let through to the model's lookup (tests/test_live.py streams one)
            assert call(api, method, template, "nobody-here", bearer(READER)).status_code \
                == 404
            continue
        read = call(api, method, template, name, bearer(READER))
        if (method, template) in WRITES:
            assert read.status_code == 403, (method, template, read.status_code)
            assert "admin key" in read.json()["detail"]
        else:
            assert read.status_code == 200, (method, template, read.status_code, read.text)
    state = api.get(f"/models/{name}/state", headers=bearer(ADMIN))
    assert state.status_code == 200 and state.headers["x-model-version"] == "0"
    r = api.post(f"/models/{name}/learn", json=BODIES["/models/{name}/learn"],
                 headers=bearer(ADMIN))
    assert r.status_code == 200 and r.json()["version"] == 1
    r = api.post(f"/models/{name}/predict", json=BODIES["/models/{name}/predict"],
                 headers=bearer(READER))
    assert r.status_code == 200 and r.json()["version"] == 1


def test_the_openapi_document_names_the_scheme_only_when_keys_are_set(
        api: TestClient, settings: Settings) -> None:
    doc = api.get("/openapi.json", headers=bearer(READER)).json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert ("security" in op) == (path not in OPEN), path
    with TestClient(create_app(settings)) as open_api:  # no keys: nothing to document
        doc = open_api.get("/openapi.json").json()
    assert "securitySchemes" not in doc.get("components", {})
    assert not any("security" in op for ops in doc["paths"].values() for op in ops.values())


def test_a_workers_metrics_port_needs_a_read_key(db14: str) -> None:
    """Finding 2 (the same door on a worker): its Prometheus port listed every model it had
    applied events to, to anyone."""
    port = free_port()
    worker = WorkerProcess(db14, "w-auth", STREAMNORM_API_KEYS=ADMIN,
                           STREAMNORM_READ_KEYS=READER, STREAMNORM_WORKER_METRICS_PORT=str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        for _ in range(300):
            try:
                r = httpx.get(url, timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert r.status_code == 401 and r.json()["field"] == "authorization"
        assert httpx.get(url, headers=bearer("nope")).status_code == 403
        ok = httpx.get(url, headers=bearer(READER))
        assert ok.status_code == 200
        assert re.search(r"^streamnorm_events_applied_total ", ok.text, re.MULTILINE)
    finally:
        assert worker.kill(signal.SIGTERM) == 0
