"""Write ``service-0.1.0.json``: a model as the service of commit 9210e7e stored it in Redis
(a snapshot whose state holds every stream's context, ctx keys for the streams that moved, no
stream index), with the predictions that code gave for it. Run it with that code first on the
path, against a Redis of your own (it creates and deletes the model ``legacy-fixture``):

    PYTHONPATH=/path/to/checkout-at-9210e7e python tests/data/make_service_fixture.py redis://...
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

NAME = "legacy-fixture"
SPEC = {"name": NAME, "task": "regression", "n_features": 3, "cell": "lstm", "hidden_size": 8,
        "norm": {"method": "streaming"}, "window": 4, "seed": 7}


def event(i: int) -> dict[str, object]:
    x = [((i * 7) % 11) / 11, ((i * 3) % 5) / 5 - 0.5, (i % 2) * 0.3]
    return {"stream": f"s{i % 3}", "x": x, "y": x[0] - x[1], "event_id": f"e-{i}"}


def dump(r: redis.Redis) -> dict[str, object]:
    """Every key of the model, by type, values as base64 where they are bytes."""
    out: dict[str, object] = {}
    for key in sorted(r.scan_iter(match=f"sn:{{{NAME}}}:*")):
        kind = r.type(key).decode()
        if kind == "string":
            value: object = base64.b64encode(r.get(key)).decode()
        elif kind == "hash":
            value = {k.decode(): v.decode() for k, v in r.hgetall(key).items()}
        elif kind == "zset":
            value = [[m.decode(), s] for m, s in r.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            value = [[i.decode(), {k.decode(): v.decode() for k, v in f.items()}]
                     for i, f in r.xrange(key)]
        else:
            raise TypeError(kind)
        out[key.decode()] = {"type": kind, "value": value}
    return out


def main(url: str) -> None:
    r = redis.Redis.from_url(url)
    r.delete(*r.keys(f"sn:{{{NAME}}}:*") or ["-"])
    with TestClient(create_app(Settings(redis_url=url, snapshot_every=10))) as client:
        assert client.post("/models", json=SPEC).status_code == 201
        for i in range(25):
            assert client.post(f"/models/{NAME}/learn", json=event(i)).status_code == 200
        probes = [{"stream": f"s{k}", "x": [0.2, -0.1, 0.3 * k]} for k in range(3)]
        probes.append({"stream": "new", "x": [0.2, -0.1, 0.3]})
        answers = [client.post(f"/models/{NAME}/predict", json=p).json() for p in probes]
        keys = dump(r)  # before the process exits (it would snapshot on the way out)
    assert json.loads(r.hget(f"sn:{{{NAME}}}:meta", "snapshot_version")) == 25  # exit snapshot
    r.delete(*r.keys(f"sn:{{{NAME}}}:*"))
    out = {"written_by": "9210e7e", "spec": SPEC, "events": [event(i) for i in range(25)],
           "probes": probes, "answers": answers, "keys": keys}
    (Path(__file__).parent / "service-0.1.0.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
