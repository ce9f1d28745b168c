"""Operators against independent references: per-sample convolutions, scipy FIR filtering."""

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from dfm_gan.ops import (
    bias_act,
    conv2d_resample,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upfirdn2d,
    upsample2d,
)


def _rng(seed=0):
    return torch.Generator().manual_seed(seed)


def test_setup_filter_is_the_normalised_outer_product():
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4)
    assert torch.allclose(f.sum(), torch.tensor(1.0))
    assert sorted(set((f * 64).round().int().flatten().tolist())) == [1, 3, 9]


def test_upsample2d_matches_scipy_upfirdn():
    # scipy.signal.upfirdn: zero insertion then full convolution along one axis. The 2-D
    # filter is separable, so two 1-D passes (gain 2 each) give the reference.
    x = torch.randn(2, 3, 5, 6, generator=_rng(), dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    ours = upsample2d(x, f).numpy()
    taps = np.array([1, 3, 3, 1], dtype=np.float64) / 8 * 2
    ref = scipy.signal.upfirdn(taps, x.numpy(), up=2, axis=-1)
    ref = scipy.signal.upfirdn(taps, ref, up=2, axis=-2)
    # Our padding (2, 1) around the 2H zero-inserted grid keeps full-convolution rows 1..2H.
    ref = ref[..., 1 : 1 + 10, 1 : 1 + 12]
    assert ours.shape == (2, 3, 10, 12)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_upfirdn2d_matches_direct_2d_convolution():
    x = torch.randn(1, 2, 6, 6, generator=_rng(1), dtype=torch.float64)
    f = torch.rand(3, 4, generator=_rng(2), dtype=torch.float64)
    ours = upfirdn2d(x, f, padding=(2, 1, 0, 3), gain=1.5)[0].numpy()
    for c in range(2):
        padded = np.pad(x[0, c].numpy(), ((0, 3), (2, 1)))
        ref = scipy.signal.convolve2d(padded, f.numpy() * 1.5, mode="valid")
        np.testing.assert_allclose(ours[c], ref, atol=1e-12)


def test_upsample2d_keeps_a_constant_image_constant_away_from_the_border():
    x = torch.full((1, 1, 6, 6), 0.7, dtype=torch.float64)
    y = upsample2d(x, setup_filter([1, 3, 3, 1]).double())
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.tensor(0.7, dtype=torch.float64))


def _transposed_conv_reference(x, w, stride):
    """Brute-force transposed convolution: every input pixel scatters a weighted kernel."""
    b, _, h, wd = x.shape
    cout, _, kh, kw = w.shape
    out = torch.zeros(b, cout, (h - 1) * stride + kh, (wd - 1) * stride + kw, dtype=x.dtype)
    for a in range(kh):
        for c in range(kw):
            contrib = torch.einsum("bihw,oi->bohw", x, w[:, :, a, c])
            out[:, :, a : a + stride * h : stride, c : c + stride * wd : stride] += contrib
    return out


def test_conv2d_resample_up2_matches_transposed_conv_then_fir():
    x = torch.randn(2, 3, 4, 4, generator=_rng(3), dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, generator=_rng(4), dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    ours = conv2d_resample(x, w, f=f, up=2, padding=1)
    ref = upfirdn2d(_transposed_conv_reference(x, w, 2), f, padding=(1, 1, 1, 1), gain=4)
    assert ours.shape == (2, 5, 8, 8)
    torch.testing.assert_close(ours, ref)


def _modulated_reference(x, weight, styles, demodulate, up=1, f=None):
    """Per-sample loop: build sample i's weights, then an ordinary (transposed) convolution."""
    outs = []
    for i in range(x.shape[0]):
        wi = weight * styles[i][None, :, None, None]  # eq. 1
        if demodulate:  # eq. 3
            wi = wi / torch.sqrt(wi.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        if up == 1:
            outs.append(F.conv2d(x[i : i + 1], wi, padding=weight.shape[-1] // 2))
        else:
            y = _transposed_conv_reference(x[i : i + 1], wi, 2)
            outs.append(upfirdn2d(y, f, padding=(1, 1, 1, 1), gain=4))
    return torch.cat(outs)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv_matches_a_per_sample_convolution(fused, demodulate, up):
    x = torch.randn(3, 4, 5, 5, generator=_rng(5), dtype=torch.float64)
    weight = torch.randn(6, 4, 3, 3, generator=_rng(6), dtype=torch.float64)
    styles = torch.rand(3, 4, generator=_rng(7), dtype=torch.float64) * 2 + 0.1
    f = setup_filter([1, 3, 3, 1]).double()
    ours = modulated_conv2d(
        x, weight, styles, up=up, padding=1, resample_filter=f, demodulate=demodulate, fused=fused
    )
    ref = _modulated_reference(x, weight, styles, demodulate, up=up, f=f)
    torch.testing.assert_close(ours, ref)


def test_modulated_conv_adds_noise_after_demodulation():
    x = torch.randn(2, 3, 4, 4, generator=_rng(8), dtype=torch.float64)
    weight = torch.randn(2, 3, 3, 3, generator=_rng(9), dtype=torch.float64)
    styles = torch.ones(2, 3, dtype=torch.float64)
    noise = torch.randn(2, 1, 4, 4, generator=_rng(10), dtype=torch.float64)
    base = modulated_conv2d(x, weight, styles, padding=1)
    torch.testing.assert_close(
        modulated_conv2d(x, weight, styles, padding=1, noise=noise), base + noise
    )


def test_demodulation_gives_unit_output_variance_for_unit_variance_input():
    g = _rng(11)
    x = torch.randn(4, 64, 32, 32, generator=g)
    weight = torch.randn(16, 64, 3, 3, generator=g)
    styles = torch.rand(4, 64, generator=g) * 3 + 0.05  # far from unit styles on purpose
    y = modulated_conv2d(x, weight, styles, padding=1)
    # Each output is sum_k w'_k x_k with sum_k w'^2 = 1 and i.i.d. unit-variance x: variance 1
    # (interior pixels only: zero padding lowers the border variance).
    var = y[..., 1:-1, 1:-1].var(dim=[2, 3])  # (B, C_out)
    assert torch.allclose(var.mean(), torch.tensor(1.0), atol=0.03)
    assert float((var - 1).abs().max()) < 0.15
    # Without demodulation the variance follows the style scale instead.
    y_raw = modulated_conv2d(x, weight, styles, padding=1, demodulate=False)
    assert float(y_raw.var()) > 5


def test_normalize_2nd_moment_gives_unit_mean_square_and_is_scale_invariant():
    z = torch.randn(5, 16, generator=_rng(12), dtype=torch.float64)
    n = normalize_2nd_moment(z)
    torch.testing.assert_close(n.square().mean(dim=1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(normalize_2nd_moment(7.5 * z), n)


def test_bias_act_lrelu_gain_and_clamp():
    x = torch.tensor([[-2.0, 0.5, 300.0]]).reshape(1, 3, 1, 1)
    b = torch.tensor([1.0, 0.0, 0.0])
    y = bias_act(x, b, act="lrelu", clamp=256).flatten()
    expected = torch.tensor([-1.0 * 0.2 * 2**0.5, 0.5 * 2**0.5, 256.0])
    torch.testing.assert_close(y, expected)
    with pytest.raises(ValueError, match="act"):
        bias_act(x, act="swish")
