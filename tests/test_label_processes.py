"""Delayed labels across real processes: the same label sent to two API processes and through
the event stream is applied once; a kill -9 between keep and label loses nothing acknowledged.
Checked against an independent learner fed the events in the order their versions record."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import redis

from models import KeptPrediction, ModelSpec, OnlineLearner
from service.redis.keys import model_key

from .test_processes import ROOT, Server, fire
from .test_stream_processes import FAST, WorkerProcess, wait_drained

SPEC = {"task": "regression", "n_features": 2, "cell": "lstm", "hidden_size": 6,
        "norm": {"method": "streaming"}, "window": 3, "seed": 4,
        "optimizer": {"name": "adam", "lr": 0.01}}


def x_of(i: int) -> list[float]:
    return [((i * 7) % 11) / 11, ((i * 3) % 5) / 5 - 0.5]


def keep_body(i: int) -> dict[str, Any]:
    return {"stream": f"s{i % 2}", "x": x_of(i), "prediction_id": f"p-{i}"}


def learn_body(i: int) -> dict[str, Any]:
    x = x_of(i + 100)
    return {"stream": f"s{i % 2}", "x": x, "y": x[0] - x[1], "event_id": f"e-{i}"}


def label_y(i: int) -> float:
    return x_of(i)[0] * 2 - 0.5


def oracle(r: redis.Redis, name: str) -> OnlineLearner:
    """A learner of its own fed keeps, learns and labels in the order of their versions."""
    learner = OnlineLearner(ModelSpec.model_validate({"name": name, **SPEC}))
    kept: dict[str, KeptPrediction] = {}
    for eid, _ in r.zrange(model_key(name, "seen"), 0, -1, withscores=True):
        kind, _, ref = eid.decode().partition(" ")
        if kind == "keep":
            body = keep_body(int(ref.split("-")[1]))
            kept[ref] = learner.keep_one(body["x"], stream=body["stream"])[2]
        elif kind == "label":
            learner.learn_kept(kept[ref], label_y(int(ref.split("-")[1])))
        else:
            body = learn_body(int(eid.decode().split("-")[1]))
            learner.learn_one(body["x"], body["y"], stream=body["stream"])
    return learner


def test_the_same_label_through_two_processes_and_the_stream_applies_once(db14: str) -> None:
    name = "labelled"
    a, b = Server(db14, **FAST), Server(db14, **FAST)
    worker = WorkerProcess(db14, "w1")
    try:
        assert httpx.post(f"{a.url}/models", json={"name": name, **SPEC}).status_code == 201
        n = 24
        first = asyncio.run(fire(
            [(f"{(a, b)[i % 2].url}/models/{name}/predict", keep_body(i)) for i in range(n)]
            + [(f"{(b, a)[i % 2].url}/models/{name}/learn", learn_body(i)) for i in range(n)]))
        assert all(r is not None and r.status_code == 200 for r in first)
        labels = [{"prediction_id": f"p-{i}", "y": label_y(i)} for i in range(n)]
        posted = httpx.post(f"{a.url}/events", json=[{"model": name, **lb} for lb in labels])
        assert posted.status_code == 202, posted.text
        replies = asyncio.run(fire(
            [(f"{s.url}/models/{name}/label", lb) for lb in labels for s in (a, b)]))
        assert all(r is not None and r.status_code == 200 for r in replies), \
            [r.text for r in replies if r is not None and r.is_error][:3]
        rd = redis.Redis.from_url(db14)
        wait_drained(rd, 8, 60)
        for p in range(8):
            assert rd.xlen(f"sn:events:{{{p}}}:dead") == 0
        applied = [r.json()["applied"] for r in replies if r is not None]
        assert sum(applied) <= n  # the stream may have applied some first
        info = httpx.get(f"{b.url}/models/{name}").json()
        assert info["updates"] == 2 * n and info["version"] == 3 * n
        seen = [e.decode() for e in rd.zrange(model_key(name, "seen"), 0, -1)]
        assert sorted(e for e in seen if e.startswith("label ")) == sorted(
            f"label p-{i}" for i in range(n))
        assert rd.zcard(model_key(name, "kept")) == 0
        assert not list(rd.scan_iter(match=model_key(name, "kept:*")))
        want = oracle(rd, name).to_bytes()
        for server in (a, b):
            assert httpx.get(f"{server.url}/models/{name}/state").content == want
    finally:
        worker.kill(signal.SIGTERM)
        for s in (a, b):
            s.kill(signal.SIGTERM)


def test_kill_9_between_keep_and_label_loses_no_acknowledged_keep(db14: str) -> None:
    name = "killed"
    a, b = Server(db14, **FAST), Server(db14, **FAST)
    try:
        assert httpx.post(f"{a.url}/models", json={"name": name, **SPEC}).status_code == 201
        acked: list[int] = []

        async def burst() -> None:
            async with httpx.AsyncClient(timeout=30.0) as client:
                async def one(i: int) -> None:
                    try:
                        r = await client.post(f"{a.url}/models/{name}/predict",
                                              json=keep_body(i))
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        acked.append(i)

                tasks = [asyncio.create_task(one(i)) for i in range(200)]
                while len(acked) < 20:
                    await asyncio.sleep(0.002)
                a.kill()  # SIGKILL with keeps in flight
                await asyncio.gather(*tasks)

        asyncio.run(burst())
        assert a.proc.returncode == -signal.SIGKILL and len(acked) >= 20
        for i in acked:  # every acknowledged keep can be labelled on the survivor
            r = httpx.post(f"{b.url}/models/{name}/label",
                           json={"prediction_id": f"p-{i}", "y": label_y(i)}, timeout=30.0)
            assert r.status_code == 200 and r.json()["applied"], r.text
        rd = redis.Redis.from_url(db14)
        want = oracle(rd, name)
        assert want.updates == len(acked)
        assert httpx.get(f"{b.url}/models/{name}/state").content == want.to_bytes()
    finally:
        for s in (a, b):
            s.kill(signal.SIGTERM)


def test_the_forecast_example_learns_from_delayed_labels(redis_url: str) -> None:
    """``examples/forecast.py`` against a real server: every forecast whose future came was
    labelled once, and the model's updates are exactly those labels."""
    server = Server(redis_url)
    try:
        name = f"forecast-{os.getpid()}"
        out = subprocess.run(
            [sys.executable, "examples/forecast.py", "--url", server.url, "--model", name,
             "--horizon", "2", "--limit", "30"], cwd=ROOT, capture_output=True, text=True,
            timeout=120, check=True).stdout
        assert out.startswith("28 forecasts 2 months ahead"), out
        assert "service: 28 updates from delayed labels, version 58" in out, out
        info = httpx.get(f"{server.url}/models/{name}").json()
        assert info["updates"] == 28 and info["metrics"]["n"] == 28
        assert httpx.delete(f"{server.url}/models/{name}").status_code == 204
    finally:
        server.kill(signal.SIGTERM)
