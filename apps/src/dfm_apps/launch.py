"""Submit training to SLURM (or run it locally) with submitit.

One task per GPU: ``nodes x gpus`` tasks in all. Each task reads its place in the job
from ``submitit.JobEnvironment()``, exports the ``torch.distributed`` rendezvous
variables (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)
and calls the same entry point as ``dfm train`` (``runs.execute``), whose trainer then
joins the process group.

Preemption and time-outs: SLURM signals the job ahead of time
(``slurm_signal_delay_s``); submitit then calls ``TrainJob.checkpoint``, which hands
back the same job to requeue (submitit's ``DelayedSubmission`` pattern). The requeued
job resumes from the newest complete checkpoint in the run directory, so at most
``trainer.checkpoint_every`` steps are redone. (The checkpoint is not written from the
signal handler: it interrupts a training step at an arbitrary point, and with several
ranks only rank 0 runs the handler while saving is collective.)
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import DelayedSubmission

from dfm_apps.runs import execute

__all__ = [
    "LaunchError",
    "LaunchOptions",
    "TrainJob",
    "distributed_env",
    "make_executor",
    "master_port",
    "submit",
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
        os.environ.update(distributed_env(job_env))
        result = execute(self.config, self.run_dir)
        if result is not None:  # plain data back to the submitter (paths as strings)
            result = {**result, "run_dir": str(result["run_dir"])}
            result["files"] = {name: str(path) for name, path in result["files"].items()}
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on preemption/time-out: requeue the same job.

        The new job resumes from the run's newest checkpoint (``execute`` always resumes).
        """
        return DelayedSubmission(TrainJob(self.config, self.run_dir), *args, **kwargs)


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
