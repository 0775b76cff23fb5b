"""State bytes of two checkouts, back to back: ``to_bytes``, ``from_bytes`` and ``load_bytes``.

Each round runs one fresh process per checkout, alternating, each with that checkout's own
``models`` and its own ``bench/learner.py`` (the model and the timing of ``time_roundtrip``:
LSTM hidden 64, window 16, Adam, one stream, ``--roundtrips`` round trips, median); the table
gives the median over rounds of each checkout's medians, and their ratio::

    python bench/state.py /path/to/baseline-checkout .          # ~1 min
    python bench/state.py A B --rounds 9 --roundtrips 300 --methods none streaming
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

OPS = ("to", "from", "load")


def measure(tree: Path, methods: list[str], roundtrips: int) -> dict[str, dict[str, float]]:
    """Median ms of each op for each method, with the code of ``tree`` (run in its own
    process: ``--one``)."""
    sys.path.insert(0, str(tree))
    spec = importlib.util.spec_from_file_location("learner_bench", tree / "bench" / "learner.py")
    assert spec is not None and spec.loader is not None
    bench: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import torch

    import models

    if not Path(models.__file__).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"models came from {models.__file__}, not {tree}")
    torch.set_num_threads(1)
    events = bench.synthetic_stream(400)
    out = {}
    for method in methods:
        _, _, learner = bench.run_streamnorm(method, events, 200, 1e-3)
        out[method] = bench.time_roundtrip(learner, roundtrips)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="+", type=Path, help="checkouts, the baseline first")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--roundtrips", type=int, default=300)
    p.add_argument("--methods", nargs="+", default=["none", "layer", "streaming"])
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.trees[0], args.methods, args.roundtrips)))
        return 0
    runs: dict[Path, list[dict[str, dict[str, float]]]] = {t: [] for t in args.trees}
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for _ in range(args.rounds):
        for tree in args.trees:
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--one", str(tree.resolve()),
                 "--roundtrips", str(args.roundtrips), "--methods", *args.methods],
                check=True, capture_output=True, text=True, env=env, cwd="/")
            runs[tree].append(json.loads(done.stdout))
    print(f"median over {args.rounds} rounds of each process's median of {args.roundtrips} "
          "round trips, ms")
    print("| method | op | " + " | ".join(str(t) for t in args.trees) + " | ratio |")
    print("|---|---|" + "---:|" * (len(args.trees) + 1))
    for method in args.methods:
        for op in OPS:
            values = [statistics.median(r[method][op] for r in runs[t]) for t in args.trees]
            print(f"| {method} | {op} | " + " | ".join(f"{v:.4f}" for v in values)
                  + f" | {values[-1] / values[0]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
