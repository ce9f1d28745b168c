"""GAN samples with a tiny deterministic fake generator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dfm_data.batch import MaskedPatchBatch, collate
from dfm_data.gan_samples import GanSamplesConfig, MappingSynthesisGenerator


class FakeGenerator:
    """mapping: fixed linear map to 2 identical ws; synthesis: fixed sinusoid basis at 32×32."""

    z_dim = 6

    def __init__(self, with_w_avg: bool = True) -> None:
        g = torch.Generator().manual_seed(0)
        self.A = torch.randn(6, 4, generator=g)
        self.basis = torch.randn(4, 3, 32, 32, generator=g).cumsum(-1).cumsum(-2) / 50
        if with_w_avg:
            self.w_avg = torch.tensor([0.5, -0.25, 0.0, 1.0])

    def mapping(self, z):
        return (z @ self.A).unsqueeze(1).repeat(1, 2, 1)  # (B, 2, 4)

    def synthesis(self, w):
        return torch.tanh(torch.einsum("bk,kchw->bchw", w[:, 0], self.basis))


def test_protocol():
    assert isinstance(FakeGenerator(), MappingSynthesisGenerator)
    with pytest.raises(TypeError, match="mapping"):
        GanSamplesConfig().build(object())


def test_item_shapes_and_determinism():
    ds = GanSamplesConfig(num_samples=5, image_size=16).build(FakeGenerator())
    b = ds[3]
    assert isinstance(b, MaskedPatchBatch)
    assert (
        b.target.shape == (1, 3, 16, 16)
        and b.mask.shape == (1, 1, 16, 16)
        and b.w.shape == (1, 2, 4)
    )
    again = GanSamplesConfig(num_samples=5, image_size=16).build(FakeGenerator())[3]
    torch.testing.assert_close(b.target, again.target)
    torch.testing.assert_close(b.mask, again.mask)
    assert not torch.equal(ds[2].target, b.target)
    assert collate([ds[0], ds[1]]).w.shape == (2, 2, 4)
    with pytest.raises(IndexError):
        ds[5]


@pytest.mark.parametrize("psi", [0.0, 0.5, 1.0])
def test_truncation(psi):
    gen = FakeGenerator()
    ds = GanSamplesConfig(num_samples=3, image_size=16, truncation_psi=psi).build(gen)
    full = GanSamplesConfig(num_samples=3, image_size=16, truncation_psi=1.0).build(gen)
    w, w_raw = ds[1].w, full[1].w
    torch.testing.assert_close(w, gen.w_avg + psi * (w_raw - gen.w_avg))


def test_estimated_w_avg_is_the_mean_latent():
    gen = FakeGenerator(with_w_avg=False)
    ds = GanSamplesConfig(num_samples=3, w_avg_samples=4000).build(gen)
    # The mapping is linear with zero-mean z, so the true average latent is 0.
    assert ds.w_avg().abs().max() < 4 * 3 / math.sqrt(4000)


def test_target_is_downsampled_render_and_context_is_the_patch():
    gen = FakeGenerator()
    ds = GanSamplesConfig(
        num_samples=4, image_size=16, patch_min_fraction=0.25, patch_max_fraction=0.5
    ).build(gen)
    for i in range(4):
        b = ds[i]
        ref = F.avg_pool2d(gen.synthesis(b.w), 2)
        torch.testing.assert_close(b.target, ref.clamp(-1, 1))
        rows = b.mask[0, 0].any(1).nonzero().flatten()
        cols = b.mask[0, 0].any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert 4 <= h <= 8 and 4 <= w <= 8
        assert b.mask.sum() == h * w  # one rectangle
        torch.testing.assert_close(b.context, b.target * b.mask)
