"""LSTM, GRU and plain RNN cells that take any normalization method, and their stack.

Every cell follows the template of ``norms.md``::

    LSTM  a_t = N_x(L_x x_t) + N_h(L_h h_{t−1}) + b;  c_t = σ(f)c_{t−1} + σ(i)tanh(g)
          h_t = σ(o) ⊙ tanh(N_c(c_t))                        (gate order i, f, g, o)
    GRU   [r, z] = σ(N(W_x^{rz} x) + N(W_h^{rz} h) + b_rz)
          n = tanh(N(W_x^n x) + b_n + r ⊙ (N(W_h^n h) + b_hn));  h' = (1 − z) n + z h
    RNN   h_t = tanh(N_x(L_x x_t) + N_h(L_h h_{t−1}) + b)

with Online Norm's ``pre`` site wrapped around each summed pre-activation. The input-to-hidden
term of a whole window is computed in one matmul and normalized in one site call. A ``None``
state is the zero initial state: its hidden-to-hidden term is exactly zero and never enters any
statistic (``norms.md`` rule 6). Where a numpy kernel of ``models.fast`` applies (every method
on the CPU in float32/float64, but Recurrent BN with true batch statistics and Streaming Norm in
eval) it runs the window: ``gru_kernel``, ``rnn_kernel``, ``lstm_window``, ``lstm_kernel``
(``layer``/``streaming`` LSTMs); LSTM ``none``/``weight`` run ``torch.lstm``. The per-step loop
below is the generic path, the oracle the kernels are tested against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import norms
from .fast import gru_kernel, lstm_kernel, lstm_window, rnn_kernel, xsite
from .norms import NormMethod, NormParams

__all__ = ["CELLS", "GRUCell", "LSTMCell", "RNNCell", "RecurrentCell", "RecurrentStack",
           "skip_init"]

_INIT = [True]


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Build cells without their (costly, orthogonal) initialisation: for loading saved state."""
    old, _INIT[0] = _INIT[0], False
    try:
        yield
    finally:
        _INIT[0] = old

State = tuple[Tensor, ...]
NormLike = str | dict[str, Any] | NormParams | NormMethod


def _method(norm: NormLike) -> NormMethod:
    return norm if isinstance(norm, NormMethod) else norms.build(norm)


