"""Blank learners by copying the structure of a cached one per spec (what ``from_bytes`` uses).

Constructing a learner runs every module constructor (parameters, ~10 buffers per streaming
site), the optimizer's and the flat re-homing: 0.4–0.9 ms for an LSTM of 64. A structural copy
of a blank template makes new module and optimizer objects with the same attributes, new flat
buffers, and every parameter, buffer and optimizer moment as a view of them at the same offsets:
about a tenth of that. Values are not copied — the caller loads a state into the copy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn
from torch._utils import _unflatten_dense_tensors as unflatten_dense_tensors

from ..metrics import Metrics
from ..spec import ModelSpec
from .flat import FlatState
from .optim import FlatOptimizer

__all__ = ["MAX_TEMPLATE_BYTES", "Structured", "copy_structure", "template_for"]


class Structured(Protocol):
    """What a structural copy is made of: a learner's attributes (``models.OnlineLearner``;
    named here, not imported, so this machinery sits below the learner that uses it)."""

    spec: ModelSpec
    spec_json: str
    net: nn.Module
    flat: FlatState
    optimizer: FlatOptimizer
    _notify: list[nn.Module]
    metrics: Metrics
    contexts: dict[str, Any]
    updates: int
    samples: int


L = TypeVar("L", bound=Structured)
MAX_TEMPLATE_BYTES = 256 * 1024 * 1024  # all cached templates together (each holds its buffers)
_templates: OrderedDict[tuple[Callable[[ModelSpec], Any], str], tuple[Any, int]] = OrderedDict()
_lock = threading.Lock()


def template_for(spec_json: str, build: Callable[[ModelSpec], L]) -> L:
    """The cached blank learner ``build(spec)`` for the spec given as JSON (validated and built
    on first use; never handed out). Only canonical texts (``spec.model_dump_json()``, what
    states store) are cache keys, with ``build`` (a stable callable: a class's method); the
    cache keeps the most recently used templates up to ``MAX_TEMPLATE_BYTES``. Raises
    pydantic's ``ValidationError`` for an invalid spec."""
    key = (build, spec_json)
    with _lock:
        hit = _templates.get(key)
        if hit is not None:
            _templates.move_to_end(key)
            return hit[0]
    spec = ModelSpec.model_validate_json(spec_json)
    canonical = spec.model_dump_json()
    if canonical != spec_json:
        return template_for(canonical, build)
    template = build(spec)
    size = sum(f.nbytes for f in template.flat.flats.values()) + template.flat.grad.nbytes
    with _lock:
        _templates[key] = (template, size)
        total = sum(n for _, n in _templates.values())
        while total > MAX_TEMPLATE_BYTES and len(_templates) > 1:
            total -= _templates.popitem(last=False)[1][1]
    return template


def copy_structure(src: L, *, flats: dict[str, Tensor] | None = None) -> L:
    """A learner shaped like ``src`` sharing nothing mutable with it: its values live in
    ``flats`` (taken over, shaped as ``src.flat.flats``) or are uninitialised; gradients zero,
    no contexts, fresh metrics and counters."""
    flat = src.flat
    plan = _plan(src)
    if flats is None:
        flats = {code: torch.empty_like(f) for code, f in flat.flats.items()}
    views: list[Tensor] = [flat.grad] * len(flat.owners)
    for code, (index, like) in plan.pieces.items():
        for i, view in zip(index, unflatten_dense_tensors(flats[code], like), strict=True):
            views[i] = view
    grad = torch.zeros_like(flat.grad)
    for i, piece in enumerate(unflatten_dense_tensors(grad, plan.params)):
        # ``.data =`` (as FlatState does) keeps the parameter's own version counter; a
        # Parameter made from the view would share the flat buffer's with every other tensor
        param = torch.Tensor._make_subclass(nn.Parameter, _EMPTY, True)  # nn.Parameter(_EMPTY)
        param.data, views[i] = views[i], param
        param.grad = piece
    modules = [object.__new__(r.kind) for r in plan.modules]
    memo: dict[int, Any] = dict(zip(plan.owner_ids, views, strict=True))
    memo.update(zip(plan.module_ids, modules, strict=True))
    for module, recipe in zip(modules, plan.modules, strict=True):
        attrs = module.__dict__  # filled directly: nn.Module.__setattr__ is slow
        attrs.update(recipe.shared)
        attrs.update({key: kind() for key, kind in recipe.fresh})
        for key, table in recipe.tables:
            attrs[key] = {name: views[i] if i >= 0 else modules[~i] if i != _NONE else None
                          for name, i in table}
        for key, value in recipe.other:
            attrs[key] = _copy(value, memo)

    new = object.__new__(type(src))
    new.spec, new.spec_json = src.spec, src.spec_json
    new.net = modules[0]
    new_flat = object.__new__(FlatState)
    new_flat.__dict__.update(flat.__dict__)  # layout, entries: read-only once built
    new_flat.__dict__.pop("_clone_plan", None)  # the plan names the template's objects
    new_flat.flats, new_flat.grad, new_flat._saved, new_flat._zeros = flats, grad, {}, None
    new_flat.params = flats["F32"][:grad.numel()]
    new_flat.owners = views
    new.flat = new_flat
    new.optimizer = src.optimizer.copy(
        {key: views[i] for key, i in plan.optim_state}, new_flat.params, grad)
    new._notify = [modules[i] for i in plan.notify]
    new.metrics = Metrics(src.spec.task, src.metrics.window)
    new.contexts, new.updates, new.samples = {}, 0, 0
    if new.__dict__.keys() != src.__dict__.keys():  # a learner attribute this copy misses
        raise AssertionError(f"copy_structure misses {set(src.__dict__) - set(new.__dict__)}")
    return new


_SHARED = (str, int, float, bool, type(None))


_EMPTY = torch.empty(0)
_NONE = -(2**62)  # a table entry that holds None


@dataclass(frozen=True)
class _Recipe:
    """How to rebuild one module's ``__dict__``: immutable values shared, empty hook tables
    made anew, parameter / buffer / child tables remapped (owner index ``i ≥ 0``, module
    ``~i``), anything else copied by ``_copy``."""

    kind: type
    shared: dict[str, Any]
    fresh: list[tuple[str, type]]
    tables: list[tuple[str, list[tuple[str, int]]]]
    other: list[tuple[str, Any]]


@dataclass(frozen=True)
class _Plan:
    """Computed once per template: how its flat buffers split into its tensors, and how to
    rebuild its modules around them."""

    pieces: dict[str, tuple[list[int], list[Tensor]]]
    params: list[Tensor]
    owner_ids: list[int]
    module_ids: list[int]
    modules: list[_Recipe]
    optim_state: list[tuple[str, int]]
    notify: list[int]


def _plan(src: Structured) -> _Plan:
    flat = src.flat
    plan = flat.__dict__.get("_clone_plan")
    if plan is not None:
        return plan
    pieces: dict[str, tuple[list[int], list[Tensor]]] = {}
    for i, (owner, (_, code, _, _)) in enumerate(zip(flat.owners, flat.entries, strict=True)):
        index, like = pieces.setdefault(code, ([], []))
        index.append(i)
        like.append(torch.empty(owner.shape, dtype=owner.dtype))
    params = [o for o in flat.owners if isinstance(o, nn.Parameter)]
    if not all(a is b and b.requires_grad for a, b in zip(flat.owners[:len(params)], params,
                                                           strict=True)):
        raise AssertionError("parameters must come first in the flat layout")
    owner_index = {id(o): i for i, o in enumerate(flat.owners)}
    modules = list(src.net.modules())
    module_index = {id(m): i for i, m in enumerate(modules)}
    recipes = [_recipe(m, owner_index, module_index) for m in modules]
    state = [(k, owner_index[id(v)]) for k, v in src.optimizer.state.items()]
    notify = [module_index[id(m)] for m in src._notify]
    plan = _Plan(pieces, [torch.empty(p.shape) for p in params],
                 [id(o) for o in flat.owners], [id(m) for m in modules], recipes, state, notify)
    flat._clone_plan = plan
    return plan


def _recipe(module: nn.Module, owners: dict[int, int], modules: dict[int, int]) -> _Recipe:
    shared: dict[str, Any] = {}
    fresh: list[tuple[str, type]] = []
    tables: list[tuple[str, list[tuple[str, int]]]] = []
    other: list[tuple[str, Any]] = []
    views = hasattr(module, "rebind_views")  # its tensor attributes: views of its buffers
    for key, value in module.__dict__.items():
        kind = type(value)
        if views and isinstance(value, Tensor):
            continue
        if kind in _SHARED or (kind is tuple and all(type(v) in _SHARED for v in value)):
            shared[key] = value
        elif kind in (dict, OrderedDict, set) and not value:
            fresh.append((key, kind))
        elif key in ("_parameters", "_buffers", "_modules") and kind is dict and all(
                v is None or id(v) in owners or id(v) in modules for v in value.values()):
            tables.append((key, [(name, _NONE if v is None else owners[id(v)] if id(v) in owners
                                  else ~modules[id(v)]) for name, v in value.items()]))
        else:
            other.append((key, value))
    return _Recipe(type(module), shared, fresh, tables, other)


def _copy(obj: Any, memo: dict[int, Any]) -> Any:
    """Copy modules, optimizers and containers; tensors not remapped are cloned; everything
    else (numbers, strings, specs, norm methods) is immutable and shared."""
    kind = type(obj)
    if kind in _SHARED:
        return obj
    found = memo.get(id(obj))
    if found is not None:
        return found
    if isinstance(obj, dict):
        if not obj:  # most of a module's dicts are empty hook tables
            new: Any = defaultdict(obj.default_factory) if kind is defaultdict else kind()
        elif kind is defaultdict:
            new = defaultdict(obj.default_factory,
                              {_copy(k, memo): _copy(v, memo) for k, v in obj.items()})
        else:
            new = kind((k if type(k) is str else _copy(k, memo), _copy(v, memo))
                       for k, v in obj.items())
    elif isinstance(obj, Tensor):
        new = obj.clone()
    elif isinstance(obj, nn.Module):
        new = object.__new__(kind)
        memo[id(obj)] = new
        attrs = new.__dict__
        for k, v in obj.__dict__.items():  # inlined for the common cases: ~2x faster
            vkind = type(v)
            if vkind in _SHARED:
                attrs[k] = v
            elif vkind is OrderedDict and not v:
                attrs[k] = OrderedDict()
            else:
                attrs[k] = _copy(v, memo)
        return new
    elif isinstance(obj, list | tuple | set):
        new = kind(_copy(v, memo) for v in obj)
    else:
        return obj
    memo[id(obj)] = new
    return new
