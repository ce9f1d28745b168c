"""Image metrics against closed forms, scikit-image, and hand-made stochastic cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dfm_apps.image_metrics import (
    FID_WEIGHTS_URL,
    LPIPS_BACKBONES,
    LPIPSMetric,
    MissingWeightsError,
    best_of_k_psnr,
    composite_on_background,
    fid,
    mode_coverage,
    nearest_mode,
    pairwise_diversity,
    psnr,
    ssim,
    ssim_map,
)


def rand_images(b: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(
        b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def skimage_ssim(a: np.ndarray, b: np.ndarray, data_range: float, full: bool = False):
    """Wang et al. 2004 settings in scikit-image (CHW images)."""
    return structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
        channel_axis=0,
        full=full,
    )


# --------------------------------------------------------------------------- PSNR


@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_psnr_closed_form_and_skimage(data_range: float) -> None:
    target = rand_images(3, 3, 8, 8, 0) * 0.5 * data_range
    delta = torch.tensor([0.1, 0.01, 0.3], dtype=torch.float64) * data_range
    pred = target + delta[:, None, None, None]
    expected = 20 * torch.log10(data_range / delta)  # MSE = delta^2
    torch.testing.assert_close(psnr(pred, target, data_range=data_range), expected)
    noisy = target + 0.05 * data_range * rand_images(3, 3, 8, 8, 1)
    ours = psnr(noisy, target, data_range=data_range)
    for i in range(3):
        ref = peak_signal_noise_ratio(target[i].numpy(), noisy[i].numpy(), data_range=data_range)
        assert ours[i].item() == pytest.approx(ref, rel=1e-12)
    assert torch.isinf(psnr(target, target)).all()


def test_masked_psnr_only_sees_the_mask() -> None:
    target = rand_images(2, 3, 8, 8, 2)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 2:5, 1:7] = True
    mask[1, :, :3] = True
    garbage = rand_images(2, 3, 8, 8, 20)
    pred = torch.where(mask[:, None], target + 0.2, garbage)
    # Inside each mask the error is exactly 0.2 whatever happens outside.
    torch.testing.assert_close(
        psnr(pred, target, mask=mask),
        torch.full((2,), 20 * math.log10(1 / 0.2), dtype=torch.float64),
    )
    # Brute force over masked pixels, (B, 1, H, W) mask form.
    noisy = target + 0.1 * rand_images(2, 3, 8, 8, 3)
    ours = psnr(noisy, target, mask=mask[:, None])
    for i in range(2):
        diffs = [
            float(noisy[i, c, y, x] - target[i, c, y, x]) ** 2
            for c in range(3)
            for y in range(8)
            for x in range(8)
            if mask[i, y, x]
        ]
        assert ours[i].item() == pytest.approx(-10 * math.log10(sum(diffs) / len(diffs)), rel=1e-12)


# --------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize(("data_range", "channels"), [(1.0, 3), (255.0, 1)])
def test_ssim_matches_skimage(data_range: float, channels: int) -> None:
    target = rand_images(3, channels, 20, 24, 4) * data_range
    pred = (0.7 * target + 0.3 * data_range * rand_images(3, channels, 20, 24, 5)).to(torch.float32)
    ours = ssim(pred, target.to(torch.float32), data_range=data_range)
    for i in range(3):
        ref = skimage_ssim(
            pred[i].double().numpy(), target[i].to(torch.float32).double().numpy(), data_range
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)
    torch.testing.assert_close(
        ssim(target, target, data_range=data_range), torch.ones(3, dtype=torch.float64)
    )


def test_masked_ssim_averages_the_skimage_map_over_the_mask() -> None:
    target = rand_images(2, 3, 16, 18, 6)
    pred = 0.5 * target + 0.5 * rand_images(2, 3, 16, 18, 7)
    mask = torch.zeros(2, 16, 18, dtype=torch.bool)
    mask[0, 3:12, 4:15] = True
    mask[1, 6:, :9] = True
    ours = ssim(pred, target, mask=mask)
    r = 5
    for i in range(2):
        _, full = skimage_ssim(pred[i].numpy(), target[i].numpy(), 1.0, full=True)  # (C, H, W)
        inner = full[:, r:-r, r:-r]
        keep = mask[i, r:-r, r:-r].numpy()
        assert ours[i].item() == pytest.approx(inner[:, keep].mean(), abs=1e-10)
    assert ssim_map(pred, target).shape == (2, 3, 6, 8)


def test_ssim_rejects_small_images_and_bad_masks() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="mask must have shape"):
        psnr(
            torch.rand(1, 3, 8, 8),
            torch.rand(1, 3, 8, 8),
            mask=torch.ones(1, 4, 4, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


def test_composite_on_background() -> None:
    images = rand_images(1, 3, 4, 4, 8)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = True
    out = composite_on_background(images, mask, background=1.0)
    assert torch.equal(out[0, :, 1, 2], images[0, :, 1, 2])
    assert (out[0][:, ~mask[0]] == 1.0).all()


# --------------------------------------------------------------------------- LPIPS


def test_lpips_missing_backbone_names_file_url_and_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    filename, url = LPIPS_BACKBONES["vgg"]
    with pytest.raises(MissingWeightsError) as info:
        LPIPSMetric("vgg")
    message = str(info.value)
    assert filename in message and url in message
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in message
    with pytest.raises(MissingWeightsError, match=r"alexnet-owt-7be5be79\.pth"):
        LPIPSMetric("alex", backbone_path=tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="net must be one of"):
        LPIPSMetric("squeezenet")


def test_lpips_loads_a_torchvision_backbone_file(tmp_path: Path) -> None:
    """A randomly initialised VGG16 `features` state dict, saved the way torchvision names it."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["D"])  # VGG16's conv trunk, keys "0.weight", "2.weight", ...
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = tmp_path / "vgg16-random.pth"
    torch.save(state, path)

    metric = LPIPSMetric("vgg", backbone_path=path)
    loaded = metric.model.net.state_dict()
    assert len(loaded) == len(state) == 26  # 13 conv layers x (weight, bias)
    for key, value in loaded.items():
        _, index, param = key.split(".")
        assert torch.equal(value, state[f"features.{index}.{param}"]), key

    x = rand_images(2, 3, 32, 32, 9).float()
    y = rand_images(2, 3, 32, 32, 10).float()
    d_xy, d_xx = metric(x, y), metric(x, x)
    assert d_xy.shape == (2,) and torch.isfinite(d_xy).all() and (d_xy > 0).all()
    torch.testing.assert_close(d_xx, torch.zeros(2), atol=1e-6, rtol=0)

    del state["features.28.bias"]
    torch.save(state, path)
    with pytest.raises(KeyError, match=r"features\.28\.bias"):
        LPIPSMetric("vgg", backbone_path=path)


