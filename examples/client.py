"""The Python client (``service.client``) against a running streamnorm service.

A model is created, learns a sine wave on one stream (each learn with an ``event_id`` the client
makes, so retries are safe), keeps a prediction one step ahead and labels it when the value
comes, then looks at its retained versions and forks a copy with a lower learning rate. Errors
are typed and name the field (``Invalid``, ``NotFound``, ``Conflict``…).

    bash scripts/serve.sh &                                  # API + embedded Redis
    .venv/bin/python examples/client.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import contextlib
import math

from service.client import Client, Invalid, NotFound


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="client-demo")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--api-key", default=None)
    args = p.parse_args()
    with Client(args.url, args.api_key) as sn:
        for name in (args.model, f"{args.model}-slow"):  # a fresh start
            with contextlib.suppress(NotFound):
                sn.delete_model(name)
        sn.create_model({"name": args.model, "task": "regression", "n_features": 1,
                         "hidden_size": 16, "window": 8, "norm": "layer",
                         "optimizer": {"name": "adam", "lr": 0.01}})
        wave = [math.sin(0.3 * t) for t in range(args.steps + 2)]
        for t in range(args.steps):
            sn.learn(args.model, x=[wave[t]], y=wave[t + 1], stream="wave")
        kept = sn.predict(args.model, x=[wave[args.steps]], stream="wave", keep=True)
        label = sn.label(args.model, kept["prediction_id"], wave[args.steps + 1])
        print(f"kept prediction {kept['prediction']:.3f}, the value came: "
              f"{wave[args.steps + 1]:.3f} (loss {label['loss']:.4f})")
        info = sn.get_model(args.model)
        print(f"{args.model}: version {info['version']}, {info['updates']} updates, rolling "
              f"MAE {info['metrics']['MAE']['rolling']:.3f}")
        print("retained versions:", [v["version"] for v in sn.versions(args.model)])
        fork = sn.fork(args.model, f"{args.model}-slow", optimizer={"lr": 0.001})
        print(f"forked {fork['name']} at {fork['updates']} updates, lr "
              f"{fork['optimizer']['lr']}")
        try:
            sn.learn(args.model, x=[0.1, 0.2], y=0.0, stream="wave")
        except Invalid as err:
            print(f"refused as expected: {err.detail} (field {err.field})")


if __name__ == "__main__":
    main()
