"""Write ``service.json``: three models as a real ``streamnorm serve`` of commit c5d1c0d left them
in Redis — a snapshot every 10 updates, stream contexts under their own keys, and a log tail
after the last snapshot — with the events each applied (in order), what ``GET /models/{name}``
and ``GET /models/{name}/metrics`` said, predictions and repeats of applied event ids, and every
``sn:{name}:*`` key of the three models (as ``tests/data/make_service_fixture.py`` dumps them).

The models: ``c5d1c0d-reg`` (regression, LSTM, Streaming Norm, features by name) learns over
HTTP only (stream mode on three streams, a sequence, a mini-batch; some events without an
event_id); ``c5d1c0d-bin`` (binary, GRU, Layer Norm) learns over HTTP, then through
``POST /events`` (the script waits until the stream worker applied them), then over HTTP again;
``c5d1c0d-multi`` (3 classes, plain RNN, Online Norm) only through ``POST /events``. The order
each model applied its events in is therefore known; the script checks it by training a local
learner on it and comparing its bytes with ``GET /models/{name}/state``.

It starts a Redis server of its own (``redis-server`` on the PATH, no persistence, a free port,
a temporary folder) and ``python -m service.cli serve`` (``streamnorm serve``) on another free
port with one stream worker, dumps the keys while serve still runs (serve snapshots on its way
out, and the state to keep is the one with a log tail), then stops serve with SIGTERM and Redis.
Run it with the code of c5d1c0d first on the path (it refuses any other):

    cd /path/to/checkout-at-c5d1c0d
    PYTHONPATH=$PWD python /path/to/tests/data/c5d1c0d/make_service.py
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
import torch

import models
from models import ModelSpec, OnlineLearner

COMMIT = "c5d1c0d"
HERE = Path(__file__).resolve().parent
SNAPSHOT_EVERY = 10
FEATURES = ["temp", "load", "rate"]
REG, BIN, MULTI = "c5d1c0d-reg", "c5d1c0d-bin", "c5d1c0d-multi"
SPECS: dict[str, dict[str, Any]] = {
    REG: {"name": REG, "task": "regression", "features": FEATURES, "cell": "lstm",
          "hidden_size": 6, "norm": {"method": "streaming"}, "window": 4, "seed": 21},
    BIN: {"name": BIN, "task": "binary", "n_features": 3, "cell": "gru", "hidden_size": 5,
          "norm": {"method": "layer"}, "window": 3, "seed": 22},
    MULTI: {"name": MULTI, "task": "multiclass", "n_classes": 3, "n_features": 3, "cell": "rnn",
            "hidden_size": 4, "num_layers": 2, "norm": {"method": "online"}, "window": 4,
            "seed": 23},
}


def written_by() -> tuple[str, Path]:
    """The commit and root of the code on the path: c5d1c0d, unmodified, or exit."""
    tree = Path(models.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "models",
                            "service"], check=True, capture_output=True, text=True).stdout
    if not head.startswith(COMMIT) or dirty.strip():
        sys.exit(f"models comes from {tree} at {head} (changes: {dirty.strip() or 'none'}); "
                 f"run this with an unmodified checkout of {COMMIT} first on PYTHONPATH")
    return head, tree


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (OSError, httpx.HTTPError, redis.RedisError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"waited {timeout} s for {what}")


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A redis-server of our own: 127.0.0.1, a free port, no RDB, no AOF."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, cwd=folder)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for("redis", lambda: bool(redis.Redis.from_url(url).ping()), 20)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


@contextmanager
def serve(tree: Path, url: str, folder: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``streamnorm serve`` (one stream worker) of the code in ``tree`` on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMNORM_")}
    env.update(STREAMNORM_REDIS_URL=url, STREAMNORM_SNAPSHOT_EVERY=str(SNAPSHOT_EVERY),
               STREAMNORM_DATA_DIR=str(folder / "data"), PYTHONPATH=str(tree))
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host",
                             "127.0.0.1", "--port", str(port), "--stream-workers", "1",
                             "--log-level", "warning"], cwd=tree, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("serve", lambda: httpx.get(f"{base}/readyz").status_code == 200)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- events --------------------------------------------------------------------------------------
def x_of(k: int) -> list[float]:
    return [((k * 7) % 11) / 11 - 0.4, ((k * 3) % 5) / 5 - 0.5, (k % 4) * 0.25]


def y_of(x: list[float], task: str) -> float | int:
    if task == "regression":
        return round(x[0] - 0.5 * x[1] + 0.1, 6)
    if task == "binary":
        return int(x[0] + x[2] > 0.2)
    return int((x[0] + 0.5) * 3) % 3


def stream_event(name: str, k: int, prefix: str, *, named: bool = False,
                 with_id: bool = True) -> dict[str, Any]:
    x = x_of(k)
    body: dict[str, Any] = {"stream": f"s{k % 3}",
                            "x": dict(zip(FEATURES, x, strict=True)) if named else x,
                            "y": y_of(x, SPECS[name]["task"])}
    if with_id:
        body["event_id"] = f"{prefix}-{k}"
    return body


def seq(k: int, steps: int) -> list[list[float]]:
    return [x_of(k + t) for t in range(steps)]


def apply_local(learner: OnlineLearner, body: dict[str, Any]) -> None:
    """What the service does with a learn body, on a local learner."""
    if "batch" in body:
        learner.learn_many([b["sequence"] for b in body["batch"]], [b["y"] for b in body["batch"]])
    elif "sequence" in body:
        learner.learn_one(sequence=body["sequence"], y=body["y"])
    else:
        learner.learn_one(body["x"], body["y"], stream=body["stream"])


# -- Redis dump (the format of tests/data/make_service_fixture.py) -------------------------------
def dump(r: redis.Redis, names: list[str]) -> dict[str, Any]:
    """Every key of the models, by type, values as base64 where they are bytes."""
    out: dict[str, Any] = {}
    keys = sorted(k for n in names for k in r.scan_iter(match=f"sn:{{{n}}}:*"))
    for key in keys:
        kind = r.type(key).decode()
        if kind == "string":
            value: Any = base64.b64encode(r.get(key)).decode()
        elif kind == "hash":
            value = {k.decode(): v.decode() for k, v in sorted(r.hgetall(key).items())}
        elif kind == "zset":
            value = [[m.decode(), s] for m, s in r.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            value = [[i.decode(), {k.decode(): v.decode() for k, v in f.items()}]
                     for i, f in r.xrange(key)]
        else:
            raise TypeError(f"{key!r}: {kind}")
        out[key.decode()] = {"type": kind, "value": value}
    return out


def settled_dump(r: redis.Redis, names: list[str]) -> dict[str, Any]:
    """A dump once nothing moves: no lease held or wanted, two reads 0.5 s apart equal."""
    deadline = time.monotonic() + 30
    last = None
    while time.monotonic() < deadline:
        now = dump(r, names)
        busy = [k for k in now if k.endswith((":lock", ":wanted"))]
        if not busy and now == last:
            return now
        last = None if busy else now
        time.sleep(0.5)
    raise TimeoutError("the models' keys kept changing")


# -- the run -------------------------------------------------------------------------------------
def main() -> None:
    torch.set_num_threads(1)  # as serve's processes run (more threads: other low bits)
    head, tree = written_by()
    names = list(SPECS)
    applied: dict[str, list[dict[str, Any]]] = {n: [] for n in names}  # bodies, in order
    http_log: list[dict[str, Any]] = []  # every HTTP learn: model, body, reply
    posts: list[list[dict[str, Any]]] = []  # every POST /events body
    folder = Path(tempfile.mkdtemp(prefix="sn-c5d1c0d-"))
    try:
        with redis_server(folder) as url, serve(tree, url, folder) as (base, proc):
            r = redis.Redis.from_url(url)
            assert not list(r.scan_iter(match="sn:{c5d1c0d-*")), "a fresh Redis"
            http = httpx.Client(base_url=base, timeout=30)

            def version(name: str) -> int:
                return int(http.get(f"/models/{name}").json()["version"])

            def learn(name: str, body: dict[str, Any]) -> dict[str, Any]:
                reply = http.post(f"/models/{name}/learn", json=body)
                assert reply.status_code == 200, reply.text
                out = reply.json()
                http_log.append({"model": name, "body": body, "reply": out})
                if out["applied"]:
                    assert out["version"] == len(applied[name]) + 1, (name, out)
                    applied[name].append(body)
                return out

            def send(events: list[dict[str, Any]]) -> None:
                reply = http.post("/events", json=events)
                assert reply.status_code == 202, reply.text
                posts.append(events)
                for ev in events:
                    applied[ev["model"]].append({k: v for k, v in ev.items() if k != "model"})
                for name in {ev["model"] for ev in events}:  # wait until the worker is done
                    wait_for(f"{name} to apply its events",
                             lambda n=name: version(n) == len(applied[n]))

            for spec in SPECS.values():
                assert http.post("/models", json=spec).status_code == 201
            # reg: HTTP only (stream mode, a sequence, a mini-batch), 25 updates
            for k in range(12):
                learn(REG, stream_event(REG, k, "reg", named=k % 2 == 0, with_id=k % 4 != 3))
            learn(REG, {"sequence": seq(30, 5), "y": 0.25, "event_id": "reg-seq"})
            for k in range(12, 22):
                learn(REG, stream_event(REG, k, "reg", named=k % 3 == 0, with_id=k % 5 != 1))
            learn(REG, {"batch": [{"sequence": seq(40, 3), "y": 0.5},
                                  {"sequence": seq(50, 3), "y": -0.25}], "event_id": "reg-batch"})
            learn(REG, stream_event(REG, 22, "reg"))
            # bin: 8 over HTTP, 9 through the stream, 6 over HTTP: 23 updates
            for k in range(8):
                learn(BIN, stream_event(BIN, k, "bin", with_id=k != 5))
            # multi, only through the stream (some in one list with bin's): 16 updates
            send([stream_event(MULTI, k, "multi", with_id=k % 4 != 2) | {"model": MULTI}
                  for k in range(6)])
            mixed = []
            for k in range(8, 17):
                mixed.append(stream_event(BIN, k, "bin", with_id=k != 11) | {"model": BIN})
                if k % 3 == 0:
                    mixed.append(stream_event(MULTI, k, "multi") | {"model": MULTI})
            send(mixed)
            send([stream_event(MULTI, k, "multi", with_id=k != 20) | {"model": MULTI}
                  for k in range(17, 24)])
            for k in range(17, 23):
                learn(BIN, stream_event(BIN, k, "bin", with_id=k != 19))

            # repeats of applied event ids (over HTTP; one of multi's came through the stream)
            repeats = []
            for name, body in ((REG, applied[REG][4]), (REG, applied[REG][12]),
                               (BIN, applied[BIN][10]), (MULTI, applied[MULTI][3])):
                assert "event_id" in body
                reply = http.post(f"/models/{name}/learn", json=body)
                assert reply.status_code == 200 and not reply.json()["applied"], reply.text
                repeats.append({"model": name, "body": body, "reply": reply.json()})

            # what the service says, and its predictions
            records: dict[str, Any] = {}
            for name in names:
                named = name == REG
                probes: list[dict[str, Any]] = [
                    {"stream": s, "x": dict(zip(FEATURES, x_of(60 + j), strict=True))
                     if named and j % 2 == 0 else x_of(60 + j)}
                    for j, s in enumerate(["s0", "s1", "s2", "never-seen"])]
                probes.append({"sequence": seq(70, 4)})
                answers = []
                for p in probes:
                    reply = http.post(f"/models/{name}/predict", json=p)
                    assert reply.status_code == 200, reply.text
                    answers.append(reply.json())
                info = http.get(f"/models/{name}").json()
                assert info["version"] == len(applied[name]), (name, info)
                assert info["version"] % SNAPSHOT_EVERY, "a log tail after the snapshot"
                records[name] = {"model": info,
                                 "metrics": http.get(f"/models/{name}/metrics").json(),
                                 "probes": probes, "answers": answers}
                # the recorded order is the order applied: a local learner agrees, bit for bit
                local = OnlineLearner(ModelSpec.model_validate(SPECS[name]))
                for body in applied[name]:
                    apply_local(local, body)
                state = http.get(f"/models/{name}/state")
                assert state.content == local.to_bytes(), f"{name}: order not as recorded"
                assert int(state.headers["x-model-version"]) == info["version"]

            keys = settled_dump(r, names)  # while serve runs: it snapshots on the way out
            for name in names:
                meta = keys[f"sn:{{{name}}}:meta"]["value"]
                assert int(meta["version"]) == len(applied[name])
                assert int(meta["snapshot_version"]) == \
                    len(applied[name]) // SNAPSHOT_EVERY * SNAPSHOT_EVERY, (name, meta)
            http.close()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, "serve exits 0 on SIGTERM"
            exit_snapshots = {n: int(r.hget(f"sn:{{{n}}}:meta", "snapshot_version") or 0)
                              for n in names}
            r.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = {"written_by": head, "snapshot_every": SNAPSHOT_EVERY, "specs": SPECS,
           "applied": applied, "http_learns": http_log, "posted_events": posts,
           "repeats": repeats, "records": records, "keys": keys}
    (HERE / "service.json").write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    print(f"service.json written by {head}: versions "
          f"{ {n: len(a) for n, a in applied.items()} }, snapshots on exit {exit_snapshots}")


if __name__ == "__main__":
    main()
