"""Objects world: determinism, exact pixels, and the saved hidden-colour ground truth."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
from conftest import TINY_OBJECTS
from PIL import Image

from dfm_data.co3d import load_jgz
from dfm_data.images import load_depth_png, load_mask_png
from dfm_data.worlds.objects import (
    ObjectScene,
    ObjectsWorldConfig,
    _random_scene,
    orbit_camera,
    render_object_scene,
    synthesize_objects,
)


def _truth(root):
    return json.loads((root / "orb" / "synthetic_ground_truth.json").read_text())


def _palette_index(rgb, palette):
    """Nearest palette colour by chromaticity (shading scales brightness only)."""
    chroma = rgb / max(rgb.sum(), 1e-6)
    pal = np.asarray(palette)
    pal = pal / pal.sum(1, keepdims=True)
    return int(np.argmin(np.abs(pal - chroma).sum(1)))


def test_layout_is_co3d_v2(objects_root):
    cat = objects_root / "orb"
    assert json.loads((objects_root / "category_to_subset_name_list.json").read_text()) == {
        "orb": ["fewview_dev"]
    }
    frames = load_jgz(cat / "frame_annotations.jgz")
    assert len(frames) == TINY_OBJECTS.n_sequences * TINY_OBJECTS.n_frames
    f = frames[0]
    assert f["image"]["size"] == [24, 32] and f["image"]["path"].endswith("images/frame000001.jpg")
    assert f["frame_number"] == 0  # file number differs from frame_number, as in CO3D
    assert f["depth"]["path"].endswith(".jpg.geometric.png")
    assert f["viewpoint"]["intrinsics_format"] == "ndc_isotropic"
    assert "intrinsics_format" not in frames[3]["viewpoint"]  # legacy frame
    set_lists = json.loads((cat / "set_lists" / "set_lists_fewview_dev.json").read_text())
    assert set(set_lists) == {"train", "val", "test"}
    paths = {fr["image"]["path"] for fr in frames}
    assert all(e[2] in paths for part in set_lists.values() for e in part)
    batches = json.loads((cat / "eval_batches" / "eval_batches_fewview_dev.json").read_text())
    test_paths = {e[2] for e in set_lists["test"]}
    assert batches and all(e[2] in test_paths for b in batches for e in b)
    seqs = load_jgz(cat / "sequence_annotations.jgz")
    assert all(0 <= s["viewpoint_quality_score"] <= 1 for s in seqs)


def test_deterministic_by_seed(tmp_path):
    cfg = ObjectsWorldConfig(
        n_sequences=1, n_frames=2, image_size_hw=(12, 16), supersample=1, seed=9
    )
    synthesize_objects(tmp_path / "a", cfg, progress=False)
    synthesize_objects(tmp_path / "b", cfg, progress=False)
    synthesize_objects(
        tmp_path / "c", ObjectsWorldConfig(**{**cfg.__dict__, "seed": 10}), progress=False
    )
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    for rel in a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert load_jgz(tmp_path / "a/orb/frame_annotations.jgz") == load_jgz(
        tmp_path / "b/orb/frame_annotations.jgz"
    )
    assert load_jgz(tmp_path / "a/orb/frame_annotations.jgz") != load_jgz(
        tmp_path / "c/orb/frame_annotations.jgz"
    )


def test_saved_pixels_match_a_fresh_render(objects_root):
    truth = _truth(objects_root)
    name, t = next(iter(truth["sequences"].items()))
    scene = ObjectScene.from_json(t["scene"])
    h, w = t["image_size_hw"]
    K = np.array(t["intrinsics_px"])
    f = 2
    c2w = orbit_camera(
        f,
        t["orbit"]["n_frames"],
        scene.look_target,
        t["orbit"]["radius"],
        t["orbit"]["elevation_deg"],
    )
    out = render_object_scene(scene, c2w, K, h, w, TINY_OBJECTS.supersample)
    d = objects_root / "orb" / name
    rgb = np.asarray(Image.open(d / "images" / "frame000003.jpg"), dtype=np.float64) / 255
    assert np.abs(rgb - out["rgb"]).mean() < 0.03  # JPEG error only
    depth = load_depth_png(d / "depths" / "frame000003.jpg.geometric.png")
    np.testing.assert_allclose(depth, out["depth"].astype(np.float16), rtol=1e-3)
    np.testing.assert_allclose(
        load_mask_png(d / "masks" / "frame000003.png"), out["mask"], atol=1 / 255
    )


def test_hidden_colour_invisible_from_front_and_seen_from_behind(objects_root):
    truth = _truth(objects_root)
    palette = truth["palette"]
    for name, t in truth["sequences"].items():
        scene = ObjectScene.from_json(t["scene"])
        K = np.array(t["intrinsics_px"])
        h, w = t["image_size_hw"]
        orbit = t["orbit"]
        front = render_object_scene(
            scene,
            orbit_camera(
                0, orbit["n_frames"], scene.look_target, orbit["radius"], orbit["elevation_deg"]
            ),
            K,
            h,
            w,
            2,
        )
        assert front["hidden"].max() == 0.0  # no hidden point reaches the front view
        back = render_object_scene(
            scene,
            orbit_camera(
                orbit["n_frames"] // 2,
                orbit["n_frames"],
                scene.look_target,
                orbit["radius"],
                orbit["elevation_deg"],
            ),
            K,
            h,
            w,
            2,
        )
        full = back["hidden"] == 1.0
        assert full.sum() > 10
        # Every fully-hidden pixel of the camera behind the object shows the saved hidden colour.
        for rgb in back["rgb"][full]:
            assert _palette_index(rgb, palette) == t["hidden_index"]
        # ... and so does the saved JPEG of that frame (majority: JPEG blurs chroma at edges).
        saved = np.asarray(
            Image.open(
                objects_root
                / "orb"
                / name
                / "images"
                / f"frame{orbit['n_frames'] // 2 + 1:06d}.jpg"
            ),
            dtype=np.float64,
        )
        saved_hidden = (
            render_object_scene(
                scene,
                orbit_camera(
                    orbit["n_frames"] // 2,
                    orbit["n_frames"],
                    scene.look_target,
                    orbit["radius"],
                    orbit["elevation_deg"],
                ),
                K,
                h,
                w,
                TINY_OBJECTS.supersample,
            )["hidden"]
            == 1.0
        )
        votes = [_palette_index(rgb, palette) == t["hidden_index"] for rgb in saved[saved_hidden]]
        assert np.mean(votes) > 0.8


def test_hidden_colour_is_uniform_over_the_palette():
    cfg = ObjectsWorldConfig()
    counts = Counter(
        _random_scene(np.random.default_rng([0, 0, i]), cfg)[0].hidden_index for i in range(800)
    )
    assert set(counts) == set(range(len(cfg.palette)))
    expected = 800 / len(cfg.palette)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 16.3  # p = 0.001 for 3 degrees of freedom
