"""Submit training to SLURM (or run it locally) with submitit: ``dfm submit``.

One task per GPU: ``nodes x gpus`` tasks in all. Each task reads its place in the job
from ``submitit.JobEnvironment()``, exports the ``torch.distributed`` rendezvous
variables (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)
and calls the same entry point as ``dfm train`` (``runs.execute``), whose trainer then
joins the process group.

Preemption and time-outs: SLURM sends submitit's signal (``USR2``) ahead of the time
limit (``slurm_signal_delay_s``) or on pre-emption. While training, ``TrainJob`` holds
it under the core's ``graceful_stop``: every rank finishes its current step, the
trainer saves a checkpoint (collectively, all ranks after the same step, since the stop
request is all-reduced) and raises ``TrainingInterrupted``. Only then does ``TrainJob``
hand over to submitit's own handler, which on rank 0 calls ``TrainJob.checkpoint`` (the
same job as a ``DelayedSubmission``), runs ``scontrol requeue`` and exits; the other
ranks exit 0 without a result (a failing task could make ``srun --kill-on-bad-exit``
kill rank 0 before it requeued). The requeued job resumes exactly at the saved step;
it keeps its job id, so every task derives the same rendezvous port again. A signal
outside training (while importing or evaluating) goes to submitit's handler directly,
and the new job resumes from the newest periodic checkpoint (at most
``trainer.checkpoint_every`` steps redone). ``SIGTERM`` stays submitit's: it is ignored,
as Slurm sends it before the signal on pre-emption; a job killed outright (``scontrol
requeue``, ``scancel``) resumes from its newest periodic checkpoint.

Waiting: without Slurm accounting (``sacct``) submitit cannot tell that a job died
without writing a result and ``job.result()`` then waits forever; :func:`wait` polls
``scontrol show job`` as well and gives up with the job's log tail.

Proven against a real Slurm (``nox -s slurm``, ``apps/tests/test_slurm.py``): a job
pre-empted by the signal and one requeued by ``scontrol requeue`` both resume and end
with the same weights as an uninterrupted run; a 2-node gloo job trains across two
emulated nodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import submitit
from submitit.helpers import DelayedSubmission

from dfm_apps.runs import execute
from dfm_core.trainer import TrainingInterrupted, graceful_stop

__all__ = [
    "FINAL_STATES",
    "LaunchError",
    "LaunchOptions",
    "TrainJob",
    "distributed_env",
    "make_executor",
    "master_port",
    "slurm_job_state",
    "submit",
    "wait",
]

CLUSTERS = ("slurm", "local", "debug")


def master_port(job_id: str) -> int:
    """A rendezvous port in [20000, 60000) that every task of one job derives alike."""
    return 20000 + zlib.crc32(str(job_id).encode()) % 40000


def distributed_env(job_env: Any) -> dict[str, str]:
    """The ``torch.distributed`` env:// variables for a task of a submitit job.

    Args:
        job_env: ``submitit.JobEnvironment()`` (anything with its attributes).
    """
    tasks_per_node = max(1, job_env.num_tasks // max(1, job_env.num_nodes))
    return {
        "MASTER_ADDR": str(job_env.hostnames[0]),
        "MASTER_PORT": os.environ.get("MASTER_PORT") or str(master_port(job_env.job_id)),
        "RANK": str(job_env.global_rank),
        "WORLD_SIZE": str(job_env.num_tasks),
        "LOCAL_RANK": str(job_env.local_rank),
        "LOCAL_WORLD_SIZE": str(tasks_per_node),
    }


class TrainJob:
    """The callable submitit runs in every task: rendezvous, then ``runs.execute``.

    Holds only plain data (the resolved config as a dict and the run directory), so it
    pickles without the caller's objects.
    """

    def __init__(self, config: Mapping[str, Any], run_dir: str | Path) -> None:
        self.config = dict(config)
        self.run_dir = str(run_dir)

    def __call__(self) -> dict[str, Any] | None:
        job_env = submitit.JobEnvironment()
        env = distributed_env(job_env)
        os.environ.update(env)
        # One line per task in its log: where it runs and how it meets the others.
        print(
            f"dfm: job {job_env.job_id} task {env['RANK']}/{env['WORLD_SIZE']} on "
            f"{os.environ.get('SLURMD_NODENAME', socket.gethostname())} "
            f"(local rank {env['LOCAL_RANK']}, rendezvous {env['MASTER_ADDR']}:{env['MASTER_PORT']})",
            flush=True,
        )
        try:
            with _stop_on_requeue_signal(job_env):
                result = execute(self.config, self.run_dir)
        except TrainingInterrupted as stop:
            print(f"dfm: rank {env['RANK']}: {stop}", flush=True)
            _requeue(job_env, stop)
        if result is not None:  # plain data back to the submitter (paths as strings)
            result = {**result, "run_dir": str(result["run_dir"])}
            result["files"] = {name: str(path) for name, path in result["files"].items()}
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on preemption/time-out: requeue the same job.

        The new job resumes from the run's newest checkpoint (``execute`` always resumes).
        """
        return DelayedSubmission(TrainJob(self.config, self.run_dir), *args, **kwargs)


