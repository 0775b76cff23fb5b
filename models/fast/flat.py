"""Every persistent tensor of a learner as a view of one flat buffer per dtype.

Parameters, normalization buffers and the optimizer's step count and moments are re-homed into
one float32 and one int64 buffer. Saving is then one copy of each, loading one ``copy_`` each, a
save point for rollback one clone, a finiteness check one op, and an optimizer step one update
(``models.fast.optim``); the layout (names, shapes, offsets) is fixed by the spec, so a JSON
string of it identifies states that fit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .optim import FlatOptimizer

__all__ = ["FlatState"]

_CODES = {torch.float32: "F32", torch.int64: "I64"}


class FlatState:
    """The flat buffers (``flats[code]``), the layout, and the save point for rollback."""

    def __init__(self, net: nn.Module, optimizer: FlatOptimizer) -> None:
        entries: list[tuple[str, Tensor, Callable[[Tensor], None]]] = []
        for name, p in net.named_parameters():
            entries.append((f"model.{name}", p.data, lambda v, p=p: setattr(p, "data", v)))
        for mod_name, mod in net.named_modules():
            for bname, b in list(mod._buffers.items()):
                if b is None or bname in mod._non_persistent_buffers_set:
                    continue
                full = f"model.{mod_name}.{bname}" if mod_name else f"model.{bname}"
                entries.append((full, b, lambda v, m=mod, n=bname: m._buffers.__setitem__(n, v)))
        for key, value in optimizer.state.items():
            entries.append((f"optim.{key}", value,
                            lambda v, k=key: optimizer.state.__setitem__(k, v)))
        sizes: dict[str, int] = {}
        layout: list[list[Any]] = []
        for name, t, _ in entries:
            code = _CODES.get(t.dtype)
            if code is None:
                raise TypeError(f"{name}: dtype {t.dtype} cannot be flattened")
            layout.append([name, code, list(t.shape), sizes.get(code, 0)])
            sizes[code] = sizes.get(code, 0) + t.numel()
        self.flats = {code: torch.empty(n, dtype=dtype) for dtype, code in _CODES.items()
                      if (n := sizes.get(code, 0))}
        views = []
        with torch.no_grad():
            for (_, t, rebind), (_, code, shape, off) in zip(entries, layout, strict=True):
                view = self.flats[code][off:off + t.numel()].view(shape)
                view.copy_(t)
                rebind(view)
                views.append(view)
        for mod in net.modules():  # sites that name views of their buffers
            rebind = getattr(mod, "rebind_views", None)
            if rebind is not None:
                rebind()
        self.layout = json.dumps(layout, separators=(",", ":"))
        self.entries = layout
        self.layout_json = json.dumps(self.layout)  # as it sits in a state's header
        params = list(net.parameters())
        n_params = sum(p.numel() for p in params)
        if any(p.dtype != torch.float32 for p in params):
            raise TypeError("every parameter must be float32")
        # parameters come first: their values are one flat view, which the optimizer updates
        self.params = self.flats["F32"][:n_params] if params else torch.empty(0)
        # what owns each entry's values (the Parameter itself for parameters): ``models.fast.clone``
        # maps these objects onto a copy's new buffers
        self.owners: list[Tensor] = params + views[len(params):]
        # gradients as views of one buffer too (as DDP's gradient_as_bucket_view): autograd
        # accumulates into them in place, so zeroing and clipping are one op each
        self.grad = torch.zeros(n_params)
        offset = 0
        for p in params:
            p.grad = self.grad[offset:offset + p.numel()].view(p.shape)
            offset += p.numel()
        self._saved: dict[str, Tensor] = {}
        self._zeros: Tensor | None = None
        optimizer.bind(self.params, self.grad)

    def save_point(self) -> None:
        """Remember every value (one copy per dtype)."""
        if not self._saved:
            self._saved = {c: f.clone() for c, f in self.flats.items()}
        else:
            for c, f in self.flats.items():
                self._saved[c].copy_(f)

    def rollback(self) -> None:
        """Restore the values of the last save point."""
        with torch.no_grad():
            for c, f in self.flats.items():
                f.copy_(self._saved[c])

    def finite(self) -> bool:
        """Whether every float (weights, statistics, optimizer moments) is finite.

        A dot product with zeros is NaN exactly when some entry is NaN or ±Inf, and is one
        reduction instead of an elementwise test plus a reduction (~15 µs vs ~115 µs).
        """
        f = self.flats.get("F32")
        if f is None:
            return True
        if self._zeros is None or self._zeros.shape != f.shape:
            self._zeros = torch.zeros_like(f)
        return bool(torch.isfinite(torch.dot(f, self._zeros)))
