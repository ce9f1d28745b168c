"""Inversion metrics against closed forms; regressor baseline; saving/loading models."""

import math

import pytest
import torch

from dfm_core.diffusion import Context
from dfm_gan.inversion import inversion_config, load_inversion_model, save_inversion_model
from dfm_gan.networks import generator_config
from dfm_gan.quality import (
    LatentRegressor,
    _scores,
    evaluate_inversion,
    held_out_contexts,
    score_inversions,
)

REDUCED = {
    "dit_preset": "DiT-Tiny",
    "dit_overrides": {"patch_size": 2},
    "feature_channels": 16,
    "latent_stats_samples": 64,
    "train_resolution": 8,
}


def _generator():
    torch.manual_seed(0)
    g = generator_config("tiny", img_resolution=16).build().eval()
    with torch.no_grad():
        g.mapping.w_avg.normal_()
    return g


def test_scores_match_closed_forms():
    n, k, r = 2, 3, 8
    image = torch.zeros(n, 3, r, r)  # 0.5 on the [0, 1] scale
    mask = torch.zeros(n, 1, r, r)
    mask[..., :4, :4] = 1
    # Completion j: +0.2 * j everywhere ([-1, 1] scale) = +0.1 * j on [0, 1].
    offsets = torch.tensor([0.2, 0.4, 0.6])
    completions = offsets.reshape(1, k, 1, 1, 1).expand(n, k, 3, r, r)
    w = torch.zeros(n, 4)
    latents = torch.ones(n, k, 4) * 2
    psnr, diversity, err_out, latent_rms = _scores(completions, latents, image, mask, w)
    expected_psnr = sum(10 * math.log10(1 / (0.1 * j) ** 2) for j in (1, 2, 3)) / 3
    assert psnr == pytest.approx(expected_psnr)
    assert diversity == pytest.approx((0.1 + 0.2 + 0.1) / 3)  # pairs (1,2), (1,3), (2,3)
    assert err_out == pytest.approx(0.2)
    assert latent_rms == pytest.approx(2.0)


def test_held_out_contexts_use_quarter_area_patches():
    image, mask, w = held_out_contexts(_generator(), num=3, resolution=8, patch_fraction=0.5)
    assert image.shape == (3, 3, 8, 8) and w.shape == (3, 8)
    assert torch.equal(mask.sum(dim=(1, 2, 3)), torch.full((3,), 16.0))  # 4x4 of 8x8 = 25 %


def test_regressor_is_deterministic_and_evaluation_runs():
    g = _generator()
    model = inversion_config("gan-demo", **REDUCED).build(generator=g)
    regressor = LatentRegressor(model)
    image, mask, _ = held_out_contexts(g, num=2, resolution=8)
    ctx = Context(observation=torch.cat([image * mask, mask], 1))
    torch.testing.assert_close(regressor.predict(ctx), regressor.predict(ctx))
    from dfm_gan.inversion import make_inversion_batch

    terms = regressor(
        make_inversion_batch(image, mask, full=g.synthesis(g.mapping(torch.randn(2, 8))))
    )
    assert set(terms) == {"loss", "target", "novel"}
    q = evaluate_inversion(regressor, g, resolution=8, num_contexts=2, num_samples=3)
    assert q.diversity_outside == 0.0  # deterministic: identical completions
    q2 = evaluate_inversion(model, g, resolution=8, num_contexts=2, num_samples=2, steps=2)
    assert math.isfinite(q2.psnr_patch_db) and q2.latent_rms_chance > 0


def test_score_inversions_adds_the_chance_level_and_counts():
    n, k, r = 3, 2, 4
    gen = torch.Generator().manual_seed(0)
    completions = torch.rand(n, k, 3, r, r, generator=gen) * 2 - 1
    image = torch.rand(n, 3, r, r, generator=gen) * 2 - 1
    mask = torch.zeros(n, 1, r, r)
    mask[..., 1:3, 1:3] = 1
    w = torch.randn(n, 5, generator=gen)
    latents = torch.randn(n, k, 5, generator=gen)[:, :, None].expand(-1, -1, 4, -1)
    q = score_inversions(completions, latents, image, mask, w)
    psnr, diversity, err_out, latent_rms = _scores(completions, latents[:, :, 0], image, mask, w)
    assert (q.psnr_patch_db, q.diversity_outside, q.error_outside, q.latent_rms) == (
        psnr, diversity, err_out, latent_rms,
    )  # fmt: skip
    # Chance: mean over i of the RMS distance between w_i and w_{i-1} (cyclically).
    pairs = [(w[i] - w[i - 1]).pow(2).mean().sqrt() for i in range(n)]
    assert q.latent_rms_chance == pytest.approx(float(sum(pairs) / n), rel=1e-6)
    assert (q.num_contexts, q.num_samples) == (n, k)


def test_inversion_model_save_load_round_trip(tmp_path):
    g = _generator()
    cfg = inversion_config("gan-demo", **REDUCED)
    model = cfg.build(generator=g)
    with torch.no_grad():
        model.predictor.head.bias.normal_()
    path = save_inversion_model(model, cfg, tmp_path / "inv.safetensors", steps=3)
    loaded, loaded_cfg = load_inversion_model(path, generator=g)
    assert loaded_cfg == cfg
    for k, v in model.predictor.state_dict().items():
        assert torch.equal(loaded.predictor.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError, match="absent"):
        load_inversion_model(tmp_path / "absent.safetensors")
