"""The submitit launcher: rendezvous variables, executor parameters, a debug-executor run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit
from submitit.helpers import DelayedSubmission

from dfm_apps.cli import main
from dfm_apps.config import load_preset, to_container
from dfm_apps.launch import LaunchOptions, TrainJob, distributed_env, make_executor, master_port


def test_distributed_env_from_the_job_environment() -> None:
    job_env = SimpleNamespace(
        hostnames=["node-a", "node-b"],
        job_id="4242",
        global_rank=5,
        local_rank=1,
        num_tasks=8,
        num_nodes=2,
    )
    env = distributed_env(job_env)
    assert env == {
        "MASTER_ADDR": "node-a",
        "MASTER_PORT": str(master_port("4242")),
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
    }
    assert 20000 <= master_port("4242") < 60000


def test_slurm_job_has_one_task_per_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No SLURM here: pretend srun exists and read the sbatch script submitit would write.
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    options = LaunchOptions(partition="gpu", gpus=4, nodes=2, time_min=90, name="dfm-demo")
    executor = make_executor(options, tmp_path)
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=90",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --job-name=dfm-demo",
    ):
        assert line in script


def test_launch_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="slurm-partition"):
        LaunchOptions(cluster="slurm", partition=None)
    assert main(["launch", "projection", "--gpus", "2", "--dry-run"]) == 2
    assert "--slurm-partition" in capsys.readouterr().err


def test_checkpoint_requeues_the_same_job(tiny: list[str], tmp_path: Path) -> None:
    job = TrainJob(to_container(load_preset("projection", tiny)), tmp_path)
    delayed = job.checkpoint()
    assert isinstance(delayed, DelayedSubmission)
    assert isinstance(delayed.function, TrainJob)
    assert delayed.function.config == job.config and delayed.function.run_dir == job.run_dir


def test_debug_executor_runs_and_a_requeued_job_resumes(
    tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    argv = [
        "launch",
        "projection",
        "--cluster",
        "debug",
        "--gpus",
        "0",
        "--run-dir",
        str(run_dir),
        *tiny,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "submitted job" in out and "noise floor" in out
    assert json.loads((run_dir / "scores.json").read_text())["dfm_step"] == 4
    assert (run_dir / "submitit").is_dir()
    # What submitit does on preemption: submit the checkpoint()'s delayed submission again.
    delayed = TrainJob(to_container(load_preset("projection", tiny)), run_dir).checkpoint()
    executor = submitit.AutoExecutor(folder=tmp_path / "requeue", cluster="debug")
    result = executor.submit(delayed.function, *delayed.args, **delayed.kwargs).result()
    assert result is not None and result["resumed_from"] == 4
    assert result["files"]["report"] == str(run_dir / "report.html")
