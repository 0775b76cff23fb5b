"""CPU instructions per ``learn`` and per ``predict`` through the real ASGI app and a real Redis,
counted by valgrind (callgrind): a measure of a change's cost that the drift of these VMs
(30 % between days) does not blur.

One run of this script: an embedded ``redis-server`` (outside valgrind), the app in this process
through ``httpx.ASGITransport`` (no uvicorn: what a change to the app or the engine costs), one
model (bench/http_api.py's LSTM with the given norm), 50 untimed learns and predictions, then
``--learns`` learns and as many predictions. Run it twice under callgrind, with ``--learns N``
and ``--learns 0``: the difference over N is the cost of one learn plus one predict; with
``--predict-only`` the learns are left out (so the two costs separate). ``--root`` runs another
checkout's code (A/B against a starting commit, on the same machine)::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/instructions.py --learns 300 2>&1 | grep "Collected"
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout whose code runs (``--root``)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--learns", type=int, default=300, help="counted requests of each kind")
    p.add_argument("--norm", default="layer")
    p.add_argument("--predict-only", action="store_true", help="count predictions only")
    p.add_argument("--root", type=Path, default=None, help="a checkout whose code to run")
    return p.parse_args()


LAYERED = (ROOT / "service" / "api").is_dir()  # else a checkout from before service/api


async def run(args: argparse.Namespace, url: str) -> None:
    import httpx

    if LAYERED:
        from service.api.app import create_app
    else:
        from service.app import create_app  # type: ignore[no-redef]
    from service.settings import Settings

    app = create_app(Settings(redis_url=url))
    body = {"name": "bench", "task": "regression", "n_features": 6, "cell": "lstm",
            "hidden_size": 32, "window": 8, "norm": {"method": args.norm},
            "optimizer": {"name": "adam", "lr": 0.001}, "seed": 0}
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
        assert (await client.post("/models", json=body)).status_code == 201

        async def learn(k: int) -> None:
            x = [((k * (j + 3)) % 11) / 11 for j in range(6)]
            r = await client.post("/models/bench/learn", json={"stream": f"s{k % 4}", "x": x,
                                                               "y": sum(x) / 6})
            assert r.status_code == 200, r.text

        async def predict(k: int) -> None:
            x = [((k * (j + 5)) % 13) / 13 for j in range(6)]
            r = await client.post("/models/bench/predict", json={"stream": f"s{k % 4}", "x": x})
            assert r.status_code == 200, r.text

        for k in range(50):
            await learn(k)
            await predict(k)
        for k in range(50, 50 + args.learns):
            if not args.predict_only:
                await learn(k)
            await predict(k)


def main() -> None:
    global ROOT, LAYERED
    args = parse()
    if args.root is not None:
        ROOT = args.root.resolve()
        LAYERED = (ROOT / "service" / "api").is_dir()
    sys.path.insert(0, str(ROOT))
    if LAYERED:
        from service.redis.embedded import EmbeddedRedis
    else:
        from service.embedded import EmbeddedRedis  # type: ignore[no-redef]
    with tempfile.TemporaryDirectory() as folder, EmbeddedRedis(Path(folder)) as redis:
        asyncio.run(run(args, redis.url))


if __name__ == "__main__":
    main()
