"""Bad requests, one table: each gets its documented status with a ``detail`` (a 422 also names
the offending ``field``), and none of them changes a single byte in Redis.

The app runs with API keys (``k1``, ``k2``), so the table also covers missing and wrong keys;
every other case sends a valid key and fails on its body, path or model alone.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from models import ModelSpec, OnlineLearner
from service.api.app import create_app
from service.redis.keys import model_key
from service.settings import Settings

from .conftest import contents

KEYS = ("k1", "k2")
BEARER = f"Bearer {KEYS[0]}"
LIMIT = 1_048_576  # max_body_bytes of the app under test
MODEL = {"cell": "lstm", "hidden_size": 8, "window": 4, "seed": 1}
SPECS: dict[str, dict[str, Any]] = {  # role -> spec (the name is added per module)
    "reg": {"task": "regression", "n_features": 3, "norm": {"method": "streaming"}, **MODEL},
    "bin": {"task": "binary", "n_features": 3, "norm": {"method": "layer"}, **MODEL},
    "multi": {"task": "multiclass", "n_features": 3, "n_classes": 3,
              "norm": {"method": "online"}, **MODEL},
    "feat": {"task": "regression", "features": ["a", "b", "c"], "norm": {"method": "layer"},
             **MODEL},
}
Snapshot = list[tuple[bytes, tuple[bytes, Any]]]

# the update-rejected case overflows float32 on purpose (the learner then rolls back)
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


@dataclass(frozen=True)
class Case:
    """One bad request. ``<reg>``, ``<bin>``, ``<multi>``, ``<feat>`` (the fixture's models),
    ``<gone>`` (a name no model has) and ``<new>`` (a free name for POST /models) are replaced
    in the path, the JSON body and the raw body."""

    id: str
    method: str
    path: str
    status: int
    field: str | None = None  # the "field" must be this name or start with it (then . or [)
    body: Any = None  # sent as JSON
    raw: bytes | None = None  # sent as is, with content_type
    chunked: bool = False  # raw sent as a stream of chunks, without Content-Length
    content_type: str = "application/json"
    auth: str | None = BEARER


# -- builders for the table ----------------------------------------------------------------------
def learn(id_: str, body: Any, field: str, model: str = "reg", status: int = 422) -> Case:
    return Case(f"learn/{id_}", "POST", f"/models/<{model}>/learn", status, field, body=body)


def predict(id_: str, body: Any, field: str, model: str = "reg", status: int = 422) -> Case:
    return Case(f"predict/{id_}", "POST", f"/models/<{model}>/predict", status, field, body=body)


def raw(id_: str, path: str, data: bytes, field: str | None, status: int = 422,
        **kw: Any) -> Case:
    return Case(id_, "POST", path, status, field, raw=data, **kw)


def spec(id_: str, field: str, drop: tuple[str, ...] = (), status: int = 422,
         **changes: Any) -> Case:
    body = {"name": "<new>", "task": "regression", "n_features": 3, "hidden_size": 8, **changes}
    for key in drop:
        del body[key]
    return Case(f"create/{id_}", "POST", "/models", status, field, body=body)


def race(id_: str, field: str, status: int = 422, **changes: Any) -> Case:
    body = {"name": "<new>", "spec": {"task": "regression", "n_features": 3, "hidden_size": 8},
            "members": [{"norm": "streaming"}, {"norm": "layer"}], **changes}
    return Case(f"create-race/{id_}", "POST", "/races", status, field, body=body)


LEARN, PREDICT = "/models/<reg>/learn", "/models/<reg>/predict"
RACE_LEARN, RACE_PREDICT = "/races/<race>/learn", "/races/<race>/predict"
XYZ = [0.1, 0.2, 0.3]
OK = {"stream": "s", "x": XYZ, "y": 0.5}
BIG_INT = b"1" + b"0" * 400  # a valid JSON integer far beyond float64
OVER_LIMIT = b'{"stream":"s","x":[' + b"0," * (LIMIT // 2) + b'0],"y":1}'
LONG = "a" * 65

CASES: list[Case] = [
    # -- wrong types -----------------------------------------------------------------------------
    learn("x-string", {"stream": "s", "x": "0.1,0.2,0.3", "y": 1}, "x"),
    learn("x-string-element", {"stream": "s", "x": [0.1, "0.2", 0.3], "y": 1}, "x"),
    learn("x-bool-element", {"stream": "s", "x": [True, 0, 0], "y": 1}, "x"),
    learn("x-nested-list", {"stream": "s", "x": [XYZ], "y": 1}, "x"),
    learn("x-number", {"stream": "s", "x": 5, "y": 1}, "x"),
    learn("y-string", {"stream": "s", "x": XYZ, "y": "1.5"}, "y"),
    learn("y-list", {"stream": "s", "x": XYZ, "y": [1.5]}, "y"),
    learn("y-object", {"stream": "s", "x": XYZ, "y": {"v": 1}}, "y"),
    learn("y-bool-for-regression", {"stream": "s", "x": XYZ, "y": True}, "y"),
    learn("y-null", {"stream": "s", "x": XYZ, "y": None}, "y"),
    learn("y-missing", {"stream": "s", "x": XYZ}, "y"),
    learn("sequence-string", {"sequence": "abc", "y": 1}, "sequence"),
    learn("sequence-step-string", {"sequence": [XYZ, "abc"], "y": 1}, "sequence"),
    predict("x-string", {"stream": "s", "x": "0.1,0.2,0.3"}, "x"),
    predict("x-string-element", {"stream": "s", "x": [0.1, "0.2", 0.3]}, "x"),
    predict("sequence-object", {"sequence": {"a": 1}}, "sequence"),
    # -- wrong lengths ---------------------------------------------------------------------------
    learn("x-too-short", {"stream": "s", "x": [0.1, 0.2], "y": 1}, "x"),
    learn("x-too-long", {"stream": "s", "x": [0.1, 0.2, 0.3, 0.4], "y": 1}, "x"),
    learn("x-empty", {"stream": "s", "x": [], "y": 1}, "x"),
    learn("sequence-empty", {"sequence": [], "y": 1}, "sequence"),
    learn("sequence-step-too-short", {"sequence": [XYZ, [0.1, 0.2]], "y": 1}, "sequence"),
    learn("sequence-10001-steps", {"sequence": [[0, 0, 0]] * 10_001, "y": 1}, "sequence"),
    predict("x-too-long", {"stream": "s", "x": [0.1, 0.2, 0.3, 0.4]}, "x"),
    predict("sequence-empty", {"sequence": []}, "sequence"),
    learn("batch-empty", {"batch": []}, "batch"),
    learn("batch-not-a-list", {"batch": 5}, "batch"),
    learn("batch-item-not-an-object", {"batch": [5]}, "batch"),
    learn("batch-item-bad-y", {"batch": [{"sequence": [XYZ], "y": "a"}]}, "batch"),
    learn("batch-item-short-step", {"batch": [{"sequence": [[0.1]], "y": 1}]}, "batch"),
    # -- NaN / Infinity literals and numbers out of range ----------------------------------------
    raw("learn/x-NaN", LEARN, b'{"stream":"s","x":[1,NaN,2],"y":1}', "x"),
    raw("learn/x-Infinity", LEARN, b'{"stream":"s","x":[1,Infinity,2],"y":1}', "x"),
    raw("learn/x--Infinity", LEARN, b'{"stream":"s","x":[1,-Infinity,2],"y":1}', "x"),
    raw("learn/y-NaN", LEARN, b'{"stream":"s","x":[1,2,3],"y":NaN}', "y"),
    raw("learn/y-Infinity", LEARN, b'{"stream":"s","x":[1,2,3],"y":Infinity}', "y"),
    raw("learn/y--Infinity", LEARN, b'{"stream":"s","x":[1,2,3],"y":-Infinity}', "y"),
    raw("learn/sequence-NaN", LEARN, b'{"sequence":[[1,2,3],[NaN,1,1]],"y":1}', "sequence"),
    raw("learn/x-1e999", LEARN, b'{"stream":"s","x":[1,1e999,2],"y":1}', "x"),
    raw("learn/y--1e999", LEARN, b'{"stream":"s","x":[1,2,3],"y":-1e999}', "y"),
    learn("x-beyond-float32", {"stream": "s", "x": [0.1, 3.5e38, 0.3], "y": 1}, "x"),
    raw("learn/y-400-digit-integer", LEARN, b'{"stream":"s","x":[1,2,3],"y":' + BIG_INT + b"}",
        "y"),
    raw("learn/x-400-digit-integer", LEARN,
        b'{"stream":"s","x":[1,' + BIG_INT + b',3],"y":1}', "x"),
    raw("predict/x-NaN", PREDICT, b'{"stream":"s","x":[1,NaN,2]}', "x"),
    raw("predict/x-Infinity", PREDICT, b'{"stream":"s","x":[Infinity,1,2]}', "x"),
    raw("predict/x-400-digit-integer", PREDICT, b'{"stream":"s","x":[1,' + BIG_INT + b",3]}",
        "x"),
    raw("learn/binary-y-NaN", "/models/<bin>/learn", b'{"stream":"s","x":[1,2,3],"y":NaN}', "y"),
    raw("learn/multi-y-Infinity", "/models/<multi>/learn",
        b'{"stream":"s","x":[1,2,3],"y":Infinity}', "y"),
    raw("learn/features-value-NaN", "/models/<feat>/learn",
        b'{"stream":"s","x":{"a":1,"b":NaN,"c":3},"y":1}', "x"),
    raw("create/lr-NaN", "/models",
        b'{"name":"<new>","task":"regression","n_features":3,"optimizer":{"lr":NaN}}',
        "optimizer"),
    # -- malformed JSON --------------------------------------------------------------------------
    raw("learn/json-truncated", LEARN, b'{"stream":"s","x":[1,2', "body"),
    raw("learn/json-trailing-comma", LEARN, b'{"x":[1,2,3],"y":1,}', "body"),
    raw("learn/json-single-quotes", LEARN, b"{'x':[1,2,3],'y':1}", "body"),
    raw("learn/json-empty-body", LEARN, b"", "body"),
    raw("learn/json-array-body", LEARN, b"[1,2,3]", "body"),
    raw("learn/json-string-body", LEARN, b'"x"', "body"),
    raw("learn/text-plain-body", LEARN, b'{"x":[1,2,3],"y":1}', "body", content_type="text/plain"),
    raw("create/json-truncated", "/models", b'{"name":"<new>","task":', "body"),
    raw("learn/json-5000-digit-number", LEARN,
        b'{"stream":"s","x":[1,2,3],"y":1' + b"0" * 5000 + b"}", "body"),
    raw("learn/json-invalid-utf8", LEARN, b'{"stream":"s\xff","x":[1,2,3],"y":1}', "body"),
    raw("learn/json-nested-200k-deep", LEARN, b"[" * 200_000 + b"]" * 200_000, "body"),
    # -- bodies over the limit -------------------------------------------------------------------
    raw("learn/body-over-limit-content-length", LEARN, OVER_LIMIT, "body", status=413),
    raw("learn/body-over-limit-chunked", LEARN, OVER_LIMIT, "body", status=413, chunked=True),
    raw("predict/body-over-limit-chunked", PREDICT, OVER_LIMIT, "body", status=413,
        chunked=True),
    raw("create/body-over-limit-content-length", "/models", OVER_LIMIT, "body", status=413),
    raw("create/body-over-limit-chunked", "/models", OVER_LIMIT, "body", status=413,
        chunked=True),
    # -- unknown models --------------------------------------------------------------------------
    predict("unknown-model", {"stream": "s", "x": XYZ}, "name", model="gone", status=404),
    learn("unknown-model", OK, "name", model="gone", status=404),
    Case("get/unknown-model", "GET", "/models/<gone>", 404, "name"),
    Case("delete/unknown-model", "DELETE", "/models/<gone>", 404, "name"),
    Case("metrics/unknown-model", "GET", "/models/<gone>/metrics", 404, "name"),
    Case("state/unknown-model", "GET", "/models/<gone>/state", 404, "name"),
    # -- bad model names in the path -------------------------------------------------------------
    Case("get/name-with-space", "GET", "/models/bad name", 422, "name"),
    Case("get/name-65-chars", "GET", f"/models/{LONG}", 422, "name"),
    Case("get/name-with-encoded-slash", "GET", "/models/x%2Fy", 404),  # /models/x/y: no route
    Case("get/name-with-percent", "GET", "/models/a%25b", 422, "name"),
    Case("learn/name-with-space", "POST", "/models/bad name/learn", 422, "name", body=OK),
    Case("predict/name-65-chars", "POST", f"/models/{LONG}/predict", 422, "name",
         body={"stream": "s", "x": XYZ}),
    Case("delete/name-with-space", "DELETE", "/models/bad name", 422, "name"),
    Case("metrics/name-65-chars", "GET", f"/models/{LONG}/metrics", 422, "name"),
    Case("state/name-with-space", "GET", "/models/bad name/state", 422, "name"),
    # -- bad model names in POST /models ---------------------------------------------------------
    spec("name-with-space", "name", name="bad name"),
    spec("name-65-chars", "name", name=LONG),
    spec("name-with-slash", "name", name="x/y"),
    spec("name-empty", "name", name=""),
    spec("name-not-a-string", "name", name=5),
    spec("name-missing", "name", drop=("name",)),
    # '.' and '..' are path segments clients normalise away: no name may start with '.'
    spec("name-dot", "name", name="."),
    spec("name-dotdot", "name", name=".."),
    spec("name-leading-dot", "name", name=".hidden"),
    Case("learn/name-leading-dot", "POST", "/models/.hidden/learn", 422, "name", body=OK),
    spec("name-taken", "name", status=409, name="<reg>", n_features=5),
    # -- bad specs -------------------------------------------------------------------------------
    spec("task-unknown", "task", task="ranking"),
    spec("task-missing", "task", drop=("task",)),
    spec("n_features-missing", "n_features", drop=("n_features",)),
    spec("n_features-0", "n_features", n_features=0),
    spec("n_classes-for-regression", "n_classes", n_classes=3),
    spec("multiclass-without-n_classes", "n_classes", task="multiclass"),
    spec("n_classes-1", "n_classes", task="multiclass", n_classes=1),
    spec("features-duplicate", "features", drop=("n_features",), features=["a", "a"]),
    spec("hidden_size-0", "hidden_size", hidden_size=0),
    spec("hidden_size-string", "hidden_size", hidden_size="big"),
    spec("cell-unknown", "cell", cell="transformer"),
    spec("norm-unknown-method", "norm", norm="nope"),
    spec("norm-unknown-method-object", "norm", norm={"method": "group"}),
    spec("norm-streaming-preset-nope", "norm", norm={"method": "streaming", "preset": "nope"}),
    spec("norm-layer-eps-negative", "norm", norm={"method": "layer", "eps": -1}),
    spec("norm-streaming-alpha-out-of-range", "norm",
         norm={"method": "streaming", "alpha": [2.0, 0.3]}),
    spec("norm-unknown-param", "norm", norm={"method": "layer", "gamma": 1}),
    spec("norm-online-clamp-with-layer-scaling", "norm.online.clamp",
         norm={"method": "online", "clamp": 5}),
    spec("optimizer-unknown", "optimizer", optimizer={"name": "adagrad"}),
    spec("optimizer-lr-0", "optimizer", optimizer={"name": "adam", "lr": 0}),
    spec("window-0", "window", window=0),
    spec("seed-negative", "seed", seed=-1),
    spec("extra-unknown-field", "colour", colour="red"),
    # -- feature names (a model created with features a, b, c) -----------------------------------
    learn("features-unknown-name", {"stream": "s", "x": {"a": 1, "b": 2, "c": 3, "d": 4},
                                    "y": 1}, "x", model="feat"),
    learn("features-missing-name", {"stream": "s", "x": {"a": 1, "b": 2}, "y": 1}, "x",
          model="feat"),
    learn("features-value-string", {"stream": "s", "x": {"a": 1, "b": "2", "c": 3}, "y": 1},
          "x", model="feat"),
    learn("features-in-sequence-missing", {"sequence": [{"a": 1, "b": 2}], "y": 1}, "sequence",
          model="feat"),
    predict("features-unknown-name", {"stream": "s", "x": {"a": 1, "b": 2, "c": 3, "z": 0}},
            "x", model="feat"),
    predict("features-missing-name", {"stream": "s", "x": {"c": 3}}, "x", model="feat"),
    learn("features-object-for-a-list-model", {"stream": "s", "x": {"a": 1, "b": 2, "c": 3},
                                               "y": 1}, "x"),
    # -- labels ----------------------------------------------------------------------------------
    learn("multiclass-y-equals-n_classes", {"stream": "s", "x": XYZ, "y": 3}, "y",
          model="multi"),
    learn("multiclass-y-negative", {"stream": "s", "x": XYZ, "y": -1}, "y", model="multi"),
    learn("multiclass-y-fraction", {"stream": "s", "x": XYZ, "y": 1.5}, "y", model="multi"),
    learn("multiclass-y-bool", {"stream": "s", "x": XYZ, "y": True}, "y", model="multi"),
    learn("binary-y-2", {"stream": "s", "x": XYZ, "y": 2}, "y", model="bin"),
    learn("binary-y-minus-1", {"stream": "s", "x": XYZ, "y": -1}, "y", model="bin"),
    learn("binary-y-0.5", {"stream": "s", "x": XYZ, "y": 0.5}, "y", model="bin"),
    learn("binary-y-string", {"stream": "s", "x": XYZ, "y": "1"}, "y", model="bin"),
    learn("batch-binary-y-2", {"batch": [{"sequence": [XYZ], "y": 2}]}, "batch", model="bin"),
    # -- x, sequence, batch and stream together --------------------------------------------------
    learn("x-and-sequence", {"x": XYZ, "sequence": [XYZ], "y": 1}, "x"),
    learn("x-and-batch", {"x": XYZ, "batch": [{"sequence": [XYZ], "y": 1}]}, "x"),
    learn("neither-x-nor-sequence", {"stream": "s", "y": 1}, "x"),
    learn("sequence-with-stream", {"stream": "s", "sequence": [XYZ], "y": 1}, "stream"),
    predict("x-and-sequence", {"x": XYZ, "sequence": [XYZ]}, "x"),
    predict("neither-x-nor-sequence", {"stream": "s"}, "x"),
    predict("sequence-with-stream", {"stream": "s", "sequence": [XYZ]}, "stream"),
    # -- stream names ----------------------------------------------------------------------------
    learn("stream-empty", {"stream": "", "x": XYZ, "y": 1}, "stream"),
    learn("stream-with-space", {"stream": "a b", "x": XYZ, "y": 1}, "stream"),
    learn("stream-129-chars", {"stream": "s" * 129, "x": XYZ, "y": 1}, "stream"),
    learn("stream-number", {"stream": 5, "x": XYZ, "y": 1}, "stream"),
    predict("stream-non-ascii", {"stream": "ström", "x": XYZ}, "stream"),
    # -- event ids -------------------------------------------------------------------------------
    learn("event_id-empty", {**OK, "event_id": ""}, "event_id"),
    learn("event_id-with-space", {**OK, "event_id": "e 1"}, "event_id"),
    learn("event_id-129-chars", {**OK, "event_id": "e" * 129}, "event_id"),
    learn("event_id-number", {**OK, "event_id": 42}, "event_id"),
    learn("event_id-non-ascii", {**OK, "event_id": "évé"}, "event_id"),
    # -- unknown fields --------------------------------------------------------------------------
    learn("unknown-field", {**OK, "foo": 1}, "foo"),
    learn("unknown-field-X-uppercase", {"stream": "s", "X": XYZ, "y": 1}, "X"),
    predict("y-not-a-predict-field", {"stream": "s", "x": XYZ, "y": 1}, "y"),
    predict("event_id-not-a-predict-field", {"stream": "s", "x": XYZ, "event_id": "e"},
            "event_id"),
    learn("batch-sequence-not-a-list", {"batch": [{"sequence": 5, "y": 1}]},
          "batch[0].sequence"),
    learn("batch-item-a-list", {"batch": [[[0.1, 0.2, 0.3]]]}, "batch"),
    # -- an update the learner rolls back (non-finite), after the lease was taken -----------------
    learn("update-rejected-huge-values", {"stream": "s", "x": [3e38, -3e38, 3e38], "y": 3e38},
          "y"),
    Case("curve/after-beyond-a-version", "GET", "/models/<reg>/curve?after=32589158477190044729",
         422, "after"),
    Case("curve/limit-0", "GET", "/models/<reg>/curve?limit=0", 422, "limit"),
    # -- races -----------------------------------------------------------------------------------
    Case("race-learn/x-too-short", "POST", RACE_LEARN, 422, "x",
         body={"stream": "s", "x": [0.1], "y": 1}),
    Case("race-learn/y-missing", "POST", RACE_LEARN, 422, "y", body={"stream": "s", "x": XYZ}),
    Case("race-learn/unknown-field", "POST", RACE_LEARN, 422, "foo", body={**OK, "foo": 1}),
    raw("race-learn/x-NaN", RACE_LEARN, b'{"stream":"s","x":[1,NaN,2],"y":1}', "x"),
    raw("race-learn/json-truncated", RACE_LEARN, b'{"stream":"s","x":[1,2', "body"),
    raw("race-learn/body-over-limit-chunked", RACE_LEARN, OVER_LIMIT, "body", status=413,
        chunked=True),
    Case("race-learn/unknown-race", "POST", "/races/<gone>/learn", 404, "name", body=OK),
    Case("race-learn/name-with-space", "POST", "/races/bad name/learn", 422, "name", body=OK),
    Case("race-learn/no-auth", "POST", RACE_LEARN, 401, "authorization", auth=None, body=OK),
    Case("race-predict/x-too-long", "POST", RACE_PREDICT, 422, "x",
         body={"stream": "s", "x": [1, 2, 3, 4]}),
    Case("race-predict/unknown-race", "POST", "/races/<gone>/predict", 404, "name",
         body={"stream": "s", "x": XYZ}),
    Case("race-get/unknown-race", "GET", "/races/<gone>", 404, "name"),
    Case("race-get/name-65-chars", "GET", f"/races/{LONG}", 422, "name"),
    Case("race-live/unknown-race", "GET", "/races/<gone>/live", 404, "name"),
    Case("race-delete/unknown-race", "DELETE", "/races/<gone>", 404, "name"),
    Case("race-delete/no-auth", "DELETE", "/races/<race>", 401, "authorization", auth=None),
    Case("race-delete/wrong-key", "DELETE", "/races/<race>", 403, "authorization",
         auth="Bearer k3"),
    race("member-norm-unknown", "members[1].norm", members=[{}, {"norm": "group"}]),
    race("member-task", "members[0].task", members=[{"task": "binary"}]),
    race("member-n_classes", "members[0].n_classes", members=[{"n_classes": 3}]),
    race("member-name-bad", "members[0].name", members=[{"name": "a b"}]),
    race("member-names-repeated", "members[1].name", members=[{"name": "<new>-a"},
                                                               {"name": "<new>-a"}]),
    race("member-name-taken-by-a-model", "members[0].name", status=409,
         members=[{"name": "<reg>"}]),
    race("members-empty", "members", members=[]),
    race("members-17", "members", members=[{}] * 17),
    race("members-not-a-list", "members", members={"norm": "layer"}),
    race("spec-with-name", "spec.name", spec={"name": "x", "task": "regression",
                                              "n_features": 3}),
    race("spec-task-missing", "spec.task", spec={"n_features": 3}),
    race("spec-not-an-object", "spec", spec=[1, 2]),
    race("metric-of-another-task", "metric", metric="Accuracy"),
    race("metric-unknown", "metric", metric="F1"),
    race("margin-negative", "margin", margin=-0.5),
    race("min_updates-string", "min_updates", min_updates="many"),
    race("name-with-space", "name", name="a b"),
    race("name-taken", "name", status=409, name="<race>"),
    race("unknown-field", "colour", colour="red"),
    Case("events/model-and-race", "POST", "/events", 422, "model",
         body={**OK, "model": "<reg>", "race": "<race>"}),
    Case("events/neither-model-nor-race", "POST", "/events", 422, "model", body=OK),
    Case("events/unknown-race", "POST", "/events", 404, "race", body={**OK, "race": "<gone>"}),
    Case("events/race-x-too-short", "POST", "/events", 422, "[0].x",
         body=[{"race": "<race>", "stream": "s", "x": [1], "y": 1}]),
    # -- auth (writes need a Bearer key) ---------------------------------------------------------
    Case("create/no-auth", "POST", "/models", 401, "authorization", auth=None,
         body={"name": "<new>", "task": "regression", "n_features": 3}),
    Case("create/wrong-key", "POST", "/models", 403, "authorization", auth="Bearer nope",
         body={"name": "<new>", "task": "regression", "n_features": 3}),
    Case("create/basic-scheme", "POST", "/models", 401, "authorization", auth="Basic k1",
         body={"name": "<new>", "task": "regression", "n_features": 3}),
    Case("create/bearer-without-key", "POST", "/models", 401, "authorization", auth="Bearer ",
         body={"name": "<new>", "task": "regression", "n_features": 3}),
    Case("learn/no-auth", "POST", LEARN, 401, "authorization", auth=None, body=OK),
    Case("learn/wrong-key", "POST", LEARN, 403, "authorization", auth="Bearer k3", body=OK),
    Case("learn/key-prefix", "POST", LEARN, 403, "authorization", auth="Bearer k", body=OK),
    Case("delete/no-auth", "DELETE", "/models/<reg>", 401, "authorization", auth=None),
    Case("state/no-auth", "GET", "/models/<reg>/state", 401, "authorization", auth=None),
    Case("predict/no-auth", "POST", PREDICT, 401, "authorization", auth=None,
         body={"stream": "s", "x": XYZ}),
    Case("list/wrong-key", "GET", "/models", 403, "authorization", auth="Bearer k3"),
    Case("delete/wrong-key", "DELETE", "/models/<reg>", 403, "authorization",
         auth="Bearer k1k2"),
]


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(redis_url: str) -> Iterator[TestClient]:
    """The real app with API keys; a 500 comes back as a response, not an exception."""
    settings = Settings(redis_url=redis_url, api_keys=KEYS, max_body_bytes=LIMIT)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def names(api: TestClient) -> Iterator[dict[str, str]]:
    """The models the cases need (one per role of SPECS), plus a name no model has and a free
    name for POST /models; every model is deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    out = {role: f"bad-{role}-{tag}" for role in SPECS}
    for role, body in SPECS.items():
        r = api.post("/models", json={"name": out[role], **body},
                     headers={"Authorization": BEARER})
        assert r.status_code == 201, r.text
    out["race"] = f"bad-race-{tag}"
    r = api.post("/races", json={"name": out["race"], "spec": SPECS["reg"],
                                 "members": [{"norm": "streaming"}, {"norm": "none"}]},
                 headers={"Authorization": BEARER})
    assert r.status_code == 201, r.text
    out |= {"gone": f"bad-gone-{tag}", "new": f"bad-new-{tag}"}
    yield out
    for role in SPECS:
        api.delete(f"/models/{out[role]}", headers={"Authorization": BEARER})
    api.delete(f"/races/{out['race']}", headers={"Authorization": BEARER})


@pytest.fixture(scope="module")
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# -- helpers -------------------------------------------------------------------------------------
def snapshot(r: redis.Redis) -> Snapshot:
    """Every ``sn:*`` key with its content (``none`` for a key gone since SCAN), sorted."""
    return sorted((key, contents(r, key)) for key in r.scan_iter(match="sn:*", count=1000))


def no_leases(r: redis.Redis) -> None:
    """Wait (≤ 1 s) until no write lease is held: a good learn's lease lingers a few ms after
    its reply, and one going meanwhile would read as a change the bad request made."""
    deadline = time.monotonic() + 1.0
    while held := [k for k in r.scan_iter(match="sn:*", count=1000)
                   if k.endswith((b":lock", b":wanted"))]:
        assert time.monotonic() < deadline, held
        time.sleep(0.005)


def fill(text: str, names: dict[str, str]) -> str:
    for role, name in names.items():
        text = text.replace(f"<{role}>", name)
    return text


def fill_json(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return fill(value, names)
    if isinstance(value, list):
        return [fill_json(v, names) for v in value]
    if isinstance(value, dict):
        return {fill(k, names): fill_json(v, names) for k, v in value.items()}
    return value


def send(api: TestClient, case: Case, names: dict[str, str]) -> Any:
    headers = {} if case.auth is None else {"Authorization": case.auth}
    path = fill(case.path, names)
    if case.raw is not None:
        data = case.raw
        for role, name in names.items():
            data = data.replace(f"<{role}>".encode(), name.encode())
        headers["Content-Type"] = case.content_type
        if case.chunked:
            chunks = [data[i:i + 65_536] for i in range(0, len(data), 65_536)]
            return api.request(case.method, path, content=iter(chunks), headers=headers)
        return api.request(case.method, path, content=data, headers=headers)
    if case.body is not None:
        return api.request(case.method, path, json=fill_json(case.body, names), headers=headers)
    return api.request(case.method, path, headers=headers)


def names_field(field: str, expected: str) -> bool:
    """``x`` names ``x``, ``x[1]`` and ``x.a``; ``norm`` names ``norm.streaming.preset``."""
    return field == expected or field.startswith((f"{expected}.", f"{expected}["))


# -- the table -----------------------------------------------------------------------------------
def test_the_table_has_unique_readable_ids() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request_is_refused_and_changes_nothing(api: TestClient, names: dict[str, str],
                                                    store: redis.Redis, case: Case) -> None:
    no_leases(store)
    before = snapshot(store)  # after the module's models exist; leases included
    present = {key for key, _ in before}
    for role in SPECS:
        assert model_key(names[role], "spec").encode() in present
    if case.chunked:
        assert "content-length" not in {k.lower() for k in _request_headers(api, case, names)}
    r = send(api, case, names)
    after = snapshot(store)
    shown = f"{case.method} {case.path} -> {r.status_code} {r.text[:300]}"
    assert r.status_code == case.status, shown
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"], shown
    if case.status == 422 or case.field is not None:
        assert isinstance(body.get("field"), str) and body["field"], shown
    if case.field is not None:
        assert names_field(body["field"], case.field), f"field should name {case.field!r}: {shown}"
    assert after == before, f"Redis changed: {shown}"


def _request_headers(api: TestClient, case: Case, names: dict[str, str]) -> list[str]:
    """The header names httpx would send for a chunked case (built, not sent)."""
    assert case.raw is not None
    request = api.build_request(case.method, fill(case.path, names),
                                content=iter([case.raw[:10], case.raw[10:]]),
                                headers={"Content-Type": case.content_type})
    return list(request.headers.keys())


# -- and the service still works -----------------------------------------------------------------
def test_valid_requests_work_after_the_bad_ones(api: TestClient, names: dict[str, str],
                                                store: redis.Redis) -> None:
    """Nothing the bad requests did lingers, in Redis or in the process's cached learners: the
    first good learn is version 1 and equals a fresh in-process learner bit for bit."""
    auth = {"Authorization": BEARER}
    reg = names["reg"]
    local = OnlineLearner(ModelSpec.model_validate({"name": reg, **SPECS["reg"]}))
    want = local.learn_one(XYZ, 0.5, stream="s")
    before = snapshot(store)
    r = api.post(f"/models/{reg}/learn", json=OK, headers=auth)
    assert r.status_code == 200, r.text
    assert snapshot(store) != before  # the snapshot does see a write
    got = r.json()
    assert got["version"] == 1 and got["applied"] is True
    assert got["prediction"] == want.prediction and got["loss"] == want.loss
    state = api.get(f"/models/{reg}/state", headers=auth)
    assert state.headers["x-model-version"] == "1" and state.content == local.to_bytes()
    for role, x, y in [("bin", XYZ, 1), ("multi", XYZ, 2), ("feat", {"a": 1, "b": 2, "c": 3}, 0)]:
        r = api.post(f"/models/{names[role]}/learn", json={"stream": "s", "x": x, "y": y},
                     headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 1 and r.json()["applied"] is True
    r = api.post("/models", json={"name": names["new"], "task": "regression", "n_features": 3},
                 headers=auth)
    assert r.status_code == 201, r.text
    assert api.delete(f"/models/{names['new']}", headers=auth).status_code == 204
