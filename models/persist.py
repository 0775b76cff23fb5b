"""A learner's whole state as bytes: safetensors holding packed tensors, JSON metadata.

The learner's parameters, normalization buffers and optimizer moments already live in one flat
buffer per dtype (``models.flat``): those buffers are stored as they are (``F32``, ``I64``) with
their layout (``[name, dtype, shape, offset]`` for ``model.*`` and ``optim.{i}.{key}``), and the
stream contexts (``ctx.{j}.inputs`` / ``ctx.{j}.state.{k}``) are packed into ``C32`` with an index.
Spec, counters, metrics and stream names go in the safetensors header. Per-tensor overhead, not
bytes, dominated the cost at this size, hence the packing. Loading checks size, format tag,
schema, spec, layout and every indexed tensor's name, shape, dtype and bounds before anything
changes, and never unpickles: malformed bytes raise ``StateError``.
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
_DTYPES = {"F32": torch.float32, "I64": torch.int64, "C32": torch.float32}
_NAMES = {v: k for k, v in _DTYPES.items()}


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


def _load_flat(data: bytes) -> dict[str, Tensor]:
    """The packed tensors, in fresh (writable) memory."""
    try:
        flat = safetensors.torch.load(bytes(data))
    except SafetensorError as exc:
        raise StateError(f"unreadable tensors: {exc}") from exc
    if not set(flat) <= set(_DTYPES) or any(
            t.dim() != 1 or t.dtype != _DTYPES[c] for c, t in flat.items()):
        raise StateError("unexpected packed tensors")
    return flat


def _unpack(flat: dict[str, Tensor], info: dict[str, Any]) -> dict[str, Tensor]:
    """Views of the indexed tensors, every entry bounds-checked."""
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
    """Serialize a learner: its flat buffers as they are, contexts packed beside them."""
    ctx: dict[str, Tensor] = {}
    streams = learner.streams
    for j, name in enumerate(streams):
        ctx.update(_context_tensors(learner.contexts[name], f"ctx.{j}."))
    index: list[list[Any]] = []
    offset = 0
    for name, t in ctx.items():
        index.append([name, "C32", list(t.shape), offset])
        offset += t.numel()
    tensors = dict(learner.flat.flats)
    if ctx:
        tensors["C32"] = torch.cat([t.reshape(-1) for t in ctx.values()])
    meta = {"spec": learner.spec.model_dump(mode="json"), "updates": learner.updates,
            "samples": learner.samples, "metrics": learner.metrics.to_dict(),
            "streams": streams}
    info = {"format": _LEARNER, "schema": str(SCHEMA), "meta": meta, "index": index,
            "layout": learner.flat.layout}
    # one metadata key: safetensors does not keep the order of several, and equal learners must
    # give equal bytes
    return safetensors.torch.save(tensors, metadata={"streamnorm": json.dumps(info,
                                                                              sort_keys=True)})


def load_into(learner: OnlineLearner, data: bytes, *, max_bytes: int | None = None,
              _info: dict[str, Any] | None = None) -> None:
    """Load ``data`` into ``learner`` (same spec), validating everything before any change."""
    info = _info or _header(data, _LEARNER, max_bytes or MAX_STATE_BYTES)
    meta = info["meta"]
    try:
        if ModelSpec.model_validate(meta["spec"]) != learner.spec:
            raise StateError("the state belongs to a different spec")
        if info.get("layout") != learner.flat.layout:
            raise StateError("the stored tensors do not fit this learner's layout")
        flats = _load_flat(data)
        for code, own in learner.flat.flats.items():
            got = flats.get(code)
            if got is None or got.dtype != own.dtype or got.shape != own.shape:
                raise StateError(f"packed {code} tensor does not fit the layout")
        tensors = _unpack(flats, info) if info["index"] else {}
        streams = meta["streams"]
        if not isinstance(streams, list) or not all(isinstance(s, str) and s for s in streams):
            raise StateError("streams must be a list of names")
        contexts = {name: _context_from(tensors, f"ctx.{j}.", learner)
                    for j, name in enumerate(streams)}
        if len(tensors) != sum(1 + (len(c.state) if c.state is not None else 0)
                               for c in contexts.values()):
            raise StateError("stored tensors name no stream")
        metrics = Metrics.from_dict(meta["metrics"])
        updates, samples = int(meta["updates"]), int(meta["samples"])
    except StateError:
        raise
    except (ValidationError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise StateError(f"invalid learner state: {exc}") from exc
    # everything is validated: now change the learner
    with torch.no_grad():
        for code, own in learner.flat.flats.items():
            own.copy_(flats[code])
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
    load_into(learner, data, max_bytes=max_bytes, _info=info)
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
    return stream, _context_from(_unpack(_load_flat(data), info), "", learner)
