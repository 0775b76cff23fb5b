"""Safe (de)serialization of a module's full state: safetensors for tensors, JSON for metadata.

No pickle anywhere: loading bytes parses a length-prefixed JSON header and raw tensor data, so
untrusted bytes can fail to load but never execute code.
"""

from __future__ import annotations

import json
from typing import Any

import safetensors.torch
from safetensors import SafetensorError
from torch import nn

__all__ = ["SCHEMA_VERSION", "StateError", "module_from_bytes", "module_to_bytes", "read_meta"]

SCHEMA_VERSION = 1
_FORMAT = "streamnorm.module"


class StateError(ValueError):
    """Bytes that are not a valid streamnorm state for this module."""


def module_to_bytes(module: nn.Module, meta: dict[str, Any] | None = None) -> bytes:
    """Every parameter and buffer of ``module`` (its ``state_dict``) plus JSON ``meta``."""
    tensors = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    info = {"format": _FORMAT, "schema": str(SCHEMA_VERSION), "meta": meta or {}}
    # a single metadata key: safetensors does not keep the order of several
    return safetensors.torch.save(tensors, metadata={"streamnorm": json.dumps(info,
                                                                              sort_keys=True)})


def read_meta(data: bytes) -> dict[str, Any]:
    """The JSON metadata stored by ``module_to_bytes``, without loading tensors."""
    try:
        header_len = int.from_bytes(data[:8], "little")
        if header_len <= 0 or header_len > len(data) - 8:
            raise ValueError("header length out of range")
        header = json.loads(data[8:8 + header_len])
        info = json.loads((header.get("__metadata__") or {}).get("streamnorm", "{}"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"not a safetensors state: {exc}") from exc
    if info.get("format") != _FORMAT:
        raise StateError("not a streamnorm module state (format tag missing)")
    if info.get("schema") != str(SCHEMA_VERSION):
        raise StateError(f"unsupported state schema {info.get('schema')!r}")
    return info.get("meta", {})


def module_from_bytes(module: nn.Module, data: bytes) -> dict[str, Any]:
    """Load bytes from ``module_to_bytes`` into ``module`` (strict); returns the metadata."""
    meta = read_meta(data)
    try:
        tensors = safetensors.torch.load(data)
    except SafetensorError as exc:
        raise StateError(f"not a safetensors state: {exc}") from exc
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
    return meta
