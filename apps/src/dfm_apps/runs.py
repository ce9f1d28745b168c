"""Run directories and the one train entry point shared by the CLI and submitted jobs.

``execute(config, run_dir)`` is what ``dfm demo``, ``dfm train`` and every submitit task
call: it writes ``config.yaml`` (rank 0), trains with resume, and on rank 0 scores the
models and writes the pictures and the report. Distributed settings come from the
usual environment variables (``RANK``, ``WORLD_SIZE``, ...) that ``torchrun`` or the
submitit launcher set.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dfm_apps import report
from dfm_apps.applications import application
from dfm_apps.config import (
    ConfigError,
    config_from_container,
    frozen_differences,
    load_preset,
    load_run_config,
    to_container,
    to_yaml,
    validate,
)
from dfm_core.checkpoint import config_differences, list_checkpoints, read_checkpoint_config
from dfm_core.optim import OptimizerConfig, learning_rate_at

__all__ = [
    "CONFIG_FILE",
    "RunError",
    "check_checkpoint_config",
    "checkpoint_step",
    "default_run_dir",
    "execute",
    "resolve_config",
]

CONFIG_FILE = "config.yaml"


class RunError(RuntimeError):
    """A run directory cannot be used as asked (e.g. it holds checkpoints and no --resume)."""


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>``, relative to the working directory."""
    return Path(root) / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def checkpoint_step(run_dir: Path) -> int | None:
    """Step of the newest complete DFM checkpoint of a run, or None."""
    found = list_checkpoints(run_dir / "checkpoints")
    return found[-1][0] if found else None


def schedule_change_note(stored: Any, config: Any, step: int | None) -> str | None:
    """One line for a resume that changes ``trainer.max_steps`` under a decaying schedule.

    The learning rate is a function of (step, max_steps) (``dfm_core.optim.learning_rate_at``),
    so a run resumed with another ``max_steps`` continues on the schedule a run planned that
    long has at the saved step: not the rate the saved run ended at (a cosine stretched
    longer steps the rate back up). Said once, with both rates, so it is never a surprise.
    """
    old = OmegaConf.select(stored, "trainer.max_steps")
    new = OmegaConf.select(config, "trainer.max_steps")
    if step is None or old is None or old == new:
        return None
    optimizers = [OmegaConf.select(c, "trainer.optimizer") for c in (stored, config)]
    if any(o is None for o in optimizers):
        return None
    was_config, now_config = (OptimizerConfig(**OmegaConf.to_container(o)) for o in optimizers)
    if was_config.schedule == now_config.schedule == "constant":
        return None
    was = learning_rate_at(was_config, step, old)
    now = learning_rate_at(now_config, step, new)
    return (
        f"dfm: trainer.max_steps {old} -> {new} at step {step}: the learning rate follows the "
        f"{new}-step schedule from here, {was:.3g} -> {now:.3g} (what a run planned {new} "
        "steps long has at this step)"
    )


def _with_schema_defaults(saved: Any) -> Any:
    """A checkpoint's config with the keys its schema gained since, at their defaults.

    A field added to a schema keeps the old behaviour at its default (that is how fields
    are added here), so a run written before it resumes and samples as before. A config
    the schema no longer reads (a removed or renamed key) is compared as saved, and the
    difference is reported.
    """
    if not isinstance(saved, Mapping):
        return saved
    try:
        return to_container(config_from_container(saved, where="checkpoint config"))
    except ConfigError:
        return saved


def check_checkpoint_config(run_dir: Path, config: Mapping[str, Any] | DictConfig) -> None:
    """Refuse a run whose newest checkpoint was trained with other weight-defining settings.

    Compares the config embedded in the newest complete checkpoint with ``config`` on
    the sections that fix the weights (the application's ``FROZEN``). Does nothing when the run
    has no checkpoint yet.

    Raises:
        RunError: naming every differing field (saved -> now).
    """
    if checkpoint_step(run_dir) is None:
        return
    saved = _with_schema_defaults(read_checkpoint_config(run_dir).get("run"))
    current = to_container(config) if isinstance(config, DictConfig) else dict(config)
    frozen = application(str(current.get("app", "projection"))).FROZEN
    changed = config_differences(saved, current, frozen)
    if changed:
        raise RunError(
            f"{run_dir / 'checkpoints'} was trained with a different config than "
            f"{run_dir / CONFIG_FILE}: {', '.join(changed)}; the weights do not fit it "
            "(restore the config or use a new --run-dir)"
        )


