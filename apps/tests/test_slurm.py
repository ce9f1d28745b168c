"""`dfm submit` against a real Slurm on this machine (``nox -s slurm``; needs root).

The cluster is Debian's munge/slurmctld/slurmd started by ``tools/slurm_cluster.py``:
one node for the pre-emption checks, two emulated nodes for the 2-task gloo jobs. There
is no accounting database, so ``job.result()`` could wait forever on a job that died;
every wait here goes through ``launch.wait`` (which polls ``scontrol``) with a deadline.

The reference for "resumes correctly" is independent of Slurm and submitit: the same
config trained uninterrupted by ``dfm train`` in this process; every tensor of the final
checkpoints (DFM and baseline, weights and EMA) must be bit-identical.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import cloudpickle
import pytest
import submitit
import torch
from safetensors.torch import load_file

from dfm_apps.cli import main
from dfm_apps.launch import (
    FINAL_STATES,
    LaunchOptions,
    distributed_env,
    make_executor,
    slurm_job_state,
    wait,
)
from dfm_core.checkpoint import list_checkpoints, load_train_state

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "tools" / "slurm_cluster.py"
STATE_DIR = Path(os.environ.get("DFM_SLURM_DIR", "/tmp/dfm-slurm"))
JOB_TIMEOUT_S = 240  # per wait; a requeue takes ~25 s, the whole module ~2-3 min

# Long enough to be pre-empted twice (~20-40 s of training at 50-100 steps/s on a
# shared 2-core machine), small enough that a checkpoint costs milliseconds.
MAX_STEPS = 1500
TRAIN = [
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.checkpoint_every=50",
    "trainer.keep_last=100",
    "trainer.log_every=50",
    "trainer.optimizer.warmup_steps=1",
    "trainer.progress=false",
    "baseline_steps=20",
    "model.hidden=64",
    "model.depth=2",
    "data.batch_size=64",
    "data.length=512",
    "schedule.num_timesteps=50",
    "evaluation.num_contexts=4",
    "evaluation.num_samples=8",
    "evaluation.steps=3",
    "evaluation.plot_contexts=1",
]


def _cluster(action: str, nodes: int = 1) -> None:
    if os.geteuid() != 0:
        pytest.fail("the slurm checks start Slurm daemons and need root (nox -s slurm as root)")
    argv = [sys.executable, str(CLUSTER), action, "--nodes", str(nodes)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DFM_SLURM_DIR": str(STATE_DIR)},
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv[1:])} failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Callable[[int], None]]:
    """``cluster(nodes)`` makes sure a Slurm of that shape is up; stopped at the end."""
    yield lambda nodes: _cluster("start", nodes)
    _cluster("stop")


def _poll(what: str, check: Callable[[], object], job_id: str, timeout: float = JOB_TIMEOUT_S):
    """Wait for ``check()`` to return something truthy while the job is still alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        fields = slurm_job_state(job_id) or {}
        if fields.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", None):
            pytest.fail(f"waiting for {what}: job {job_id} is {fields.get('JobState')}")
        time.sleep(0.2)
    pytest.fail(f"waiting for {what}: nothing after {timeout:.0f} s (job {job_id})")


def _newest_step(run_dir: Path, above: int) -> int | None:
    found = list_checkpoints(run_dir / "checkpoints")
    return found[-1][0] if found and found[-1][0] > above else None


def _submit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """``dfm submit ARGV``: the job id and what the command printed."""
    assert main(["submit", *argv]) == 0
    out = capsys.readouterr().out
    match = re.search(r"submitted job (\d+)", out)
    assert match, out
    return match.group(1), out


def _final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the newest DFM and baseline checkpoints, keyed by file and name."""
    tensors = {}
    for sub in ("checkpoints", "baseline/checkpoints"):
        step, path = list_checkpoints(run_dir / sub)[-1]
        files = sorted(path.glob("*.safetensors"))
        assert {f.name for f in files} >= {"model.safetensors", "ema.safetensors"}, files
        for file in files:
            for name, value in load_file(file).items():
                tensors[f"{sub}/{file.name}:{name}"] = value
        tensors[f"{sub}:step"] = torch.tensor(step)
    return tensors


def _final_state(job_id: str, timeout: float = 60) -> str | None:
    """The job's state once it is final (the result file is written just before)."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = (slurm_job_state(job_id) or {}).get("JobState")
        if state in FINAL_STATES:
            break
        time.sleep(0.5)
    return state


