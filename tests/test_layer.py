"""Layer Normalization against nn.LayerNorm and the invariances of Ba et al. (2016)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import LSTMCell, RecurrentStack
from models.norms.layer import LayerNormSite


def test_site_equals_torch_layer_norm_forward_and_backward() -> None:
    site = LayerNormSite(12, bias=True, eps=1e-5)
    ref = nn.LayerNorm(12, eps=1e-5)
    with torch.no_grad():
        site.weight.uniform_(0.5, 1.5)
        site.bias.uniform_(-1, 1)
        ref.weight.copy_(site.weight)
        ref.bias.copy_(site.bias)
    a = torch.randn(4, 12, requires_grad=True)
    a_ref = a.detach().clone().requires_grad_(True)
    torch.testing.assert_close(site(a, 0), ref(a_ref))
    site(a, 0).pow(2).sum().backward()
    ref(a_ref).pow(2).sum().backward()
    torch.testing.assert_close(a.grad, a_ref.grad)
    torch.testing.assert_close(site.weight.grad, ref.weight.grad)


@pytest.mark.parametrize(("k", "m"), [(3.0, 0.0), (0.25, 2.0), (7.0, -5.0)])
def test_site_is_invariant_to_per_sample_rescaling_and_recentering(k: float, m: float) -> None:
    site = LayerNormSite(16, bias=False, eps=1e-12)  # the invariance is exact as ε → 0
    a = torch.randn(3, 16, dtype=torch.float64) * 4
    scale = torch.tensor([[k], [2 * k], [k / 2]], dtype=torch.float64)
    shift = torch.tensor([[m], [-m], [3 * m]], dtype=torch.float64)
    site.double()
    torch.testing.assert_close(site(a * scale + shift, 0), site(a, 0), atol=1e-9, rtol=1e-9)


LN_EXACT = {"method": "layer", "eps": 1e-12}  # ε → 0: the cell's invariances become exact


def _copy_cell(src: LSTMCell) -> LSTMCell:
    dst = LSTMCell(src.input_size, src.hidden_size, LN_EXACT).double()
    dst.load_state_dict(src.state_dict())
    return dst


def test_lstm_cell_invariant_to_scaling_input_and_input_weights() -> None:
    cell = LSTMCell(5, 8, LN_EXACT).double()
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    out, _ = cell.forward_seq(x)
    scaled = _copy_cell(cell)
    with torch.no_grad():
        scaled.lx.weight.mul_(4.0)
    out_w, _ = scaled.forward_seq(x)
    out_x, _ = cell.forward_seq(x * 3.0)
    torch.testing.assert_close(out_w, out, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out_x, out, atol=1e-9, rtol=1e-9)


def test_lstm_cell_invariant_to_recentering_input_weight_rows() -> None:
    cell = LSTMCell(5, 8, LN_EXACT).double()
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    out, _ = cell.forward_seq(x)
    shifted = _copy_cell(cell)
    gamma = torch.randn(5, dtype=torch.float64)
    with torch.no_grad():  # W_x + 1 γᵀ adds the same γ·x to every unit of W_x x
        shifted.lx.weight.add_(gamma)
    torch.testing.assert_close(shifted.forward_seq(x)[0], out, atol=1e-9, rtol=1e-9)


def test_lstm_cell_without_normalization_is_not_invariant() -> None:
    """The invariance above is a property of LN, not of the test: ``none`` breaks it."""
    cell = LSTMCell(5, 8, "none").double()
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    assert not torch.allclose(cell.forward_seq(x * 3.0)[0], cell.forward_seq(x)[0], atol=1e-3)


def test_layer_norm_stack_has_no_state_beyond_parameters() -> None:
    net = RecurrentStack("lstm", 4, 6, 2, "layer")
    assert set(net.state_dict()) == {name for name, _ in net.named_parameters()}
