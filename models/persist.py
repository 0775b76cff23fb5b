"""A learner's whole state as bytes: safetensors holding packed tensors, JSON metadata.

The learner's parameters, normalization buffers and optimizer moments already live in one flat
buffer per dtype (``models.fast.flat``): those buffers are stored as they are (``F32``,
``I64``) with their layout (``[name, dtype, shape, offset]`` for ``model.*`` and
``optim.{key}``), and the stream contexts (``ctx.{j}.inputs`` / ``ctx.{j}.state.{k}``) are packed
into ``CF32`` with an index, by the codec of ``models.codec``. Spec, counters, metrics and stream
names go in the safetensors header. Loading checks size, format tag, schema, spec, layout and
every indexed tensor's name, shape, dtype and bounds before anything changes, and never
unpickles: malformed bytes raise ``StateError``. A state of an older schema is decoded, upgraded
(``models.upgrades``) and rewritten in today's layout first; then the same checks run.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple, Protocol, TypeVar

import torch
from pydantic import ValidationError
from torch import Tensor

from .codec import StateError, Stored, decode, load_packed, pack, read_header, unpack
from .context import StreamContext
from .fast.clone import Structured, copy_structure, template_for
from .fast.flat import FlatState
from .metrics import Metrics
from .network import Network
from .spec import ModelSpec
from .upgrades import CONTEXT, LEARNER, refuse_newer, upgrade, upgraded

__all__ = ["MAX_STATE_BYTES", "Persisted", "context_from_bytes", "context_to_bytes",
           "learner_from_bytes", "learner_to_bytes", "load_into"]

SCHEMA = 3
MAX_STATE_BYTES = 512 * 1024 * 1024
_T = TypeVar("_T")


class Persisted(Structured, Protocol):
    """What these bytes hold of a learner (``models.OnlineLearner``; named here, not imported:
    the learner imports this module)."""

    net: Network
    contexts: dict[str, StreamContext]

    @property
    def streams(self) -> list[str]: ...


_L = TypeVar("_L", bound=Persisted)


# -- learner -------------------------------------------------------------------------------------
def _context_tensors(ctx: StreamContext, prefix: str) -> dict[str, Tensor]:
    out = {f"{prefix}inputs": ctx.inputs}
    if ctx.state is not None:
        out.update({f"{prefix}state.{k}": s for k, s in enumerate(ctx.state)})
    return out


def _context_from(tensors: dict[str, Tensor], prefix: str, learner: Persisted
                  ) -> StreamContext:
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


def learner_to_bytes(learner: Persisted, *, contexts: bool = True) -> bytes:
    """Serialize a learner: its flat buffers as they are, contexts packed beside them (or none:
    a service that keeps each context under its own key)."""
    tensors: dict[str, Tensor] = {}
    streams = learner.streams if contexts else []
    for j, name in enumerate(streams):
        tensors.update(_context_tensors(learner.contexts[name], f"ctx.{j}."))
    for name, values in learner.metrics.recent().items():
        tensors[f"metrics.{name}.recent"] = torch.frombuffer(values, dtype=torch.float64) \
            if values else torch.empty(0, dtype=torch.float64)
    meta = {"updates": learner.updates, "samples": learner.samples,
            "metrics": learner.metrics.to_dict(recent=False), "streams": streams}
    return pack(tensors, LEARNER, SCHEMA, meta, group="C", fixed=learner.flat.flats,
                encoded={"spec": json.dumps(learner.spec_json),
                         "layout": learner.flat.layout_json})


def _stored_spec(text: Any, parse: Callable[[str], _T]) -> _T:
    """``parse`` applied to the spec JSON text of a state's header; errors as ``StateError``."""
    try:
        if not isinstance(text, str):
            raise TypeError("the stored spec must be JSON text")
        return parse(text)
    except (ValidationError, TypeError) as exc:
        raise StateError(f"invalid spec in state: {exc}") from exc


