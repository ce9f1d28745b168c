"""The motion application: presets, `dfm train`/`dfm sample`, the demo, scores vs references."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfm_apps import motion
from dfm_apps.applications import MissingWeights
from dfm_apps.cli import main
from dfm_apps.config import load_preset, validate
from dfm_flow import motion_preset

# 32 x 32 frames (sprites of 2-4 px radius keep a visible interior), a one-block DiT with
# 16 tokens, 2 optimiser steps of each model, 2 inputs x 2 samples x 2 sampler steps.
TINY = [
    "model.image_size_hw=[32,32]",
    "model.hidden_size=32",
    "model.depth=1",
    "model.num_heads=2",
    "trainer.max_steps=2",
    "trainer.batch_size=2",
    "trainer.log_every=1",
    "trainer.progress=false",
    "baseline_steps=2",
    "evaluation.num_inputs=2",
    "evaluation.num_pictures=1",
    "evaluation.num_samples=2",
    "evaluation.steps=2",
    "evaluation.video_frames=3",
    "num_threads=1",
]


def _video_sources(report: Path) -> list[Path]:
    found = re.findall(r'<video[^>]*src="([^"]+)"', report.read_text())
    return [report.parent / Path(v) for v in found]


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", ["motion-demo", "vimeo"])
def test_presets_are_dfm_flows_models(preset: str) -> None:
    """Each preset's model section is dfm-flow's preset of the same name, field for field."""
    config = validate(load_preset(preset))
    assert isinstance(config, motion.MotionConfig)
    assert config.model == motion_preset(preset).model


def test_vimeo_dry_run_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "vimeo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "app: motion" in out and "name: vimeo" in out and "layout: septuplet" in out


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("evaluation.sampler=euler", "evaluation.sampler: expected one of"),
        ("data.layout=quadruplet", "data.layout: expected one of ['septuplet', 'triplet']"),
        ("data.novel_frames=[5]", "data.novel_frames[0]: expected 1..3 (triplet), got 5"),
        ("model.dit=DiT-Z", "model.dit: expected one of"),
        ("evaluation.num_samples=0", "evaluation.num_samples: expected >= 1"),
        ("evaluation.nope=1", "valid keys under 'evaluation': num_inputs"),
    ],
)
def test_bad_key_or_value_is_one_line_naming_it(
    override: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["train", "motion-demo", "--dry-run", override])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfm: error: "), err
    assert expected in lines[0], lines[0]


def test_missing_vimeo_root_says_what_to_download(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "vimeo", "--run-dir", str(tmp_path / "run"), *TINY]
    status = main([*argv, f"data.root={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 2 and err[0].startswith("dfm: vimeo ->"), err
    line = err[1]
    assert line.startswith("dfm: error: data.root: no Vimeo-90K septuplet set at")
    assert "vimeo_septuplet.zip" in line and "sep_trainlist.txt" in line


# ----------------------------------------------------------------------------- data


def _write_septuplets(root: Path, names: list[str], size_hw: tuple[int, int]) -> None:
    """A Vimeo-90K septuplet folder (official layout: lists with a trailing blank line)."""
    rng = np.random.default_rng(0)
    for name in names:
        folder = root / "sequences" / name
        folder.mkdir(parents=True)
        for k in range(1, 8):
            pixels = rng.integers(0, 256, (*size_hw, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"im{k}.png")
    (root / "sep_trainlist.txt").write_text("\n".join(names[:3]) + "\n\n")
    (root / "sep_testlist.txt").write_text("\n".join(names[3:]) + "\n\n")


@pytest.fixture(scope="module")
def septuplets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vimeo") / "vimeo_septuplet"
    _write_septuplets(root, ["00001/0001", "00001/0002", "00002/0001", "00003/0001", "00003/0002"],
                      (24, 40))  # fmt: skip
    return root


def test_clips_become_batches_at_constant_velocity_times(septuplets: Path) -> None:
    """Frame numbers -> times (k - k_context) / (k_target - k_context), by hand."""
    config = validate(
        load_preset(
            "vimeo",
            ["model.image_size_hw=[16,32]", f"data.root={septuplets}", "data.context_frame=2",
             "data.target_frame=4", "data.novel_frames=[1,7]", "data.hflip_probability=0"],
        )
    )  # fmt: skip
    dataset = motion.frames_dataset(config, septuplets, "train")
    batch = motion.collate_motion_batches([dataset[0], dataset[2]])
    assert batch.context.observation.shape == (2, 3, 16, 32)
    assert batch.novel.shape == (2, 2, 3, 16, 32)
    torch.testing.assert_close(batch.target_params.time, torch.ones(2))
    expected = torch.tensor([[(1 - 2) / (4 - 2), (7 - 2) / (4 - 2)]] * 2)
    torch.testing.assert_close(batch.novel_params.time, expected)
    # The splatted source is the input frame (what classifier-free guidance never drops).
    assert torch.equal(batch.target_params.source, batch.context.observation)


# ----------------------------------------------------------------------------- scores


def test_frame_scores_match_scikit_image_per_image(tmp_path: Path) -> None:
    """PSNR/SSIM of warped frames vs skimage's, recomputed image by image in float64."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(0)
    n, k, h, w = 2, 3, 16, 16
    truth = torch.rand(n, 2, 3, h, w, generator=g) * 2 - 1
    frames = (truth[:, None] + 0.3 * torch.randn(n, k, 2, 3, h, w, generator=g)).clamp(-1, 1)
    base = (truth + 0.2 * torch.randn(n, 2, 3, h, w, generator=g)).clamp(-1, 1)
    held = motion.HeldOut(["a", "b"], truth[:, 0], truth, torch.tensor([1.0, 2.0]))
    zeros = torch.zeros(n, 2, h, w)
    outputs = motion.MotionOutputs(zeros[:, None].expand(-1, k, -1, -1, -1), None, frames, zeros,
                                   None, base)  # fmt: skip
    scores = motion.frame_scores(outputs, held)

    def unit(x: torch.Tensor) -> np.ndarray:
        return ((x.double() + 1) / 2).numpy()

    def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
        return structural_similarity(unit(a), unit(b), data_range=1.0, channel_axis=0,
                                     gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)  # fmt: skip

    psnrs = [[peak_signal_noise_ratio(unit(truth[i, 0]), unit(frames[i, j, 0]), data_range=1.0)
              for j in range(k)] for i in range(n)]  # fmt: skip
    assert scores["dfm_psnr"] == pytest.approx(np.mean(psnrs), rel=1e-9)
    assert scores["dfm_best_psnr"] == pytest.approx(np.mean(np.max(psnrs, axis=1)), rel=1e-9)
    ref = np.mean([ssim(frames[i, j, 0], truth[i, 0]) for i in range(n) for j in range(k)])
    assert scores["dfm_ssim"] == pytest.approx(ref, abs=1e-6)
    ref = np.mean([peak_signal_noise_ratio(unit(truth[i, 0]), unit(base[i, 0]), data_range=1.0)
                   for i in range(n)])  # fmt: skip
    assert scores["baseline_psnr"] == pytest.approx(ref, rel=1e-9)
    assert scores["baseline_ssim"] == pytest.approx(
        np.mean([ssim(base[i, 0], truth[i, 0]) for i in range(n)]), abs=1e-6
    )


