"""The projection application: train DFM and a regression baseline, score them, report.

The problem (``dfm_core.projection_problem``) has an exact posterior, so a run ends
with a number that means something: the energy distance of each model's samples to
exact posterior samples, next to the noise floor of two exact sample sets.

Run directory::

    config.yaml          resolved config (rank 0 writes it before training)
    checkpoints/         DFM training checkpoints (safetensors, EMA included)
    metrics.jsonl        DFM training curves
    baseline/            the regression baseline's own run (checkpoints/, metrics.jsonl)
    samples.png          exact vs DFM vs baseline, a panel per held-out context
    denoising.png        the sampler's signal estimates along the trajectory
    scores.json          energy distances and ratios to the noise floor
    report.html          all of the above in one self-contained file
    samples/             further pictures from ``dfm sample``
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dfm_apps import plots, report
from dfm_apps.applications import newest_checkpoint
from dfm_apps.config import PROJECTION_FROZEN, EvaluationConfig, ProjectionConfig
from dfm_core.checkpoint import load_weights
from dfm_core.diffusion import Context, ForwardDiffusion
from dfm_core.guidance import classifier_free_guidance
from dfm_core.projection_problem import (
    FittedModels,
    PosteriorScores,
    ProjectionDataset,
    ProjectionProblem,
    RegressionBaseline,
    posterior_samples,
    score_samples,
    train_projection_models,
)
from dfm_core.sampling import StepInfo, sample

__all__ = [
    "Evaluation",
    "build_models",
    "denoising_trajectory",
    "evaluate",
    "load_models",
    "train",
]

BASELINE_DIR = "baseline"


def build_models(config: ProjectionConfig) -> tuple[ForwardDiffusion, RegressionBaseline]:
    """DFM and the regression baseline, initial weights seeded from ``trainer.seed``."""
    return config.model.build(
        config.problem.build(), config.schedule.build(), seed=config.trainer.seed
    )


def set_threads(config: ProjectionConfig) -> None:
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)


Trained = FittedModels
"""The EMA models after training and the steps they were trained for (core's type)."""


def train(config: ProjectionConfig, run_dir: Path, *, run_config: dict[str, Any]) -> Trained:
    """Train (or resume, then finish training) the DFM model and the baseline.

    Core's one training path (``dfm_core.projection_problem.train_projection_models``),
    with this app's run-directory layout: DFM in ``run_dir``, the baseline in
    ``run_dir/baseline``. Resumes from the newest checkpoints; a finished run is not
    trained further. Call on every rank.

    Args:
        config: the validated config.
        run_dir: the run directory.
        run_config: the resolved config as plain data, embedded in every checkpoint; a
            resumed run must not change its ``PROJECTION_FROZEN`` sections.
    """
    set_threads(config)
    problem = config.problem.build()
    dataset = ProjectionDataset(
        problem, config.data.batch_size, config.data.length, config.data.seed
    )
    diffusion, baseline = build_models(config)
    return train_projection_models(
        diffusion,
        baseline,
        dataset,
        config.trainer,
        baseline_steps=config.baseline_steps,
        run_dir=run_dir,
        baseline_dir=run_dir / BASELINE_DIR,
        run_config=run_config,
        frozen_config_keys=PROJECTION_FROZEN,
    )


def load_models(config: ProjectionConfig, run_dir: Path) -> Trained:
    """The EMA weights of a run's newest complete checkpoints (safetensors), on the CPU.

    Raises:
        CheckpointError: the run (or its baseline) has no complete checkpoint yet.
    """
    diffusion, baseline = build_models(config)
    dfm_step, dfm_path = newest_checkpoint(run_dir)
    base_step, base_path = newest_checkpoint(run_dir / BASELINE_DIR)
    diffusion.load_state_dict(load_weights(dfm_path, ema=True)[0])
    baseline.load_state_dict(load_weights(base_path, ema=True)[0])
    return Trained(
        diffusion=diffusion.eval(),
        baseline=baseline.eval(),
        dfm_step=dfm_step,
        baseline_step=base_step,
        resumed_from=None,
    )


@torch.no_grad()
def denoising_trajectory(
    problem: ProjectionProblem,
    diffusion: ForwardDiffusion,
    context_obs: Tensor,
    context_params: Tensor,
    evaluation: EvaluationConfig,
    *,
    num_samples: int,
) -> list[tuple[float, Tensor]]:
    """The sampler's signal estimate after every step, for one context.

    Args:
        context_obs: shape (k,).
        context_params: shape (k, d).
        num_samples: chains to run.

    Returns:
        ``[(t, signals (num_samples, d) float64), ...]``, one entry per sampler step.
    """
    k = problem.observation_dim
    device = next(diffusion.parameters()).device
    generator = torch.Generator().manual_seed(evaluation.seed + 2)
    context = Context(
        observation=context_obs.float()[None].repeat(num_samples, 1).to(device),
        params=context_params.float()[None].repeat(num_samples, 1, 1).to(device),
    )
    target_params = problem.target_params(context.params.cpu(), generator).to(device)
    condition = diffusion.condition(context, target_params)
    if evaluation.guidance_scale == 1.0:
        denoiser = diffusion.denoiser(condition)
    else:
        null = diffusion.condition(context, target_params, drop=True)
        denoiser = classifier_free_guidance(
            diffusion.denoise, condition, null, evaluation.guidance_scale
        )
    steps: list[tuple[float, Tensor]] = []

    def record(info: StepInfo) -> None:
        steps.append((info.t, info.signal.detach().double().cpu()))

    sample(
        evaluation.sampler,
        denoiser,
        diffusion.schedule,
        (num_samples, k),
        steps=evaluation.steps,
        generator=torch.Generator(device).manual_seed(evaluation.seed + 3),
        callback=record,
        device=device,
    )
    return steps


@dataclass
class Evaluation:
    """Scores and the files an evaluation wrote."""

    scores: PosteriorScores
    files: dict[str, Path]

    def scores_dict(self) -> dict[str, float]:
        s = self.scores
        return {
            "dfm": s.dfm,
            "baseline": s.baseline,
            "noise_floor": s.noise_floor,
            "dfm_ratio": s.dfm_ratio,
            "baseline_ratio": s.baseline_ratio,
        }


def evaluate(
    config: ProjectionConfig,
    trained: Trained,
    out_dir: Path,
    *,
    run_dir: Path | None = None,
    config_yaml: str = "",
) -> Evaluation:
    """Score DFM and the baseline against the exact posterior; write pictures and a report.

    Args:
        config: the run's config (``config.evaluation`` says how to sample).
        trained: the EMA models.
        out_dir: where ``samples.png``, ``denoising.png``, ``scores.json`` and
            ``report.html`` go (created if missing).
        run_dir: the run, for the report's links and training curves (default ``out_dir``).
        config_yaml: the resolved config, shown in the report.
    """
    set_threads(config)
    evaluation = config.evaluation
    problem = config.problem.build()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir if run_dir is None else run_dir
    diffusion, baseline = trained.diffusion.eval(), trained.baseline.eval()

    samples = posterior_samples(
        problem,
        diffusion,
        baseline,
        num_contexts=evaluation.num_contexts,
        num_samples=evaluation.num_samples,
        steps=evaluation.steps,
        seed=evaluation.seed,
        sampler=evaluation.sampler,
        guidance_scale=evaluation.guidance_scale,
    )
    scores = score_samples(samples)
    files: dict[str, Path] = {}

    files["samples"] = out_dir / "samples.png"
    prior = None
    if problem.signal_dim == 2:
        prior = problem.prior.sample(1500, torch.Generator().manual_seed(evaluation.seed))
    plots.plot_samples(
        samples,
        files["samples"],
        num_panels=evaluation.plot_contexts,
        title=_title(config, trained),
        prior=prior,
    )
    if evaluation.trajectory:
        trajectory = denoising_trajectory(
            problem,
            diffusion,
            samples["context_obs"][0],
            samples["context_params"][0],
            evaluation,
            num_samples=min(evaluation.num_samples, 128),
        )
        files["denoising"] = out_dir / "denoising.png"
        plots.plot_trajectory(trajectory, samples, files["denoising"], sampler=evaluation.sampler)

    result = Evaluation(scores, files)
    files["scores"] = out_dir / "scores.json"
    summary = {
        **result.scores_dict(),
        "dfm_step": trained.dfm_step,
        "baseline_step": trained.baseline_step,
        "num_contexts": evaluation.num_contexts,
        "num_samples": evaluation.num_samples,
        "steps": evaluation.steps,
        "sampler": evaluation.sampler,
        "guidance_scale": evaluation.guidance_scale,
        "seed": evaluation.seed,
    }
    _write_text(files["scores"], json.dumps(summary, indent=2) + "\n")

    files["report"] = out_dir / "report.html"
    html = report.render_report(
        title=f"DFM — {config.name}",
        summary=_summary_sentence(config, trained),
        scores=result.scores_dict(),
        images={name: files[name] for name in ("samples", "denoising") if name in files},
        config_yaml=config_yaml,
        metrics={
            "DFM": _read_metrics(run_dir / "metrics.jsonl"),
            "baseline": _read_metrics(run_dir / BASELINE_DIR / "metrics.jsonl"),
        },
    )
    _write_text(files["report"], html)
    return result


def _title(config: ProjectionConfig, trained: Trained) -> str:
    p = config.problem
    return (
        f"{config.name}: d={p.signal_dim}, k={p.observation_dim}, K={p.num_components}; "
        f"DFM {trained.dfm_step} steps, {config.evaluation.sampler} x{config.evaluation.steps}"
    )


def _summary_sentence(config: ProjectionConfig, trained: Trained) -> str:
    p, e = config.problem, config.evaluation
    return (
        f"Signals S in R^{p.signal_dim} from a {p.num_components}-component Gaussian mixture, "
        f"observed through random {p.observation_dim}-dimensional projections "
        f"(noise std {p.noise_std:g}). DFM trained for {trained.dfm_step} steps, the "
        f"regression baseline for {trained.baseline_step}. Scores: squared energy distance "
        f"to exact posterior samples, averaged over {e.num_contexts} held-out contexts with "
        f"{e.num_samples} samples each; the noise floor is that of two independent exact sets."
    )


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _write_text(path: Path, text: str) -> None:
    """Write atomically (temp file + rename), as every file of a run is."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


CONFIG = ProjectionConfig
"""This application's structured config (see ``dfm_apps.applications``)."""
FROZEN = PROJECTION_FROZEN
"""Config sections that fix the weights."""
