"""Structured configs of the `dfm` presets, and loading them from YAML with overrides.

A *preset* is a YAML file shipped inside this package (``dfm_apps/configs/<name>.yaml``)
laid over the structured config (a dataclass) of the application it belongs to. The
dataclass is the schema: OmegaConf checks every key and type of the YAML and of the
command-line dot-list overrides (``trainer.max_steps=100``) against it, and
``OmegaConf.to_object`` turns the result back into the dataclasses, whose own
``__post_init__`` checks (``TrainerConfig``'s, for one) then run.

Both projection presets (``demo``: d=2, k=1; ``projection-6d``: d=6, k=3) share one
schema, ``ProjectionConfig``: a preset is a set of values, not a new set of fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from dfm_apps.presets import preset_text
from dfm_core.projection_models import ProjectionModelConfig as ModelConfig
from dfm_core.projection_problem import ProjectionProblem
from dfm_core.sampling import SAMPLERS
from dfm_core.schedules import SCHEDULES, ScheduleConfig
from dfm_core.trainer import OptimizerConfig, TrainerConfig

__all__ = [
    "PROJECTION_FROZEN",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "ModelConfig",
    "ProblemConfig",
    "ProjectionConfig",
    "config_from_container",
    "frozen_differences",
    "load_preset",
    "load_run_config",
    "merge_overrides",
    "to_container",
    "to_yaml",
    "validate",
]


class ConfigError(ValueError):
    """A preset, a config file or an override is invalid; the message names the key."""


# ----------------------------------------------------------------------------- projection


TARGET_VIEWS = ("uniform", "complement")
"""Allowed values of ``problem.target_views``."""


@dataclass
class ProblemConfig:
    """The built-in projection problem (``dfm_core.projection_problem``)."""

    signal_dim: int = 2
    """Dimension d of the hidden signal S."""
    observation_dim: int = 1
    """Dimension k < d of each observation O = phi S (+ noise)."""
    num_components: int = 5
    """Components K of the Gaussian-mixture prior over S."""
    noise_std: float = 0.0
    """Standard deviation of the Gaussian observation noise."""
    seed: int = 0
    """Seed of the random prior (the problem's definition, not the training seed)."""
    target_views: str = "complement"
    """How phi^trgt is drawn given phi^ctxt: ``uniform`` (independently) or
    ``complement`` (inside the orthogonal complement of the context; needs 2k <= d)."""

    def __post_init__(self) -> None:
        d, k = self.signal_dim, self.observation_dim
        if d < 2:
            raise ValueError(f"problem.signal_dim: expected >= 2, got {d}")
        if not 1 <= k < d:
            raise ValueError(
                f"problem.observation_dim: expected 1 <= observation_dim < signal_dim = {d} "
                f"(an observation must lose information), got {k}"
            )
        if self.num_components < 1:
            raise ValueError(f"problem.num_components: expected >= 1, got {self.num_components}")
        if not self.noise_std >= 0:
            raise ValueError(f"problem.noise_std: expected >= 0, got {self.noise_std}")
        if self.target_views not in TARGET_VIEWS:
            raise ValueError(
                f"problem.target_views: expected one of {list(TARGET_VIEWS)}, "
                f"got {self.target_views!r}"
            )
        if self.target_views == "complement" and 2 * k > d:
            raise ValueError(
                f"problem.target_views='complement' needs 2 * observation_dim <= signal_dim, "
                f"got observation_dim={k}, signal_dim={d}; use target_views=uniform"
            )

    def build(self) -> ProjectionProblem:
        return ProjectionProblem.build(
            signal_dim=self.signal_dim,
            observation_dim=self.observation_dim,
            num_components=self.num_components,
            noise_std=self.noise_std,
            seed=self.seed,
            target_views=self.target_views,
        )


@dataclass
class DataConfig:
    """Training batches drawn from the problem (``ProjectionDataset``)."""

    batch_size: int = 256
    """Signals per dataset item. Each item is a whole batch, so ``trainer.batch_size``
    counts items (1 = one batch of ``batch_size`` signals per rank and step)."""
    length: int = 1_000_000
    """Dataset length in items (an epoch); items are generated on the fly from their index."""
    seed: int = 0
    """Seed of the generated batches."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "length"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}: expected >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"data.seed: expected >= 0, got {self.seed}")


@dataclass
class EvaluationConfig:
    """Scoring samples against the exact posterior, and the pictures."""

    num_contexts: int = 64
    """Held-out contexts M to score; energy distances are averaged over them."""
    num_samples: int = 256
    """Samples n per context, from each of exact posterior, DFM and baseline."""
    steps: int = 50
    """Denoiser evaluations of the sampler."""
    sampler: str = "ddim"
    """``ddim``, ``ddpm``, ``edm`` or ``dpmpp_2m`` (``dfm_core.sampling.SAMPLERS``)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance scale (1 = no guidance)."""
    seed: int = 1234
    """Seed of the held-out contexts, exact samples and sampler noise."""
    plot_contexts: int = 4
    """Contexts drawn in ``samples.png`` (the first ones of the scored set)."""
    trajectory: bool = True
    """Also draw the sampler's trajectory (``denoising.png``) for the first context."""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(
                f"evaluation.sampler: expected one of {sorted(SAMPLERS)}, got {self.sampler!r}"
            )
        for name in ("num_contexts", "num_samples", "steps", "plot_contexts"):
            if getattr(self, name) < 1:
                raise ValueError(f"evaluation.{name}: expected >= 1, got {getattr(self, name)}")


