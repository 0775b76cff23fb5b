"""``GET /models/{name}/live`` (design.md, "Learning curves and the live view"): Server-Sent
Events of a model's curve points, served by any API process whichever process applied the
updates. Real uvicorn processes over one Redis: an SSE client on one, learns sent to the other."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx

from .test_processes import SPEC, Server

EVERY = {"STREAMNORM_CURVE_EVERY": "2"}


def event(i: int) -> dict[str, Any]:
    x = [((i * 7) % 11) / 11, ((i * 3) % 5) / 5 - 0.5, (i % 2) * 0.3]
    return {"stream": f"s{i % 3}", "x": x, "y": x[0] - x[1], "event_id": f"live-{i}"}


def read_events(url: str, headers: dict[str, str], want: int, out: list[tuple[str, Any]],
                ready: threading.Event) -> None:
    """Read ``want`` SSE events (``id``, data) from ``url`` into ``out``."""
    with httpx.stream("GET", url, headers=headers, timeout=30.0) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        ready.set()
        current: dict[str, str] = {}
        for line in r.iter_lines():
            if line.startswith(":"):
                continue  # a keep-alive comment
            if not line:
                if "data" in current:
                    out.append((current.get("id", ""), json.loads(current["data"])))
                    if len(out) >= want:
                        return
                current = {}
                continue
            key, _, value = line.partition(":")
            current[key] = value.strip()


def test_a_live_client_of_one_process_sees_points_of_updates_another_applied(
        redis_url: str, name: str) -> None:
    a, b = Server(redis_url, **EVERY), Server(redis_url, **EVERY)
    try:
        assert httpx.post(f"{a.url}/models", json={"name": name, **SPEC}).status_code == 201
        got: list[tuple[str, Any]] = []
        ready = threading.Event()
        reader = threading.Thread(target=read_events, args=(
            f"{a.url}/models/{name}/live", {}, 3, got, ready), daemon=True)
        reader.start()
        assert ready.wait(10)
        for i in range(6):  # through the other process
            assert httpx.post(f"{b.url}/models/{name}/learn", json=event(i)).status_code == 200
        reader.join(20)
        assert [p["version"] for _, p in got] == [2, 4, 6]
        assert [i for i, _ in got] == ["2", "4", "6"]  # the id is the version
        curve = httpx.get(f"{b.url}/models/{name}/curve").json()["points"]
        assert [p for _, p in got] == curve  # the same points as the curve holds
        # a client that reconnects with Last-Event-ID gets what it missed, from any process
        again: list[tuple[str, Any]] = []
        read_events(f"{b.url}/models/{name}/live", {"Last-Event-ID": "2"}, 2, again,
                    threading.Event())
        assert [p["version"] for _, p in again] == [4, 6]
        assert httpx.get(f"{a.url}/models/nobody-here/live").status_code == 404
        r = httpx.get(f"{a.url}/models/{name}/live", headers={"Last-Event-ID": "x"})
        assert r.status_code == 422 and r.json()["field"] == "last-event-id"
    finally:
        a.kill()
        b.kill()
