"""Every error a user can cause ends in one line and a non-zero status; faults injected one at a time."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dfm_apps.cli import main
from dfm_core import checkpoint
from dfm_core.checkpoint import list_checkpoints


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Exit status and stderr of ``dfm ARGS`` run in-process."""
    status = main(list(args))
    return status, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    """The stderr of a failed command, checked to be one ``dfm: error:`` line, no traceback."""
    lines = [line for line in err.splitlines() if not re.match(r"dfm: [\w.-]+ -> ", line)]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("dfm: error: "), err
    return lines[0]


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- training faults


def test_non_finite_loss_is_one_line(
    capsys: pytest.CaptureFixture[str], tiny: list[str], tmp_path: Path
) -> None:
    status, err = _run(
        capsys,
        "train",
        "projection",
        "--run-dir",
        str(tmp_path / "nan"),
        *tiny,
        "trainer.optimizer.lr=1e30",
        "trainer.grad_clip=null",
    )
    line = _one_error_line(err)
    assert status == 1
    assert "non-finite loss at step" in line
    assert "no checkpoint had been saved yet" in line  # none was: the message says so


def test_all_checkpoints_damaged_is_one_line_and_newest_damaged_falls_back(
    capsys: pytest.CaptureFixture[str], tiny_run: Path, tiny: list[str], tmp_path: Path
) -> None:
    run = _copy(tiny_run, tmp_path)
    # Newest DFM checkpoint damaged (same size): resume warns in one line and redoes it.
    _flip(run / "checkpoints" / "step_000004" / "model.safetensors")
    status, err = _run(capsys, "train", "projection", "--run-dir", str(run), "--resume", *tiny)
    assert status == 0, err
    warning = [line for line in err.splitlines() if line.startswith("dfm: warning:")]
    assert len(warning) == 1
    assert "skipped damaged checkpoint step_000004" in warning[0]
    assert "resuming from step_000002" in warning[0]
    assert "Traceback" not in err
    # Every checkpoint damaged: refuse in one line (not a silent fresh start).
    for path in (run / "checkpoints").glob("step_*/model.safetensors"):
        _flip(path)
    status, err = _run(capsys, "train", "projection", "--run-dir", str(run), "--resume", *tiny)
    line = _one_error_line(err)
    assert status == 1
    assert "every checkpoint" in line and "damaged" in line


def test_sample_with_damaged_weights_names_the_file(
    capsys: pytest.CaptureFixture[str], tiny_run: Path, tmp_path: Path
) -> None:
    run = _copy(tiny_run, tmp_path)
    for _, path in list_checkpoints(run / "checkpoints"):
        _flip(path / "ema.safetensors")
    status, err = _run(capsys, "sample", str(run), "--seed", "1")
    line = _one_error_line(err)
    assert status == 1
    assert "ema.safetensors" in line and "checksum mismatch" in line


