"""`launch.wait`, the watchdog for clusters without accounting (default suite, no Slurm).

A stand-in ``scontrol`` on PATH plays the controller; submitit's own result files play
the job. Without ``sacct``, ``job.result()`` would wait forever on a job that died
without a result: ``wait`` must give up quickly, naming the state and the log tail.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import submitit
from submitit.core import utils

from dfm_apps.launch import LaunchError, slurm_job_state, wait


def _fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_file: Path) -> None:
    """An ``scontrol show job -o ID`` that prints the state written in ``state_file``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(
        "#!/bin/sh\n"
        f'state=$(cat "{state_file}")\n'
        'if [ "$state" = GONE ]; then echo "slurm_load_jobs error: Invalid job id" >&2; exit 1; fi\n'
        'echo "JobId=$4 JobName=dfm UserId=root(0) JobState=$state Reason=None Restarts=1"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _job(tmp_path: Path, job_id: str = "123") -> submitit.SlurmJob:
    folder = tmp_path / "logs"
    folder.mkdir(exist_ok=True)
    return submitit.SlurmJob(folder=folder, job_id=job_id)


def test_scontrol_fields_are_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    state.write_text("RUNNING")
    _fake_scontrol(tmp_path, monkeypatch, state)
    fields = slurm_job_state("77")
    assert fields is not None
    assert (fields["JobId"], fields["JobState"], fields["Restarts"]) == ("77", "RUNNING", "1")
    state.write_text("GONE")
    assert slurm_job_state("77") is None


@pytest.mark.parametrize("final", ["FAILED", "GONE"])
def test_wait_gives_up_on_a_job_that_ended_without_a_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, final: str
) -> None:
    state = tmp_path / "state"
    state.write_text(final)
    _fake_scontrol(tmp_path, monkeypatch, state)
    job = _job(tmp_path)
    job.paths.stderr.write_text("Traceback (most recent call last):\nRuntimeError: out of cheese\n")
    start = time.monotonic()
    shown = "FAILED" if final == "FAILED" else "unknown to Slurm"
    with pytest.raises(LaunchError, match=rf"job 123 ended \({shown}\) without a result"):
        wait(job, poll_s=0.05, grace_s=0.3, timeout_s=60)
    assert time.monotonic() - start < 10
    with pytest.raises(LaunchError, match="out of cheese"):  # the log tail comes along
        wait(job, poll_s=0.05, grace_s=0.3, timeout_s=60)


def test_wait_returns_the_result_of_a_running_job_once_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.write_text("RUNNING")
    _fake_scontrol(tmp_path, monkeypatch, state)
    job = _job(tmp_path)
    with pytest.raises(LaunchError, match="gave no result within"):  # still running
        wait(job, poll_s=0.05, timeout_s=0.5)
    # What submitit's job process writes on success; the state may lag behind it.
    utils.cloudpickle_dump(("success", {"dfm_step": 4}), job.paths.result_pickle)
    assert wait(job, poll_s=0.05, timeout_s=5) == [{"dfm_step": 4}]
