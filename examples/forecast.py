"""Forecast a River time series h steps ahead, learning from delayed labels, on a running service.

Each month of River's ``AirlinePassengers`` (1949-1960, monthly airline passengers) the model
predicts the count ``h`` months ahead and **keeps** that prediction (``POST
/models/{name}/predict`` with a ``prediction_id``): the month's input joins the stream's context
at once. When the future arrives ``h`` months later, its value is the **label** of the kept
prediction (``POST /models/{name}/label``): the model trains on exactly the window that
prediction saw, with the weights of that day, and the service scores the kept forecast. No
client-side buffering of windows. At the end it prints the forecasts' MAE in passengers against
the seasonal-naive forecast (the value 12 months before the target month) and the last-value
forecast.

    bash scripts/setup.sh dev                          # River comes with the dev extras
    bash scripts/serve.sh &                            # API + embedded Redis
    .venv/bin/python examples/forecast.py --url http://127.0.0.1:8000 --horizon 3

Inputs are the month's count and its season (sin/cos of the month), standardized with the
statistics known at prediction time; the label is the future count on that same scale, so the
client keeps one (mean, sd) pair per open forecast — the only state it holds.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from service.feed import Client, FeedError


def series(limit: int | None) -> list[tuple[int, float]]:
    """``(month of year, passengers)`` of River's bundled AirlinePassengers, in order."""
    try:
        from river import datasets
    except ImportError:
        raise SystemExit("River is not installed: pip install 'streamnorm[river]'") from None
    out = [(x["month"].month, float(y)) for x, y in datasets.AirlinePassengers()]
    return out[:limit] if limit else out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="airline-forecast")
    p.add_argument("--horizon", type=int, default=3, help="months ahead (h)")
    p.add_argument("--norm", default="layer", help="the normalization method")
    p.add_argument("--limit", type=int, default=None, help="the first N months only")
    p.add_argument("--api-key", default=None)
    args = p.parse_args()
    try:
        report = run(args)
    except FeedError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{report['scored']} forecasts {args.horizon} months ahead, MAE in passengers: "
          f"model {report['model']:.1f}, seasonal naive {report['seasonal']:.1f}, "
          f"last value {report['last']:.1f}")
    print(f"service: {report['updates']} updates from delayed labels, version "
          f"{report['version']}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Feed the series and return the forecasts' errors and the model's counters."""
    h, data = args.horizon, series(args.limit)
    client = Client(args.url, args.api_key)
    try:
        client.call("DELETE", f"/models/{args.model}", missing_ok=True)
        client.call("POST", "/models", {
            "name": args.model, "task": "regression", "n_features": 3, "cell": "lstm",
            "hidden_size": 16, "window": 12, "norm": args.norm, "seed": 0,
            "optimizer": {"name": "adam", "lr": 0.01}})
        mean, m2 = 0.0, 0.0  # running statistics of the counts seen so far
        open_: dict[int, tuple[float, float, float]] = {}  # t → (forecast, mean, sd)
        errors: dict[str, list[float]] = {"model": [], "seasonal": [], "last": []}
        for t, (month, value) in enumerate(data):
            if t - h in open_:  # the future of month t - h has come: label its forecast
                forecast, mu, sd = open_.pop(t - h)
                client.call("POST", f"/models/{args.model}/label",
                            {"prediction_id": f"t-{t - h}", "y": (value - mu) / sd})
                errors["model"].append(abs(forecast - value))
                errors["last"].append(abs(data[t - h][1] - value))
                if t >= 12:
                    errors["seasonal"].append(abs(data[t - 12][1] - value))
            n = t + 1
            delta = value - mean
            mean += delta / n
            m2 += delta * (value - mean)
            sd = math.sqrt(m2 / n) if n > 1 and m2 > 0 else 1.0
            angle = 2 * math.pi * month / 12
            x = [(value - mean) / sd, math.sin(angle), math.cos(angle)]
            kept = client.call("POST", f"/models/{args.model}/predict",
                               {"stream": "months", "x": x, "prediction_id": f"t-{t}"})
            open_[t] = (kept["prediction"] * sd + mean, mean, sd)
        info = client.call("GET", f"/models/{args.model}")
    finally:
        client.close()

    def mae(v: list[float]) -> float:
        return sum(v) / len(v) if v else float("nan")

    return {"scored": len(errors["model"]), "model": mae(errors["model"]),
            "seasonal": mae(errors["seasonal"]), "last": mae(errors["last"]),
            "updates": info["updates"], "version": info["version"]}


if __name__ == "__main__":
    main()
