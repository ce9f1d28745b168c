"""Scoring of sampled motions and the weights round trip, against brute force and scipy."""

from __future__ import annotations

import math

import pytest
import torch

from dfm_flow.evaluation import chi2_uniform, score_motions, sprite_masks, sprite_velocities
from dfm_flow.motion import motion_preset
from dfm_flow.pretrained import load_motion_demo, read_metadata, save_weights

SET = torch.tensor(
    [
        [2.0, 0.0],
        [0.0, 2.0],
        [-2.0, 0.0],
        [0.0, -2.0],
        [4.0, 0.0],
        [0.0, 4.0],
        [-4.0, 0.0],
        [0.0, -4.0],
    ]
)


def test_sprite_masks_keep_interior_pixels_where_the_sprite_is_on_top():
    clip = {
        "sprites": [
            {"shape": "disc", "radius": 3.0, "centre_im1": [5.0, 5.0]},
            {"shape": "square", "radius": 2.0, "centre_im1": [8.0, 5.0]},
        ]
    }
    masks = sprite_masks(clip, 10, 12, margin=0.5)
    for i in range(10):
        for j in range(12):
            x, y = j + 0.5, i + 0.5
            in_disc = (x - 5) ** 2 + (y - 5) ** 2 <= 2.5**2
            in_square_full = abs(x - 8) <= 2 and abs(y - 5) <= 2
            in_square = abs(x - 8) <= 1.5 and abs(y - 5) <= 1.5
            assert bool(masks[0, i, j]) == (in_disc and not in_square_full)
            assert bool(masks[1, i, j]) == in_square


def test_sprite_velocities_are_medians_over_the_mask():
    flow = torch.zeros(2, 2, 4, 4)
    flow[0, 0] = torch.arange(16.0).view(4, 4)
    flow[1, 1] = -1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, :3] = True  # values 0, 1, 2 -> median 1
    out = sprite_velocities(flow, masks)
    assert out.shape == (2, 2, 2)
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out[0, 1], torch.tensor([0.0, -1.0]))
    assert torch.isnan(out[1]).all()


def test_chi2_matches_scipy():
    from scipy import stats

    counts = torch.tensor([12, 7, 9, 15, 3, 8, 10, 11])
    statistic, p = chi2_uniform(counts)
    expected = stats.chisquare(counts.numpy())
    assert math.isclose(statistic, expected.statistic, rel_tol=1e-12)
    assert math.isclose(p, expected.pvalue, rel_tol=1e-9)


def test_scores_of_on_set_samples_and_of_blends():
    truth = SET[[0, 1, 5]]  # three sprites
    # Each sprite: 4 samples, exactly on members 0, 1, 2, 3 (plus tiny noise).
    on = SET[:4].expand(3, 4, 2) + 0.01
    scores = score_motions(on, truth, SET)
    assert scores.fraction_on_set == 1.0 and scores.mean_distinct == 4.0
    assert scores.counts == (3, 3, 3, 3, 0, 0, 0, 0)
    # Best of K: sprite 0 and 1 have their truth among the samples (EPE 0.01 * sqrt 2);
    # sprite 2 (truth (0, 4)) is nearest to (0, 2): distance sqrt(0.01^2 + 1.99^2).
    best = (2 * math.sqrt(2 * 0.01**2) + math.hypot(0.01, 1.99)) / 3
    assert math.isclose(scores.best_of_k_epe, best, rel_tol=1e-6)  # float32 input
    # The mean of opposite directions (a deterministic average) is off the set.
    blend = torch.zeros(3, 4, 2) + torch.tensor([0.9, 0.9])
    blended = score_motions(blend, truth, SET)
    assert blended.fraction_on_set == 0.0 and blended.mean_distinct == 0.0
    assert math.isnan(blended.chi2)
    with pytest.raises(ValueError, match=r"^truth: expected \(3, 2\)"):
        score_motions(on, truth[:2], SET)


def test_weights_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(0)
    config = motion_preset("motion-demo", image_size_hw=(16, 16), depth=1).model
    model = config.build()
    with torch.no_grad():
        for p in model.predictor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = save_weights(
        model.predictor, config, tmp_path / "w.safetensors", dtype=torch.float32, steps="7"
    )
    assert read_metadata(path)["steps"] == "7"
    loaded = load_motion_demo("dfm", path=path)
    for (name, a), (_, b) in zip(
        model.predictor.state_dict().items(), loaded.predictor.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    regressor = load_motion_demo("regressor", path=path)
    assert regressor.predict(torch.zeros(1, 3, 16, 16)).flow.shape == (1, 2, 16, 16)
    with pytest.raises(ValueError, match=r"^kind: expected"):
        load_motion_demo("gan")
    with pytest.raises(FileNotFoundError, match=r"^path: no weights file"):
        load_motion_demo("dfm", path=tmp_path / "missing.safetensors")