def _projection_trainer() -> TrainerConfig:
    # Tiny MLPs on generated batches: no DataLoader workers, frequent enough
    # checkpoints that an interrupted demo loses little.
    return TrainerConfig(
        max_steps=4000,
        batch_size=1,
        optimizer=OptimizerConfig(lr=1e-3, warmup_steps=200, schedule="cosine", min_lr_ratio=0.05),
        ema_decay=0.995,
        num_workers=0,
        log_every=100,
        checkpoint_every=1000,
        keep_last=2,
        callback_every=1000,
    )


@dataclass
class ProjectionConfig:
    """DFM on the projection problem, against a regression baseline and the exact posterior.

    The schema of the ``demo`` and ``projection-*`` presets. The defaults are sensible
    for the 2-D problem; the preset files hold the tuned values.
    """

    app: str = "projection"
    """Which application the config belongs to (fixed; read by ``dfm sample``)."""
    name: str = "demo"
    """Preset name, used in titles and default run directory names."""
    problem: ProblemConfig = field(default_factory=ProblemConfig)
    """The inverse problem."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Networks and objective."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training batches."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Noise schedule of the diffusion over target observations."""
    trainer: TrainerConfig = field(default_factory=_projection_trainer)
    """Training loop of the DFM model."""
    baseline_steps: int = 1500
    """Optimiser steps of the regression baseline (same trainer settings otherwise)."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Scoring and pictures."""
    num_threads: int | None = 1
    """``torch.set_num_threads`` for the run; ``null`` keeps torch's default. The MLPs
    are too small to gain from intra-op threads, which only oversubscribe shared CPUs."""

    def __post_init__(self) -> None:
        # ScheduleConfig (dfm-core) builds lazily; check its values here so --dry-run
        # catches them, naming the key and the allowed values.
        if self.schedule.name not in SCHEDULES:
            raise ValueError(
                f"schedule.name: expected one of {sorted(SCHEDULES)}, got {self.schedule.name!r}"
            )
        if self.schedule.num_timesteps < 2:
            raise ValueError(
                f"schedule.num_timesteps: expected >= 2, got {self.schedule.num_timesteps}"
            )
        if self.app != "projection":
            raise ValueError(f"app: expected 'projection' for this schema, got {self.app!r}")
        self.model.check_noise(self.problem.noise_std)
        if self.baseline_steps < 1:
            raise ValueError(f"baseline_steps must be >= 1, got {self.baseline_steps}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {self.num_threads}")


# Config sections that determine the weights' shapes and meaning: a resumed run or
# ``dfm sample`` may not change them.
PROJECTION_FROZEN = ("app", "problem", "model", "schedule")


# ----------------------------------------------------------------------------- presets


def schema(app: str) -> type:
    """The structured config of application ``app`` (``dfm_apps.applications``).

    Raises:
        KeyError: unknown application.
    """
    from dfm_apps.applications import application

    return application(app).CONFIG


def _describe(error: OmegaConfBaseException) -> str:
    """OmegaConf's message, led by the dotted key it concerns."""
    key = getattr(error, "full_key", None)
    message = str(error).split("\n", 1)[0]
    return f"{key}: {message}" if key else message


