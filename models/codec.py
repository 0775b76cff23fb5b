"""Safe state bytes: tensors packed into safetensors, metadata as JSON in its header.

The one codec for every state format here (a module's ``state_dict``, a learner, a stream
context): named tensors are packed into one flat safetensors tensor per dtype (per-tensor
overhead, not bytes, dominates at these sizes) with a JSON index ``[name, code, shape, offset]``;
the format tag, schema, metadata and index sit under one safetensors metadata key (it does not
keep the order of several, and equal states must give equal bytes). No pickle anywhere: loading
parses a length-prefixed JSON header and raw tensor data and bounds-checks every index entry, so
untrusted bytes can fail to load but never execute code.

Bytes of an older schema are read by ``decode`` into a ``Stored`` (named tensors and metadata),
which ``models.upgrades`` carries to today's schema. Every header and tensor layout ever written:

- one safetensors tensor per name, the header as three metadata keys ``format``, ``schema`` and
  ``meta`` (JSON text): module schema 1 of commit c106db3;
- one safetensors tensor per name, the header under one ``streamnorm`` key: module schema 1 from
  5b1a369, learner and context schema 1 (b1bd267);
- packed with an ``index`` (this module's ``pack``): learner and context schema 2 from c2b34fd,
  module schema 2 on;
- learner states from f977a4f: the learner's flat buffers as they are, named by a ``layout``
  (``[name, code, shape, offset]``, JSON text) beside the index of the other tensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, TensorSpec, serialize
from torch import Tensor

__all__ = ["StateError", "Stored", "decode", "load_packed", "pack", "read_header", "unpack"]

_DTYPES = {"F32": torch.float32, "I64": torch.int64, "F64": torch.float64}
_CODES = {v: k for k, v in _DTYPES.items()}
_NAMES = {torch.float32: "float32", torch.int64: "int64", torch.float64: "float64"}


class StateError(ValueError):
    """Bytes that are not a valid streamnorm state for this module."""


@dataclass
class Stored:
    """A state between its bytes and today's objects: named tensors and JSON metadata, tagged
    with its format and schema. Upgrade steps (``models.upgrades``) take and return these."""

    kind: str
    schema: int
    meta: dict[str, Any]
    tensors: dict[str, Tensor]


def pack(tensors: dict[str, Tensor], kind: str, schema: int, meta: dict[str, Any], *,
         group: str = "", fixed: dict[str, Tensor] | None = None,
         encoded: dict[str, str] | None = None) -> bytes:
    """Pack ``tensors`` (codes ``{group}F32``/``{group}I64``/…) beside ``fixed`` flat tensors
    stored as they are; ``encoded`` (key → JSON text, encoded once by the caller) joins the
    header next to format, schema, meta and index."""
    groups: dict[str, list[Tensor]] = {}
    index: list[list[Any]] = []
    sizes: dict[str, int] = {}
    for name, t in tensors.items():
        if t.dtype not in _CODES:
            raise StateError(f"cannot store {name!r} of dtype {t.dtype}")
        code = group + _CODES[t.dtype]
        groups.setdefault(code, []).append(t.detach().reshape(-1))
        index.append([name, code, list(t.shape), sizes.get(code, 0)])
        sizes[code] = sizes.get(code, 0) + t.numel()
    flat = dict(fixed or {})
    if flat.keys() & groups.keys():
        raise StateError("packed tensors collide with fixed ones")
    flat.update({code: torch.cat(parts) for code, parts in groups.items()})
    info = {"format": kind, "schema": str(schema), "meta": meta, "index": index}
    header = json.dumps(info, sort_keys=True)
    if encoded:
        header = header[:-1] + "".join(f", {json.dumps(k)}: {v}" for k, v in encoded.items()) + "}"
    # safetensors' own serializer, given each (contiguous, 1-D) buffer's address: what
    # ``safetensors.torch.save`` does after per-tensor checks these flat buffers do not need
    specs = {}
    for code, t in flat.items():
        if t.dim() != 1 or not t.is_contiguous() or t.dtype not in _CODES:
            raise StateError(f"packed tensor {code!r} must be a contiguous vector")
        specs[code] = TensorSpec(dtype=_NAMES[t.dtype], shape=[t.numel()],
                                 data_ptr=t.data_ptr(), data_len=t.nbytes)
    return serialize(specs, metadata={"streamnorm": header})  # ``flat`` keeps buffers alive


def read_header(data: bytes, kind: str, schema: int, max_bytes: int) -> dict[str, Any]:
    """The header after checking size and format tag. A header of ``schema`` (today's) has its
    meta and index checked too; one of another schema comes back as written (its ``schema``
    differs from ``str(schema)``: the caller decodes and upgrades it, ``models.upgrades``)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StateError(f"state must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise StateError(f"state is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        n = int.from_bytes(bytes(data[:8]), "little")
        if len(data) < 8 or n <= 0 or n > len(data) - 8:
            raise ValueError("header length out of range")
        header = json.loads(bytes(data[8:8 + n])).get("__metadata__") or {}
        text = header.get("streamnorm")
        info = json.loads(text) if text is not None else _first_module_header(header)
        if info.get("format") != kind:
            raise ValueError(f"format tag is {info.get('format')!r}, expected {kind!r}")
        if info.get("schema") != str(schema):
            if not (isinstance(info.get("schema"), str) and info["schema"].isdecimal()
                    and isinstance(info.get("meta"), dict)):
                raise ValueError(f"schema {info.get('schema')!r} or metadata unreadable")
            return info
        if not isinstance(info.get("meta"), dict) or not isinstance(info.get("index"), list):
            raise ValueError("metadata or index missing")
        return info
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise StateError(f"not a {kind} state: {exc}") from exc


def _first_module_header(header: dict[str, Any]) -> dict[str, Any]:
    """Module schema 1 as commit c106db3 wrote it: three metadata keys, ``meta`` as JSON text."""
    if "format" not in header:
        return {}
    return {"format": header["format"], "schema": header.get("schema"),
            "meta": json.loads(header.get("meta", "{}"))}


def load_packed(data: bytes) -> dict[str, Tensor]:
    """The flat tensors, in fresh (writable) memory; each is 1-D with its code's dtype."""
    try:
        flat = safetensors.torch.load(bytes(data))
    except SafetensorError as exc:
        raise StateError(f"unreadable tensors: {exc}") from exc
    for code, t in flat.items():
        if t.dim() != 1 or _DTYPES.get(code[-3:]) != t.dtype:
            raise StateError(f"unexpected packed tensor {code!r}")
    return flat


def unpack(flat: dict[str, Tensor], index: list[Any]) -> dict[str, Tensor]:
    """Views of the indexed tensors, every entry bounds-checked."""
    out: dict[str, Tensor] = {}
    for entry in index:
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


def _load_any(data: bytes) -> dict[str, Tensor]:
    """Every safetensors tensor, packed ones checked against their code's dtype: the codes of
    today, and ``C32`` (the contexts' float32 group in learner states of f977a4f..097752a)."""
    try:
        tensors = safetensors.torch.load(bytes(data))
    except SafetensorError as exc:
        raise StateError(f"unreadable tensors: {exc}") from exc
    for code, t in tensors.items():
        want = _DTYPES.get(code[-3:]) or (torch.float32 if code == "C32" else None)
        if want is not None and (t.dim() != 1 or t.dtype != want):
            raise StateError(f"unexpected packed tensor {code!r}")
    return tensors


def decode(data: bytes, info: dict[str, Any]) -> Stored:
    """Every tensor of a state of any schema by name, and its metadata (``info`` is its header
    from ``read_header``); header keys beyond format, schema, meta, index and layout stay in
    ``info`` for the caller."""
    try:
        if "index" not in info:  # schema 1: one safetensors tensor per name
            tensors = _load_any(data)
            for name, t in tensors.items():
                if t.dtype not in _CODES:
                    raise StateError(f"unexpected tensor {name!r} of dtype {t.dtype}")
        else:
            flat = _load_any(data)
            layout = info.get("layout", [])
            if isinstance(layout, str):
                layout = json.loads(layout)
            tensors = unpack(flat, layout)
            for name, t in unpack(flat, info["index"]).items():
                if name in tensors:
                    raise StateError(f"{name!r} is stored twice")
                tensors[name] = t
        return Stored(info["format"], int(info["schema"]), dict(info["meta"]), tensors)
    except (ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, StateError):
            raise
        raise StateError(f"not a {info.get('format')} state: {exc}") from exc