class _Parsed(NamedTuple):
    flats: dict[str, Tensor]
    contexts: dict[str, StreamContext]
    metrics: Metrics
    updates: int
    samples: int


def _parse(learner: Persisted, data: bytes, info: dict[str, Any]) -> _Parsed:
    """Validate ``data`` against ``learner`` (its spec and layout) without changing it."""
    meta = info["meta"]
    try:
        text = info.get("spec")
        if text != learner.spec_json and \
                _stored_spec(text, ModelSpec.model_validate_json) != learner.spec:
            raise StateError("the state belongs to a different spec")
        if info.get("layout") != learner.flat.layout:
            raise StateError("the stored tensors do not fit this learner's layout")
        flats = load_packed(data)
        for code, own in learner.flat.flats.items():
            got = flats.get(code)
            if got is None or got.dtype != own.dtype or got.shape != own.shape:
                raise StateError(f"packed {code} tensor does not fit the layout")
        tensors = unpack(flats, info["index"])
        streams = meta["streams"]
        if not isinstance(streams, list) or not all(isinstance(s, str) and s for s in streams):
            raise StateError("streams must be a list of names")
        contexts = {name: _context_from(tensors, f"ctx.{j}.", learner)
                    for j, name in enumerate(streams)}
        scores = meta["metrics"]["scores"]
        for name, score in scores.items():
            recent = tensors.pop(f"metrics.{name}.recent")
            if recent.dtype != torch.float64 or recent.dim() != 1:
                raise StateError(f"metric {name!r}: recent values must be a float64 vector")
            score["recent"] = recent.tolist()
        if len(tensors) != sum(1 + (len(c.state) if c.state is not None else 0)
                               for c in contexts.values()):
            raise StateError("stored tensors name no stream or metric")
        metrics = Metrics.from_dict(meta["metrics"])
        return _Parsed(flats, contexts, metrics, int(meta["updates"]), int(meta["samples"]))
    except StateError:
        raise
    except (ValidationError, ValueError, KeyError, TypeError, IndexError, AttributeError
            ) as exc:
        raise StateError(f"invalid learner state: {exc}") from exc


def _apply(learner: Persisted, parsed: _Parsed, *, copy: bool = True) -> None:
    if copy:
        with torch.no_grad():
            for code, own in learner.flat.flats.items():
                own.copy_(parsed.flats[code])
    learner.contexts = parsed.contexts
    learner.metrics, learner.updates, learner.samples = (parsed.metrics, parsed.updates,
                                                         parsed.samples)


def load_into(learner: Persisted, data: bytes, *, max_bytes: int | None = None) -> None:
    """Load ``data`` into ``learner`` (same spec), validating everything before any change."""
    info = read_header(data, LEARNER, SCHEMA, max_bytes or MAX_STATE_BYTES)
    if info["schema"] != str(SCHEMA):
        state = _upgraded_learner(data, info)
        data, info = _rewritten(state, _spec_text(state), learner.flat)
    _apply(learner, _parse(learner, data, info))


def learner_from_bytes(data: bytes, build: Callable[[ModelSpec], _L], *,
                       max_bytes: int | None = None) -> _L:
    """A new learner from ``learner_to_bytes`` output: a structural copy of a per-spec template
    ``build(spec)`` (a blank learner, made once per spec: ``models.fast.clone``) whose flat buffers
    are the ones just read."""
    info = read_header(data, LEARNER, SCHEMA, max_bytes or MAX_STATE_BYTES)
    if info["schema"] != str(SCHEMA):
        state = _upgraded_learner(data, info)
        text = _spec_text(state)
        template = _stored_spec(text, lambda t: template_for(t, build))
        data, info = _rewritten(state, text, template.flat)
    else:
        template = _stored_spec(info.get("spec"), lambda t: template_for(t, build))
    parsed = _parse(template, data, info)
    learner = copy_structure(template, flats={c: parsed.flats[c] for c in template.flat.flats})
    _apply(learner, parsed, copy=False)
    return learner