def test_lpips_aggregates_per_image_distances_by_brute_force() -> None:
    """Mean over all samples, best = the smallest distance per input, for any metric."""
    g = torch.Generator().manual_seed(1)
    n, k, h, w = 3, 4, 16, 16
    truth = torch.rand(n, 1, 3, h, w, generator=g) * 2 - 1
    frames = torch.rand(n, k, 1, 3, h, w, generator=g) * 2 - 1
    base = torch.rand(n, 1, 3, h, w, generator=g) * 2 - 1
    held = motion.HeldOut(list("abc"), truth[:, 0], truth, torch.tensor([1.0]))
    zeros = torch.zeros(n, 2, h, w)
    outputs = motion.MotionOutputs(zeros[:, None].expand(-1, k, -1, -1, -1), None, frames, zeros,
                                   None, base)  # fmt: skip

    def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs().mean(dim=(1, 2, 3))

    scores = motion.frame_scores(outputs, held, lpips=l1)
    unit = [[float((frames[i, j, 0] - truth[i, 0]).abs().mean()) / 2 for j in range(k)]
            for i in range(n)]  # fmt: skip
    assert scores["dfm_lpips"] == pytest.approx(np.mean(unit), rel=1e-6)
    assert scores["dfm_best_lpips"] == pytest.approx(np.mean(np.min(unit, axis=1)), rel=1e-6)
    expected = np.mean([float((base[i, 0] - truth[i, 0]).abs().mean()) / 2 for i in range(n)])
    assert scores["baseline_lpips"] == pytest.approx(expected, rel=1e-6)