def _requeue_signal(job_env: Any) -> int:
    """submitit's pre-emption/time-out signal (``USR2`` unless configured otherwise)."""
    name = "SIG" + getattr(type(job_env), "USR_SIG", "USR2")
    return int(getattr(signal, name, signal.SIGUSR2))


def _stop_on_requeue_signal(job_env: Any) -> contextlib.AbstractContextManager[None]:
    """``graceful_stop`` for submitit's signal in the main thread (where submitit runs
    a job); a no-op elsewhere (signal handlers can only be set in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return graceful_stop((_requeue_signal(job_env),))


def _requeue(job_env: Any, stop: TrainingInterrupted) -> NoReturn:
    """After the trainer saved on submitit's signal: requeue as submitit would have.

    submitit's handler (restored by ``graceful_stop`` on exit) checkpoints and requeues
    on rank 0 and ends the process; on the other ranks it returns, and they exit 0.
    Without a submitit handler (not a submitit job), the interruption is re-raised.

    Raises:
        TrainingInterrupted: ``stop``, when no submitit handler is installed.
        SystemExit: always otherwise (requeued, or another rank done).
    """
    signum = _requeue_signal(job_env)
    handler = signal.getsignal(signum)
    if not callable(handler):
        raise stop
    handler(signum, None)  # rank 0: dumps checkpoint(), `scontrol requeue`, sys.exit(-1)
    sys.exit(0)


@dataclass
class LaunchOptions:
    """Where and how big a job is."""

    cluster: str = "slurm"
    """``slurm`` (sbatch), ``local`` (subprocesses here) or ``debug`` (in this process)."""
    partition: str | None = None
    """SLURM partition (required for ``slurm``)."""
    gpus: int = 1
    """GPUs per node; one task per GPU (0: one CPU task per node)."""
    nodes: int = 1
    """Nodes."""
    time_min: int = 60
    """Wall-clock limit in minutes."""
    cpus_per_task: int | None = None
    """CPU cores per task (None: the cluster's default)."""
    signal_delay_s: int = 120
    """Seconds before the time limit at which SLURM sends the requeue signal."""
    name: str = "dfm"
    """Job name."""

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ValueError(f"cluster: expected one of {CLUSTERS}, got {self.cluster!r}")
        if self.cluster == "slurm" and not self.partition:
            raise ValueError("--slurm-partition is required to submit to SLURM (or use --local)")
        if self.gpus < 0 or self.nodes < 1 or self.time_min < 1:
            raise ValueError(
                f"need gpus >= 0, nodes >= 1, time >= 1 min; got gpus={self.gpus}, "
                f"nodes={self.nodes}, time={self.time_min}"
            )

    @property
    def tasks_per_node(self) -> int:
        return max(1, self.gpus)

    def parameters(self) -> dict[str, Any]:
        """``AutoExecutor.update_parameters`` keywords.

        The generic ``gpus_per_node``/``tasks_per_node`` become ``--gpus-per-node`` and
        ``--ntasks-per-node`` on SLURM and also drive the local executor; ``slurm_*``
        keys reach SLURM only.
        """
        params: dict[str, Any] = {
            "name": self.name,
            "timeout_min": self.time_min,
            "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
        }
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if self.cluster == "slurm":
            params["slurm_partition"] = self.partition
            params["slurm_signal_delay_s"] = self.signal_delay_s
        return {key: value for key, value in params.items() if value is not None}


class LaunchError(RuntimeError):
    """The job cannot be submitted (e.g. no SLURM on this machine)."""


def make_executor(options: LaunchOptions, folder: str | Path) -> submitit.AutoExecutor:
    """An executor for ``options``; job logs and pickles go to ``folder``.

    Raises:
        LaunchError: SLURM was asked for on a machine without it.
    """
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=options.cluster)
    except RuntimeError as error:  # submitit's SlurmExecutor without srun on PATH
        raise LaunchError(
            f"cannot submit to SLURM from here ({error}); use --local to run on this machine"
        ) from error
    executor.update_parameters(**options.parameters())
    return executor


