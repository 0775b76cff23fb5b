"""A learner's whole state as bytes: safetensors holding packed tensors, JSON metadata.

Every tensor — ``model.*`` (parameters and normalization buffers), ``optim.{i}.{key}``
(optimizer state of parameter ``i``), ``ctx.{j}.inputs`` / ``ctx.{j}.state.{k}`` (stream
contexts) — is packed into one flat safetensors tensor per dtype, with a JSON index
``[name, dtype, shape, offset]`` beside the spec, counters, metrics and stream names in the
safetensors header. Packing makes a save one concatenation and a load one copy (per-tensor
overhead, not bytes, dominated the cost at this size). Loading checks size, format tag, schema,
spec and every indexed tensor's name, shape, dtype and bounds before anything is built, and
never unpickles: malformed bytes raise ``StateError``.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from torch import Tensor

from .metrics import Metrics
from .spec import ModelSpec
from .state import StateError

if TYPE_CHECKING:
    from .learner import OnlineLearner, StreamContext

__all__ = ["MAX_STATE_BYTES", "context_from_bytes", "context_to_bytes", "learner_from_bytes",
           "learner_to_bytes", "load_into"]

SCHEMA = 2
MAX_STATE_BYTES = 512 * 1024 * 1024
_LEARNER, _CONTEXT = "streamnorm.learner", "streamnorm.context"
_DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}
_NAMES = {v: k for k, v in _DTYPES.items()}
_OPTIM_KEYS = {"step", "exp_avg", "exp_avg_sq", "square_avg", "momentum_buffer"}


# -- packing -------------------------------------------------------------------------------------
def _pack(tensors: dict[str, Tensor], kind: str, meta: dict[str, Any]) -> bytes:
    groups: dict[str, list[Tensor]] = {}
    index: list[list[Any]] = []
    offsets: dict[str, int] = {}
    for name, t in tensors.items():
        code = _NAMES.get(t.dtype)
        if code is None:
            raise StateError(f"cannot store {name!r} of dtype {t.dtype}")
        groups.setdefault(code, []).append(t.detach().reshape(-1))
        index.append([name, code, list(t.shape), offsets.get(code, 0)])
        offsets[code] = offsets.get(code, 0) + t.numel()
    flat = {code: torch.cat(parts) for code, parts in groups.items()}
    info = {"format": kind, "schema": str(SCHEMA), "meta": meta, "index": index}
    # one metadata key: safetensors does not keep the order of several, and equal learners must
    # give equal bytes
    return safetensors.torch.save(flat, metadata={"streamnorm": json.dumps(info, sort_keys=True)})


def _header(data: bytes, kind: str, max_bytes: int) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StateError(f"state must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise StateError(f"state is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        n = int.from_bytes(bytes(data[:8]), "little")
        if len(data) < 8 or n <= 0 or n > len(data) - 8:
            raise ValueError("header length out of range")
        header = json.loads(bytes(data[8:8 + n])).get("__metadata__") or {}
        info = json.loads(header.get("streamnorm", "{}"))
        if info.get("format") != kind:
            raise ValueError(f"format tag is {info.get('format')!r}, expected {kind!r}")
        if info.get("schema") != str(SCHEMA):
            raise ValueError(f"unsupported schema {info.get('schema')!r}")
        if not isinstance(info.get("meta"), dict) or not isinstance(info.get("index"), list):
            raise ValueError("metadata or index missing")
        return info
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise StateError(f"not a {kind} state: {exc}") from exc


def _unpack(data: bytes, info: dict[str, Any]) -> dict[str, Tensor]:
    """Views of the named tensors in fresh (writable) memory, every entry bounds-checked."""
    try:
        flat = safetensors.torch.load(bytes(data))
    except SafetensorError as exc:
        raise StateError(f"unreadable tensors: {exc}") from exc
    if not set(flat) <= set(_DTYPES) or any(
            t.dim() != 1 or t.dtype != _DTYPES[c] for c, t in flat.items()):
        raise StateError("unexpected packed tensors")
    out: dict[str, Tensor] = {}
    for entry in info["index"]:
        if not (isinstance(entry, list) and len(entry) == 4):
            raise StateError(f"bad index entry {str(entry)[:80]}")
        name, code, shape, offset = entry
        if not isinstance(name, str) or code not in flat or name in out \
                or not isinstance(shape, list) or not all(
                    isinstance(d, int) and 0 <= d < 2**31 for d in shape) \
                or not isinstance(offset, int) or offset < 0:
            raise StateError(f"bad index entry for {str(name)[:80]!r}")
        numel = math.prod(shape)
        if offset + numel > flat[code].numel():
            raise StateError(f"{name!r} lies outside the stored data")
        out[name] = flat[code][offset:offset + numel].view(shape)
    return out


# -- learner -------------------------------------------------------------------------------------
def _context_tensors(ctx: StreamContext, prefix: str) -> dict[str, Tensor]:
    out = {f"{prefix}inputs": ctx.inputs}
    if ctx.state is not None:
        out.update({f"{prefix}state.{k}": s for k, s in enumerate(ctx.state)})
    return out


def _context_from(tensors: dict[str, Tensor], prefix: str, learner: OnlineLearner
                  ) -> StreamContext:
    from .learner import StreamContext

    spec = learner.spec
    inputs = tensors.get(f"{prefix}inputs")
    if inputs is None or inputs.dim() != 2 or inputs.shape[1] != spec.input_size \
            or inputs.shape[0] >= spec.window or inputs.dtype != torch.float32:
        raise StateError(f"context {prefix!r}: inputs do not fit the model")
    keys = [f"{prefix}state.{k}" for k in range(learner.net.stack.n_state)]
    if not any(k in tensors for k in keys):
        return StreamContext(None, inputs)
    shape = (spec.num_layers, 1, spec.hidden_size)
    state = []
    for k in keys:
        s = tensors.get(k)
        if s is None or tuple(s.shape) != shape or s.dtype != torch.float32:
            raise StateError(f"context {prefix!r}: state does not fit the model")
        state.append(s)
    return StreamContext(tuple(state), inputs)


def learner_to_bytes(learner: OnlineLearner) -> bytes:
    """Serialize a learner (see the module docstring)."""
    tensors = {f"model.{k}": v for k, v in learner.net.state_dict().items()}
    for i, p in enumerate(learner.net.parameters()):
        for key, value in learner.optimizer.state.get(p, {}).items():
            if not isinstance(value, Tensor):
                raise StateError(f"optimizer state {key!r} is not a tensor")
            tensors[f"optim.{i}.{key}"] = value
    streams = learner.streams
    for j, name in enumerate(streams):
        tensors.update(_context_tensors(learner.contexts[name], f"ctx.{j}."))
    meta = {"spec": learner.spec.model_dump(mode="json"), "updates": learner.updates,
            "samples": learner.samples, "metrics": learner.metrics.to_dict(),
            "streams": streams}
    return _pack(tensors, _LEARNER, meta)


def load_into(learner: OnlineLearner, data: bytes, *, max_bytes: int | None = None) -> None:
    """Load ``data`` into ``learner`` (same spec), validating everything before any change."""
    info = _header(data, _LEARNER, max_bytes or MAX_STATE_BYTES)
    meta = info["meta"]
    try:
        if ModelSpec.model_validate(meta["spec"]) != learner.spec:
            raise StateError("the state belongs to a different spec")
        tensors = _unpack(data, info)
        own = learner.net.state_dict()
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        if model.keys() != own.keys() or any(
                v.shape != own[k].shape or v.dtype != own[k].dtype for k, v in model.items()):
            raise StateError("model tensors do not fit the spec")
        params = list(learner.net.parameters())
        opt_state: dict[int, dict[str, Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                if not idx.isdigit() or int(idx) >= len(params) or key not in _OPTIM_KEYS:
                    raise StateError(f"optimizer tensor {k!r} fits no parameter")
                want = () if key == "step" else params[int(idx)].shape
                if v.shape != want or v.dtype != torch.float32:
                    raise StateError(f"optimizer tensor {k!r} has the wrong shape or dtype")
                opt_state.setdefault(int(idx), {})[key] = v
        streams = meta["streams"]
        if not isinstance(streams, list) or not all(isinstance(s, str) and s for s in streams):
            raise StateError("streams must be a list of names")
        contexts = {name: _context_from(tensors, f"ctx.{j}.", learner)
                    for j, name in enumerate(streams)}
        metrics = Metrics.from_dict(meta["metrics"])
        updates, samples = int(meta["updates"]), int(meta["samples"])
    except StateError:
        raise
    except (ValidationError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise StateError(f"invalid learner state: {exc}") from exc
    # everything is validated: now change the learner
    with torch.no_grad():
        keys = list(own)
        torch._foreach_copy_([own[k] for k in keys], [model[k] for k in keys])
    learner.optimizer.state.clear()
    for i, st in opt_state.items():
        learner.optimizer.state[params[i]] = st
    learner.contexts = contexts
    learner.metrics, learner.updates, learner.samples = metrics, updates, samples


def learner_from_bytes(data: bytes, *, max_bytes: int | None = None) -> OnlineLearner:
    """A new learner from ``learner_to_bytes`` output (built without random initialisation)."""
    from .learner import OnlineLearner

    info = _header(data, _LEARNER, max_bytes or MAX_STATE_BYTES)
    try:
        spec = ModelSpec.model_validate(info["meta"]["spec"])
    except (ValidationError, KeyError, TypeError) as exc:
        raise StateError(f"invalid spec in state: {exc}") from exc
    learner = OnlineLearner(spec, _blank=True)
    load_into(learner, data, max_bytes=max_bytes)
    return learner


def context_to_bytes(learner: OnlineLearner, stream: str) -> bytes:
    """One stream's context on its own (the service stores each under its own key)."""
    return _pack(_context_tensors(learner.contexts[stream], ""), _CONTEXT, {"stream": stream})


def context_from_bytes(learner: OnlineLearner, data: bytes, *,
                       max_bytes: int | None = None) -> tuple[str, StreamContext]:
    """Parse and validate a stream context for ``learner``; returns ``(stream, context)``."""
    info = _header(data, _CONTEXT, max_bytes or MAX_STATE_BYTES)
    stream = info["meta"].get("stream")
    if not isinstance(stream, str) or not stream:
        raise StateError("context has no stream name")
    return stream, _context_from(_unpack(data, info), "", learner)