def _restarts(job_id: str) -> int:
    return int((slurm_job_state(job_id) or {}).get("Restarts", "-1"))


def _job_log(job: submitit.SlurmJob) -> str:
    paths = (job.paths.stdout, job.paths.stderr)
    return "".join(p.read_text() for p in paths if p.exists())


def _scontrol(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scontrol", *argv], capture_output=True, text=True, timeout=30)


def _restart_after_requeue(job_id: str, requeued_at: float) -> None:
    """Wait until the requeued job runs again, releasing it if Slurm held it.

    A suspended job that is requeued comes back held (``JobHeldAdmin``, priority 0): without
    the release it would never start again. Only a start *after* the requeue counts: right
    after ``scontrol requeue`` a suspended job is resumed to be killed and can briefly show
    RUNNING with its restart count already raised (a CI run returned there, never released
    the hold, and the job sat pending until the deadline).
    """
    deadline = time.monotonic() + JOB_TIMEOUT_S
    fields: dict[str, str] = {}
    while time.monotonic() < deadline:
        fields = slurm_job_state(job_id) or {}
        state, reason = fields.get("JobState"), fields.get("Reason", "")
        if state == "PENDING" and (reason.startswith("JobHeld") or fields.get("Priority") == "0"):
            done = _scontrol("release", job_id)
            assert done.returncode == 0, done.stderr
        started = fields.get("StartTime", "")
        if state == "RUNNING" and started[:1].isdigit():
            if datetime.fromisoformat(started).timestamp() >= int(requeued_at):
                return
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not run again after `scontrol requeue`: {fields}")


def test_preempted_and_requeued_job_ends_with_the_uninterrupted_weights(
    cluster: Callable[[int], None], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two interruptions at points the test controls, then bit-identical final weights.

    Nothing here races the job: the reference is trained before the job exists (so the
    job's training never competes with it for the CPU while the test waits for a step),
    and the second interruption freezes the job (``scontrol suspend``) before reading
    which checkpoint it must resume from, so the job cannot finish or save in between.
    """
    cluster(1)
    # The uninterrupted reference, independent of Slurm and submitit.
    reference = tmp_path / "reference"
    assert main(["train", "projection", "--run-dir", str(reference), *TRAIN]) == 0
    capsys.readouterr()

    run_dir = tmp_path / "slurm-run"
    start = time.monotonic()
    # --time 20: submitit counts a signal in the first min(0.8 T, T - 10 min) as a
    # pre-emption, later ones as a time-out (a budget of 3); 20 min keeps it a pre-emption.
    job_id, _ = _submit(
        [
            "projection",
            "--slurm-partition",
            "debug",
            "--gpus",
            "0",
            "--time",
            "20",
            "--run-dir",
            str(run_dir),
            *TRAIN,
        ],
        capsys,
    )
    job = submitit.SlurmJob(folder=run_dir / "submitit", job_id=job_id)

    # 1. Pre-emption as Slurm does it (SIGTERM, then the USR2 submitit listens to): the
    #    trainer saves after its current step, then submitit's handler calls
    #    TrainJob.checkpoint() on rank 0 and requeues the job.
    first = _poll("a first checkpoint", lambda: _newest_step(run_dir, 0), job_id)
    job._interrupt()
    _poll("the requeue", lambda: _restarts(job_id) >= 1, job_id)
    log = _job_log(job)
    assert "Calling checkpoint method" in log and f"Requeued job {job_id}" in log, log[-2000:]
    saved = re.search(r"stopped by SIGUSR2 after step (\d+); checkpoint saved", log)
    assert saved, log[-2000:]
    stopped_at = int(saved.group(1))
    assert first <= stopped_at < MAX_STEPS
    assert list_checkpoints(run_dir / "checkpoints")[-1][0] == stopped_at  # saved on the signal

    # 2. An administrator's `scontrol requeue` of a job frozen mid-run: no handler runs,
    #    the processes are killed, and the job starts again from its submission. It must
    #    resume from exactly the newest complete checkpoint that existed when it froze.
    _poll("the requeued job's next checkpoint", lambda: _newest_step(run_dir, stopped_at), job_id)
    frozen = _scontrol("suspend", job_id)
    assert frozen.returncode == 0, f"scontrol suspend {job_id}: {frozen.stderr}"
    resumed = list_checkpoints(run_dir / "checkpoints")[-1][0]
    assert stopped_at < resumed < MAX_STEPS
    requeued_at = time.time()
    requeued = _scontrol("requeue", job_id)
    assert requeued.returncode == 0, f"scontrol requeue {job_id}: {requeued.stderr}"
    _restart_after_requeue(job_id, requeued_at)
    assert _restarts(job_id) >= 2

    results = wait(job, timeout_s=JOB_TIMEOUT_S)
    seconds = time.monotonic() - start
    result = results[0]
    log = _job_log(job)
    assert result["dfm_step"] == MAX_STEPS, log[-2000:]
    assert result["resumed_from"] == resumed, (  # the last start's
        f"resumed from {result['resumed_from']}, newest checkpoint when frozen {resumed}; "
        f"checkpoints now {[s for s, _ in list_checkpoints(run_dir / 'checkpoints')]}\n"
        f"{log[-3000:]}"
    )
    assert _restarts(job_id) == 2
    assert _final_state(job_id) == "COMPLETED"

    got, want = _final_tensors(run_dir), _final_tensors(reference)
    assert got.keys() == want.keys()
    different = [key for key in want if not torch.equal(got[key], want[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    print(
        f"\nslurm: saved on the signal at step {stopped_at}, frozen and requeued after "
        f"step {resumed}, requeued twice, finished in {seconds:.0f} s"
    )


def _gloo_all_reduce() -> dict[str, object]:
    """A task of a 2-task job: rendezvous from the job environment, one all_reduce."""
    import torch.distributed as dist

    job_env = submitit.JobEnvironment()
    os.environ.update(distributed_env(job_env))
    dist.init_process_group("gloo", init_method="env://")
    try:
        value = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(value)
        return {
            "rank": dist.get_rank(),
            "world": dist.get_world_size(),
            "node": os.environ.get("SLURMD_NODENAME"),
            "sum": value.item(),
        }
    finally:
        dist.destroy_process_group()


def test_two_task_gloo_jobs_across_two_emulated_nodes(
    cluster: Callable[[int], None], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster(2)
    # A bare collective: each task on its own node, both see 1 + 2.
    start = time.monotonic()
    options = LaunchOptions(partition="debug", gpus=0, nodes=2, time_min=20, name="dfm-gloo")
    # The job cannot import this test module: ship the function by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    job = make_executor(options, tmp_path / "gloo").submit(_gloo_all_reduce)
    results = sorted(wait(job, timeout_s=JOB_TIMEOUT_S), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world"] == 2 and r["sum"] == 3.0 for r in results)
    assert {r["node"] for r in results} == {"dfm-n1", "dfm-n2"}
    gloo_seconds = time.monotonic() - start

    # DDP training through `dfm submit --nodes 2`: one CPU task per node, gloo.
    run_dir = tmp_path / "ddp"
    small = [arg for arg in TRAIN if not arg.startswith("trainer.max_steps")]
    job_id, out = _submit(
        [
            "projection",
            "--slurm-partition",
            "debug",
            "--gpus",
            "0",
            "--nodes",
            "2",
            "--time",
            "20",
            "--run-dir",
            str(run_dir),
            "--wait",  # through the command's own watchdog
            "--wait-timeout",
            str(JOB_TIMEOUT_S),
            "trainer.max_steps=100",
            *small,
        ],
        capsys,
    )
    assert "noise floor" in out and "DFM 100 steps" in out, out  # the summary of rank 0
    job = submitit.SlurmJob(folder=run_dir / "submitit", job_id=job_id, tasks=(0, 1))
    results = wait(job, timeout_s=30)  # already there
    assert results[0]["dfm_step"] == 100 and results[1] is None  # rank 0 reports
    assert _final_state(job_id) == "COMPLETED"
    logs = [job.task(i).paths.stdout.read_text() for i in range(2)]
    assert "task 0/2 on dfm-n1" in logs[0] and "task 1/2 on dfm-n2" in logs[1], logs
    assert all("rendezvous dfm-n1:" in log for log in logs)
    step, path = list_checkpoints(run_dir / "checkpoints")[-1]
    state = load_train_state(path)
    assert step == 100 and state["world_size"] == 2
    print(f"\nslurm: 2-node gloo all_reduce {gloo_seconds:.0f} s, 2-node DDP job done")