# -- older schemas -------------------------------------------------------------------------------
def _upgraded_learner(data: bytes, info: dict[str, Any]) -> Stored:
    """A learner state of another schema, decoded, then upgraded to today's."""
    refuse_newer(info, SCHEMA)
    return upgrade(_decoded_learner(data, info), SCHEMA)


def _decoded_learner(data: bytes, info: dict[str, Any]) -> Stored:
    """Names and metadata of a learner state of any schema, in one shape where the schemas'
    bytes differ but not what they say: the spec as a dict in ``meta["spec"]`` (schemas 1 and 2
    kept it there; 3 keeps its JSON text beside ``meta``) and the metric windows as float64
    tensors ``metrics.{name}.recent`` (from 5481e78 on; before, lists in the metadata)."""
    state = decode(data, info)
    meta = copy.deepcopy(state.meta)
    try:
        if "spec" in info:
            meta["spec"] = json.loads(info["spec"])
        for name, score in meta["metrics"]["scores"].items():
            if "recent" in score:
                state.tensors[f"metrics.{name}.recent"] = torch.tensor(
                    [float(v) for v in score.pop("recent")], dtype=torch.float64)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"invalid learner state: {exc}") from exc
    return replace(state, meta=meta)


def _spec_text(state: Stored) -> str:
    """The canonical JSON text of an upgraded state's spec (what today's states store)."""
    spec = state.meta.get("spec")
    try:
        if not isinstance(spec, dict):
            raise TypeError("the stored spec must be a JSON object")
        return ModelSpec.model_validate(spec).model_dump_json()
    except (ValidationError, TypeError) as exc:
        raise StateError(f"invalid spec in state: {exc}") from exc


def _rewritten(state: Stored, spec: str, flat: FlatState) -> tuple[bytes, dict[str, Any]]:
    """An upgraded learner state as today's bytes for ``flat``'s layout, and their header:
    every ``model.*`` and ``optim.*`` tensor placed at its offset, the rest packed."""
    tensors = dict(state.tensors)
    meta = {k: v for k, v in state.meta.items() if k != "spec"}
    flats = {code: torch.empty_like(f) for code, f in flat.flats.items()}
    for name, code, shape, offset in flat.entries:
        t = tensors.pop(name, None)
        if t is None or list(t.shape) != shape or t.dtype != flats[code].dtype:
            raise StateError(f"the upgraded state's {name!r} is missing or does not fit")
        flats[code][offset:offset + t.numel()].copy_(t.reshape(-1))
    unknown = sorted(n for n in tensors if not n.startswith(("ctx.", "metrics.")))
    if unknown:
        raise StateError(f"the upgraded state holds tensors this model has not: {unknown[:4]}")
    data = pack(tensors, LEARNER, SCHEMA, meta, group="C", fixed=flats,
                encoded={"spec": json.dumps(spec), "layout": flat.layout_json})
    return data, read_header(data, LEARNER, SCHEMA, len(data))


def context_to_bytes(learner: Persisted, stream: str) -> bytes:
    """One stream's context on its own (the service stores each under its own key)."""
    return pack(_context_tensors(learner.contexts[stream], ""), CONTEXT, SCHEMA,
                {"stream": stream})



def context_from_bytes(learner: Persisted, data: bytes, *,
                       max_bytes: int | None = None) -> tuple[str, StreamContext]:
    """Parse and validate a stream context for ``learner``; returns ``(stream, context)``."""
    info = read_header(data, CONTEXT, SCHEMA, max_bytes or MAX_STATE_BYTES)
    if info["schema"] == str(SCHEMA):
        meta, tensors = info["meta"], unpack(load_packed(data), info["index"])
    else:
        state = upgraded(data, info, SCHEMA)
        meta, tensors = state.meta, state.tensors
    stream = meta.get("stream")
    if not isinstance(stream, str) or not stream:
        raise StateError("context has no stream name")
    return stream, _context_from(tensors, "", learner)
