"""Every persistent tensor of a learner as a view of one flat buffer per dtype.

Parameters, normalization buffers and optimizer moments (created up front, equal to what the
optimizer would create lazily) are re-homed into one float32 and one int64 buffer. Saving is then
one copy of each, loading one ``copy_`` each, a save point for rollback one clone, and a
finiteness check one op; the layout (names, shapes, offsets) is fixed by the spec, so a JSON
string of it identifies states that fit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FlatState", "init_optimizer_state"]

_CODES = {torch.float32: "F32", torch.int64: "I64"}


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create Adam / RMSprop state as the optimizer's first step would (zeros, step 0)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if state:
                continue
            if isinstance(optimizer, torch.optim.Adam):
                if group.get("amsgrad"):
                    raise ValueError("amsgrad is not supported")
                state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                             exp_avg_sq=torch.zeros_like(p))
            elif isinstance(optimizer, torch.optim.RMSprop):
                if group.get("momentum") or group.get("centered"):
                    raise ValueError("RMSprop momentum/centered are not supported")
                state.update(step=torch.tensor(0.0), square_avg=torch.zeros_like(p))
            else:
                del optimizer.state[p]  # plain SGD keeps no state


class FlatState:
    """The flat buffers (``flats[code]``), the layout, and the save point for rollback."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        entries: list[tuple[str, Tensor, Callable[[Tensor], None]]] = []
        for name, p in net.named_parameters():
            entries.append((f"model.{name}", p.data, lambda v, p=p: setattr(p, "data", v)))
        for mod_name, mod in net.named_modules():
            for bname, b in list(mod._buffers.items()):
                if b is None or bname in mod._non_persistent_buffers_set:
                    continue
                full = f"model.{mod_name}.{bname}" if mod_name else f"model.{bname}"
                entries.append((full, b, lambda v, m=mod, n=bname: m._buffers.__setitem__(n, v)))
        for i, p in enumerate(net.parameters()):
            for key, value in optimizer.state.get(p, {}).items():
                entries.append((f"optim.{i}.{key}", value,
                                lambda v, s=optimizer.state[p], k=key: s.__setitem__(k, v)))
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
        self.layout = json.dumps(layout, separators=(",", ":"))
        self.entries = layout
        self.layout_json = json.dumps(self.layout)  # as it sits in a state's header
        params = list(net.parameters())
        # what owns each entry's values (the Parameter itself for parameters): ``models.clone``
        # maps these objects onto a copy's new buffers
        self.owners: list[Tensor] = params + views[len(params):]
        # gradients as views of one buffer too (as DDP's gradient_as_bucket_view): autograd
        # accumulates into them in place, so zeroing and clipping are one op each
        self.grad = torch.zeros(sum(p.numel() for p in params))
        offset = 0
        for p in params:
            p.grad = self.grad[offset:offset + p.numel()].view(p.shape)
            offset += p.numel()
        self._saved: dict[str, Tensor] = {}
        self._zeros: Tensor | None = None

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