# --------------------------------------------------------------------------- FID


def test_fid_missing_weights_error(tmp_path: Path) -> None:
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(MissingWeightsError) as info:
        fid(images, images, weights_path=tmp_path / "inception.pth")
    assert str(tmp_path / "inception.pth") in str(info.value) and FID_WEIGHTS_URL in str(info.value)


@pytest.mark.slow  # torch-fidelity's 2048x2048 eigendecomposition: ~1 min on a busy 2-core CPU
def test_fid_runs_with_a_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random Inception weights in torch-fidelity's layout: proves the loading path, not values."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as patch:
        # Build the network once without its weights, to save a random state dict of its layout.
        patch.setattr(
            "torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url",
            lambda *args, **kwargs: None,
        )
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / "inception-random.pth"
    torch.save(net.state_dict(), path)

    a = rand_images(4, 3, 16, 16, 11).float()
    b = (rand_images(4, 3, 16, 16, 12).float() * 0.3).clamp(0, 1)
    same, different = fid(a, a, weights_path=path), fid(a, b, weights_path=path)
    assert abs(same) < 1e-3 * max(different, 1.0)
    assert different > 0 and math.isfinite(different)


# --------------------------------------------------------------------------- stochastic metrics


def test_best_of_k_psnr_picks_the_closest_sample() -> None:
    target = rand_images(2, 3, 8, 8, 13) * 0.5
    offsets = torch.tensor([[0.3, 0.05, 0.1], [0.2, 0.4, 0.02]], dtype=torch.float64)
    samples = target[:, None] + offsets[:, :, None, None, None]
    expected = 20 * torch.log10(1 / torch.tensor([0.05, 0.02], dtype=torch.float64))
    torch.testing.assert_close(best_of_k_psnr(samples, target), expected)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    # Corrupt the best sample outside the mask only: the masked best-of-K is unchanged.
    samples[0, 1, :, 4:] = 1.0
    torch.testing.assert_close(best_of_k_psnr(samples, target, mask=mask), expected)
    assert best_of_k_psnr(samples, target)[0] < expected[0]


