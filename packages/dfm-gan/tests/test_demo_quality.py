"""Slow quality check of the shipped demo (issue section 5): `nox -s slow`.

Held-out generator samples, a visible square patch of 25 % of the image, K = 8 completions,
50 DDIM steps; the DFM model, plain and with reconstruction guidance towards the patch (the
gan-demo preset's sampling), against the deterministic latent regressor trained on the same
data. Measured figures are in ``src/dfm_gan/assets/MODEL_CARD.md``.
"""

import json

import pytest
import torch

from dfm_gan.inversion import DEFAULT_DEMO_WEIGHTS, load_inversion_model
from dfm_gan.quality import LatentRegressor, evaluate_inversion
from dfm_gan.weights import load_generator

ASSETS = DEFAULT_DEMO_WEIGHTS.parent
# The gan-demo preset's reconstruction-guidance weight (apps/src/dfm_apps/configs/gan-demo.yaml).
RECONSTRUCTION_WEIGHT = 1.0


@pytest.fixture(scope="module")
def scores():
    torch.set_num_threads(1)
    generator = load_generator(DEFAULT_DEMO_WEIGHTS)
    model, cfg = load_inversion_model(ASSETS / "inversion.safetensors", generator=generator)
    holder, _ = load_inversion_model(ASSETS / "regressor.safetensors", generator=generator)
    kwargs = dict(
        resolution=cfg.train_resolution, num_contexts=16, num_samples=8, psi=cfg.truncation_psi
    )
    dfm = evaluate_inversion(model, generator, steps=50, **kwargs)
    guided = evaluate_inversion(
        model, generator, steps=50, reconstruction_weight=RECONSTRUCTION_WEIGHT, **kwargs
    )
    base = evaluate_inversion(LatentRegressor(holder), generator, **kwargs)
    print(
        json.dumps(
            {
                "dfm": dfm.as_dict(),
                f"dfm_reconstruction_{RECONSTRUCTION_WEIGHT:g}": guided.as_dict(),
                "regressor": base.as_dict(),
            }
        )
    )
    return dfm, guided, base


@pytest.mark.slow
def test_demo_samples_are_diverse_and_near_the_true_latent(scores):
    for dfm in scores[:2]:
        base = scores[2]
        # A stochastic model: completions differ outside the patch; the regressor's cannot.
        assert dfm.diversity_outside > 0.01
        assert base.diversity_outside < 0.5 * dfm.diversity_outside
        # Samples land nearer the true latent than an unrelated latent of the same distribution.
        assert dfm.latent_rms < 0.85 * dfm.latent_rms_chance
        assert dfm.psnr_patch_db > 20.0
    plain, guided, _ = scores
    # Guidance pulls the samples onto the patch: closer there and outside it (the patch
    # says something about the rest of the face), at some cost in diversity.
    assert guided.psnr_patch_db > plain.psnr_patch_db + 0.5
    assert guided.error_outside < plain.error_outside


@pytest.mark.slow
def test_demo_patch_psnr_reaches_the_issue_target(scores):
    """Issue 10's 25 dB in the patch, with the preset's sampling (reconstruction guidance);
    the plain sampler measured 24.9 dB here (MODEL_CARD.md) and is reported, not asserted."""
    _, guided, _ = scores
    assert guided.psnr_patch_db >= 25.0
