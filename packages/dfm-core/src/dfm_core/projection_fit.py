"""Fitting the projection problem's models and scoring their samples against the exact posterior.

``fit_projection_models`` trains DFM and the regression baseline (``dfm_core.projection_models``)
with the ``Trainer`` in a run directory (resumable; the run records the problem it was trained
on, ``problem_record``); ``posterior_samples`` draws DFM, baseline, exact-denoiser and exact
posterior samples for the same contexts; ``score_samples`` compares them by energy distance
against the noise floor of two independent exact draws (``PosteriorScores``): the check of
Proposition 1 of the DFM supplementary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dfm_core.diffusion import Context, ForwardDiffusion
from dfm_core.guidance import classifier_free_guidance
from dfm_core.metrics import energy_distance
from dfm_core.optim import OptimizerConfig
from dfm_core.projection_models import ProjectionModelConfig, RegressionBaseline
from dfm_core.projection_problem import (
    GaussianMixture,
    ProjectionDataset,
    ProjectionProblem,
    collate_projection,
    exact_denoiser,
    exact_posterior,
    random_projections,
)
from dfm_core.sampling import Denoised, sample
from dfm_core.schedules import NoiseSchedule
from dfm_core.trainer import Trainer, TrainerConfig
from dfm_core.tree import tree_to

__all__ = [
    "FittedModels",
    "PosteriorScores",
    "ProjectionFitConfig",
    "fit_projection_models",
    "posterior_samples",
    "problem_record",
    "score_samples",
    "train_projection_models",
]


@dataclass(frozen=True)
class PosteriorScores:
    """Energy distances to exact posterior samples, averaged over contexts.

    Two summaries of each source: the *mean* ratio (mean energy distance over contexts
    divided by the mean noise floor; a few hard contexts dominate it) and the *median
    per-context* ratio (median over contexts of distance / that context's floor).

    Attributes:
        dfm: DFM samples vs exact samples.
        baseline: deterministic-baseline samples (one per context, repeated) vs exact.
        noise_floor: exact vs independent exact samples, same sample counts.
        exact_dfm: DFM sampling with the exact denoiser (``exact_denoiser``), same sampler,
            steps, target views and noise: what the method itself reaches, the reference
            for a trained model (below the floor is impossible; above it when 2k < d).
        dfm_median_ratio, baseline_median_ratio, exact_dfm_median_ratio: median
            per-context ratios to the noise floor.
    """

    dfm: float
    baseline: float
    noise_floor: float
    exact_dfm: float = math.nan
    dfm_median_ratio: float = math.nan
    baseline_median_ratio: float = math.nan
    exact_dfm_median_ratio: float = math.nan

    @property
    def dfm_ratio(self) -> float:
        return self.dfm / self.noise_floor

    @property
    def baseline_ratio(self) -> float:
        return self.baseline / self.noise_floor

    @property
    def exact_dfm_ratio(self) -> float:
        return self.exact_dfm / self.noise_floor

    @property
    def relative_ratio(self) -> float:
        """Trained / exact-denoiser mean ratio: 1 means the network is as good as allowed."""
        return self.dfm / self.exact_dfm

    @property
    def relative_median_ratio(self) -> float:
        """Trained / exact-denoiser median per-context ratio."""
        return self.dfm_median_ratio / self.exact_dfm_median_ratio


def _sample_signals(
    denoiser: Callable[[Tensor, Tensor], Denoised],
    schedule: NoiseSchedule,
    shape: tuple[int, int],
    *,
    sampler: str,
    steps: int,
    seed: int,
    device: torch.device | str,
    sampler_options: dict[str, Any],
) -> Tensor:
    result = sample(
        sampler,
        denoiser,
        schedule,
        shape,
        steps=steps,
        generator=torch.Generator(device).manual_seed(seed),
        device=device,
        **sampler_options,
    )
    return result.signal.double().cpu()


@torch.no_grad()
def posterior_samples(
    problem: ProjectionProblem,
    diffusion: ForwardDiffusion | None,
    baseline: RegressionBaseline | None,
    *,
    num_contexts: int,
    num_samples: int,
    steps: int = 50,
    seed: int = 1234,
    sampler: str = "ddim",
    guidance_scale: float = 1.0,
    exact_dfm: bool = False,
    schedule: NoiseSchedule | None = None,
    sampler_options: dict[str, Any] | None = None,
) -> dict[str, Tensor]:
    """Samples of S for ``num_contexts`` held-out contexts from every source.

    Args:
        problem: the problem.
        diffusion, baseline: the trained models, or None to skip them.
        num_contexts: held-out contexts M.
        num_samples: samples n per context from every source.
        steps, sampler, sampler_options: how DFM samples (``dfm_core.sampling.sample``).
        seed: seeds contexts, exact samples, target views and sampler noise.
        guidance_scale: classifier-free guidance of the trained model.
        exact_dfm: also sample DFM with the exact denoiser (same sampler, steps, target
            views and initial noise as the trained model).
        schedule: the noise schedule of ``exact_dfm``; defaults to ``diffusion``'s.

    Returns:
        ``{"context_obs": (M, k), "context_params": (M, k, d), "signal": (M, d),
        "exact": (M, n, d), "exact_repeat": (M, n, d), "dfm": (M, n, d), "baseline": (M, n, d),
        "exact_dfm": (M, n, d)}`` (the last three only when asked for). Float64.
    """
    d, k = problem.signal_dim, problem.observation_dim
    options = dict(sampler_options or {})
    if exact_dfm and schedule is None:
        if diffusion is None:
            raise ValueError("schedule: needed for exact_dfm=True when no diffusion is given")
        schedule = diffusion.schedule
    generator = torch.Generator().manual_seed(seed)
    signal = problem.prior.sample(num_contexts, generator)
    context_params = random_projections(num_contexts, k, d, generator)
    context_obs = problem.observe(signal, context_params, generator)
    posterior = exact_posterior(problem.prior, context_obs, context_params, problem.noise_std)
    out = {
        "context_obs": context_obs.double(),
        "context_params": context_params.double(),
        "signal": signal,
        "exact": posterior.sample(num_samples, generator),
        "exact_repeat": posterior.sample(num_samples, generator),
    }
    repeated = Context(
        observation=context_obs.repeat_interleave(num_samples, 0),
        params=context_params.repeat_interleave(num_samples, 0),
    )
    # A fresh target view per sample: the learned distribution over signals must not
    # depend on it (remark on 3D consistency in the supplementary).
    target_params = problem.target_params(repeated.params, generator)
    shape = (num_contexts * num_samples, k)
    if diffusion is not None:
        device = next(diffusion.parameters()).device
        repeated_device = tree_to(repeated, device)
        target_device = target_params.to(device)
        condition = diffusion.condition(repeated_device, target_device)
        if guidance_scale == 1.0:
            denoiser = diffusion.denoiser(condition)
        else:
            null = diffusion.condition(repeated_device, target_device, drop=True)
            denoiser = classifier_free_guidance(diffusion.denoise, condition, null, guidance_scale)
        out["dfm"] = _sample_signals(
            denoiser,
            diffusion.schedule,
            shape,
            sampler=sampler,
            steps=steps,
            seed=seed + 1,
            device=device,
            sampler_options=options,
        ).reshape(num_contexts, num_samples, d)
    if exact_dfm:
        assert schedule is not None
        repeated_posterior = GaussianMixture(
            posterior.weights.repeat_interleave(num_samples, 0),
            posterior.means.repeat_interleave(num_samples, 0),
            posterior.covariances.repeat_interleave(num_samples, 0),
        )
        oracle = exact_denoiser(repeated_posterior, target_params, schedule, problem.noise_std)
        out["exact_dfm"] = _sample_signals(
            oracle,
            schedule,
            shape,
            sampler=sampler,
            steps=steps,
            seed=seed + 1,
            device="cpu",
            sampler_options={"dtype": torch.float64, **options},
        ).reshape(num_contexts, num_samples, d)
    if baseline is not None:
        device = next(baseline.parameters()).device
        prediction = (
            baseline.predict(tree_to(Context(context_obs, context_params), device)).double().cpu()
        )
        out["baseline"] = prediction[:, None, :].expand(num_contexts, num_samples, d)
    return out


def score_samples(samples: dict[str, Tensor]) -> PosteriorScores:
    """Energy distances to the exact samples, mean and median per-context ratios
    (see ``posterior_samples`` and ``PosteriorScores``)."""
    exact = samples["exact"]
    floor = energy_distance(samples["exact_repeat"], exact)  # (M,)

    def summary(name: str) -> tuple[float, float]:
        if name not in samples:
            return math.nan, math.nan
        distance = energy_distance(samples[name], exact)
        return distance.mean().item(), (distance / floor).median().item()

    dfm, dfm_median = summary("dfm")
    baseline, baseline_median = summary("baseline")
    exact_dfm, exact_dfm_median = summary("exact_dfm")
    return PosteriorScores(
        dfm=dfm,
        baseline=baseline,
        noise_floor=floor.mean().item(),
        exact_dfm=exact_dfm,
        dfm_median_ratio=dfm_median,
        baseline_median_ratio=baseline_median,
        exact_dfm_median_ratio=exact_dfm_median,
    )


@dataclass
class ProjectionFitConfig:
    """How to fit DFM and the deterministic baseline to a ``ProjectionProblem``."""

    model: ProjectionModelConfig = field(default_factory=ProjectionModelConfig)
    """The two models."""
    steps: int = 20_000
    """Optimiser steps for the DFM model."""
    baseline_steps: int = 3_000
    """Optimiser steps for the regression baseline (it converges much faster)."""
    batch_size: int = 256
    """Training examples per step."""
    lr: float = 1e-3
    """Peak learning rate (cosine decay to 1% after a short warm-up)."""
    schedule: str = "cosine"
    """Noise schedule by name (``dfm_core.schedules.SCHEDULES``)."""
    num_timesteps: int = 1000
    """Diffusion steps T of the schedule."""
    ema_decay: float = 0.999
    """Decay of the weights' exponential moving average (the models returned)."""
    ema_warmup: bool = True
    """Ramp the EMA decay up over the first updates (``dfm_core.ema``)."""
    seed: int = 0
    """Seed of the model initialisation, the training data and the trainer."""

    def trainer_config(self, *, device: str | None = "cpu", progress: bool = True) -> TrainerConfig:
        """The ``TrainerConfig`` of the DFM model (the baseline's differs in ``max_steps``)."""
        return TrainerConfig(
            max_steps=self.steps,
            batch_size=1,  # each dataset item is already a batch of ``batch_size`` signals
            optimizer=OptimizerConfig(
                name="adam",
                lr=self.lr,
                warmup_steps=min(200, self.steps),
                schedule="cosine",
                min_lr_ratio=0.01,
            ),
            ema_decay=self.ema_decay,
            ema_warmup=self.ema_warmup,
            seed=self.seed,
            num_workers=0,
            log_every=max(1, min(100, self.steps)),
            checkpoint_every=max(1, self.steps // 4),
            keep_last=1,
            progress=progress,
            device=device,
        )


@dataclass
class FittedModels:
    """The EMA models after training, in eval mode, and the steps they were trained for."""

    diffusion: ForwardDiffusion
    baseline: RegressionBaseline
    dfm_step: int
    baseline_step: int
    resumed_from: int | None
    """The DFM step training resumed from (None for a fresh run)."""


def train_projection_models(
    diffusion: ForwardDiffusion,
    baseline: RegressionBaseline,
    dataset: Dataset,
    trainer_config: TrainerConfig,
    *,
    baseline_steps: int,
    run_dir: str | os.PathLike[str],
    baseline_dir: str | os.PathLike[str],
    run_config: Any = None,
    frozen_config_keys: tuple[str, ...] = (),
) -> FittedModels:
    """The one training path of the projection models (``fit_projection_models`` and the
    ``dfm`` apps both use it): DFM, then the regression baseline, with the ``Trainer``.

    Each resumes from the newest checkpoint of its directory; a finished run is not
    trained further. The baseline uses ``trainer_config`` with ``max_steps =
    baseline_steps``. Call on every rank.

    Args:
        diffusion, baseline: the freshly built models (``ProjectionModelConfig.build``).
        dataset: training items (``ProjectionDataset``), shared by both models.
        trainer_config: the DFM model's training loop.
        baseline_steps: optimiser steps of the baseline.
        run_dir, baseline_dir: the two run directories (checkpoints/, metrics.jsonl).
        run_config: saved into every checkpoint of both runs.
        frozen_config_keys: keys of ``run_config`` a resumed run must not change
            (``Trainer``; a mismatch raises ``CheckpointMismatchError`` naming them).
    """
    trained, trainers = [], []
    for model, directory, config in (
        (diffusion, run_dir, trainer_config),
        (baseline, baseline_dir, dataclasses.replace(trainer_config, max_steps=baseline_steps)),
    ):
        trainer = Trainer(
            model,
            dataset,
            config,
            run_dir=directory,
            collate_fn=collate_projection,
            run_config=run_config,
            frozen_config_keys=frozen_config_keys,
        )
        resumed = trainer.resume()
        if trainer.step < config.max_steps:
            trainer.train()
        trained.append((trainer.ema_model().eval(), trainer.step, resumed))
        trainers.append(trainer)
    # Only now: the first trainer owns the process group, and closing it between the two
    # phases would make the second set it up again on the same port (a hang under DDP).
    for trainer in trainers:
        trainer.close()
    (dfm, dfm_step, resumed_from), (base, base_step, _) = trained
    return FittedModels(dfm, base, dfm_step, base_step, resumed_from)  # type: ignore[arg-type]


def problem_record(problem: ProjectionProblem) -> dict[str, Any]:
    """What identifies a problem in a run directory: its dimensions, noise, target views,
    and a SHA-256 digest of its prior's float64 parameters (two problems of the same
    shape but another prior differ in ``prior_sha256``)."""
    digest = hashlib.sha256()
    for tensor in (problem.prior.weights, problem.prior.means, problem.prior.covariances):
        digest.update(tensor.detach().double().cpu().contiguous().numpy().tobytes())
    return {
        "signal_dim": problem.signal_dim,
        "observation_dim": problem.observation_dim,
        "num_components": int(problem.prior.weights.shape[-1]),
        "noise_std": float(problem.noise_std),
        "target_views": problem.target_views,
        "prior_sha256": digest.hexdigest(),
    }


def fit_projection_models(
    problem: ProjectionProblem,
    config: ProjectionFitConfig,
    run_dir: str | os.PathLike[str],
    *,
    device: str | None = "cpu",
    progress: bool = True,
) -> tuple[ForwardDiffusion, RegressionBaseline]:
    """Train DFM and the regression baseline (``train_projection_models``).

    Resumable: rerunning with the same ``run_dir`` continues from the last checkpoints.
    The run directory's saved config is the check: the problem (``problem_record``) and
    the whole ``config`` are stored in every checkpoint, and a rerun with any of them
    changed (another prior of the same shape, another d, another ``steps``...) raises
    ``CheckpointMismatchError`` naming the differing fields instead of returning the old
    weights or resuming under another learning-rate schedule.

    Args:
        problem: the problem to fit.
        config: models and training.
        run_dir: holds ``dfm/`` and ``baseline/`` run directories.
        device: training device (``None``: CUDA when available); not part of the check.
        progress: progress bars.

    Returns:
        The EMA weights of both models, in eval mode, on ``device``.
    """
    run_dir = Path(run_dir)
    schedule = NoiseSchedule.from_name(config.schedule, config.num_timesteps)
    diffusion, baseline = config.model.build(problem, schedule, config.seed)
    trainer_config = config.trainer_config(device=device, progress=progress)
    dataset = ProjectionDataset(
        problem,
        config.batch_size,
        length=max(config.steps, config.baseline_steps, 1),
        seed=config.seed,
    )
    fitted = train_projection_models(
        diffusion,
        baseline,
        dataset,
        trainer_config,
        baseline_steps=config.baseline_steps,
        run_dir=run_dir / "dfm",
        baseline_dir=run_dir / "baseline",
        run_config={"problem": problem_record(problem), "fit": dataclasses.asdict(config)},
        frozen_config_keys=("problem", "fit"),
    )
    return fitted.diffusion, fitted.baseline
