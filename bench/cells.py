"""Time one training update of every cell and normalization method at batch size 1.

What it measures, with ``torch.set_num_threads(1)``: for ``models.RecurrentStack(cell, I, H, 1,
norm)`` and a window ``[T, 1, I]``, one forward + backward with the loss on the last output
(``out[-1].sum().backward()``), and the same plus an SGD step, ``zero_grad`` and
``models.notify_optimizer_step`` (which is run between iterations either way, so Streaming Norm
folds as in training). PyTorch's fused ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` of the same size run
in the same rounds as the reference. Every network runs ``iters`` iterations per round (calibrated
to ``--seconds``), rounds interleave the networks of one configuration so that load on the
machine hits all of them alike, and a figure is the median over ``--repeats`` rounds of the mean
time per iteration. Ratios are to ``none`` (the fused kernel behind our cell) and to PyTorch.

Run from the repository root::

    python bench/cells.py                       # everything (~2 min on 2 cores)
    python bench/cells.py --quick               # hidden 64, window 16, fewer rounds (~30 s)
    python bench/cells.py --cells lstm --methods none layer streaming --hidden 64 --windows 16

It prints a markdown table and a "targets" section (hidden 64, window 16): every method of every
cell at most 2.5x the ``none`` of its cell, GRU ``none`` at most 1.0x ``nn.LSTM``, LSTM ``layer``
and ``streaming`` at most 1.8x ``nn.LSTM``, LSTM ``none`` at most 1.5x ``nn.LSTM``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models
from models.fast import switch

TORCH_CELLS: dict[str, type[nn.Module]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
# (cell, method) ≤ limit × (cell, method) at hidden 64, window 16; "*": every method of every cell
TARGETS = ((("*", "*"), ("*", "none"), 2.5),  # issue 15: each within 2.5× the none of its cell
           (("gru", "none"), ("lstm", "torch"), 1.0),  # issue 15: a GRU none beats nn.LSTM
           (("lstm", "layer"), ("lstm", "torch"), 1.8),  # issue 15
           (("lstm", "streaming"), ("lstm", "torch"), 1.8),  # issue 15
           (("lstm", "none"), ("lstm", "torch"), 1.5))  # issue 3


class Runner:
    """One network with its input and optimizer; ``run(n)`` times ``n`` updates."""

    def __init__(self, net: nn.Module, x: torch.Tensor) -> None:
        self.net, self.x = net, x
        self.opt = torch.optim.SGD(net.parameters(), lr=1e-3)

    def run(self, n: int) -> tuple[float, float]:
        """Mean seconds per iteration of (forward + backward, forward + backward + step)."""
        net, x, opt, clock = self.net, self.x, self.opt, time.perf_counter
        fb = full = 0.0
        for _ in range(n):
            t0 = clock()
            out, _ = net(x)
            out[-1].sum().backward()
            t1 = clock()
            opt.step()
            opt.zero_grad(set_to_none=True)
            models.notify_optimizer_step(net)
            t2 = clock()
            fb += t1 - t0
            full += t2 - t0
        return fb / n, full / n


def calibrate(runner: Runner, seconds: float) -> int:
    """Warm up, then the iteration count that makes one round last about ``seconds``."""
    runner.run(3)
    n, spent = 1, 0.0
    while spent < min(0.05, seconds):
        start = time.perf_counter()
        runner.run(n)
        spent = time.perf_counter() - start
        n *= 2
    per = spent / max(n // 2, 1)
    return max(3, round(seconds / per))


def measure(cell: str, hidden: int, window: int, methods: list[str], args: argparse.Namespace
            ) -> dict[str, tuple[float, float]]:
    """Median ms per iteration for each method and ``"torch"`` in one configuration."""
    torch.manual_seed(0)
    x = torch.randn(window, 1, args.input_size)
    runners: dict[str, Runner] = {
        m: Runner(models.RecurrentStack(cell, args.input_size, hidden, 1, m).train(), x)
        for m in methods}
    runners["torch"] = Runner(TORCH_CELLS[cell](args.input_size, hidden), x)
    iters = {k: calibrate(r, args.seconds) for k, r in runners.items()}
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in runners}
    order = list(runners)
    for rnd in range(args.repeats):
        for k in order[rnd % len(order):] + order[:rnd % len(order)]:
            samples[k].append(runners[k].run(iters[k]))
    return {k: (1e3 * statistics.median(s[0] for s in v), 1e3 * statistics.median(
        s[1] for s in v)) for k, v in samples.items()}


def table(results: dict[tuple[str, int, int], dict[str, tuple[float, float]]]) -> str:
    """The markdown table: ms and ratios per configuration and method."""
    lines = ["| cell | H | T | method | fwd+bwd ms | × none | × torch | +SGD step ms | × none |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for (cell, hidden, window), res in results.items():
        base, ref = res.get("none"), res["torch"]
        for method, (fb, full) in res.items():
            name = f"nn.{TORCH_CELLS[cell].__name__}" if method == "torch" else method
            r_none = f"{fb / base[0]:.2f}" if base else "–"
            r_full = f"{full / base[1]:.2f}" if base else "–"
            lines.append(f"| {cell} | {hidden} | {window} | {name} | {fb:.3f} | {r_none} | "
                         f"{fb / ref[0]:.2f} | {full:.3f} | {r_full} |")
    return "\n".join(lines)


def targets(results: dict[tuple[str, int, int], dict[str, tuple[float, float]]]) -> str:
    """PASS/FAIL of the speed targets at hidden 64, window 16 (forward + backward)."""
    out = ["## targets (hidden 64, window 16, forward + backward)"]

    def name(cell: str, method: str) -> str:
        return f"nn.{TORCH_CELLS[cell].__name__}" if method == "torch" else f"{cell} {method}"

    for (cn, mn), (cd, md), limit in TARGETS:
        pairs = [((c, m), (c if cd == "*" else cd, md)) for (c, h, w), res in results.items()
                 if (h, w) == (64, 16) and cn in ("*", c) for m in res
                 if mn in ("*", m) and m not in ("torch", md)]
        if not pairs:
            out.append(f"- {name(cn, mn)} / {name(cd, md)} ≤ {limit}: not measured")
        for (c, m), (c2, m2) in pairs:
            num, den = results[(c, 64, 16)][m][0], results.get((c2, 64, 16), {}).get(m2)
            if den is None:
                out.append(f"- {name(c, m)} / {name(c2, m2)} ≤ {limit}: not measured")
                continue
            ratio = num / den[0]
            out.append(f"- {name(c, m)} / {name(c2, m2)} = {ratio:.2f} (≤ {limit}): "
                       f"{'PASS' if ratio <= limit else 'FAIL'}")
    return "\n".join(out)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(models.NORMS), choices=list(models.NORMS))
    p.add_argument("--cells", nargs="+", default=list(TORCH_CELLS), choices=list(TORCH_CELLS))
    p.add_argument("--hidden", nargs="+", type=int, default=None, help="default 32 64 128")
    p.add_argument("--windows", nargs="+", type=int, default=None, help="default 1 16")
    p.add_argument("--repeats", type=int, default=None, help="rounds per network (default 7)")
    p.add_argument("--seconds", type=float, default=None,
                   help="length of one round of one network (default 0.08 s)")
    p.add_argument("--input-size", type=int, default=8)
    p.add_argument("--quick", action="store_true",
                   help="hidden 64, window 16, 5 rounds of 0.03 s unless given otherwise")
    p.add_argument("--generic", action="store_true",
                   help="switch off the numpy kernels (models.fast.switch) for comparison")
    args = p.parse_args(argv)
    quick = args.quick
    args.hidden = args.hidden or ([64] if quick else [32, 64, 128])
    args.windows = args.windows or ([16] if quick else [1, 16])
    args.repeats = args.repeats or (5 if quick else 7)
    args.seconds = args.seconds or (0.03 if quick else 0.08)
    return args


def main(argv: list[str] | None = None, emit: Callable[[str], Any] = print) -> int:
    """Run the benchmark and print the table and the targets."""
    args = parse(argv)
    torch.set_num_threads(1)
    methods = sorted(args.methods, key=lambda m: (m != "none", m))
    emit(f"# bench/cells.py — torch {torch.__version__}, {platform.python_version()}, "
         f"{os.cpu_count()} CPUs, 1 thread, batch 1, input {args.input_size}, "
         f"numpy kernels {'off' if args.generic else 'on'}, {args.repeats} rounds of "
         f"~{args.seconds:g} s, median")
    results: dict[tuple[str, int, int], dict[str, tuple[float, float]]] = {}
    start = time.perf_counter()
    with switch.disabled() if args.generic else contextlib.nullcontext():
        for cell in args.cells:
            for hidden in args.hidden:
                for window in args.windows:
                    results[(cell, hidden, window)] = measure(cell, hidden, window, methods, args)
    emit("")
    emit(table(results))
    emit("")
    emit(targets(results))
    emit(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
