"""A module's state (its ``state_dict``) as safe bytes: safetensors plus JSON metadata.

The bytes are ``models.codec``'s (never pickle); a state of an older schema is upgraded on load
(``models.upgrades``), one of a newer schema refused. ``StateError`` is the error of every state
format here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .codec import StateError, load_packed, pack, read_header, unpack
from .upgrades import MODULE, upgraded

__all__ = ["SCHEMA_VERSION", "StateError", "module_from_bytes", "module_to_bytes", "read_meta"]

SCHEMA_VERSION = 3
MAX_MODULE_BYTES = 512 * 1024 * 1024


def module_to_bytes(module: nn.Module, meta: dict[str, Any] | None = None) -> bytes:
    """Every parameter and buffer of ``module`` (its ``state_dict``) plus JSON ``meta``."""
    return pack(module.state_dict(), MODULE, SCHEMA_VERSION, meta or {})


def read_meta(data: bytes) -> dict[str, Any]:
    """The JSON metadata stored by ``module_to_bytes``, without loading tensors."""
    info = read_header(data, MODULE, SCHEMA_VERSION, MAX_MODULE_BYTES)
    if info["schema"] != str(SCHEMA_VERSION):
        return upgraded(data, info, SCHEMA_VERSION).meta
    return info["meta"]


def module_from_bytes(module: nn.Module, data: bytes) -> dict[str, Any]:
    """Load bytes from ``module_to_bytes`` into ``module`` (strict); returns the metadata."""
    info = read_header(data, MODULE, SCHEMA_VERSION, MAX_MODULE_BYTES)
    if info["schema"] == str(SCHEMA_VERSION):
        tensors, meta = unpack(load_packed(data), info["index"]), info["meta"]
    else:
        state = upgraded(data, info, SCHEMA_VERSION)
        tensors, meta = state.tensors, state.meta
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
