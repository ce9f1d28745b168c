"""CO3D v2 loader: layout, cameras, scale normalisation, sampling, bad input."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_OBJECTS, write_co3d_category

from dfm_data import co3d as co3d_module
from dfm_data.batch import ViewBatch, collate
from dfm_data.co3d import CO3DConfig, load_jgz
from dfm_data.errors import (
    BadAnnotationError,
    BadCameraError,
    CorruptImageError,
    DatasetError,
    ImageSizeError,
    MissingFileError,
)
from dfm_data.sampling import FrameSamplingConfig
from dfm_data.seeding import make_dataloader
from dfm_data.worlds.objects import ObjectScene, orbit_camera

SAMPLING = FrameSamplingConfig(num_context=2, num_target=2, num_novel=1, min_gap=1, max_gap=2)


def _config(root, **kw):
    base = dict(
        root=str(root), categories=("orb",), image_size=16, sampling=SAMPLING, progress=False
    )
    base.update(kw)
    return CO3DConfig(**base)


def test_item_shapes_and_conventions(objects_root):
    ds = _config(objects_root, scale_cache_dir=str(objects_root / "cache_a")).build()
    assert len(ds) == 2  # 4 sequences: 2 train, 1 val, 1 test
    b = ds[0]
    assert isinstance(b, ViewBatch)
    assert b.context.images.shape == (1, 2, 3, 16, 16)
    assert b.target.images.shape == (1, 2, 3, 16, 16)
    assert b.novel.images.shape == (1, 1, 3, 16, 16)
    assert b.context.intrinsics.shape == (1, 2, 3, 3)
    assert b.target.c2w.shape == (1, 2, 4, 4)
    assert b.context.images.min() >= -1 and b.context.images.max() <= 1
    torch.testing.assert_close(b.context.c2w[0, 0], torch.eye(4), atol=1e-5, rtol=0)
    # The absolute pose of any view is world_from_context @ relative pose; a rigid transform.
    R = b.target.c2w[0, 0, :3, :3]
    torch.testing.assert_close(R @ R.T, torch.eye(3), atol=1e-5, rtol=0)
    assert b.near.item() == 0.5 and b.far.item() == 40.0


def test_cameras_recover_the_world_orbit_exactly(objects_root):
    """Annotation cameras (isotropic and legacy frames) decode to the orbit the world rendered."""
    truth = json.loads((objects_root / "orb" / "synthetic_ground_truth.json").read_text())
    ds = _config(objects_root, scale_cache_dir=str(objects_root / "cache_b")).build()
    formats = set()
    for _, name in ds.sequences:
        t = truth["sequences"][name]
        scene = ObjectScene.from_json(t["scene"])
        h, w = t["image_size_hw"]
        for fr in ds.frames[name]:
            formats.add(fr.intrinsics_format)
            c2w = orbit_camera(
                fr.frame_number,
                t["orbit"]["n_frames"],
                scene.look_target,
                t["orbit"]["radius"],
                t["orbit"]["elevation_deg"],
            )
            np.testing.assert_allclose(fr.c2w, c2w, atol=1e-9)
            K = np.array(t["intrinsics_px"])
            np.testing.assert_allclose(fr.intrinsics[0], K[0] / w, atol=1e-12)
            np.testing.assert_allclose(fr.intrinsics[1], K[1] / h, atol=1e-12)
    assert formats == {"ndc_isotropic", "ndc_norm_image_bounds"}


def test_scale_normalisation_closed_form(tmp_path):
    # Frame depths 2, 3 and 7 inside the mask; a 0.3-probability region at depth 100 is below the
    # 0.4 threshold and must not count. Scale = mean of medians = 4.
    h, w = 12, 16
    mask = np.ones((h, w))
    mask[:, :4] = 0.3
    specs = []
    for i, dval in enumerate([2.0, 3.0, 7.0]):
        depth = np.full((h, w), dval)
        depth[:, :4] = 100.0
        specs.append({"eye": (0.5 * i, 1.0, 4.0), "depth": depth, "mask": mask})
    write_co3d_category(tmp_path, "cat", {"1_2_3": specs}, hw=(h, w))
    sampling = FrameSamplingConfig(
        num_context=1, num_target=1, num_novel=0, min_gap=2, max_gap=2, flip_probability=0.0
    )
    ds = CO3DConfig(
        root=str(tmp_path), categories=("cat",), image_size=8, sampling=sampling, progress=False
    ).build()
    assert ds.scales["1_2_3"] == pytest.approx(4.0)
    b = ds[0]
    # Context 0 = frame 0 (eye (0, 1, 4)), scaled by 10 / 4.
    np.testing.assert_allclose(
        b.world_from_context[0, :3, 3].numpy(), np.array([0.0, 1.0, 4.0]) * 2.5, atol=1e-5
    )
    # Target 0 = frame 2: relative translation scales the same way.
    rel = np.linalg.inv(ds.frames["1_2_3"][0].c2w) @ ds.frames["1_2_3"][2].c2w
    np.testing.assert_allclose(b.target.c2w[0, 0, :3, 3].numpy(), rel[:3, 3] * 2.5, atol=1e-5)
    # Cached as JSON and reused without recomputation.
    cache = json.loads((tmp_path / "dfm_cache" / "co3d_scales_cat.json").read_text())
    assert cache["scales"]["1_2_3"] == pytest.approx(4.0)


def test_scale_cache_is_reused(objects_root, monkeypatch):
    cache_dir = objects_root / "cache_c"
    first = _config(objects_root, scale_cache_dir=str(cache_dir)).build()

    def boom(*a, **k):
        raise AssertionError("scale recomputed")

    monkeypatch.setattr(co3d_module, "sequence_scale", boom)
    second = _config(objects_root, scale_cache_dir=str(cache_dir)).build()
    assert second.scales == first.scales


def test_world_scale_normalises_object_depth(objects_root):
    ds = _config(objects_root, scale_cache_dir=str(objects_root / "cache_d")).build()
    for _, name in ds.sequences:
        # Orbit radius 6-8 around an object ~2-3 units big: median fg depth lies in that range.
        assert 4.0 < ds.scales[name] < 10.0


def test_scale_augmentation_changes_scale_only_in_train(objects_root):
    plain = _config(objects_root, scale_cache_dir=str(objects_root / "cache_e")).build()[0]
    aug = _config(
        objects_root, scale_cache_dir=str(objects_root / "cache_e"), scale_augmentation=0.2
    ).build()[0]
    torch.testing.assert_close(plain.context.images, aug.context.images)
    ratio = aug.world_from_context[0, :3, 3].norm() / plain.world_from_context[0, :3, 3].norm()
    assert 1 / 1.2 - 1e-4 <= ratio <= 1 / 0.8 + 1e-4 and abs(ratio - 1) > 1e-6


def test_top_n_by_viewpoint_quality(tmp_path):
    seqs = {f"{i}_0_0": [{"eye": (0, 1, 4)}, {"eye": (1, 1, 4)}] for i in range(4)}
    write_co3d_category(
        tmp_path, "cat", seqs, quality={"0_0_0": 0.1, "1_0_0": 0.9, "2_0_0": 0.5, "3_0_0": 0.7}
    )
    ds = CO3DConfig(
        root=str(tmp_path), categories=("cat",), top_n_sequences=2, progress=False
    ).build()
    assert [n for _, n in ds.sequences] == ["1_0_0", "3_0_0"]


def test_deterministic_by_index_and_epoch(objects_root):
    ds = _config(objects_root, scale_cache_dir=str(objects_root / "cache_f")).build()
    a, b = ds[1], ds[1]
    torch.testing.assert_close(a.target.c2w, b.target.c2w)
    frames = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        frames.add(
            tuple(ds[1].target.frame_index[0].tolist())
            + tuple(ds[1].context.frame_index[0].tolist())
        )
    assert len(frames) > 1


def test_collate_and_dataloader(objects_root):
    ds = _config(objects_root, scale_cache_dir=str(objects_root / "cache_g")).build()
    batch = collate([ds[0], ds[1]])
    assert batch.context.images.shape == (2, 2, 3, 16, 16)
    assert batch.index.tolist() == [0, 1]
    loader = make_dataloader(ds, batch_size=2, seed=0, shuffle=False)
    (only,) = list(loader)
    torch.testing.assert_close(only.target.images, batch.target.images)


def _copy(objects_root, tmp_path):
    dst = tmp_path / "root"
    shutil.copytree(objects_root, dst, ignore=shutil.ignore_patterns("cache_*", "dfm_cache"))
    return dst


def _train_images(root):
    """All image paths of the first train sequence (bad input there must surface in item 0)."""
    ds = _config(root).build()
    name = ds.sequences[0][1]
    return [root / f.image_path for f in ds.frames[name]]


def test_missing_corrupt_and_wrong_size_images(objects_root, tmp_path):
    from PIL import Image

    root = _copy(objects_root, tmp_path)
    images = _train_images(root)
    ds = _config(root).build()
    for p in images:
        p.unlink()
    with pytest.raises(MissingFileError) as e:
        ds[0]
    assert str(images[0].parent) in str(e.value) and e.value.field == "image.path"
    for p in images:
        p.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(CorruptImageError, match="cannot decode"):
        ds[0]
    for p in images:
        Image.new("RGB", (10, 10)).save(p, format="JPEG")
    with pytest.raises(ImageSizeError, match="expected 24x32"):
        ds[0]


def test_skip_mode_counts_bad_frames(objects_root, tmp_path):
    root = _copy(objects_root, tmp_path)
    for p in _train_images(root):
        p.write_bytes(b"garbage")
    ds = _config(root, on_error="skip").build()
    for i in range(len(ds)):
        assert isinstance(ds[i], ViewBatch)  # never raises: the bad sequence is replaced
    assert ds[0].index.item() == 0
    assert ds.skipped.total >= 1 and ds.skipped.counts["CorruptImageError"] >= 1


def _rewrite_annotations(root, edit):
    path = root / "orb" / "frame_annotations.jgz"
    frames = load_jgz(path)
    edit(frames)
    with gzip.open(path, "wt", encoding="utf8") as f:
        json.dump(frames, f)
    return path


def test_nan_and_degenerate_cameras(objects_root, tmp_path):
    root = _copy(objects_root, tmp_path)
    _rewrite_annotations(root, lambda fr: fr[3]["viewpoint"]["R"][1].__setitem__(2, float("nan")))
    with pytest.raises(BadCameraError, match=r"frames\[3\]\.viewpoint\.R"):
        _config(root).build()
    _rewrite_annotations(
        root, lambda fr: fr[3]["viewpoint"].__setitem__("R", [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    )
    with pytest.raises(BadCameraError, match="orthonormal"):
        _config(root).build()
    _rewrite_annotations(
        root, lambda fr: fr[3]["viewpoint"].__setitem__("focal_length", [0.0, 1.0])
    )
    with pytest.raises(BadCameraError, match="focal"):
        _config(root).build()
    ds = _config(root, on_error="skip").build()
    assert ds.skipped.counts["BadCameraError"] == 1


def test_malformed_annotation_files(objects_root, tmp_path):
    root = _copy(objects_root, tmp_path)
    path = _rewrite_annotations(root, lambda fr: fr[0].pop("image"))
    with pytest.raises(BadAnnotationError, match=r"frames\[0\]\.image"):
        _config(root).build()
    path.write_bytes(b"not gzip")
    with pytest.raises(BadAnnotationError, match="gzip"):
        _config(root).build()
    (root / "orb" / "set_lists" / "set_lists_fewview_dev.json").write_text("{oops")
    with pytest.raises(DatasetError):
        _config(root).build()


def test_tiny_world_config_matches_fixture():
    assert TINY_OBJECTS.image_size_hw == (24, 32)


def test_views_at_chosen_frames_match_the_sampled_item(objects_root):
    from dfm_data.sampling import sample_view_indices
    from dfm_data.seeding import item_rng

    ds = _config(objects_root).build()
    item = ds[0]
    _, name = ds.sequences[0]
    ctx, tgt, nov = sample_view_indices(len(ds.frames[name]), SAMPLING, item_rng(0, 0, 0))
    chosen = ds.views_at(0, ctx, tgt, nov)
    for field in ("context", "target", "novel"):
        a, b = getattr(item, field), getattr(chosen, field)
        assert torch.equal(a.images, b.images) and torch.equal(a.c2w, b.c2w)
        assert torch.equal(a.frame_index, b.frame_index)
    front = ds.views_at(0, [0], [len(ds.frames[name]) // 2])
    assert front.context.frame_index.tolist() == [[ds.frames[name][0].frame_number]]
    with pytest.raises(IndexError, match="outside sequence"):
        ds.views_at(0, [0], [10_000])
