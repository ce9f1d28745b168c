"""The applications behind the `dfm` command, one module each.

A config's ``app`` key names its application. Each application module provides the same
small interface, so the command line dispatches on the config, never on hand-written
per-application branches:

* ``CONFIG``: its structured config (a dataclass; the schema of its YAML presets);
* ``FROZEN``: the config sections that fix the weights (a resumed run or ``dfm sample``
  may not change them);
* ``BASELINE_DIR``: where its deterministic baseline's run lives inside the run directory;
* ``train(config, run_dir, *, run_config) -> trained``: train or resume, on every rank;
* ``load_models(config, run_dir) -> trained``: the EMA weights of a finished run;
* ``evaluate(config, trained, out_dir, *, run_dir, config_yaml) -> evaluation`` with
  ``scores_dict()`` and ``files``: sample, score, write pictures, videos and report.html;
* ``demo(out_dir, *, seed) -> DemoSection``: the application on its *shipped* weights (no
  training; ``dfm demo`` runs every application's in turn, CPU, well under a minute each):
  sample, picture, score, and return what the combined report shows. Raises
  ``MissingWeights`` (naming the file and how to make it) when the weights are not shipped;
* optional ``SAMPLING_KEYS``: dotted keys inside ``FROZEN`` that ``dfm sample``/``eval``
  may override because they change how the weights are evaluated, not the weights;
* optional ``PROTOCOLS`` (name -> one-line description) and ``run_protocol(config, trained,
  out_dir, *, protocol, run_dir) -> evaluation``: the evaluation protocols ``dfm eval`` runs
  (metrics.json + metrics.md); without them ``dfm eval`` runs ``evaluate``.

Adding an application means adding its module here and its YAML presets in ``configs/``.
Modules are imported on first use (``dfm --help`` stays fast).

The scaffolding every application shares lives here too: ``Trained``, the two-phase
``train_baseline_then_dfm`` (deterministic baseline first, then DFM, each resumable),
``load_ema_models``, ``init_from_run`` (fine-tuning from another run), ``read_metrics`` and
``write_text_atomic``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and the core load on first use: `dfm --help` stays fast
    from torch import nn
    from torch.utils.data import Dataset

    from dfm_core.trainer import Trainer, TrainerConfig

__all__ = [
    "APPLICATIONS",
    "DemoSection",
    "MissingWeights",
    "Trained",
    "application",
    "load_ema_models",
    "newest_checkpoint",
    "read_metrics",
    "train_baseline_then_dfm",
    "wait_unless_rank_zero",
    "write_text_atomic",
]

APPLICATIONS: dict[str, str] = {
    "projection": "dfm_apps.projection",
    "scenes": "dfm_apps.scenes",
    "motion": "dfm_apps.motion",
    "gan": "dfm_apps.gan",
}
"""Application name (a config's ``app`` key) -> the module implementing it (``dfm demo``
runs them in this order)."""


class MissingWeights(FileNotFoundError):
    """An application's shipped weights are not installed (the message says how to get them)."""


@dataclass
class DemoSection:
    """What one application's demo shows in the combined report and summary table.

    Files are paths under the demo's output folder; images are embedded in the report,
    videos linked relative to it.
    """

    title: str
    """Heading, e.g. "Inverse graphics: one image -> K 3D scenes"."""
    summary: str
    """One paragraph: what was run, on which weights, and how it is scored."""
    scores: dict[str, float]
    """Headline figures, printed in the summary table (name -> value)."""
    command: str
    """The shell command that reproduces this section (``dfm demo --only NAME`` or a script)."""
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    """(caption, header cells, rows of cells) for the report."""
    images: dict[str, Path] = field(default_factory=dict)
    """Caption -> PNG file."""
    videos: dict[str, Path] = field(default_factory=dict)
    """Caption -> mp4 file."""
    seconds: float = 0.0
    """Wall time of the demo (filled in by ``dfm demo``)."""


def application(name: str) -> ModuleType:
    """The module of application ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in APPLICATIONS:
        raise KeyError(f"unknown application {name!r}; known: {', '.join(sorted(APPLICATIONS))}")
    return importlib.import_module(APPLICATIONS[name])


def newest_checkpoint(run_dir: Path) -> tuple[int, Path]:
    """Step and path of the newest complete checkpoint of a run (for ``load_models``).

    Raises:
        CheckpointError: the run has none yet.
    """
    from dfm_core.checkpoint import CheckpointError, list_checkpoints

    found = list_checkpoints(run_dir / "checkpoints")
    if not found:
        raise CheckpointError(f"{run_dir}: no complete checkpoint under {run_dir / 'checkpoints'}")
    return found[-1]


class InitWeightsError(ValueError):
    """A run's weights do not fit the model a new run starts from them (``init_from_run``)."""