def test_pairwise_diversity_hand_made() -> None:
    base = torch.zeros(1, 1, 3, 12, 12, dtype=torch.float64)
    levels = torch.tensor([0.0, 0.2, 0.5], dtype=torch.float64)
    samples = base + levels[None, :, None, None, None]  # three constant images
    # RMSE of constant images = |level difference|: (0.2 + 0.5 + 0.3) / 3.
    torch.testing.assert_close(
        pairwise_diversity(samples), torch.tensor([1.0 / 3], dtype=torch.float64)
    )
    same = rand_images(1, 3, 12, 12, 14)[:, None].expand(1, 4, 3, 12, 12)
    torch.testing.assert_close(pairwise_diversity(same), torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(
        pairwise_diversity(same, metric="1-ssim"), torch.zeros(1, dtype=torch.float64)
    )
    two = torch.stack([rand_images(1, 3, 12, 12, 15)[0], rand_images(1, 3, 12, 12, 16)[0]])[None]
    expected = 1 - ssim(two[:, 0], two[:, 1])
    torch.testing.assert_close(pairwise_diversity(two, metric="1-ssim"), expected)
    calls = []

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(a.shape[0])
        return (a - b).abs().amax(dim=(1, 2, 3))

    torch.testing.assert_close(
        pairwise_diversity(samples, metric=distance), torch.tensor([1.0 / 3], dtype=torch.float64)
    )
    assert calls == [3]  # all K(K-1)/2 pairs in one batched call
    with pytest.raises(ValueError, match="K >= 2"):
        pairwise_diversity(samples[:, :1])


def test_nearest_mode_and_coverage() -> None:
    palette = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    values = torch.tensor(
        [
            [[0.95, 0.05, 0.0], [0.0, 0.9, 0.1], [0.5, 0.5, 0.0], [1.0, 0.02, 0.0]],
            [[0.0, 0.0, 1.0], [0.0, 0.0, 0.97], [0.05, 0.0, 0.9], [0.0, 0.1, 1.0]],
        ]
    )
    index, distance = nearest_mode(values, palette, max_distance=0.2)
    # The blend (0.5, 0.5, 0) is ~0.71 from red, green and yellow: no mode.
    assert index.tolist() == [[0, 1, -1, 0], [2, 2, 2, 2]]
    assert distance[0, 2].item() == pytest.approx(math.sqrt(0.5), rel=1e-6)
    torch.testing.assert_close(
        mode_coverage(index, 4), torch.tensor([0.5, 0.25], dtype=torch.float64)
    )
    plausible = torch.tensor([[True, True, False, False], [False, True, True, True]])
    torch.testing.assert_close(
        mode_coverage(index, 4, true_modes=plausible),
        torch.tensor([1.0, 1 / 3], dtype=torch.float64),
    )
    with pytest.raises(ValueError, match=r"assignments must lie in \[-1, 3\]"):
        mode_coverage(index + 2, 4)
