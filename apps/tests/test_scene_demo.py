"""The inverse-graphics demo on shipped weights, and the script that ships them."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dfm_apps import scene_demo, scenes
from dfm_apps.applications import DemoSection, MissingWeights
from dfm_apps.cli import main
from dfm_render import pretrained

SHIP_SCRIPT = Path(__file__).parents[2] / "packages/dfm-render/scripts/ship_weights.py"

# A 2-step `dfm train objects-demo` at toy size (the objects-demo structure, tiny widths).
TINY_TRAIN = [
    "data.world.n_sequences=5",
    "data.world.n_frames=12",
    "data.world.size=16",
    "data.min_gap=2",
    "data.max_gap=6",
    "model.image_size=16",
    "model.patch_size=4",
    "model.encoder.hidden_size=32",
    "model.encoder.depth=1",
    "model.encoder.num_heads=2",
    "model.encoder.stem_channels=8",
    "model.encoder.skip_channels=8",
    "model.encoder.feature_channels=16",
    "model.field.width=16",
    "model.field.time_embed_dim=32",
    "model.renderer.num_coarse=4",
    "model.renderer.num_fine=4",
    "model.det_samples=4",
    "model.det_features=4",
    "trainer.max_steps=2",
    "trainer.batch_size=2",
    "trainer.progress=false",
    "baseline_steps=2",
    "evaluation.num_scenes=1",
    "evaluation.num_samples=2",
    "evaluation.steps=2",
    "evaluation.videos=false",
    "evaluation.export=false",
    "num_threads=1",
]

# The demo at toy size: 2 objects, 3 samples, 2 sampler steps, a 12-frame orbit at 32^2.
TINY_DEMO = {
    "num_objects": 2,
    "num_samples": 3,
    "steps": 2,
    "turntable_frames": 6,
    "world_frames": 12,
    "world_size": 32,
}


def _ship_module():
    spec = importlib.util.spec_from_file_location("ship_weights", SHIP_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished 2-step objects-demo run at toy size."""
    base = tmp_path_factory.mktemp("scene-demo")
    run = base / "run"
    argv = ["train", "objects-demo", "--run-dir", str(run), f"data.root={base / 'world'}"]
    assert main([*argv, *TINY_TRAIN]) == 0
    return run