def resolve_config(
    preset: str, overrides: Sequence[str], run_dir: Path | None, *, resume: bool
) -> DictConfig:
    """The config a ``train``/``demo`` invocation will run with.

    A fresh run takes the preset with ``overrides``. Resuming a run that has a saved
    ``config.yaml`` takes *that* file with ``overrides`` (so a resumed run keeps its
    settings even if the preset changed since), refusing overrides of the sections
    that fix the weights (problem, model, schedule).

    Raises:
        ConfigError: unknown preset, bad override, or an override the resumed run's
            weights cannot follow.
        RunError: ``run_dir`` holds checkpoints but ``resume`` is False.
    """
    saved = run_dir / CONFIG_FILE if run_dir is not None else None
    if resume and saved is not None and saved.is_file():
        stored = load_run_config(saved)
        config = load_run_config(saved, overrides)
        if stored.name != preset:
            raise ConfigError(
                f"{run_dir} holds a run of preset {stored.name!r}, not {preset!r}; "
                f"resume it with `dfm train {stored.name} --run-dir {run_dir} --resume`"
            )
        changed = frozen_differences(stored, config, application(str(stored.app)).FROZEN)
        if changed:
            raise ConfigError(
                f"cannot change {', '.join(changed)} when resuming {run_dir}: the checkpoints "
                "were trained with the saved values; start a new --run-dir instead"
            )
        return config
    config = load_preset(preset, overrides)
    if not resume and run_dir is not None:
        step = checkpoint_step(run_dir)
        if step is not None:
            raise RunError(
                f"{run_dir} already holds checkpoints (up to step {step}); pass --resume to "
                "continue that run or choose a new --run-dir"
            )
    return config


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _write_config(run_dir: Path, text: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    tmp = path.with_name(f".tmp-{CONFIG_FILE}-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def execute(config: Mapping[str, Any] | DictConfig, run_dir: str | Path) -> dict[str, Any] | None:
    """Train (resuming if possible), then score and report on rank 0.

    Args:
        config: the resolved config, as a ``DictConfig`` or plain data (what jobs pickle).
        run_dir: the run directory (created if missing).

    Returns:
        On rank 0, ``{"run_dir", "scores", "files", "dfm_step", "baseline_step",
        "resumed_from", "seconds"}``; on other ranks None.
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    structured = (
        config if isinstance(config, DictConfig) else config_from_container(config, where="config")
    )
    settings = validate(structured)
    plain = to_container(structured)
    yaml_text = to_yaml(structured)
    check_checkpoint_config(run_dir, plain)
    if _rank() == 0:
        saved = run_dir / CONFIG_FILE
        if saved.is_file():  # resuming: said once the run is known to fit its checkpoints
            note = schedule_change_note(
                load_run_config(saved), structured, checkpoint_step(run_dir)
            )
            if note:
                print(note, file=sys.stderr)
        _write_config(run_dir, yaml_text)
    app = application(settings.app)
    trained = app.train(settings, run_dir, run_config=plain)
    if _rank() != 0:
        return None
    evaluation = app.evaluate(settings, trained, run_dir, config_yaml=yaml_text)
    return {
        "run_dir": run_dir,
        "scores": evaluation.scores_dict(),
        "files": {"config": run_dir / CONFIG_FILE, **evaluation.files},
        "app": settings.app,
        "dfm_step": trained.dfm_step,
        "baseline_step": trained.baseline_step,
        "resumed_from": trained.resumed_from,
        "seconds": time.perf_counter() - start,
    }


def format_summary(result: Mapping[str, Any], *, name: str) -> str:
    """What ``dfm demo``/``dfm train`` print at the end."""
    run_dir = Path(result["run_dir"])
    resumed = result.get("resumed_from")
    how = f"resumed from step {resumed}, " if resumed else ""
    lines = [
        "",
        f"{name}: DFM {result['dfm_step']} steps, baseline {result['baseline_step']} steps "
        f"({how}{result['seconds']:.0f} s)",
        report.format_scores(result["scores"]),
        "",
        f"run directory: {run_dir}",
    ]
    for label, path in result["files"].items():
        lines.append(f"  {label:<10} {path}")
    lines.append(
        f"  {'weights':<10} {run_dir / 'checkpoints'} (baseline: {run_dir / application(result.get('app', 'projection')).BASELINE_DIR})"
    )
    return "\n".join(lines)