def submit(
    config: Mapping[str, Any],
    run_dir: str | Path,
    options: LaunchOptions,
    *,
    folder: str | Path | None = None,
) -> submitit.Job:
    """Submit ``runs.execute(config, run_dir)`` as one job of ``nodes x gpus`` tasks.

    Args:
        config: the resolved config as plain data.
        run_dir: the run directory (its ``submitit/`` subfolder receives the job logs
            unless ``folder`` says otherwise).
        options: cluster, partition, sizes, time limit.
    """
    folder = Path(run_dir) / "submitit" if folder is None else Path(folder)
    executor = make_executor(options, folder)
    return executor.submit(TrainJob(config, run_dir))


def describe(options: LaunchOptions) -> dict[str, Any]:
    return {**dataclasses.asdict(options), "executor_parameters": options.parameters()}


# Slurm states after which a job runs no more (``scontrol`` prints these names).
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)


def slurm_job_state(job_id: str) -> dict[str, str] | None:
    """``scontrol show job -o JOB_ID`` as a dict (``JobState``, ``Restarts``, ...).

    Works without accounting; Slurm forgets a finished job after ``MinJobAge`` seconds.

    Returns:
        The job's fields, or None when Slurm does not (or no longer) know the job.
    """
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", str(job_id)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or "=" not in out.stdout:
        return None
    fields = {}
    for item in out.stdout.split():
        key, sep, value = item.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def _log_tail(job: submitit.Job, lines: int = 20) -> str:
    parts = []
    for path in (job.paths.stderr, job.paths.stdout):
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path}\n" + "\n".join(text))
    return "\n".join(parts)


def wait(
    job: submitit.Job,
    *,
    timeout_s: float | None = None,
    poll_s: float = 2.0,
    grace_s: float = 10.0,
) -> list[Any]:
    """Wait for every task's result, with a watchdog that needs no accounting.

    Args:
        job: a submitted job.
        timeout_s: give up after this many seconds (None: no limit).
        poll_s: seconds between checks.
        grace_s: how long a result file may lag behind the job's final state.

    Returns:
        The tasks' results (``job.results()``; rank 0's first).

    Raises:
        LaunchError: the job ended without writing every result (the message names its
            state and shows its log tail), or ``timeout_s`` passed.
        submitit.core.utils.FailedJobError: a task raised (its traceback is in the message).
    """
    start = time.monotonic()
    ended_at: float | None = None
    is_slurm = isinstance(job, submitit.SlurmJob)
    while not all(task.paths.result_pickle.exists() for task in _tasks(job)):
        now = time.monotonic()
        if timeout_s is not None and now - start > timeout_s:
            fields = slurm_job_state(job.job_id) if is_slurm else None
            where = (
                f" (Slurm: {fields.get('JobState')}, reason {fields.get('Reason')})"
                if fields
                else ""
            )
            raise LaunchError(
                f"job {job.job_id} gave no result within {timeout_s:.0f} s{where}\n{_log_tail(job)}"
            )
        if is_slurm:
            fields = slurm_job_state(job.job_id)
            state = (fields or {}).get("JobState", "UNKNOWN")
            final = fields is None or state in FINAL_STATES
            ended_at = (ended_at or now) if final else None
            if ended_at is not None and now - ended_at > grace_s:
                raise LaunchError(
                    f"job {job.job_id} ended ({state if fields else 'unknown to Slurm'}) "
                    f"without a result\n{_log_tail(job)}"
                )
        elif job.done():  # local/debug executors know their processes
            break
        time.sleep(poll_s)
    return job.results()


def _tasks(job: submitit.Job) -> list[submitit.Job]:
    """The job's per-task handles (itself for a one-task job)."""
    count = job.num_tasks
    return [job] if count <= 1 else [job.task(i) for i in range(count)]
