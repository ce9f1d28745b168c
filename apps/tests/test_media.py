"""Videos and pictures: written, then read back with imageio; colours against matplotlib."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import matplotlib
import numpy as np
import pytest
import torch

from dfm_apps.media import (
    ProgressiveRecorder,
    colorize_depth,
    image_grid,
    render_frames,
    to_uint8_frames,
    write_video,
)
from dfm_core.sampling import Denoised, sample_ddim
from dfm_core.schedules import NoiseSchedule


def smooth_frames(n: int, h: int, w: int) -> np.ndarray:
    """Float frames in [0, 1]: smooth gradients whose colour drifts with the frame index."""
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    frames = [np.stack([x, y, np.full_like(x, k / max(n - 1, 1))], axis=-1) for k in range(n)]
    return np.stack(frames).astype(np.float32)


@pytest.mark.parametrize(("h", "w"), [(32, 48), (31, 45)])
def test_mp4_round_trip(tmp_path: Path, h: int, w: int) -> None:
    frames = smooth_frames(6, h, w)
    path = write_video(tmp_path / "out" / "v.mp4", frames, fps=12)
    back = iio.imread(path, plugin="FFMPEG", index=None)  # (N, H', W', 3) uint8
    # Odd sizes are padded by one repeated row/column, never resampled.
    assert back.shape == (6, h + h % 2, w + w % 2, 3) and back.dtype == np.uint8
    original = to_uint8_frames(frames).astype(np.float64)
    error = np.abs(back[:, :h, :w].astype(np.float64) - original)
    assert error.mean() < 4.0, error.mean()  # lossy H.264 on smooth content: a few levels
    # Frames stay distinct and in order: the blue channel tracks the frame index.
    blue = back[..., 2].mean(axis=(1, 2))
    assert np.all(np.diff(blue) > 0)
    assert iio.immeta(path, plugin="FFMPEG")["fps"] == pytest.approx(12)


def test_mp4_accepts_uint8_tensors(tmp_path: Path) -> None:
    frames = torch.from_numpy(to_uint8_frames(smooth_frames(3, 16, 16)))
    back = iio.imread(write_video(tmp_path / "t.mp4", frames), plugin="FFMPEG", index=None)
    assert back.shape == (3, 16, 16, 3)


def test_gif_round_trip_is_exact_for_few_colours(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(6, 3), dtype=np.uint8)
    index = rng.integers(0, 6, size=(4, 10, 14))
    frames = palette[index]  # (4, 10, 14, 3) uint8, 6 colours: no quantisation loss
    path = write_video(tmp_path / "v.gif", frames, fps=10)
    back = iio.imread(path, index=None)
    assert back.shape[:3] == (4, 10, 14)
    np.testing.assert_array_equal(back[..., :3], frames)
    assert iio.immeta(path, index=0)["duration"] == pytest.approx(100)


def test_gif_of_smooth_frames_is_close(tmp_path: Path) -> None:
    frames = smooth_frames(5, 24, 40)
    back = iio.imread(write_video(tmp_path / "s.gif", frames, fps=25), index=None)[..., :3]
    assert back.shape == (5, 24, 40, 3)
    error = np.abs(back.astype(np.float64) - to_uint8_frames(frames))
    assert error.mean() < 4.0, error.mean()  # 256-colour palette per frame


def test_video_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unsupported video extension '\.avi'"):
        write_video(tmp_path / "v.avi", smooth_frames(2, 8, 8))
    with pytest.raises(ValueError, match=r"frames must be \(N >= 1, H, W, 3\)"):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 8, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_frames(np.full((1, 2, 2, 3), np.nan))
    with pytest.raises(ValueError, match="dtype int64"):
        to_uint8_frames(np.zeros((1, 2, 2, 3), dtype=np.int64))


def test_to_uint8_frames_rounds_clips_and_replicates_gray() -> None:
    frames = np.array([[[0.0, 0.5, 1.2], [-0.1, 0.2, 1 / 255]]], dtype=np.float64)  # (1, 2, 3)
    out = to_uint8_frames(frames)
    assert out.shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(out[0, :, :, 0], [[0, 128, 255], [0, 51, 1]])
    assert (out[..., 0] == out[..., 2]).all()


def reference_colour(cmap: str, x: float) -> np.ndarray:
    return np.round(np.array(matplotlib.colormaps[cmap](x)[:3]) * 255)


@pytest.mark.parametrize("cmap", ["turbo", "viridis"])
def test_colorize_depth_uses_one_scale_for_the_whole_video(cmap: str) -> None:
    depth = np.stack([np.full((3, 4), 1.0), np.full((3, 4), 3.0), np.full((3, 4), 2.0)])
    rgb = colorize_depth(torch.tensor(depth), cmap=cmap)
    assert rgb.shape == (3, 3, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0, 0], reference_colour(cmap, 0.0))
    np.testing.assert_array_equal(rgb[1, 0, 0], reference_colour(cmap, 1.0))
    assert np.abs(rgb[2, 0, 0] - reference_colour(cmap, 0.5)).max() <= 3  # 256-entry table
    # Given limits clip: everything at or beyond vmax maps to the top colour.
    fixed = colorize_depth(depth, vmin=0.0, vmax=2.0, cmap=cmap)
    np.testing.assert_array_equal(fixed[1, 0, 0], reference_colour(cmap, 1.0))
    np.testing.assert_array_equal(fixed[2, 0, 0], reference_colour(cmap, 1.0))
    assert np.abs(fixed[0, 0, 0] - reference_colour(cmap, 0.5)).max() <= 3


def test_colorize_depth_background_and_errors() -> None:
    depth = np.array([[1.0, np.inf], [2.0, 5.0]])
    mask = np.array([[True, True], [True, False]])
    rgb = colorize_depth(depth, mask=mask, background=(255, 0, 255))
    np.testing.assert_array_equal(rgb[0, 1], [255, 0, 255])
    np.testing.assert_array_equal(rgb[1, 1], [255, 0, 255])
    # The masked-out 5.0 does not stretch the scale: 2.0 is the maximum.
    np.testing.assert_array_equal(rgb[1, 0], reference_colour("turbo", 1.0))
    with pytest.raises(ValueError, match="unknown matplotlib colormap"):
        colorize_depth(depth, cmap="not-a-map")
    with pytest.raises(ValueError, match="mask must be a bool array"):
        colorize_depth(depth, mask=mask.astype(np.uint8))


def test_image_grid_layout_and_captions() -> None:
    tiles = np.stack([np.full((6, 5, 3), 40 * k, dtype=np.uint8) for k in range(1, 6)])
    grid = image_grid(tiles, ncols=3, pad=1, pad_value=255)
    assert grid.shape == (2 * (6 + 1) + 1, 3 * (5 + 1) + 1, 3)
    for k in range(5):
        r, c = divmod(k, 3)
        y, x = 1 + r * 7, 1 + c * 6
        assert (grid[y : y + 6, x : x + 5] == 40 * (k + 1)).all()
    assert (grid[8:, 13:] == 255).all()  # the empty sixth cell stays padding
    captioned = image_grid(
        list(tiles[:2] / 255.0), captions=["input", "sample 1"], caption_height=12
    )
    strip = captioned[2 + 6 : 2 + 6 + 12]
    assert captioned.shape == (2 + 6 + 12 + 2, 2 + 2 * (5 + 2), 3)
    assert (strip < 128).any()  # ink was drawn
    plain = image_grid(list(tiles[:2] / 255.0))
    assert plain.shape == (2 + 6 + 2, 2 + 2 * (5 + 2), 3)
    with pytest.raises(ValueError, match="one entry per image"):
        image_grid(tiles, captions=["a"])
    enlarged = image_grid(tiles[:2], scale=3, pad=1)
    assert enlarged.shape == (1 + 18 + 1, 1 + 2 * (15 + 1), 3)
    np.testing.assert_array_equal(enlarged[1:19:3, 1:16:3], tiles[0])  # nearest neighbour
    assert (enlarged[1:19, 17:32] == tiles[1, 0, 0]).all()
    with pytest.raises(ValueError, match="scale must be >= 1"):
        image_grid(tiles, scale=0)


def test_render_frames_follows_the_trajectory(capsys: pytest.CaptureFixture[str]) -> None:
    poses = torch.eye(4).repeat(4, 1, 1)
    poses[:, 0, 3] = torch.arange(4.0)
    seen = render_frames(lambda c2w: c2w[0, 3].item(), poses, show_progress=True, desc="orbit")
    assert seen == [0.0, 1.0, 2.0, 3.0]
    assert "orbit" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"c2w must be \(N, 4, 4\)"):
        render_frames(lambda c2w: c2w, torch.eye(4))


def test_progressive_recorder_with_a_real_sampler(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DDIM with a denoiser whose x0 is a fixed picture: every recorded x0 is that picture."""
    target = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> Denoised:
        return Denoised(x0=target.to(x.dtype), signal=None)

    recorder = ProgressiveRecorder(max_items=2, desc="ddim")
    out = sample_ddim(
        denoiser,
        NoiseSchedule.from_name("cosine", 50),
        (3, 3, 8, 8),
        steps=4,
        generator=torch.Generator().manual_seed(1),
        callback=recorder,
    )
    assert "ddim" in capsys.readouterr().err
    assert recorder.steps == [0, 1, 2, 3] and recorder.num_steps == 4
    assert recorder.times == sorted(recorder.times, reverse=True)
    # The last recorded state is the sampler's output (first two items, mapped to [0, 1]).
    torch.testing.assert_close(recorder.noisy[-1], ((out.observation[:2] + 1) / 2).clamp(0, 1))
    frames = recorder.frames(scale=2)
    tile = 16
    assert frames.shape == (4, 12 + 2 + 2 * (tile + 2), 2 + 2 * (tile + 2), 3)
    expected_x0 = to_uint8_frames(((target[:2] + 1) / 2).permute(0, 2, 3, 1).numpy())
    expected_x0 = expected_x0.repeat(2, axis=1).repeat(2, axis=2)
    for k in range(4):
        y = 12 + 2 + tile + 2  # below the title strip and the x_t row
        np.testing.assert_array_equal(frames[k, y : y + tile, 2 : 2 + tile], expected_x0[0])
        np.testing.assert_array_equal(
            frames[k, y : y + tile, 4 + tile : 4 + 2 * tile], expected_x0[1]
        )
    back = iio.imread(write_video(tmp_path / "progressive.gif", frames, fps=4), index=None)
    assert back.shape[0] == 4
    only_x0 = recorder.frames(show_noisy=False, title=False)
    assert only_x0.shape == (4, 2 + 8 + 2, 2 + 2 * (8 + 2), 3)
    with pytest.raises(ValueError, match="no step recorded"):
        ProgressiveRecorder().frames()