class RecurrentCell(nn.Module):
    """Common shell: linear maps, bias, sites, init, window loop. Subclasses define a step."""

    gates: ClassVar[int] = 1
    n_state: ClassVar[int] = 1
    # a module with ``supports(cell, x, state)`` and ``window(cell, x, state, t0)`` (every state
    # tensor over the window) running this cell's window in numpy where it applies
    # (``models.fast.gru_kernel``, ``rnn_kernel``, ``lstm_window``)
    kernel: ClassVar[Any] = None

    def __init__(self, input_size: int, hidden_size: int, norm: NormLike = "none") -> None:
        super().__init__()
        if input_size <= 0:
            raise ValueError(f"input_size must be greater than zero, got {input_size}")
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be greater than zero, got {hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.method = _method(norm)
        width = self.gates * hidden_size
        self.lx = self.method.linear(input_size, width)
        self.lh = self.method.linear(hidden_size, width)
        self.bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("_zeros", torch.zeros(width), persistent=False)
        self._build_sites()
        if _INIT[0]:
            self.reset_parameters()

    # -- construction --------------------------------------------------------------------------
    def _build_sites(self) -> None:
        w = self.gates * self.hidden_size
        self.nx = self.method.site("x", w)
        self.nh = self.method.site("h", w)
        self.npre = self.method.site("pre", w, groups=self.gates)

    def _forget_slice(self) -> slice | None:
        return None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Orthogonal ``W_h`` per gate block, zero bias (LSTM: forget-gate bias 1)."""
        h = self.hidden_size
        wh = torch.empty(self.gates * h, h)
        for k in range(self.gates):
            nn.init.orthogonal_(wh[k * h:(k + 1) * h])
        if parametrize.is_parametrized(self.lh, "weight"):
            self.lh.weight = wh  # weight norm: right_inverse sets g = ‖row‖ and v
        else:
            self.lh.weight.copy_(wh)
        self.bias.zero_()
        fs = self._forget_slice()
        if fs is not None:
            self.bias[fs] = 1.0

    @property
    def fused(self) -> bool:
        """Whether this cell runs windows through PyTorch's fused kernel."""
        return self.method.fused

    # -- forward -------------------------------------------------------------------------------
    def input_term(self, x: Tensor, t0: int = 0) -> Tensor:
        """``N_x(L_x x) + b`` for a whole window ``[T, B, I]`` at once."""
        ax = xsite.linear(self.lx, x)
        if self.nx is not None:
            ax = xsite.forward_seq(self.nx, ax, t0)
        return ax + self.bias

    def _summed(self, gx: Tensor, state: State | None, t: int) -> Tensor:
        """The summed pre-activation ``gx + N_h(W_h h)``, through the ``pre`` site if any (no
        ``h`` term while the state is ``None``: ``W_h h_0 = 0`` has no statistics)."""
        a = gx
        if state is not None:
            ah = self.lh(state[0])
            a = a + (self.nh(ah, t) if self.nh is not None else ah)
        return self.npre(a, t) if self.npre is not None else a

    def step(self, gx: Tensor, state: State | None, t: int) -> State:  # pragma: no cover
        raise NotImplementedError

    def _fused(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        raise NotImplementedError

    def forward_window(self, x: Tensor, state: State | None = None, t0: int = 0,
                       capture: int | None = None) -> tuple[Tensor, State, State | None]:
        """Run a window ``[T, B, I]`` from ``state`` (``None``: zero); outputs ``[T, B, H]``.

        Also returns the state after step ``capture`` (the learner's next window start).
        """
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must be [T, B, {self.input_size}], got {list(x.shape)}")
        kernel = self.kernel
        if kernel is not None and kernel.supports(self, x, state):  # a numpy window
            with self.method.window():  # type: ignore[attr-defined]
                states = kernel.window(self, x, state, t0)
            final = tuple(s[-1] for s in states)
            cap = (tuple(s[capture] for s in states)
                   if capture is not None and 0 <= capture < x.shape[0] else None)
            return states[0], final, cap
        with self.method.window():  # type: ignore[attr-defined]
            if self.fused:
                return self._fused_window(x, state, capture)
            gx = self.input_term(x, t0)
            outs, captured = [], None
            for i in range(x.shape[0]):
                state = self.step(gx[i], state, t0 + i)
                outs.append(state[0])
                if i == capture:
                    captured = state
        assert state is not None
        return torch.stack(outs), state, captured

    def forward_seq(self, x: Tensor, state: State | None = None, t0: int = 0
                    ) -> tuple[Tensor, State]:
        """``forward_window`` without a capture: outputs and final state."""
        out, final, _ = self.forward_window(x, state, t0)
        return out, final

    def _fused_window(self, x: Tensor, state: State | None, capture: int | None
                      ) -> tuple[Tensor, State, State | None]:
        """The fused kernel over the window, and the state after step ``capture``."""
        out, final = self._fused(x, state)
        return self._captured(x, state, capture, out, final)

    def _captured(self, x: Tensor, state: State | None, capture: int | None, out: Tensor,
                  final: State) -> tuple[Tensor, State, State | None]:
        """A whole-window kernel's result with the state after step ``capture`` added (none
        for a ``capture`` outside the window, as step by step)."""
        if capture is None or not 0 <= capture < x.shape[0]:
            return out, final, None
        if capture >= x.shape[0] - 1:
            return out, final, final
        return out, final, self._fused_capture(x, state, capture, out)

    def _fused_capture(self, x: Tensor, state: State | None, capture: int, out: Tensor
                       ) -> State:
        """Single-state cells: the kernel's output at ``capture`` is the state."""
        return (out[capture].detach(),)

    def forward(self, x: Tensor, state: State | Tensor | None = None) -> Any:
        """One step ``[B, I]`` like ``torch.nn.LSTMCell``: LSTM returns ``(h, c)``, others ``h``."""
        if isinstance(state, Tensor):
            state = (state,)
        _, new = self.forward_seq(x.unsqueeze(0), state)
        return new if self.n_state == 2 else new[0]

    def zero_state(self, like: Tensor) -> State:
        """An explicit all-zero state for the batch of ``like`` ``[T, B, I]`` (its dtype)."""
        z = like.new_zeros(like.shape[1], self.hidden_size)
        return tuple(z.clone() for _ in range(self.n_state))

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, norm={self.method.name}"
                f"{', fused' if self.fused else ''}")


class LSTMCell(RecurrentCell):
    """LSTM with ``N_x``, ``N_h`` over ``4H`` jointly and ``N_c`` over ``H``."""

    gates = 4
    n_state = 2
    kernel = lstm_window

    def _build_sites(self) -> None:
        super()._build_sites()
        self.nc = self.method.site("c", self.hidden_size, bias=True)

    def _forget_slice(self) -> slice:
        return slice(self.hidden_size, 2 * self.hidden_size)

    def forward_window(self, x: Tensor, state: State | None = None, t0: int = 0,
                       capture: int | None = None) -> tuple[Tensor, State, State | None]:
        """As ``RecurrentCell.forward_window``; ``layer``/``streaming`` run the fast kernel
        (``models.fast.lstm_kernel``)."""
        fast = lstm_kernel.try_window(self, x, state, t0, capture)
        return fast if fast is not None else super().forward_window(x, state, t0, capture)

    def step(self, gx: Tensor, state: State | None, t: int) -> State:
        i, f, g, o = self._summed(gx, state, t).chunk(4, -1)
        c = torch.sigmoid(i) * torch.tanh(g)
        if state is not None:
            c = c + torch.sigmoid(f) * state[1]
        cn = self.nc(c, t) if self.nc is not None else c
        return torch.sigmoid(o) * torch.tanh(cn), c

    def _fused_capture(self, x: Tensor, state: State | None, capture: int, out: Tensor
                       ) -> State:
        """The kernel does not return inner cell states: replay the first steps, no grad."""
        h, c = state if state is not None else self.zero_state(x)
        with torch.no_grad():
            for i in range(capture + 1):
                h, c = torch._VF.lstm_cell(x[i], (h, c), self.lx.weight, self.lh.weight,
                                           self.bias, self._zeros)
        return h, c

    def _fused(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        if state is None:
            state = self.zero_state(x)
        hx = (state[0].unsqueeze(0), state[1].unsqueeze(0))
        params = [self.lx.weight, self.lh.weight, self.bias, self._zeros]
        out, h, c = torch.lstm(x, hx, params, True, 1, 0.0, self.training, False, False)
        return out, (h[0], c[0])


class GRUCell(RecurrentCell):
    """GRU with separate sites for the ``rz`` (2H) and ``n`` (H) terms of ``x`` and ``h``."""

    gates = 3
    kernel = gru_kernel

    def __init__(self, input_size: int, hidden_size: int, norm: NormLike = "none") -> None:
        super().__init__(input_size, hidden_size, norm)
        self.bias_hn = nn.Parameter(torch.zeros(hidden_size))

    def _build_sites(self) -> None:
        h, m = self.hidden_size, self.method
        self.nx = self.nh = self.npre = None
        self.nx_rz, self.nx_n = m.site("x", 2 * h), m.site("x", h)
        self.nh_rz, self.nh_n = m.site("h", 2 * h), m.site("h", h)
        self.npre_rz, self.npre_n = m.site("pre", 2 * h, groups=2), m.site("pre", h)

    def input_term(self, x: Tensor, t0: int = 0) -> Tensor:
        h = self.hidden_size
        ax = xsite.linear(self.lx, x)
        if self.nx_rz is None and self.nx_n is None:  # the same values without a split and cat
            return ax + self.bias
        rz, n = ax[..., :2 * h], ax[..., 2 * h:]
        if self.nx_rz is not None:
            rz = xsite.forward_seq(self.nx_rz, rz, t0)
        if self.nx_n is not None:
            n = xsite.forward_seq(self.nx_n, n, t0)
        return torch.cat([rz, n], -1) + self.bias

    def step(self, gx: Tensor, state: State | None, t: int) -> State:
        h = self.hidden_size
        gx_rz, gx_n = gx[:, :2 * h], gx[:, 2 * h:]
        if state is None:
            rz_pre, hn = gx_rz, self.bias_hn
        else:
            ah = self.lh(state[0])
            ah_rz, ah_n = ah[:, :2 * h], ah[:, 2 * h:]
            rz_pre = gx_rz + (self.nh_rz(ah_rz, t) if self.nh_rz is not None else ah_rz)
            hn = (self.nh_n(ah_n, t) if self.nh_n is not None else ah_n) + self.bias_hn
        if self.npre_rz is not None:
            rz_pre = self.npre_rz(rz_pre, t)
        r, z = torch.sigmoid(rz_pre).chunk(2, -1)
        n_pre = gx_n + r * hn
        if self.npre_n is not None:
            n_pre = self.npre_n(n_pre, t)
        n = torch.tanh(n_pre)
        new = n - z * n if state is None else n + z * (state[0] - n)
        return (new,)

    def _fused(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        """PyTorch's kernel, where ``gru_kernel`` does not apply (other dtypes, CUDA)."""
        h0 = state[0] if state is not None else self.zero_state(x)[0]
        b_hh = torch.cat([self._zeros[:2 * self.hidden_size], self.bias_hn])
        params = [self.lx.weight, self.lh.weight, self.bias, b_hh]
        out, h = torch.gru(x, h0.unsqueeze(0), params, True, 1, 0.0, self.training, False, False)
        return out, (h[0],)


class RNNCell(RecurrentCell):
    """Elman RNN with a ``tanh`` non-linearity."""

    gates = 1
    kernel = rnn_kernel

    def step(self, gx: Tensor, state: State | None, t: int) -> State:
        return (torch.tanh(self._summed(gx, state, t)),)

    def _fused(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        h0 = state[0] if state is not None else self.zero_state(x)[0]
        params = [self.lx.weight, self.lh.weight, self.bias, self._zeros]
        out, h = torch.rnn_tanh(x, h0.unsqueeze(0), params, True, 1, 0.0, self.training, False,
                                False)
        return out, (h[0],)


CellName = Literal["lstm", "gru", "rnn"]
CELLS: dict[str, type[RecurrentCell]] = {"lstm": LSTMCell, "gru": GRUCell, "rnn": RNNCell}


class RecurrentStack(nn.Module):
    """``num_layers`` cells of one kind and one method; layer ``l > 0`` reads layer ``l − 1``.

    The state is a tuple of ``[num_layers, B, H]`` tensors (``(h, c)`` for LSTM, ``(h,)``
    otherwise), or ``None`` for the zero initial state.

    Examples
    --------
    >>> import torch
    >>> from models import RecurrentStack, notify_optimizer_step
    >>> _ = torch.manual_seed(0)
    >>> net = RecurrentStack("lstm", input_size=3, hidden_size=4, num_layers=2,
    ...                      norm={"method": "streaming", "preset": "online"})
    >>> out, (h, c) = net(torch.randn(5, 2, 3))  # a window [T, B, I] from a zero state
    >>> out.shape, h.shape, c.shape
    (torch.Size([5, 2, 4]), torch.Size([2, 2, 4]), torch.Size([2, 2, 4]))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> out[-1].pow(2).sum().backward()
    >>> opt.step()
    >>> notify_optimizer_step(net)  # sites told: each folds its memories at its next call
    6
    >>> out, state = net(torch.randn(3, 2, 3), (h.detach(), c.detach()))  # carry the state on
    >>> out.shape
    torch.Size([3, 2, 4])
    """

    def __init__(self, cell: CellName, input_size: int, hidden_size: int, num_layers: int = 1,
                 norm: NormLike = "none") -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        if num_layers <= 0:
            raise ValueError(f"num_layers must be greater than zero, got {num_layers}")
        params = norm.params if isinstance(norm, NormMethod) else norms.parse(norm)
        self.cell_name, self.num_layers, self.hidden_size = cell, num_layers, hidden_size
        self.layers = nn.ModuleList(
            CELLS[cell](input_size if k == 0 else hidden_size, hidden_size, params)
            for k in range(num_layers))
        self.n_state: int = self.layers[0].n_state  # tensors per layer in the recurrent state

    def run(self, x: Tensor, state: State | None = None, t0: int = 0,
            capture: int | None = None) -> tuple[Tensor, State, State | None]:
        """Run a window ``[T, B, I]``: top-layer outputs, final state, state after ``capture``."""
        finals: list[State] = []
        caps: list[State | None] = []
        out = x
        for k, layer in enumerate(self.layers):
            layer_state = None if state is None else tuple(s[k] for s in state)
            out, last, cap = layer.forward_window(out, layer_state, t0, capture)
            finals.append(last)
            caps.append(cap)
        new = tuple(torch.stack([f[j] for f in finals]) for j in range(self.n_state))
        captured = None
        if capture is not None:
            captured = tuple(torch.stack([c[j] for c in caps if c is not None])
                             for j in range(self.n_state))
        return out, new, captured

    def forward(self, x: Tensor, state: State | None = None, t0: int = 0
                ) -> tuple[Tensor, State]:
        """Run a window ``[T, B, I]``; returns the top layer's outputs and the new state."""
        out, new, _ = self.run(x, state, t0)
        return out, new
