"""What a model costs, estimated from its spec without allocating it: the bytes of its state, and
the time of one update or prediction.

A recurrent step at batch size 1 costs a fixed overhead per layer (operator dispatch: it differs
between cells and methods, from ~10 µs for an LSTM on PyTorch's fused kernel to ~70 µs for a GRU
with Online Norm on its numpy window; more per step for a batch, where Recurrent BN runs the
generic autograd loop) plus its multiply-adds, which are bound by memory bandwidth once the
weights leave the cache. So

    ms = fixed + parameters · ns_per_param + steps · num_layers · overhead[cell, method]
         + Σ_samples steps · madds_per_step · ns_per_madd

for a training update (forward and backward), and a fraction of it for a prediction. A batch of
equal-length sequences runs as one batch: it pays the overhead once per step. The constants were
measured on the 2-core x86 VMs this is built on (``python bench/cost.py`` measures them again and
checks every estimate is at least the measured time), with a margin: the estimate is meant to
be an upper bound there, good to a factor of ~2, not a prediction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

from .cells import skip_init
from .network import Network
from .spec import ModelSpec

__all__ = ["GATES", "context_bytes", "madds_per_step", "predict_ms", "state_bytes", "update_ms",
           "update_terms"]

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# µs per layer and step of a training update at batch size 1, small hidden size (dispatch-bound):
# measured medians ×2, bench/cost.py (2026-12-07, every method on a numpy window: issue 15)
_OVERHEAD_US: dict[str, dict[str, float]] = {
    "lstm": {"none": 25, "layer": 70, "streaming": 70, "online": 100, "recurrent_batch": 110,
             "batch_rnn": 50, "weight": 25, "cosine": 85},
    "gru": {"none": 50, "layer": 135, "streaming": 90, "online": 150, "recurrent_batch": 140,
            "batch_rnn": 60, "weight": 55, "cosine": 115},
    "rnn": {"none": 25, "layer": 65, "streaming": 45, "online": 70, "recurrent_batch": 70,
            "batch_rnn": 30, "weight": 25, "cosine": 55},
}
# the same for a group of several equal-length sequences (``learn_many``): Streaming Norm's
# per-sample sites and Recurrent BN's true batch statistics cost more per step there (the
# latter runs the generic per-step loop); measured per step of a batch of 4 ×2, bench/cost.py
_BATCH_OVERHEAD_US: dict[str, dict[str, float]] = {
    "lstm": {"none": 60, "layer": 210, "streaming": 300, "online": 175, "recurrent_batch": 480,
             "batch_rnn": 100, "weight": 60, "cosine": 130},
    "gru": {"none": 95, "layer": 175, "streaming": 330, "online": 245, "recurrent_batch": 645,
            "batch_rnn": 105, "weight": 95, "cosine": 165},
    "rnn": {"none": 60, "layer": 100, "streaming": 175, "online": 130, "recurrent_batch": 265,
            "batch_rnn": 60, "weight": 60, "cosine": 90},
}
_NS_PER_MADD = 1.6  # training (forward + backward), per forward multiply-add; memory-bound at H≥512
_FIXED_MS = 1.5  # per update: loss, head, metrics, the learner's bookkeeping
_NS_PER_PARAM = 6.0  # per update: save point, gradient clipping, optimizer step, finiteness check
_PREDICT = 0.6  # a prediction (forward only) against a training update, every term
_MOMENTS = {"adam": 2, "rmsprop": 1, "sgd": 0}
_HEADER_BYTES = 16_384  # safetensors header, metrics and spec JSON, and slack
_CONTEXT_HEADER_BYTES = 512  # a context's safetensors header, its index and stream name


def madds_per_step(spec: ModelSpec) -> int:
    """Multiply-adds of one forward step of one sample: every layer's input and recurrent
    matrices (``gates · H · (I_l + H)``)."""
    g, h = GATES[spec.cell], spec.hidden_size
    first = g * h * (spec.input_size + h)
    return first + (spec.num_layers - 1) * g * h * (h + h)


def _meta_network(spec: ModelSpec) -> Network:
    """The network of ``spec`` on PyTorch's meta device: shapes only, nothing allocated."""
    with torch.device("meta"), skip_init():
        return Network(spec)


@functools.lru_cache(maxsize=1024)
def _sizes(spec: ModelSpec) -> tuple[int, int]:
    """(parameters, buffer bytes) of ``spec``'s network (~1 ms to build, so cached per spec)."""
    net = _meta_network(spec)
    return (sum(p.numel() for p in net.parameters()),
            sum(b.numel() * b.element_size() for b in net.buffers()))


def _parameters(spec: ModelSpec) -> int:
    return _sizes(spec)[0]


def state_bytes(spec: ModelSpec) -> int:
    """Bytes of the model's stored state without stream contexts: parameters (float32),
    optimizer moments, normalization buffers."""
    params, buffers = _sizes(spec)
    return params * 4 * (1 + _MOMENTS[spec.optimizer.name]) + buffers + _HEADER_BYTES


def context_bytes(spec: ModelSpec) -> int:
    """Bytes of one stream's stored context: the last ``window - 1`` inputs and the state at
    the window's start (``h``, and ``c`` for an LSTM, per layer), float32."""
    states = 2 if spec.cell == "lstm" else 1
    values = (spec.window - 1) * spec.input_size + spec.num_layers * spec.hidden_size * states
    return values * 4 + _CONTEXT_HEADER_BYTES


def update_terms(spec: ModelSpec, groups: Iterable[tuple[int, int]]) -> tuple[float, float,
                                                                               float]:
    """The three terms of ``update_ms`` (ms): fixed, per-step overhead, multiply-adds."""
    cell, method = spec.cell, spec.norm.method
    one = _OVERHEAD_US[cell][method] * spec.num_layers / 1000
    many = _BATCH_OVERHEAD_US[cell][method] * spec.num_layers / 1000
    madds = madds_per_step(spec) * _NS_PER_MADD / 1e6
    fixed = _FIXED_MS + _parameters(spec) * _NS_PER_PARAM / 1e6
    groups = list(groups)
    return (fixed, sum(steps * (one if samples == 1 else many) for steps, samples in groups),
            sum(steps * samples * madds for steps, samples in groups))


def update_ms(spec: ModelSpec, groups: Iterable[tuple[int, int]]) -> float:
    """Estimated ms of one training update over ``groups`` of ``(steps, samples)``: a stream
    window is ``[(window, 1)]``, a mini-batch one group per distinct sequence length."""
    return sum(update_terms(spec, groups))


def predict_ms(spec: ModelSpec, steps: int) -> float:
    """Estimated ms of one prediction over ``steps`` steps (forward only)."""
    return _PREDICT * update_ms(spec, [(steps, 1)])