def test_the_true_flow_scores_perfectly_and_zero_motion_does_not(tmp_path: Path) -> None:
    """Oracle: the world's own flow (dfm-data's ``motion_flow``) as every sample, zero flow
    as the regressor, through the app's held-out reader and scoring."""
    from dfm_data.worlds.motion import motion_flow

    config = validate(load_preset("motion-demo", ["model.image_size_hw=[64,64]"]))
    held = motion.heldout_world(config, tmp_path / "world", 6)
    assert held.clips is not None and held.velocity_set is not None
    torch.testing.assert_close(held.times, torch.tensor([1.0, 2.0]))
    # Every drawn velocity is a member of the set read from the same JSON.
    for clip in held.clips:
        for sprite in clip["sprites"]:
            v = torch.tensor(sprite["velocity_px"], dtype=torch.float64)
            gap = (held.velocity_set - v).norm(dim=1).min()
            assert gap < 1e-9
    flows = torch.stack([torch.from_numpy(motion_flow(c, 64, 64)).float() for c in held.clips])
    k = 3
    outputs = motion.MotionOutputs(
        flow=flows[:, None].expand(-1, k, -1, -1, -1), metric=None,
        frames=held.frames[:, None].expand(-1, k, -1, -1, -1, -1),
        baseline_flow=torch.zeros_like(flows), baseline_metric=None, baseline_frames=held.frames,
    )  # fmt: skip
    scores, counts = motion.motion_scores(outputs, held)
    assert scores["dfm_on_set"] == 1.0 and scores["dfm_distinct"] == 1.0
    assert scores["dfm_best_epe"] < 1e-6 and scores["dfm_mean_epe"] < 1e-6
    assert scores["baseline_on_set"] == 0.0 and scores["baseline_distinct"] == 0.0
    speeds = [math.hypot(*s["velocity_px"]) for c in held.clips for s in c["sprites"]]
    assert scores["num_sprites"] == len(speeds)  # every sprite of these clips is scored
    assert scores["baseline_mean_epe"] == pytest.approx(np.mean(speeds), rel=1e-6)
    assert sum(counts["dfm"]) == k * len(speeds) and sum(counts["baseline"]) == 0


# ----------------------------------------------------------------------------- end to end


