"""A race across real processes (issue 13): two uvicorn API processes, two stream workers (one
SIGKILLed mid-run and replaced), one Redis. Every race event, sent over HTTP to both processes
at once and through the stream twice, is applied once per member, in order — checked against
independent learners bit for bit — the curves hold only versions Redis has, in order and
bounded, and an SSE client of one process sees the points of updates the others applied."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from typing import Any

import httpx
import redis

from models import ModelSpec, OnlineLearner
from service.redis.keys import model_key, race_key

from .test_live import read_events
from .test_processes import Server
from .test_stream_processes import FAST, WorkerProcess

SPEC = {"task": "regression", "n_features": 2, "cell": "lstm", "hidden_size": 4, "window": 3,
        "seed": 9}
NORMS = ("streaming", "layer", "none")
EVERY, KEEP = 5, 40  # a curve point per 5 updates, the newest 40 kept
ENV = {**FAST, "STREAMNORM_CURVE_EVERY": str(EVERY), "STREAMNORM_CURVE_POINTS": str(KEEP)}
HTTP, TOTAL = 60, 240  # events 0..59 over HTTP, 60..239 through the stream


def event(i: int) -> dict[str, Any]:
    x = [((i * 7) % 11) / 11, ((i * 3) % 5) / 5 - 0.5]
    return {"stream": f"s{i % 2}", "x": x, "y": x[0] - 2 * x[1], "event_id": f"pe-{i}"}


async def learn_twice(urls: list[str], race: str) -> None:
    """Each event to both processes at once (a retry racing its original), in order."""
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(HTTP):
            replies = await asyncio.gather(*(client.post(f"{url}/races/{race}/learn",
                                                         json=event(i)) for url in urls))
            for r in replies:
                assert r.status_code == 200, r.text
            results = [r.json()["results"] for r in replies]
            for member in results[0]:  # one of the two applied it, whichever got there first
                assert sorted(res[member]["applied"] for res in results) == [False, True]


def wait_updates(r: redis.Redis, members: list[str], want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = [int(r.hget(model_key(m, "meta"), "updates") or 0) for m in members]
        if all(n == want for n in got):
            return
        assert time.monotonic() < deadline, got
        time.sleep(0.2)


def test_a_race_over_two_api_processes_and_two_workers_applies_each_event_once_per_member(
        db14: str) -> None:
    race = f"pr-{uuid.uuid4().hex[:8]}"
    members = [f"{race}.{n}" for n in NORMS]
    a, b = Server(db14, **ENV), Server(db14, **ENV)
    workers = [WorkerProcess(db14, f"rw{k}", **ENV) for k in range(2)]
    r = redis.Redis.from_url(db14)
    try:
        made = httpx.post(f"{a.url}/races", json={
            "name": race, "spec": SPEC, "members": [{"norm": n} for n in NORMS],
            "min_updates": 10})
        assert made.status_code == 201, made.text
        got: list[tuple[str, Any]] = []
        ready = threading.Event()
        reader = threading.Thread(target=read_events, args=(
            f"{b.url}/races/{race}/live", {}, len(NORMS) * TOTAL // EVERY, got, ready),
            daemon=True)
        reader.start()
        assert ready.wait(10)

        asyncio.run(learn_twice([a.url, b.url], race))
        stream = [{"race": race, **event(i)} for i in range(HTTP, TOTAL)]
        for k, start in enumerate(range(0, len(stream), 20)):
            batch = stream[start:start + 20]
            for url in (a.url, b.url) if k % 3 == 0 else (a.url,):  # some posted twice
                res = httpx.post(f"{url}/events", json=batch, timeout=30)
                assert res.status_code == 202, res.text
            if k == 4:
                assert workers[0].kill() == -signal.SIGKILL  # mid-run, entries in hand
                workers[0] = WorkerProcess(db14, "rw0-again", **ENV)
        wait_updates(r, members, TOTAL, timeout=120)
        reader.join(30)

        for member, norm in zip(members, NORMS, strict=True):
            assert r.zcard(model_key(member, "seen")) == TOTAL  # each event id once
            oracle = OnlineLearner(ModelSpec.model_validate({**SPEC, "name": member,
                                                             "norm": norm}))
            for i in range(TOTAL):
                ev = event(i)
                oracle.learn_one(ev["x"], ev["y"], stream=ev["stream"])
            state = httpx.get(f"{b.url}/models/{member}/state")
            assert state.content == oracle.to_bytes(), member  # once each, in order
            curve = httpx.get(f"{a.url}/models/{member}/curve").json()["points"]
            versions = [p["version"] for p in curve]
            assert versions == list(range(TOTAL - (KEEP - 1) * EVERY, TOTAL + 1, EVERY))
            assert max(versions) <= int(r.hget(model_key(member, "meta"), "version"))
            seen = [p["version"] for _, p in got if p["model"] == member]
            assert seen == list(range(EVERY, TOTAL + 1, EVERY)), member  # all, in order
            assert [p for _, p in got if p["model"] == member][-KEEP:] == \
                [{"model": member, **p} for p in curve]
        assert got[-1][0] == ",".join([str(TOTAL)] * len(NORMS))  # the cursor resumes all

        standing = httpx.get(f"{b.url}/races/{race}").json()
        assert standing["leader"] in members
        pred = httpx.post(f"{a.url}/races/{race}/predict", json={"stream": "s0",
                                                                 "x": [0.1, 0.2]}).json()
        assert pred["model"] == standing["leader"] and pred["version"] == TOTAL
        # resuming the race feed on the other process from a cursor gives what came after it
        again: list[tuple[str, Any]] = []
        cursor = ",".join([str(TOTAL - EVERY)] * len(NORMS))
        read_events(f"{a.url}/races/{race}/live", {"Last-Event-ID": cursor}, len(NORMS),
                    again, threading.Event())
        assert sorted(p["model"] for _, p in again) == sorted(members)
        assert {p["version"] for _, p in again} == {TOTAL}
        for bad in ("1,2", "x,1,2", "-1,1,1"):
            res = httpx.get(f"{a.url}/races/{race}/live", headers={"Last-Event-ID": bad})
            assert res.status_code == 422 and res.json()["field"] == "last-event-id", bad

        # a leader that a challenger can only beat with no error at all (margin 1) stays,
        # whichever process or worker looks at it
        steady = f"{race}-m"
        assert httpx.post(f"{b.url}/races", json={
            "name": steady, "spec": SPEC, "members": [{"norm": "streaming"}, {"norm": "none"}],
            "min_updates": 3, "margin": 1.0}).status_code == 201
        leaders = []
        for i in range(30):
            url = (a.url, b.url)[i % 2]
            leaders.append(httpx.post(f"{url}/races/{steady}/learn", json=event(i)).json()
                           ["leader"])
            if i == 15:
                res = httpx.post(f"{a.url}/events", json=[{"race": steady, **event(k)}
                                                          for k in range(100, 130)])
                assert res.status_code == 202
        wait_updates(r, [f"{steady}.streaming", f"{steady}.none"], 60, timeout=60)
        assert leaders[:2] == [None, None] and leaders[2] is not None
        assert set(leaders[2:]) == {leaders[2]}
        assert httpx.get(f"{b.url}/races/{steady}").json()["leader"] == leaders[2]
        # an invalid race sent to a process creates nothing anywhere
        bad = httpx.post(f"{a.url}/races", json={"name": f"{race}-x", "spec": SPEC, "members": [
            {"norm": "layer"}, {"norm": "layer", "hidden_size": 0}]})
        assert bad.status_code == 422 and bad.json()["field"] == "members[1].hidden_size"
        assert not list(r.scan_iter(match=f"*{race}-x*"))

        assert httpx.delete(f"{a.url}/races/{steady}").status_code == 204
        assert httpx.delete(f"{b.url}/races/{race}").status_code == 204
        left = [k for m in members for k in r.scan_iter(match=model_key(m, "*"))]
        assert left == [] and not r.exists(race_key(race))
    finally:
        for w in workers:
            w.kill(signal.SIGTERM)
        a.kill()  # SIGKILL: a live feed would hold a graceful stop (uvicorn runs with no
        b.kill()  # shutdown timeout here; `streamnorm serve` sets one)
