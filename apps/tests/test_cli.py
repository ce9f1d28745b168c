"""`dfm demo/train/sample/data` end to end on a tiny config, in-process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from dfm_apps.cli import main
from dfm_core.checkpoint import list_checkpoints, load_weights


def _metric_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_demo_writes_the_whole_run_directory(tiny_run: Path) -> None:
    for name in ("config.yaml", "samples.png", "denoising.png", "scores.json", "report.html"):
        assert (tiny_run / name).is_file(), name
    assert [step for step, _ in list_checkpoints(tiny_run / "checkpoints")] == [2, 4]
    assert [step for step, _ in list_checkpoints(tiny_run / "baseline" / "checkpoints")] == [2, 3]
    saved = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 4 and saved["evaluation"]["num_samples"] == 8
    scores = json.loads((tiny_run / "scores.json").read_text())
    assert {"dfm", "baseline", "noise_floor", "dfm_ratio", "baseline_ratio"} <= set(scores)
    assert scores["dfm_step"] == 4 and scores["baseline_step"] == 3
    html = (tiny_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # samples, denoising, loss curves
    assert "energy distance" in html and "max_steps: 4" in html


def test_a_config_trains_the_same_weights_every_time(
    tiny: list[str], tiny_run: Path, tmp_path: Path
) -> None:
    # This process's global RNG has been used since tiny_run trained: model init must not
    # depend on it.
    assert main(["train", "projection", "--run-dir", str(tmp_path), *tiny]) == 0
    for sub in ("", "baseline"):
        first, _ = load_weights(tiny_run / sub, ema=True)
        again, _ = load_weights(tmp_path / sub, ema=True)
        assert all(torch.equal(first[key], again[key]) for key in first)
    assert (tmp_path / "scores.json").read_text() == (tiny_run / "scores.json").read_text()


def test_rerunning_the_demo_resumes_without_retraining(
    tiny: list[str], tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run, run_dir)
    checkpoint = run_dir / "checkpoints" / "step_000004" / "model.safetensors"
    before = checkpoint.stat().st_mtime_ns
    assert main(["train", "projection", "--run-dir", str(run_dir), *tiny]) == 0  # no --resume
    captured = capsys.readouterr()
    assert "resumed from step 4" in captured.out
    assert f"{run_dir} holds a run: resuming it" in captured.err
    assert checkpoint.stat().st_mtime_ns == before  # nothing retrained, nothing rewritten
    assert _metric_steps(run_dir) == [1, 2, 3, 4]
    # A larger max_steps continues the same run from step 4.
    assert (
        main(["train", "projection", "--run-dir", str(run_dir), "--resume", "trainer.max_steps=6"])
        == 0
    )
    assert _metric_steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_steps"] == 6
    assert "trainer.max_steps 4 -> 6 at step 4" in capsys.readouterr().err


def test_resuming_with_another_length_says_where_the_learning_rate_goes() -> None:
    """The cosine's closed form at the saved step under the old and the new max_steps."""
    import math

    from omegaconf import OmegaConf

    from dfm_apps.runs import schedule_change_note

    optimizer = {"lr": 2e-4, "warmup_steps": 500, "schedule": "cosine", "min_lr_ratio": 0.1}
    stored = OmegaConf.create({"trainer": {"max_steps": 9000, "optimizer": optimizer}})
    longer = OmegaConf.merge(stored, {"trainer": {"max_steps": 13000}})
    low = 2e-4 * 0.1
    now = low + (2e-4 - low) * 0.5 * (1 + math.cos(math.pi * (9000 - 500) / (13000 - 500)))
    note = schedule_change_note(stored, longer, 9000)
    assert note is not None and f"{low:.3g} -> {now:.3g}" in note and "9000 -> 13000" in note
    assert schedule_change_note(stored, stored, 9000) is None  # same length: nothing to say
    assert schedule_change_note(stored, longer, None) is None  # nothing trained yet
    constant = OmegaConf.merge(stored, {"trainer": {"optimizer": {"schedule": "constant"}}})
    constant_longer = OmegaConf.merge(constant, {"trainer": {"max_steps": 13000}})
    assert schedule_change_note(constant, constant_longer, 9000) is None  # no schedule to move


def test_train_refuses_to_reshape_a_run(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Resuming is automatic, but never under other weight-defining settings.
    assert main(["train", "projection", "--run-dir", str(tiny_run), "model.hidden=32"]) == 2
    assert "model.hidden" in capsys.readouterr().err
    assert main(["train", "projection", "--run-dir", str(tmp_path / "none"), "--resume"]) == 2
    assert "holds no run to continue" in capsys.readouterr().err
    assert (
        main(["train", "projection", "--run-dir", str(tiny_run), "--resume", "model.hidden=32"])
        == 2
    )
    assert "model.hidden" in capsys.readouterr().err
    assert main(["train", "projection-6d", "--run-dir", str(tiny_run), "--resume"]) == 2
    assert "preset 'projection'" in capsys.readouterr().err


def test_sample_draws_a_new_picture_from_the_ema_weights(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fresh"
    argv = ["sample", str(tiny_run), "--seed", "7", "--out", str(out), "evaluation.num_contexts=2"]
    assert main(argv) == 0
    assert "seed 7" in capsys.readouterr().out
    assert (out / "samples.png").is_file() and (out / "report.html").is_file()
    scores = json.loads((out / "scores.json").read_text())
    assert scores["seed"] == 7 and scores["num_contexts"] == 2 and scores["dfm_step"] == 4


def test_sample_accepts_only_evaluation_overrides(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sample", str(tiny_run), "model.hidden=8"]) == 2
    assert "model.hidden" in capsys.readouterr().err
    assert main(["sample", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["projection-6d"])
def test_every_other_preset_trains_two_steps(tiny: list[str], preset: str, tmp_path: Path) -> None:
    # The demo preset is exercised by tiny_run; this covers the rest (d > 2 plots too).
    overrides = [o for o in tiny if not o.startswith(("trainer.max_steps", "baseline_steps"))]
    argv = [
        "train",
        preset,
        "--run-dir",
        str(tmp_path),
        *overrides,
        "trainer.max_steps=2",
        "baseline_steps=2",
    ]
    assert main(argv) == 0
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "denoising.png").is_file()


def test_data_forwards_to_dfm_data(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("dfm_data.cli")
    fake.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dfm_data.cli", fake)
    assert main(["data", "synth", "objects", "out", "--seed", "3"]) == 0
    assert seen == [["synth", "objects", "out", "--seed", "3"]]


def test_data_without_dfm_data_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "dfm_data.cli", None)  # makes the import fail
    assert main(["data", "validate"]) == 2
    assert "dfm-data" in capsys.readouterr().err


def test_presets_command_lists_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "projection" in out and "projection-6d" in out


def test_installed_console_script() -> None:
    script = Path(sys.executable).with_name("dfm")
    assert script.is_file(), "the dfm console script is not installed in this environment"
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    for command in ("demo", "eval", "export", "train", "sample", "launch", "data"):
        assert command in result.stdout