def test_dfm_train_and_sample_motion_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "motion"
    argv = ["train", "motion-demo", "--run-dir", str(run), "data.root=data/w",
            "data.world.n_sequences=6", *TINY]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "dfm_best_psnr" in printed and "dfm_on_set" in printed
    scores = json.loads((run / "scores.json").read_text())
    for key in ("dfm_psnr", "dfm_best_psnr", "baseline_psnr", "dfm_ssim", "baseline_ssim"):
        assert math.isfinite(scores[key]), key
    assert 0.0 <= scores["dfm_on_set"] <= 1.0 and scores["dfm_step"] == 2
    assert (run / "checkpoints").is_dir() and (run / "baseline" / "checkpoints").is_dir()
    videos = _video_sources(run / "report.html")
    assert len(videos) == 1 and all(v.is_file() and v.suffix == ".mp4" for v in videos)
    assert (run / "motions.png").is_file() and (run / "flow-key.png").is_file()
    # `dfm sample` reloads the EMA weights and samples again with another seed.
    assert main(["sample", str(run), "--seed", "3", "evaluation.num_samples=3"]) == 0
    assert "seed 3" in capsys.readouterr().out
    out = run / "samples" / "seed-3"
    sampled = json.loads((out / "scores.json").read_text())
    assert sampled["seed"] == 3 and sampled["num_samples"] == 3.0
    assert all(v.is_file() for v in _video_sources(out / "report.html"))
    # LPIPS on request: a missing backbone file is one line naming it; with one (randomly
    # initialised AlexNet features, torchvision's key names) the table gains an LPIPS row.
    assert main(["sample", str(run), "evaluation.lpips=alex",
                 f"evaluation.lpips_backbone={tmp_path / 'none.pth'}"]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.pth" in err[0], err
    from torchvision.models import alexnet

    torch.manual_seed(0)
    backbone = tmp_path / "alexnet-random.pth"
    torch.save({f"features.{k}": v for k, v in alexnet().features.state_dict().items()}, backbone)
    out = tmp_path / "lpips"
    argv_lpips = ["sample", str(run), "--out", str(out), "evaluation.lpips=alex",
                  f"evaluation.lpips_backbone={backbone}"]  # fmt: skip
    assert main(argv_lpips) == 0
    sampled = json.loads((out / "scores.json").read_text())
    assert sampled["dfm_best_lpips"] <= sampled["dfm_lpips"]
    assert all(math.isfinite(sampled[k]) for k in ("dfm_lpips", "baseline_lpips"))
    assert "<td>LPIPS</td>" in (out / "report.html").read_text()
    # A rerun on the same directory resumes: nothing left to train.
    assert main([*argv, "--resume"]) == 0
    assert "resumed from step 2" in capsys.readouterr().out


def test_dfm_train_vimeo_on_a_septuplet_folder(
    septuplets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The paper preset at reduced size on Vimeo-format files (cropped, resized to 16 x 32)."""
    run = tmp_path / "run"
    argv = ["train", "vimeo", "--run-dir", str(run), f"data.root={septuplets}",
            "data.crop_size_hw=[20,36]", "trainer.num_workers=0", *TINY,
            "model.image_size_hw=[16,32]", "model.flow_scale=2.0"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    scores = json.loads((run / "scores.json").read_text())
    assert scores["num_inputs"] == 2.0  # the test list's two clips
    assert math.isfinite(scores["dfm_best_psnr"]) and "dfm_on_set" not in scores
    assert scores["heldout"].endswith("test list")


# ----------------------------------------------------------------------------- demo


def test_demo_runs_on_the_shipped_weights(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        section = motion.demo(tmp_path, num_inputs=4, num_pictures=2, num_samples=2, steps=2)
        assert torch.get_num_threads() == 2  # the demo ran on one thread and restored this
    finally:
        torch.set_num_threads(threads)
    files = [*section.images.values(), *section.videos.values()]
    assert len(section.videos) == 2 and len(section.images) == 2
    for path in files:
        assert path.is_file() and path.stat().st_size > 0
        assert path.resolve().is_relative_to(tmp_path.resolve())
    assert {p.suffix for p in section.videos.values()} == {".mp4"}
    assert section.scores and all(math.isfinite(v) for v in section.scores.values())
    assert section.command == "dfm demo --only motion"
    assert section.tables and section.seconds > 0


def test_demo_without_weights_names_the_file_and_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dfm_flow import pretrained

    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "empty")
    with pytest.raises(MissingWeights, match=r"motion_demo_dfm\.safetensors.*train_demo\.py"):
        motion.demo(tmp_path / "out")


def test_only_rank_zero_writes_the_synthetic_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another rank waits for rank 0's ground-truth file (written last) and writes nothing."""
    import threading

    root = tmp_path / "world"
    monkeypatch.setenv("RANK", "1")
    marker = root / "motion_ground_truth.json"
    timer = threading.Timer(0.2, lambda: (root.mkdir(), marker.write_text("{}")))
    timer.start()
    world = motion.SyntheticWorldConfig(n_sequences=2)
    assert motion.ensure_world(root, world, size_hw=(16, 16), layout="triplet") == root
    timer.join()
    assert sorted(p.name for p in root.iterdir()) == ["motion_ground_truth.json"]


@pytest.mark.slow
def test_demo_shows_what_it_claims() -> None:
    """At its default size (16 inputs, K = 8, DDIM 20) and on one thread, the demo finishes
    well under a minute and the shipped DFM beats the regressor on dfm-flow's figures."""
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        section = motion.demo(Path(out))
    s = section.scores
    print(section.seconds, s)
    assert section.seconds < 60
    assert s["dfm_on_set"] > s["baseline_on_set"] + 0.2  # members, not the average
    assert s["dfm_distinct"] >= s["baseline_distinct"] + 1.0  # several members per sprite
    assert s["dfm_best_epe"] < s["baseline_best_epe"]


def test_synthesize_never_writes_over_a_vimeo_folder(
    septuplets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.relative_to(septuplets) for p in septuplets.rglob("*"))
    argv = ["train", "motion-demo", "--run-dir", str(tmp_path / "run"), *TINY]
    assert main([*argv, f"data.root={septuplets}"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("dfm: error: data.root:") and "data.synthesize=false" in line
    assert sorted(p.relative_to(septuplets) for p in septuplets.rglob("*")) == before
