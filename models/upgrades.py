"""The chain of upgrades that carries a stored state from the schema it was written in to today's.

A state carries its format (``streamnorm.module``, ``streamnorm.learner``,
``streamnorm.context``) and schema. Loading one of an older schema decodes it into named tensors
and metadata (``models.codec.decode``), then runs, in order, every step registered here from
that schema to today's, as PyTorch's ``_load_from_state_dict`` does with its ``version``; only
then does the one loader of today's schema validate and load it. A state of a newer schema is
refused. A change to what a state holds (a norm's buffers, a metric, the context layout) ships
with its step here, named for the change, and a fixture written by the code before the change
(``tests/data/schema-*``):

    @step(LEARNER, 3)
    def online_norm_keeps_a_count(state: Stored) -> Stored:
        '''Schema 4 adds ``count`` to every Online Norm site: 0, as a fresh site has.'''
        ...

Steps are a record of history: they name the tensors as the code of their time named them,
never through today's constants. How a schema's bytes were laid out (one tensor per name,
packed, flat buffers) is ``decode``'s business, not a step's.

Schemas written so far (``git log -S SCHEMA -- models/``): module 1 (c106db3), 2 (81e3b7d),
3 (this change); learner and context 1 (b1bd267), 2 (c2b34fd), 3 (0785244).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from .codec import StateError, Stored, decode

__all__ = ["CONTEXT", "LEARNER", "MODULE", "Step", "refuse_newer", "step", "steps", "upgrade",
           "upgraded"]

MODULE, LEARNER, CONTEXT = "streamnorm.module", "streamnorm.learner", "streamnorm.context"

Step = Callable[[Stored], Stored]
_STEPS: dict[tuple[str, int], list[Step]] = {}


def step(kind: str, schema: int) -> Callable[[Step], Step]:
    """Register the decorated function as (part of) the upgrade of ``kind`` states from
    ``schema`` to ``schema + 1``; several run in the order they were registered."""
    def register(fn: Step) -> Step:
        _STEPS.setdefault((kind, schema), []).append(fn)
        return fn
    return register


def steps(kind: str, schema: int) -> list[Step]:
    """The functions that upgrade ``kind`` states from ``schema`` to the next, in order."""
    return list(_STEPS.get((kind, schema), []))


def upgraded(data: bytes, info: dict[str, Any], to: int) -> Stored:
    """The state ``data`` (its header ``info`` from ``codec.read_header``) decoded and carried
    to schema ``to``; one of a newer schema is refused before its tensors are read."""
    refuse_newer(info, to)
    return upgrade(decode(data, info), to)


def refuse_newer(info: dict[str, Any], to: int) -> None:
    """``StateError`` if the header ``info`` is of a schema newer than ``to``."""
    if int(info["schema"]) > to:
        raise StateError(f"this {info['format']} state was written by a newer streamnorm "
                         f"(schema {info['schema']}); this one reads schemas up to {to}")


def upgrade(state: Stored, to: int) -> Stored:
    """``state`` carried to schema ``to`` by every step in between; ``StateError`` if it is of
    a newer schema or a step is missing (never a partial upgrade)."""
    refuse_newer({"format": state.kind, "schema": state.schema}, to)
    while state.schema < to:
        found = _STEPS.get((state.kind, state.schema))
        if not found:
            raise StateError(f"no upgrade of {state.kind} states from schema {state.schema}")
        for fn in found:
            state = fn(state)
        state = replace(state, schema=state.schema + 1)
    return state


# -- module states ------------------------------------------------------------------------------
@step(MODULE, 1)
def module_tensors_packed(state: Stored) -> Stored:
    """Schema 2 (81e3b7d) packs the tensors with an index instead of one safetensors tensor
    each: the same names and values, which ``decode`` reads from either."""
    return state


# -- learner states -----------------------------------------------------------------------------
@step(LEARNER, 1)
def optimizer_settings_only_in_the_spec(state: Stored) -> Stored:
    """Schema 2 (c2b34fd) dropped ``param_groups``, the optimizer settings schema 1 stored
    beside the spec, which holds them too; the tensors were packed (``decode`` reads both)."""
    meta = dict(state.meta)
    meta.pop("param_groups", None)
    return replace(state, meta=meta)


_OLD_MEMORIES = ("L", "S", "GL", "GS")
_OLD_COUNTERS = ("n", "m", "steps", "folded_at", "l_init", "gl_init")


@step(MODULE, 2)
@step(LEARNER, 2)
def streaming_sites_in_two_buffers(state: Stored) -> Stored:
    """Schema 3 (0785244) keeps a Streaming Norm site's ten buffers in two: ``memory``, the
    rows ``L, S, GL, GS`` stacked (``[4, 2, ...]``), and ``counters``, the int64 scalars ``n, m,
    steps, folded_at, l_init, gl_init`` as one vector. Module states written by 0785244 up to
    this change say schema 2 but already hold the two buffers: a state without the ten names is
    left as it is."""
    sites = [name[:-3] for name in state.tensors if name.endswith(".GL")]
    if not sites:
        return state
    tensors = dict(state.tensors)
    for site in sites:
        names = [f"{site}.{k}" for k in _OLD_MEMORIES + _OLD_COUNTERS]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise StateError(f"Streaming Norm site {site!r} lacks {missing}")
        memory = [tensors.pop(f"{site}.{k}") for k in _OLD_MEMORIES]
        counters = [tensors.pop(f"{site}.{k}") for k in _OLD_COUNTERS]
        if any(t.dtype != torch.float32 or t.shape != memory[0].shape for t in memory) or any(
                t.dtype != torch.int64 or t.dim() != 0 for t in counters):
            raise StateError(f"Streaming Norm site {site!r}: unexpected buffer shapes")
        tensors[f"{site}.memory"] = torch.stack(memory)
        tensors[f"{site}.counters"] = torch.stack(counters)
    return replace(state, tensors=tensors)


@step(LEARNER, 2)
def optimizer_state_as_flat_vectors(state: Stored) -> Stored:
    """Schema 2 up to 5f11ef6 stored torch.optim's state per parameter, ``optim.{i}.{key}``
    with ``i`` the parameter's position in ``net.parameters()``; from 5f11ef6 on the optimizer
    keeps one flat vector per key (``optim.exp_avg`` … in the same parameter order, the flat
    parameter buffer's) and one ``optim.step``.

    torch.optim skipped a parameter that had no gradient in an update (its ``step`` lower, its
    moments not decayed): the one step count kept is the highest, the number of updates, as the
    flat optimizer counts for every parameter. Predictions are unchanged; later updates of such
    a parameter see Adam's bias correction of that count.
    """
    per_parameter: dict[int, dict[str, torch.Tensor]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state.tensors.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "optim" and parts[1].isdecimal():
            per_parameter.setdefault(int(parts[1]), {})[parts[2]] = t
        else:
            tensors[name] = t
    if not per_parameter:
        return state
    n = len(per_parameter)
    keys = set(per_parameter[0]) if 0 in per_parameter else set()
    if sorted(per_parameter) != list(range(n)) or any(set(s) != keys for s in
                                                      per_parameter.values()):
        raise StateError("per-parameter optimizer state does not cover parameters 0..n-1 "
                         "with the same keys (a parameter that never had a gradient): its "
                         "moments cannot be placed in the flat vectors")
    for key in sorted(keys):
        values = [per_parameter[i][key] for i in range(n)]
        if any(v.dtype != torch.float32 for v in values):
            raise StateError(f"optimizer state {key!r} must be float32")
        if key == "step":
            if any(v.dim() != 0 for v in values):
                raise StateError("optimizer steps must be scalars")
            tensors["optim.step"] = torch.stack(values).max()
        else:
            tensors[f"optim.{key}"] = torch.cat([v.reshape(-1) for v in values])
    return replace(state, tensors=tensors)


# -- stream contexts ----------------------------------------------------------------------------
@step(CONTEXT, 1)
def context_tensors_packed(state: Stored) -> Stored:
    """Schema 2 (c2b34fd) packs a context's tensors with an index: the same names and values,
    which ``decode`` reads from either."""
    return state


@step(CONTEXT, 2)
def context_unchanged_in_3(state: Stored) -> Stored:
    """Schema 3 (0785244) changed learner states; contexts share the number (one ``SCHEMA`` in
    ``models.persist``) and hold the same ``inputs`` and ``state.{k}``."""
    return state