def test_sample_refuses_weights_of_another_config_naming_the_fields(
    capsys: pytest.CaptureFixture[str], tiny_run: Path, tmp_path: Path
) -> None:
    run = _copy(tiny_run, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["hidden"] = 32  # config.yaml edited after training
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    status, err = _run(capsys, "sample", str(run), "--seed", "1")
    line = _one_error_line(err)
    assert status == 2
    assert "model.hidden (16 -> 32)" in line


def test_resuming_with_a_changed_model_names_the_fields(
    capsys: pytest.CaptureFixture[str], tiny_run: Path, tiny: list[str], tmp_path: Path
) -> None:
    run = _copy(tiny_run, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["depth"] = 3
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    status, err = _run(capsys, "train", "projection", "--run-dir", str(run), "--resume")
    assert status == 2
    assert "model.depth (2 -> 3)" in _one_error_line(err)


def _rewrite_checkpoint_config(checkpoint_dir: Path, edit) -> None:
    """Edit a checkpoint's ``config.json`` and re-seal its manifest (as an older version wrote it)."""
    config_path = checkpoint_dir / "config.json"
    saved = json.loads(config_path.read_text())
    edit(saved["run"])
    config_path.write_text(json.dumps(saved))
    manifest_path = checkpoint_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["config.json"] = config_path.stat().st_size
    manifest["sha256"]["config.json"] = hashlib.sha256(config_path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def test_a_run_from_before_a_schema_field_was_added_still_resumes(
    capsys: pytest.CaptureFixture[str], tiny_run: Path, tmp_path: Path
) -> None:
    # problem.target_views was added with a default that keeps the old behaviour; a run whose
    # checkpoints predate it must resume. A missing key whose value now differs from the
    # default (model.hidden: TINY sets 16) is still a different model and is refused.
    run = _copy(tiny_run, tmp_path)
    newest = list_checkpoints(run / "checkpoints")[-1][1]
    _rewrite_checkpoint_config(newest, lambda run: run["problem"].pop("target_views"))
    status, err = _run(
        capsys, "train", "projection", "--run-dir", str(run), "--resume", "trainer.max_steps=6"
    )
    assert status == 0, err
    assert list_checkpoints(run / "checkpoints")[-1][0] == 6

    newest = list_checkpoints(run / "checkpoints")[-1][1]
    _rewrite_checkpoint_config(newest, lambda run: run["model"].pop("hidden"))
    status, err = _run(
        capsys, "train", "projection", "--run-dir", str(run), "--resume", "trainer.max_steps=8"
    )
    assert status == 2
    assert re.search(r"model\.hidden \(\d+ -> 16\)", _one_error_line(err))


# ----------------------------------------------------------------------------- OS faults


def test_run_dir_that_is_a_file(
    capsys: pytest.CaptureFixture[str], tiny: list[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    status, err = _run(capsys, "train", "projection", "--run-dir", str(blocker), *tiny)
    line = _one_error_line(err)
    assert status == 1
    assert str(blocker) in line and "File exists" in line


def test_disk_full_while_checkpointing(
    capsys: pytest.CaptureFixture[str],
    tiny: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_open = checkpoint._open_for_write

    def full_for_state(path: Path):
        # /dev/full: every write fails with a real ENOSPC from the kernel.
        return open("/dev/full", "wb") if path.name == "state.pt" else real_open(path)

    monkeypatch.setattr(checkpoint, "_open_for_write", full_for_state)
    run = tmp_path / "full"
    status, err = _run(capsys, "train", "projection", "--run-dir", str(run), *tiny)
    line = _one_error_line(err)
    assert status == 1
    assert line == (
        f"dfm: error: no space left writing {run / 'checkpoints' / 'step_000002' / 'state.pt'}"
    )
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_read_only_run_dir(
    capsys: pytest.CaptureFixture[str],
    tiny: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    def read_only(path: Path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(checkpoint, "_open_for_write", read_only)
    status, err = _run(capsys, "train", "projection", "--run-dir", str(tmp_path / "ro"), *tiny)
    line = _one_error_line(err)
    assert status == 1
    assert "cannot write" in line and "model.safetensors: Read-only file system" in line


def test_cuda_device_without_cuda(
    capsys: pytest.CaptureFixture[str],
    tiny: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, err = _run(
        capsys,
        "train",
        "projection",
        "--run-dir",
        str(tmp_path / "c"),
        *tiny,
        "trainer.device=cuda",
    )
    line = _one_error_line(err)
    assert status == 1
    assert "TrainerConfig.device='cuda' but CUDA is not available" in line


# ----------------------------------------------------------------------------- config / command line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app: projection\nmodel: [unclosed\n", "config.yaml: not a valid config file"),
        ("!!python/object/apply:os.system ['touch PWNED']\n", "python/object/apply:os.system"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_hostile_or_broken_config_yaml(
    capsys: pytest.CaptureFixture[str],
    tiny_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    expected: str,
) -> None:
    run = _copy(tiny_run, tmp_path)
    (run / "config.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    status, err = _run(capsys, "sample", str(run))
    line = _one_error_line(err)
    assert status == 2
    assert expected in line
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("args", "status", "expected"),
    [
        (["train", "projection", "--resume"], 2, "dfm train --resume needs --run-dir"),
        (["train", "projection-6d", "--resume"], 2, "dfm train --resume needs --run-dir"),
        (
            ["launch", "projection", "--resume", "--local", "--dry-run"],
            2,
            "--resume needs --run-dir",
        ),
        (["launch", "projection", "--local", "--nodes", "2", "--dry-run"], 2, "--nodes 2"),
        (["sample", "/nonexistent/run"], 2, "not a run directory"),
    ],
)
def test_command_line_mistakes(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    status: int,
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # a bug that starts a run anyway must not write runs/ here
    got, err = _run(capsys, *args)
    assert got == status
    assert expected in _one_error_line(err)


def test_sbatch_rejection_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import submitit  # noqa: F401  (a dependency of dfm-apps: the launcher needs it)

    fake = tmp_path / "bin"
    fake.mkdir()
    sbatch = fake / "sbatch"  # a cluster that refuses the job, as sbatch does
    sbatch.write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n"
    )
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    status, err = _run(
        capsys,
        "launch",
        "projection",
        "--slurm-partition",
        "nope",
        "--run-dir",
        str(tmp_path / "r"),
    )
    assert status != 0
    # sbatch's own stderr passes through; dfm adds exactly one line after it.
    line = _one_error_line("\n".join(x for x in err.splitlines() if not x.startswith("sbatch:")))
    assert "invalid partition specified: nope" in line


def test_debug_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dfm_apps.runs import RunError

    with pytest.raises(RunError, match="not a run directory"):
        main(["--debug", "sample", str(tmp_path)])
    with pytest.raises(RunError, match="not a run directory"):
        main(["sample", str(tmp_path), "--debug"])  # anywhere on the line
    monkeypatch.setenv("DFM_DEBUG", "1")
    with pytest.raises(RunError):
        main(["sample", str(tmp_path)])


def test_an_unexpected_exception_is_still_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dfm_apps import runs

    monkeypatch.chdir(tmp_path)

    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(runs, "execute", broken)
    status, err = _run(capsys, "train", "projection", "--run-dir", str(tmp_path / "x"))
    assert status == 1
    line = _one_error_line(err)
    assert "KeyError: 'surprise'" in line and "--debug" in line


# ----------------------------------------------------------------------------- signals, end to end


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_and_exits_with_one_line(tiny: list[str], tmp_path: Path, signum: int) -> None:
    """A real `dfm train` process signalled mid-training: checkpoint, one line, status 128+N."""
    run = tmp_path / "sig"
    slow = [o for o in tiny if not o.startswith(("trainer.max_steps", "trainer.checkpoint_every"))]
    args = ["train", "projection", "--run-dir", str(run), *slow]
    args += ["trainer.max_steps=100000", "trainer.checkpoint_every=100000"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfm_apps.cli", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"dfm: stopped by {name} after step ")
    step = int(last.split("after step ")[1].split(";")[0])
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [step]
    assert step >= 3
