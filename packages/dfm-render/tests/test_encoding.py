"""Positional encoding against a per-coordinate loop of the closed form."""

import math

import pytest
import torch

from dfm_render.encoding import PositionalEncoding


def closed_form(x: list[float], num_freqs: int, factor: float, include_input: bool) -> list[float]:
    out = list(x) if include_input else []
    for k in range(num_freqs):
        f = factor * 2**k
        out += [math.sin(f * c) for c in x]
        out += [math.cos(f * c) for c in x]
    return out


@pytest.mark.parametrize(
    ("in_dim", "num_freqs", "factor", "include_input"),
    [(3, 6, 1.5, True), (2, 4, 1.0, False), (1, 0, 1.5, True)],
)
def test_matches_the_closed_form(in_dim, num_freqs, factor, include_input):
    enc = PositionalEncoding(in_dim, num_freqs, factor, include_input)
    x = torch.randn(2, 5, in_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = enc(x)
    assert y.shape == (2, 5, enc.out_dim) and y.dtype == torch.float64
    assert enc.out_dim == in_dim * (include_input + 2 * num_freqs)
    for idx in range(10):
        point = x.reshape(10, in_dim)[idx].tolist()
        expected = torch.tensor(
            closed_form(point, num_freqs, factor, include_input), dtype=torch.float64
        )
        torch.testing.assert_close(y.reshape(10, -1)[idx], expected, rtol=1e-12, atol=1e-12)


def test_defaults_are_pixelnerfs_39_dims_and_add_no_state():
    enc = PositionalEncoding()
    assert enc.out_dim == 39
    assert enc(torch.zeros(4, 3)).shape == (4, 39)
    assert enc.state_dict() == {}
    assert "out_dim=39" in repr(enc)


def test_float32_gradients_and_errors():
    enc = PositionalEncoding(3, 2)
    x = torch.randn(7, 3, requires_grad=True)
    y = enc(x)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="in_dim = 3"):
        enc(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="num_freqs"):
        PositionalEncoding(3, -1)
