"""Push a River bundled stream into streamnorm through ``POST /events`` and watch the model learn.

River's ``TrumpApproval`` (1,001 days of approval polls, a regression target) goes to a model
with one stream of context (``"polls"``): every event is one day. Features are standardized on
the producer's side with River's online ``StandardScaler`` (the raw values are ~40 and the date
~736,000). The stream worker applies the events in order; this script prints the model's
prequential metrics (``GET /models/{name}/metrics``) as they move.

    bash bench/setup.sh                                      # River, once
    bash scripts/serve.sh &                                  # API + embedded Redis
    STREAMNORM_REDIS_URL=redis://127.0.0.1:PORT/0 .venv/bin/streamnorm worker &
    .venv/bin/python examples/river_producer.py --url http://127.0.0.1:8000

(With ``docker compose up`` everything runs already: use ``--url http://localhost:8000``.)
"""

from __future__ import annotations

import argparse
import time

import httpx
from river import datasets, preprocessing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="trump-approval")
    p.add_argument("--batch", type=int, default=50, help="events per POST /events")
    p.add_argument("--api-key", default=None)
    args = p.parse_args()
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    stream = datasets.TrumpApproval()
    features = list(next(iter(stream))[0])
    with httpx.Client(base_url=args.url, headers=headers, timeout=30.0) as client:
        client.delete(f"/models/{args.model}")
        spec = {"name": args.model, "task": "regression", "features": features,
                "cell": "lstm", "hidden_size": 32, "window": 8,
                "norm": {"method": "streaming"}, "optimizer": {"name": "adam", "lr": 0.005}}
        client.post("/models", json=spec).raise_for_status()
        scaler = preprocessing.StandardScaler()
        batch: list[dict[str, object]] = []
        sent = 0
        for day, (x, y) in enumerate(stream):
            scaler.learn_one(x)
            batch.append({"model": args.model, "stream": "polls", "event_id": f"day-{day}",
                          "x": scaler.transform_one(x), "y": y})
            if len(batch) == args.batch:
                sent += post(client, batch)
                batch = []
                applied = report(client, args.model, sent)
                while applied < sent - 4 * args.batch:  # stay a few batches ahead of the worker
                    time.sleep(0.1)
                    applied = client.get(f"/models/{args.model}").json()["updates"]
        sent += post(client, batch) if batch else 0
        while client.get(f"/models/{args.model}").json()["updates"] < sent:
            time.sleep(0.2)
        report(client, args.model, sent)


def post(client: httpx.Client, batch: list[dict[str, object]]) -> int:
    """Append a batch, waiting when the service pushes back (429 + Retry-After)."""
    while True:
        res = client.post("/events", json=batch)
        if res.status_code != 429:
            res.raise_for_status()
            return len(batch)
        time.sleep(float(res.headers.get("retry-after", "1")))


def report(client: httpx.Client, model: str, sent: int) -> int:
    """Print progress and the prequential MAE; the number of events applied."""
    info = client.get(f"/models/{model}").json()
    mae = (info.get("metrics") or {}).get("MAE", {})
    value, rolling = mae.get("value"), mae.get("rolling")
    print(f"sent {sent:5d}  applied {info['updates']:5d}  MAE {fmt(value)}  "
          f"rolling MAE {fmt(rolling)}")
    return int(info["updates"])


def fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


if __name__ == "__main__":
    main()