def _merge(base: Any, *others: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, *others)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        raise ConfigError(f"{where}: invalid key or value {_describe(error)}") from error


def merge_overrides(config: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply dot-list overrides (``trainer.max_steps=100``) to a structured config.

    Raises:
        ConfigError: an override is not ``key=value``, names a key the schema lacks (the
            message lists the valid keys beside it), or has a value of the wrong type.
    """
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {override!r}: expected KEY=VALUE, e.g. trainer.max_steps=100"
            )
        try:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist([override]))  # type: ignore[assignment]
        except ConfigKeyError as error:
            raise ConfigError(
                f"override {override!r}: {_unknown_key(config, key.strip())}"
            ) from error
        except OmegaConfBaseException as error:
            raise ConfigError(f"override {override!r}: {_describe(error)}") from error
    return config


def _unknown_key(config: DictConfig, key: str) -> str:
    """'unknown key a.b.c; valid keys under a.b: ...' for the deepest existing parent."""
    parts = key.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        parent = ".".join(parts[:depth])
        node = OmegaConf.select(config, parent) if parent else config
        if isinstance(node, DictConfig):
            where = f"under {parent!r}" if parent else "at the top level"
            return f"unknown key {key!r}; valid keys {where}: {', '.join(str(k) for k in node)}"
    return f"unknown key {key!r}"


def load_preset(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved config of preset ``name`` with ``overrides`` applied, validated.

    Raises:
        ConfigError: unknown preset (the message lists the valid ones), or a bad override.
    """
    try:
        text = preset_text(name)
    except KeyError as error:
        raise ConfigError(error.args[0]) from error
    try:
        data = OmegaConf.create(text)
    except OmegaConfBaseException as error:  # a broken shipped file: a bug, say where
        raise ConfigError(f"preset file {name}.yaml: {_describe(error)}") from error
    return config_from_container(data, overrides, where=f"preset file {name}.yaml")


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """A run's saved ``config.yaml`` (or any resolved config file) with overrides, validated."""
    path = Path(path)
    try:
        data = OmegaConf.load(path)
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: no such config file") from error
    except yaml.YAMLError as error:  # syntax errors, and tags such as !!python/object
        raise ConfigError(f"{path}: not a valid config file: {_yaml_problem(error)}") from error
    except (OmegaConfBaseException, OSError) as error:
        reason = getattr(error, "strerror", None) or str(error).split("\n", 1)[0]
        raise ConfigError(f"{path}: cannot read config: {reason}") from error
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys, got a {type(data).__name__}")
    return config_from_container(data, overrides, where=str(path))


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's problem and line in one line (its own message spans several)."""
    problem = getattr(error, "problem", None) or str(error).split("\n", 1)[0]
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def config_from_container(data: Any, overrides: Sequence[str] = (), *, where: str) -> DictConfig:
    """Lay a plain (or OmegaConf) mapping over the schema its ``app`` key names."""
    app = data.get("app", "projection") if hasattr(data, "get") else None
    try:
        structure = schema(app)
    except KeyError as error:
        raise ConfigError(f"{where}: app: {error.args[0]}") from error
    config = _merge(OmegaConf.structured(structure), data, where=where)
    config = merge_overrides(config, overrides)
    validate(config)
    return config


def validate(config: DictConfig) -> Any:
    """Build the dataclasses (running their own checks); returns the config object.

    Raises:
        ConfigError: a value the dataclasses refuse, e.g. ``trainer.max_steps=0``.
    """
    try:
        return OmegaConf.to_object(config)
    except OmegaConfBaseException as error:
        raise ConfigError(f"invalid config: {_describe(error)}") from error
    except (ValueError, TypeError) as error:
        raise ConfigError(f"invalid config: {error}") from error


def to_yaml(config: DictConfig) -> str:
    return OmegaConf.to_yaml(config)


def to_container(config: DictConfig) -> dict[str, Any]:
    """A plain dict (for pickling into jobs and embedding into checkpoints)."""
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]


def frozen_differences(old: DictConfig, new: DictConfig, sections: Sequence[str]) -> list[str]:
    """Dotted keys under ``sections`` whose values differ between two configs."""
    differences: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        elif a != b:
            differences.append(f"{prefix} ({a!r} -> {b!r})")

    plain_old, plain_new = to_container(old), to_container(new)
    for section in sections:
        walk(plain_old.get(section), plain_new.get(section), section)
    return differences