@pytest.fixture(scope="module")
def shipped(trained_run, tmp_path_factory) -> Path:
    """The run's weights written by the ship script."""
    out = tmp_path_factory.mktemp("shipped")
    assert _ship_module().main([str(trained_run), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def demo_weights(shipped, tmp_path_factory) -> Path:
    """The shipped files with every parameter perturbed: DiT's zero-initialised output layers
    would otherwise make every sample's target features (so its back) the same."""
    out = tmp_path_factory.mktemp("perturbed")
    generator = torch.Generator().manual_seed(0)
    for kind in pretrained.KINDS:
        path = pretrained.weights_path(kind, shipped)
        model = pretrained.load_objects_demo(kind, path)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
        config = pretrained.read_scene_config(path)
        pretrained.save_scene_weights(
            model, pretrained.weights_path(kind, out), config=config, kind=kind,
            metadata={"steps": "2"},
        )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def demo(demo_weights, tmp_path_factory) -> tuple[DemoSection, Path]:
    out = tmp_path_factory.mktemp("demo-out")
    torch.set_num_threads(1)
    return scene_demo.run_demo(out, seed=3, weights_dir=demo_weights, **TINY_DEMO), out


# ----------------------------------------------------------------------------- shipping


def test_ship_script_writes_the_runs_ema_weights_in_float16(trained_run, shipped) -> None:
    from dfm_apps.config import load_run_config, validate

    config = validate(load_run_config(trained_run / "config.yaml"))
    trained = scenes.load_models(config, trained_run)
    for kind, model in (("dfm", trained.diffusion), ("baseline", trained.baseline)):
        path = pretrained.weights_path(kind, shipped)
        assert pretrained.read_scene_config(path) == config.model
        meta = pretrained.read_weights_metadata(path)
        assert meta["kind"] == kind and meta["steps"] == "2" and meta["preset"] == "objects-demo"
        loaded = dict(pretrained.load_objects_demo(kind, path).named_parameters())
        for name, value in model.named_parameters():
            # Reference: numpy's IEEE binary16 rounding of the run's EMA weights.
            expected = value.detach().numpy().astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(loaded[name].detach().numpy(), expected, err_msg=name)


def test_ship_script_refuses_a_folder_that_is_not_a_run(tmp_path, capsys) -> None:
    assert _ship_module().main([str(tmp_path), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no config.yaml" in err and str(tmp_path) in err


# ----------------------------------------------------------------------------- the demo


def test_demo_writes_the_files_it_returns(demo) -> None:
    import imageio.v3 as iio
    from PIL import Image

    section, out = demo
    k, objects = TINY_DEMO["num_samples"], TINY_DEMO["num_objects"]
    assert section.command == "dfm demo --only scenes --seed 3"
    (picture,) = section.images.values()
    with Image.open(picture) as image:
        image.verify()
    grid = np.asarray(Image.open(picture))
    tile = 16 * scene_demo._UPSCALE  # the model renders 16^2 here
    assert grid.shape[1] >= (3 + k) * tile and grid.shape[0] >= objects * tile
    assert len(section.videos) == 3
    for path in section.videos.values():
        assert path.suffix == ".mp4" and path.is_relative_to(out)
        frames = iio.imread(path, plugin="FFMPEG", index=None)
        assert frames.ndim == 4 and frames.shape[-1] == 3
    turntable = iio.imread(out / "turntable.mp4", plugin="FFMPEG", index=None)
    # One frame per turntable view; baseline + K samples side by side (+ padding).
    assert turntable.shape[0] == TINY_DEMO["turntable_frames"]
    assert (1 + k) * tile < turntable.shape[2] < (1 + k) * (tile + 4) + 4
    assert iio.imread(out / "depth.gif", index=None).shape[0] == TINY_DEMO["turntable_frames"]
    assert iio.imread(out / "progressive.gif", index=None).shape[0] == TINY_DEMO["steps"]
    # The exported point cloud and mesh are PLY files whose header counts match their body.
    for name in ("sample0-points.ply", "sample0-mesh.ply"):
        data = (out / "export" / name).read_bytes()
        header = data[: data.index(b"end_header")].decode()
        assert header.startswith("ply") and "element vertex" in header
    export_table = section.tables[-1]
    assert {row[1] for row in export_table[2]} >= {"export/sample0-points.ply"}


def test_demo_scores_are_finite_and_the_samples_differ(demo) -> None:
    section, out = demo
    assert section.scores and all(math.isfinite(v) for v in section.scores.values())
    assert 0 <= section.scores["dfm_real_colour"] <= 1
    assert 0 <= section.scores["dfm_distinct_colours"] <= TINY_DEMO["num_samples"]
    # K samples with different seeds give different backs (a deterministic model gives 0).
    assert section.scores["dfm_back_spread"] > 1e-3
    saved = json.loads((out / "scores.json").read_text())
    assert len(set(saved["seeds"])) == len(saved["seeds"]) == 2 * TINY_DEMO["num_samples"]
    assert saved["world_seed"] == scene_demo.WORLD_SEED + 3  # inputs follow the seed too
    assert saved["dfm_visible_psnr"] == section.scores["dfm_visible_psnr"]
    # One table row per object: name, true colour, baseline, K samples.
    rows = section.tables[1][2]
    assert len(rows) == TINY_DEMO["num_objects"]
    assert all(len(row) == 3 + TINY_DEMO["num_samples"] for row in rows)


def test_heldout_evaluation_in_two_processes_equals_one(demo_weights, tmp_path) -> None:
    options = {"num_objects": 3, "num_samples": 2, "steps": 2, "weights_dir": demo_weights}
    whole = scene_demo.evaluate_heldout(tmp_path / "w", tmp_path / "one", **options)
    split = scene_demo.evaluate_heldout(tmp_path / "w", tmp_path / "two", processes=2, **options)
    assert whole["num_objects"] == split["num_objects"] == 3
    assert split.keys() == whole.keys()
    for key, value in whole.items():
        assert split[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key  # float32 scores
    shards = [
        json.loads((tmp_path / "two" / f"shard{i}" / "scores.json").read_text()) for i in (0, 1)
    ]
    assert [shard["num_objects"] for shard in shards] == [2.0, 1.0]
    with pytest.raises(ValueError, match="processes or num_shards"):
        scene_demo.evaluate_heldout(tmp_path / "w", tmp_path / "x", processes=2, num_shards=2)


def test_missing_weights_name_the_file_and_the_command(tmp_path, monkeypatch) -> None:
    with pytest.raises(MissingWeights) as info:
        scene_demo.run_demo(tmp_path / "out", weights_dir=tmp_path / "empty")
    message = str(info.value)
    assert str(tmp_path / "empty" / "objects_demo_dfm.safetensors") in message
    assert pretrained.SHIP_COMMAND in message
    # scenes.demo (what `dfm demo` calls) reads the shipped folder.
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "nothing-shipped")
    with pytest.raises(MissingWeights, match="nothing-shipped"):
        scenes.demo(tmp_path / "out2")


def test_bad_options_are_named(tmp_path, demo_weights) -> None:
    with pytest.raises(ValueError, match="sampler"):
        scene_demo.run_demo(tmp_path, weights_dir=demo_weights, sampler="euler_a")
    with pytest.raises(ValueError, match="num_samples"):
        scene_demo.run_demo(tmp_path, weights_dir=demo_weights, num_samples=0)
    with pytest.raises(ValueError, match="turntable_frames"):
        scene_demo._orbit_frames(48, 10)


# ----------------------------------------------------------------------------- helpers


def test_back_spread_matches_a_brute_force_loop() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 6, 5, generator=generator)
    hidden = torch.rand(6, 5, generator=generator) > 0.4
    pairs = []
    for a in range(4):
        for b in range(a + 1, 4):
            diff = images[a].double().numpy() - images[b].double().numpy()
            pairs.append(math.sqrt(np.mean(diff[:, hidden.numpy()] ** 2)))
    assert scene_demo.back_spread(images, hidden) == pytest.approx(np.mean(pairs), rel=1e-12)
    assert scene_demo.back_spread(images[:1], hidden) != scene_demo.back_spread(images[:1], hidden)
    assert scene_demo.back_spread(images[:1].expand(3, -1, -1, -1), hidden) == 0.0


def test_orbit_frames_and_held_out_world_size() -> None:
    from dfm_data.worlds.objects import _split

    turntable, visible, back = scene_demo._orbit_frames(48, 12)
    assert turntable == list(range(0, 48, 4)) and back == 24
    assert visible == [4, 44]  # +-30 degrees at 7.5 degrees per frame
    assert scene_demo._orbit_frames(16, 4)[1] == [1, 15]  # no 30-degree view: all within
    for wanted in range(1, 8):
        n = scene_demo._held_out_size(wanted)
        assert len(_split([str(i) for i in range(n)])["train"]) >= wanted
        assert all(len(_split([str(i) for i in range(m)])["train"]) < wanted for m in range(n))


# ----------------------------------------------------------------------------- `dfm demo`


def test_dfm_demo_runs_the_scenes_section(demo_weights, tmp_path, monkeypatch, capsys) -> None:
    """`dfm demo --only scenes` on (tiny) installed weights: report and summary line."""
    import re

    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", demo_weights)
    out = tmp_path / "demo"
    assert main(["demo", "--only", "scenes", "--run-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^scenes\s+\d+\.\d\s+dfm_visible_psnr", printed, re.MULTILINE), printed
    report = (out / "report.html").read_text()
    assert "Inverse graphics" in report and "dfm demo --only scenes" in report
    linked = re.findall(r'(?:src|href)="([^"#:]+\.(?:mp4|png|gif))"', report)
    assert any(link.endswith("turntable.mp4") for link in linked)
    assert all((out / link).is_file() for link in linked), linked


def test_dfm_demo_lists_the_scenes_section_as_missing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "not-shipped")
    assert main(["demo", "--only", "scenes", "--run-dir", str(tmp_path / "demo")]) == 0
    captured = capsys.readouterr()
    assert "weights not installed" in captured.err and pretrained.SHIP_COMMAND in captured.err
    assert "Traceback" not in captured.err
