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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .flat import FlatState
from .metrics import Metrics
from .spec import ModelSpec

if TYPE_CHECKING:
    from .learner import OnlineLearner

__all__ = ["MAX_TEMPLATE_BYTES", "copy_structure", "template_for"]

MAX_TEMPLATE_BYTES = 256 * 1024 * 1024  # all cached templates together (each holds its buffers)
_templates: OrderedDict[str, tuple[OnlineLearner, int]] = OrderedDict()
_lock = threading.Lock()


def template_for(spec: ModelSpec) -> OnlineLearner:
    """The cached blank learner for ``spec`` (built on first use; never handed out). The cache
    keeps the most recently used templates up to ``MAX_TEMPLATE_BYTES`` of buffers."""
    from .learner import OnlineLearner

    key = spec.model_dump_json()
    with _lock:
        hit = _templates.get(key)
        if hit is not None:
            _templates.move_to_end(key)
            return hit[0]
    template = OnlineLearner(spec, _blank=True)
    size = sum(f.nbytes for f in template.flat.flats.values()) + template.flat.grad.nbytes
    with _lock:
        _templates[key] = (template, size)
        total = sum(n for _, n in _templates.values())
        while total > MAX_TEMPLATE_BYTES and len(_templates) > 1:
            total -= _templates.popitem(last=False)[1][1]
    return template


def copy_structure(src: OnlineLearner, *, flats: dict[str, Tensor] | None = None
                   ) -> OnlineLearner:
    """A learner shaped like ``src`` sharing nothing mutable with it: its values live in
    ``flats`` (taken over, shaped as ``src.flat.flats``) or are uninitialised; gradients zero,
    no contexts, fresh metrics and counters."""
    flat = src.flat
    plan = _plan(flat)
    if flats is None:
        flats = {code: torch.empty_like(f) for code, f in flat.flats.items()}
    views: list[Tensor] = [flat.grad] * len(flat.owners)
    for code, (index, sizes, shapes) in plan.pieces.items():
        for i, piece, shape in zip(index, flats[code].split_with_sizes(sizes), shapes,
                                   strict=True):
            views[i] = piece.view(shape)
    grad = torch.zeros_like(flat.grad)
    for i, piece, shape in zip(range(plan.n_params), grad.split_with_sizes(plan.param_sizes),
                               plan.param_shapes, strict=True):
        # ``.data =`` (as FlatState does) keeps the parameter's own version counter; a
        # Parameter made from the view would share the flat buffer's with every other tensor
        param = nn.Parameter(torch.empty(0))
        param.data, views[i] = views[i], param
        param.grad = piece.view(shape)
    memo: dict[int, Any] = {id(o): v for o, v in zip(flat.owners, views, strict=True)}

    new = object.__new__(type(src))
    new.spec = src.spec
    new.net = _copy(src.net, memo)
    new.optimizer = _copy(src.optimizer, memo)
    new_flat = object.__new__(FlatState)
    new_flat.__dict__.update(flat.__dict__)  # layout, entries: read-only once built
    new_flat.flats, new_flat.grad, new_flat._saved, new_flat._zeros = flats, grad, {}, None
    new_flat.owners = [memo[id(o)] for o in flat.owners]
    new.flat = new_flat
    new._notify = [memo[id(m)] for m in src._notify]
    new.metrics = Metrics(src.spec.task, src.metrics.window)
    new.contexts, new.updates, new.samples = {}, 0, 0
    new._adam = None  # the copy prepares its own optimizer argument lists
    if new.__dict__.keys() != src.__dict__.keys():  # a learner attribute this copy misses
        raise AssertionError(f"copy_structure misses {set(src.__dict__) - set(new.__dict__)}")
    return new


_SHARED = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class _Plan:
    """How a template's flat buffers split into its tensors (computed once per template)."""

    pieces: dict[str, tuple[list[int], list[int], list[tuple[int, ...]]]]
    n_params: int
    param_sizes: list[int]
    param_shapes: list[tuple[int, ...]]


def _plan(flat: FlatState) -> _Plan:
    plan = flat.__dict__.get("_clone_plan")
    if plan is None:
        pieces: dict[str, tuple[list[int], list[int], list[tuple[int, ...]]]] = {}
        for i, (owner, (_, code, shape, _)) in enumerate(zip(flat.owners, flat.entries,
                                                             strict=True)):
            index, sizes, shapes = pieces.setdefault(code, ([], [], []))
            index.append(i)
            sizes.append(owner.numel())
            shapes.append(tuple(shape))
        params = [o for o in flat.owners if isinstance(o, nn.Parameter)]
        n = len(params)
        if not all(a is b and b.requires_grad for a, b in zip(flat.owners[:n], params,
                                                               strict=True)):
            raise AssertionError("parameters must come first in the flat layout")
        plan = flat._clone_plan = _Plan(pieces, len(params), [p.numel() for p in params],
                                        [tuple(p.shape) for p in params])
    return plan


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
    elif isinstance(obj, nn.Module | torch.optim.Optimizer):
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