def init_from_run(model: nn.Module, source_dir: Path) -> tuple[int, list[str]]:
    """Start a fresh model from the EMA weights of another run's newest complete checkpoint.

    For fine-tuning, e.g. from a run trained before an addition to the architecture: the
    tensors the source lacks keep their initialisation (an addition that starts as a no-op,
    such as a zero-initialised head, then starts the new model equal to the old one).

    Args:
        model: a freshly built model (modified in place).
        source_dir: the source run's directory (holding ``checkpoints/``).

    Returns:
        The source checkpoint's step and the names of the model's tensors it lacks.

    Raises:
        CheckpointError: the source has no complete checkpoint.
        InitWeightsError: a source tensor the model lacks, or of another shape (names both).
    """
    from dfm_core.checkpoint import load_weights

    step, path = newest_checkpoint(source_dir)
    state = load_weights(path, ema=True)[0]
    own = model.state_dict()
    for name, value in state.items():
        if name not in own:
            raise InitWeightsError(f"{path}: tensor {name!r} has no place in this model")
        if own[name].shape != value.shape:
            raise InitWeightsError(
                f"{path}: tensor {name!r} has shape {tuple(value.shape)}, this model's "
                f"{tuple(own[name].shape)}"
            )
    model.load_state_dict(state, strict=False)
    return step, sorted(set(own) - set(state))


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its job (or not distributed at all)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Trained:
    """The EMA models after training and the steps they were trained for."""

    diffusion: Any
    """The DFM model (a ``dfm_core.diffusion.ForwardDiffusion``)."""
    baseline: Any
    """The application's deterministic baseline."""
    dfm_step: int
    baseline_step: int
    resumed_from: int | None
    """The DFM step this training resumed from (None: a fresh run, or loaded weights)."""


def _same(module: nn.Module) -> nn.Module:
    return module


def train_baseline_then_dfm(
    baseline: nn.Module,
    diffusion: nn.Module,
    dataset: Dataset,
    trainer_config: TrainerConfig,
    *,
    baseline_steps: int,
    run_dir: Path,
    baseline_dir: Path,
    before_dfm: Callable[[Trainer], None] | None = None,
    unwrap: Callable[[nn.Module], nn.Module] = _same,
    **trainer_options: Any,
) -> Trained:
    """Train (or resume) the baseline in ``baseline_dir``, then DFM in ``run_dir``.

    Each phase resumes from its newest checkpoint and a finished one is not trained further,
    so a killed run restarts where it stopped. Call on every rank. Both trainers are closed
    only at the very end: the first one owns the DDP process group.

    Args:
        baseline: what the baseline's trainer optimises (``forward(batch, generator=)``).
        diffusion: the same for DFM.
        dataset: the training set of both.
        trainer_config: DFM's; the baseline's is the same with ``max_steps=baseline_steps``.
        baseline_steps: the baseline's training length.
        run_dir: DFM's run directory.
        baseline_dir: the baseline's run directory (inside ``run_dir``).
        before_dfm: called with the finished baseline trainer before DFM's is built (e.g.
            to initialise a fresh DFM model from the baseline).
        unwrap: maps a trainer's EMA module to the model ``Trained`` holds (for trainers
            that optimise a wrapper around it).
        **trainer_options: passed to both ``Trainer``s (``collate_fn``, ``run_config``,
            ``frozen_config_keys``...).
    """
    from dfm_core.trainer import Trainer

    base_trainer = Trainer(
        baseline,
        dataset,
        dataclasses.replace(trainer_config, max_steps=baseline_steps),
        run_dir=baseline_dir,
        **trainer_options,
    )
    base_trainer.resume()
    base_trainer.train()
    if before_dfm is not None:
        before_dfm(base_trainer)
    dfm_trainer = Trainer(diffusion, dataset, trainer_config, run_dir=run_dir, **trainer_options)
    resumed = dfm_trainer.resume()
    dfm_trainer.train()
    result = Trained(
        diffusion=unwrap(dfm_trainer.ema_model()),
        baseline=unwrap(base_trainer.ema_model()),
        dfm_step=dfm_trainer.step,
        baseline_step=base_trainer.step,
        resumed_from=resumed,
    )
    for trainer in (base_trainer, dfm_trainer):
        trainer.close()
    return result


def load_ema_models(
    diffusion: nn.Module,
    baseline: nn.Module,
    run_dir: Path,
    *,
    baseline_dir: Path,
    wrap: Callable[[nn.Module], nn.Module] = _same,
) -> Trained:
    """Load the EMA weights of a run's newest complete checkpoints; models in eval mode.

    Args:
        diffusion: a freshly built DFM model (its weights are replaced).
        baseline: a freshly built baseline.
        run_dir: DFM's run directory; ``baseline_dir`` the baseline's.
        wrap: the module the trainer optimised around each model (its state dict's keys).

    Raises:
        CheckpointError: the run (or its baseline) has no complete checkpoint yet.
    """
    from dfm_core.checkpoint import load_weights

    dfm_step, dfm_path = newest_checkpoint(run_dir)
    base_step, base_path = newest_checkpoint(baseline_dir)
    wrap(diffusion).load_state_dict(load_weights(dfm_path, ema=True)[0])
    wrap(baseline).load_state_dict(load_weights(base_path, ema=True)[0])
    return Trained(diffusion.eval(), baseline.eval(), dfm_step, base_step, None)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (none if it is missing; a line torn by a
    kill is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file + rename), as every file of a run is:
    a kill leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def wait_unless_rank_zero(marker: Path, what: str, *, timeout_s: float = 3600.0) -> bool:
    """Let only rank 0 write shared files: other ranks wait for its ``marker`` (written last).

    Under torchrun every rank reaches the step that synthesizes a world; writing the same
    files from several processes at once would corrupt them.

    Args:
        marker: the file rank 0 writes last.
        what: what is being written, for the timeout message.
        timeout_s: how long another rank waits.

    Returns:
        False on rank 0 (it must write); True on other ranks, once ``marker`` exists.

    Raises:
        TimeoutError: rank 0 did not finish within ``timeout_s``.
    """
    if is_rank_zero():
        return False
    deadline = time.monotonic() + timeout_s
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker}: rank 0 did not finish {what} in {timeout_s:.0f} s")
        time.sleep(1.0)
    return True
