"""A learner's whole state as bytes: safetensors for every tensor, JSON metadata in its header.

Tensors: ``model.*`` (parameters and normalization buffers), ``optim.{i}.{key}`` (optimizer
state per parameter), ``ctx.{j}.inputs`` / ``ctx.{j}.state.{k}`` (stream contexts). Metadata:
schema version, spec, counters, metrics, stream names, optimizer hyper-parameters. Loading checks
size, format, schema, spec and every tensor's name, shape and dtype before building anything,
and never unpickles: malformed bytes raise ``StateError``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import safetensors.torch
from pydantic import ValidationError
from safetensors import SafetensorError
from torch import Tensor

from .metrics import Metrics
from .spec import ModelSpec
from .state import StateError

if TYPE_CHECKING:
    from .learner import OnlineLearner, StreamContext

__all__ = ["MAX_STATE_BYTES", "context_from_bytes", "context_to_bytes", "learner_from_bytes",
           "learner_to_bytes"]

SCHEMA = 1
MAX_STATE_BYTES = 512 * 1024 * 1024
_LEARNER, _CONTEXT = "streamnorm.learner", "streamnorm.context"


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
        return info["meta"]
    except (ValueError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise StateError(f"not a {kind} state: {exc}") from exc


def _save(tensors: dict[str, Tensor], kind: str, meta: dict[str, Any]) -> bytes:
    # one metadata key: safetensors does not keep the order of several, and equal learners
    # must give equal bytes
    info = {"format": kind, "schema": str(SCHEMA), "meta": meta}
    return safetensors.torch.save({k: v.detach().contiguous() for k, v in tensors.items()},
                                  metadata={"streamnorm": json.dumps(info, sort_keys=True)})


def _load(data: bytes) -> dict[str, Tensor]:
    try:
        return safetensors.torch.load(bytes(data))
    except SafetensorError as exc:
        raise StateError(f"unreadable tensors: {exc}") from exc


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
            or inputs.shape[0] >= spec.window or not inputs.is_floating_point():
        raise StateError(f"context {prefix!r}: inputs do not fit the model")
    n_state = learner.net.stack.n_state
    keys = [f"{prefix}state.{k}" for k in range(n_state)]
    if not any(k in tensors for k in keys):
        return StreamContext(None, inputs.float())
    shape = (spec.num_layers, 1, spec.hidden_size)
    state = []
    for k in keys:
        s = tensors.get(k)
        if s is None or tuple(s.shape) != shape or s.dtype != inputs.dtype:
            raise StateError(f"context {prefix!r}: state does not fit the model")
        state.append(s)
    return StreamContext(tuple(state), inputs)


def learner_to_bytes(learner: OnlineLearner) -> bytes:
    """Serialize a learner (see the module docstring)."""
    tensors = {f"model.{k}": v for k, v in learner.net.state_dict().items()}
    opt = learner.optimizer.state_dict()
    for i, st in opt["state"].items():
        for key, value in st.items():
            if not isinstance(value, Tensor):
                raise StateError(f"optimizer state {key!r} is not a tensor")
            tensors[f"optim.{i}.{key}"] = value
    streams = learner.streams
    for j, name in enumerate(streams):
        tensors.update(_context_tensors(learner.contexts[name], f"ctx.{j}."))
    meta = {"spec": learner.spec.model_dump(mode="json"), "updates": learner.updates,
            "samples": learner.samples, "metrics": learner.metrics.to_dict(),
            "streams": streams, "param_groups": opt["param_groups"]}
    return _save(tensors, _LEARNER, meta)


def learner_from_bytes(data: bytes, *, max_bytes: int | None = None) -> OnlineLearner:
    """Rebuild a learner from ``learner_to_bytes`` output, validating everything first."""
    from .learner import OnlineLearner

    meta = _header(data, _LEARNER, max_bytes or MAX_STATE_BYTES)
    try:
        spec = ModelSpec.model_validate(meta["spec"])
        learner = OnlineLearner(spec)
        tensors = _load(data)
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        own = learner.net.state_dict()
        if model.keys() != own.keys() or any(
                v.shape != own[k].shape or v.dtype != own[k].dtype for k, v in model.items()):
            raise StateError("model tensors do not fit the spec")
        learner.net.load_state_dict(model, strict=True)
        n_params = len(list(learner.net.parameters()))
        opt_state: dict[int, dict[str, Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                if not idx.isdigit() or int(idx) >= n_params:
                    raise StateError(f"optimizer tensor {k!r} names no parameter")
                opt_state.setdefault(int(idx), {})[key] = v
        learner.optimizer.load_state_dict({"state": opt_state,
                                           "param_groups": meta["param_groups"]})
        learner.metrics = Metrics.from_dict(meta["metrics"])
        learner.updates, learner.samples = int(meta["updates"]), int(meta["samples"])
        streams = meta["streams"]
        if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
            raise StateError("streams must be a list of names")
        for j, name in enumerate(streams):
            learner.contexts[name] = _context_from(tensors, f"ctx.{j}.", learner)
    except StateError:
        raise
    except (ValidationError, ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise StateError(f"invalid learner state: {exc}") from exc
    return learner


def context_to_bytes(learner: OnlineLearner, stream: str) -> bytes:
    """One stream's context on its own (the service stores each under its own key)."""
    ctx = learner.contexts[stream]
    return _save(_context_tensors(ctx, ""), _CONTEXT, {"stream": stream})


def context_from_bytes(learner: OnlineLearner, data: bytes, *,
                       max_bytes: int | None = None) -> tuple[str, StreamContext]:
    """Parse and validate a stream context for ``learner``; returns ``(stream, context)``."""
    meta = _header(data, _CONTEXT, max_bytes or MAX_STATE_BYTES)
    stream = meta.get("stream")
    if not isinstance(stream, str) or not stream:
        raise StateError("context has no stream name")
    return stream, _context_from(_load(data), "", learner)
