"""Race all eight normalization methods on a River stream through a running streamnorm service.

One race, one member model per method (``GET /norms``), every member fed the same days of
River's ``TrumpApproval`` (approval polls, a regression target) over ``POST /races/{name}/learn``,
one day at a time, on one stream of context. Features are standardized online on this side (the
date is ~736,000, the polls ~40). Every few hundred days it prints the leader; at the end, the
ranking (``GET /races/{name}``): rank, member, norm, rolling and cumulative metric. A run starts
the race afresh (an existing race of that name is deleted first).

    bash scripts/setup.sh dev                                # or: pip install 'streamnorm[river]'
    bash scripts/serve.sh &                                  # API + embedded Redis
    .venv/bin/python examples/race.py --url http://127.0.0.1:8000
    .venv/bin/python examples/race.py --dataset Phishing     # a binary stream: Accuracy

``streamnorm feed --river TrumpApproval --race trump --create --scale`` does the same in one
command; this script shows the calls.
"""

from __future__ import annotations

import argparse
from typing import Any

from service.feed import Client, Scaler, default_spec
from service.sources import FeedError, river_source


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--dataset", default="TrumpApproval", help="a River bundled dataset")
    p.add_argument("--race", default="norms", help="the race's name")
    p.add_argument("--limit", type=int, default=None, help="the first N samples only")
    p.add_argument("--api-key", default=None)
    args = p.parse_args()
    try:
        run(args)
    except FeedError as exc:
        raise SystemExit(f"error: {exc}") from None


def run(args: argparse.Namespace) -> None:
    source = river_source(args.dataset, args.limit)
    source.check()  # reads it once: the task, the classes, the row count
    client = Client(args.url, args.api_key)
    try:
        client.call("DELETE", f"/races/{args.race}", missing_ok=True)
        methods = [n["method"] for n in client.call("GET", "/norms")]
        spec = default_spec(source, {"hidden_size": 16, "window": 8,
                                     "optimizer": {"name": "adam", "lr": 0.01}})
        client.call("POST", "/races", {"name": args.race, "spec": spec, "min_updates": 50,
                                       "members": [{"norm": m} for m in methods]})
        print(f"race {args.race}: {len(methods)} members ({', '.join(methods)}) on "
              f"{source.scan.rows} samples of {args.dataset} ({spec['task']})")
        scale = Scaler(len(source.features))
        for day, (x, y) in enumerate(source.rows(), start=1):
            reply = client.call("POST", f"/races/{args.race}/learn", {
                "stream": "days", "x": scale(x), "y": y, "event_id": f"day-{day}"})
            if day % 250 == 0:
                print(f"{day:6d} samples  leader {reply['leader'] or '-'}")
        standings = client.call("GET", f"/races/{args.race}")
    finally:
        client.close()
    report(standings)


def report(race: dict[str, Any]) -> None:
    """The ranking: the race's metric, rolling (what ranks) and cumulative."""
    metric = race["metric"]
    print(f"\n{'rank':>4}  {'member':<24} {'norm':<16} {metric + ' rolling':>16} "
          f"{metric:>10}")
    for m in sorted(race["members"], key=lambda m: m["rank"]):
        value = (m.get("metrics") or {}).get(metric, {})
        lead = "  <- leader" if m["name"] == race["leader"] else ""
        print(f"{m['rank']:>4}  {m['name']:<24} {m['norm']:<16} {fmt(value.get('rolling')):>16} "
              f"{fmt(value.get('value')):>10}{lead}")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    main()
