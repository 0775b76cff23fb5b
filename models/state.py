"""Safe state bytes: tensors packed into safetensors, metadata as JSON in its header.

The one codec for every state format here (a module's ``state_dict``, a learner, a stream
context): named tensors are packed into one flat safetensors tensor per dtype (per-tensor
overhead, not bytes, dominates at these sizes) with a JSON index ``[name, code, shape, offset]``;
the format tag, schema, metadata and index sit under one safetensors metadata key (it does not
keep the order of several, and equal states must give equal bytes). No pickle anywhere: loading
parses a length-prefixed JSON header and raw tensor data and bounds-checks every index entry, so
untrusted bytes can fail to load but never execute code.
"""

from __future__ import annotations

import json
import math
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, TensorSpec, serialize
from torch import Tensor, nn

__all__ = ["SCHEMA_VERSION", "StateError", "load_packed", "module_from_bytes", "module_to_bytes",
           "pack", "read_header", "read_meta", "unpack"]

SCHEMA_VERSION = 2
MAX_MODULE_BYTES = 512 * 1024 * 1024
_FORMAT = "streamnorm.module"
_DTYPES = {"F32": torch.float32, "I64": torch.int64, "F64": torch.float64}
_CODES = {v: k for k, v in _DTYPES.items()}
_NAMES = {torch.float32: "float32", torch.int64: "int64", torch.float64: "float64"}


class StateError(ValueError):
    """Bytes that are not a valid streamnorm state for this module."""


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
    """The header written by ``pack`` after checking size, format tag, schema, meta, index."""
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
        if info.get("schema") != str(schema):
            raise ValueError(f"unsupported schema {info.get('schema')!r}")
        if not isinstance(info.get("meta"), dict) or not isinstance(info.get("index"), list):
            raise ValueError("metadata or index missing")
        return info
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise StateError(f"not a {kind} state: {exc}") from exc


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


def module_to_bytes(module: nn.Module, meta: dict[str, Any] | None = None) -> bytes:
    """Every parameter and buffer of ``module`` (its ``state_dict``) plus JSON ``meta``."""
    return pack(module.state_dict(), _FORMAT, SCHEMA_VERSION, meta or {})


def read_meta(data: bytes) -> dict[str, Any]:
    """The JSON metadata stored by ``module_to_bytes``, without loading tensors."""
    return read_header(data, _FORMAT, SCHEMA_VERSION, MAX_MODULE_BYTES)["meta"]


def module_from_bytes(module: nn.Module, data: bytes) -> dict[str, Any]:
    """Load bytes from ``module_to_bytes`` into ``module`` (strict); returns the metadata."""
    info = read_header(data, _FORMAT, SCHEMA_VERSION, MAX_MODULE_BYTES)
    tensors = unpack(load_packed(data), info["index"])
    own = module.state_dict()
    if tensors.keys() != own.keys():
        missing, extra = sorted(own.keys() - tensors.keys()), sorted(tensors.keys() - own.keys())
        raise StateError(f"state does not fit this module: missing {missing}, unexpected {extra}")
    for key, value in tensors.items():  # check everything before changing anything
        if value.shape != own[key].shape or value.dtype != own[key].dtype:
            raise StateError(f"state does not fit this module: {key} is {value.dtype}"
                             f"{list(value.shape)}, expected {own[key].dtype}"
                             f"{list(own[key].shape)}")
    module.load_state_dict(tensors, strict=True)
    return info["meta"]
