"""Vimeo-90K loader and the motion world."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from dfm_data.batch import FrameBatch, collate
from dfm_data.errors import (
    BadAnnotationError,
    CorruptImageError,
    EmptySubsetError,
    ImageSizeError,
    MissingFileError,
)
from dfm_data.vimeo90k import Vimeo90KConfig, parse_clip_list
from dfm_data.worlds.motion import (
    MotionWorldConfig,
    _random_clip,
    motion_flow,
    render_motion_frame,
    synthesize_motion,
)

HW = (24, 40)


@pytest.fixture(scope="module")
def motion_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("motion")
    synthesize_motion(
        root,
        MotionWorldConfig(n_sequences=10, image_size_hw=HW, supersample=1, seed=2),
        progress=False,
    )
    return root


@pytest.fixture(scope="module")
def septuplet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("motion7")
    synthesize_motion(
        root,
        MotionWorldConfig(n_sequences=3, layout="septuplet", image_size_hw=HW, supersample=1),
        progress=False,
    )
    return root


def test_layout(motion_root):
    assert (motion_root / "sequences" / "00001" / "0001" / "im3.png").is_file()
    assert (motion_root / "sequences" / "00002" / "0002" / "im1.png").is_file()
    text = (motion_root / "tri_trainlist.txt").read_text()
    assert text.endswith("\n\n") and text.splitlines()[0] == "00001/0001"
    assert (
        len(parse_clip_list(text, source="x"))
        + len(parse_clip_list((motion_root / "tri_testlist.txt").read_text(), source="x"))
        == 10
    )
    assert Image.open(motion_root / "sequences/00001/0001/im1.png").size == (HW[1], HW[0])


def test_items(motion_root):
    ds = Vimeo90KConfig(
        root=str(motion_root), expected_size_hw=HW, crop_size_hw=(16, 16), resize_hw=(8, 8)
    ).build()
    assert len(ds) == 8
    b = ds[0]
    assert isinstance(b, FrameBatch)
    assert (
        b.context.shape == (1, 3, 8, 8)
        and b.target.shape == (1, 3, 8, 8)
        and b.novel.shape == (1, 1, 3, 8, 8)
    )
    assert b.frame_index.tolist() == [[1, 2, 3]]
    assert -1 <= b.context.min() and b.context.max() <= 1
    torch.testing.assert_close(ds[3].target, ds[3].target)
    batch = collate([ds[0], ds[1]])
    assert batch.context.shape == (2, 3, 8, 8)


def test_full_frames_match_files_in_test_split(motion_root):
    ds = Vimeo90KConfig(
        root=str(motion_root), split="test", expected_size_hw=HW, novel_frames=()
    ).build()
    b = ds[0]
    path = motion_root / "sequences" / ds.clips[0] / "im2.png"
    ref = (
        torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32)).permute(2, 0, 1) / 127.5
        - 1
    )
    torch.testing.assert_close(b.target[0], ref)
    assert b.novel.shape == (1, 0, 3, *HW)


def test_crop_and_flip_are_shared_by_all_frames(motion_root):
    full = Vimeo90KConfig(
        root=str(motion_root), split="train", expected_size_hw=HW, hflip_probability=0.0
    ).build()
    aug = Vimeo90KConfig(
        root=str(motion_root),
        split="train",
        expected_size_hw=HW,
        crop_size_hw=(12, 20),
        hflip_probability=1.0,
    ).build()
    a, f = aug[0], full[0]
    # Locate the crop from the context frame, then check target and novel used the same window.
    ctx = a.context[0].flip(-1)
    found = None
    for top in range(HW[0] - 12 + 1):
        for left in range(HW[1] - 20 + 1):
            if torch.equal(f.context[0, :, top : top + 12, left : left + 20], ctx):
                found = (top, left)
    assert found is not None
    top, left = found
    torch.testing.assert_close(
        a.target[0].flip(-1), f.target[0, :, top : top + 12, left : left + 20]
    )
    torch.testing.assert_close(
        a.novel[0, 0].flip(-1), f.novel[0, 0, :, top : top + 12, left : left + 20]
    )


def test_septuplet(septuplet_root):
    ds = Vimeo90KConfig(
        root=str(septuplet_root),
        layout="septuplet",
        expected_size_hw=HW,
        target_frame=4,
        novel_frames=(5, 7),
    ).build()
    b = ds[0]
    assert b.frame_index.tolist() == [[1, 4, 5, 7]] and b.novel.shape[1] == 2
    with pytest.raises(ValueError, match=r"outside 1\.\.3"):
        Vimeo90KConfig(root=str(septuplet_root), novel_frames=(4,)).build()


def test_ground_truth_motion_matches_pixels(tmp_path):
    """The saved velocity of each sprite equals the displacement of its pixels between saved frames."""
    hw = (96, 128)
    cfg = MotionWorldConfig(n_sequences=4, n_sprites=1, image_size_hw=hw, supersample=1, seed=4)
    truth = synthesize_motion(tmp_path, cfg, progress=False)
    for name, clip in truth["clips"].items():
        bg = render_motion_frame({**clip, "sprites": []}, 0, *hw)
        centroids = []
        for k in (1, 2, 3):
            img = (
                np.asarray(
                    Image.open(tmp_path / "sequences" / name / f"im{k}.png"), dtype=np.float64
                )
                / 255
            )
            on = np.abs(img - bg).max(-1) > 2 / 255
            ii, jj = np.nonzero(on)
            centroids.append(np.array([jj.mean() + 0.5, ii.mean() + 0.5]))
        (sp,) = clip["sprites"]
        v = np.asarray(sp["velocity_px"])
        np.testing.assert_allclose(centroids[1] - centroids[0], v, atol=0.35)
        np.testing.assert_allclose(centroids[2] - centroids[1], v, atol=0.35)
        speed = cfg.speeds[sp["speed_index"]] * min(hw)
        angle = math.radians(cfg.directions_deg[sp["direction_index"]])
        np.testing.assert_allclose(v, [speed * math.cos(angle), speed * math.sin(angle)])
        flow = motion_flow(clip, *hw)
        i, j = int(sp["centre_im1"][1]), int(sp["centre_im1"][0])
        np.testing.assert_allclose(flow[:, i, j], v)
        assert np.abs(flow[:, 0, 0]).max() == 0


def test_motion_set_is_uniform():
    cfg = MotionWorldConfig(n_sprites=1)
    counts = Counter(
        (s["direction_index"], s["speed_index"])
        for i in range(800)
        for s in _random_clip(np.random.default_rng([0, i]), cfg)["sprites"]
    )
    assert len(counts) == 8
    expected = 100
    assert sum((c - expected) ** 2 / expected for c in counts.values()) < 24.3  # p = 0.001, 7 dof


def test_bad_input(motion_root, tmp_path):
    import shutil

    root = tmp_path / "v"
    shutil.copytree(motion_root, root)
    with pytest.raises(MissingFileError, match="sep_trainlist"):
        Vimeo90KConfig(root=str(root), layout="septuplet").build()
    with pytest.raises(ImageSizeError, match="expected 256x448"):
        Vimeo90KConfig(root=str(root)).build()[0]
    ds = Vimeo90KConfig(root=str(root), expected_size_hw=HW).build()
    (root / "sequences" / ds.clips[0] / "im2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(CorruptImageError, match=r"im2\.png"):
        ds[0]
    skip = Vimeo90KConfig(root=str(root), expected_size_hw=HW, on_error="skip").build()
    assert skip[0].index.item() == 0 and skip.skipped.counts["CorruptImageError"] == 1
    (root / "tri_trainlist.txt").write_text("\n\n")
    with pytest.raises(EmptySubsetError):
        Vimeo90KConfig(root=str(root)).build()
    (root / "tri_trainlist.txt").write_text("00001/0001\n../etc/passwd\n")
    with pytest.raises(BadAnnotationError, match="line 2"):
        Vimeo90KConfig(root=str(root)).build()
