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

Shipped weights (``dfm demo``): ``weights/projection.safetensors`` in this package, the EMA
weights of DFM (``dfm.*``) and the baseline (``baseline.*``) of a finished
``dfm train projection`` run, with its resolved config in the file's metadata; written by
``python -m dfm_apps.projection ship RUN_DIR`` (see ``weights/MODEL_CARD.md``).
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
from dfm_apps.applications import (
    DemoSection,
    MissingWeights,
    load_ema_models,
    read_metrics,
    write_text_atomic,
)
from dfm_apps.config import (
    PROJECTION_FROZEN,
    EvaluationConfig,
    ProjectionConfig,
    config_from_container,
    validate,
)
from dfm_core.diffusion import Context, ForwardDiffusion
from dfm_core.guidance import classifier_free_guidance
from dfm_core.projection_fit import (
    FittedModels,
    PosteriorScores,
    posterior_samples,
    score_samples,
    train_projection_models,
)
from dfm_core.projection_models import RegressionBaseline
from dfm_core.projection_problem import ProjectionDataset, ProjectionProblem
from dfm_core.sampling import StepInfo, sample

__all__ = [
    "WEIGHTS",
    "Evaluation",
    "build_models",
    "demo",
    "denoising_trajectory",
    "evaluate",
    "load_models",
    "ship_weights",
    "train",
]

BASELINE_DIR = "baseline"
WEIGHTS = Path(__file__).parent / "weights" / "projection.safetensors"
"""The shipped weights ``dfm demo`` samples from."""


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

    Core's one training path (``dfm_core.projection_fit.train_projection_models``),
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
    loaded = load_ema_models(*build_models(config), run_dir, baseline_dir=run_dir / BASELINE_DIR)
    return Trained(
        diffusion=loaded.diffusion,
        baseline=loaded.baseline,
        dfm_step=loaded.dfm_step,
        baseline_step=loaded.baseline_step,
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
    write_text_atomic(files["scores"], json.dumps(summary, indent=2) + "\n")

    files["report"] = out_dir / "report.html"
    html = report.render_report(
        title=f"DFM — {config.name}",
        summary=_summary_sentence(config, trained),
        scores=result.scores_dict(),
        images={name: files[name] for name in ("samples", "denoising") if name in files},
        config_yaml=config_yaml,
        metrics={
            "DFM": read_metrics(run_dir / "metrics.jsonl"),
            "baseline": read_metrics(run_dir / BASELINE_DIR / "metrics.jsonl"),
        },
    )
    write_text_atomic(files["report"], html)
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


# ----------------------------------------------------------------------------- shipped weights


def ship_weights(run_dir: Path, path: Path | None = None) -> Path:
    """Write a finished run's EMA weights (DFM and baseline) and config to one safetensors file.

    Args:
        run_dir: a ``dfm train projection`` run with complete checkpoints.
        path: the file to write (default: the package's shipped weights, ``WEIGHTS``).
    """
    import yaml
    from safetensors.torch import save_file

    from dfm_apps.config import load_run_config, to_container

    settings = validate(load_run_config(run_dir / "config.yaml"))
    trained = load_models(settings, run_dir)
    tensors = {f"dfm.{k}": v.contiguous() for k, v in trained.diffusion.state_dict().items()}
    tensors |= {f"baseline.{k}": v.contiguous() for k, v in trained.baseline.state_dict().items()}
    metadata = {
        "config": yaml.safe_dump(to_container(load_run_config(run_dir / "config.yaml"))),
        "dfm_step": str(trained.dfm_step),
        "baseline_step": str(trained.baseline_step),
    }
    path = WEIGHTS if path is None else path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # safetensors creates the file private; shipped weights are read by all
    os.replace(tmp, path)
    return path


def load_shipped(path: Path | None = None) -> tuple[ProjectionConfig, str, Trained]:
    """The shipped models: (validated config, its YAML, the EMA models in eval mode).

    Args:
        path: a file written by ``ship_weights`` (default: ``WEIGHTS``).

    Raises:
        MissingWeights: no file at ``path``.
    """
    import yaml
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = WEIGHTS if path is None else path
    if not path.is_file():
        raise MissingWeights(
            f"{path}: the projection demo's weights are missing; make them with "
            "`dfm train projection --run-dir runs/projection` then "
            "`python -m dfm_apps.projection ship runs/projection`"
        )
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    config_yaml = metadata["config"]
    settings = validate(config_from_container(yaml.safe_load(config_yaml), where=str(path)))
    tensors = load_file(str(path))
    diffusion, baseline = build_models(settings)
    for prefix, model in (("dfm.", diffusion), ("baseline.", baseline)):
        model.load_state_dict(
            {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        )
    trained = Trained(
        diffusion=diffusion.eval(),
        baseline=baseline.eval(),
        dfm_step=int(metadata["dfm_step"]),
        baseline_step=int(metadata["baseline_step"]),
        resumed_from=None,
    )
    return settings, config_yaml, trained


def demo(out_dir: Path, *, seed: int = 0) -> DemoSection:
    """The exact-posterior figure on the shipped weights: DFM vs baseline vs exact samples.

    Args:
        out_dir: where the pictures, scores.json and report.html go.
        seed: seed of the held-out contexts and the sampler noise.
    """
    import dataclasses

    settings, config_yaml, trained = load_shipped()
    settings = dataclasses.replace(
        settings, evaluation=dataclasses.replace(settings.evaluation, seed=seed)
    )
    evaluation = evaluate(settings, trained, out_dir, config_yaml=config_yaml)
    scores = evaluation.scores_dict()
    p, e = settings.problem, settings.evaluation
    rows = [
        ["DFM", f"{scores['dfm']:.4g}", f"{scores['dfm_ratio']:.1f}x"],
        ["regression baseline", f"{scores['baseline']:.4g}", f"{scores['baseline_ratio']:.1f}x"],
        ["noise floor (exact vs exact)", f"{scores['noise_floor']:.4g}", "1.0x"],
    ]
    return DemoSection(
        title="Exact posterior: a 2-D signal seen through a 1-D projection",
        summary=_summary_sentence(settings, trained),
        scores={
            "DFM / noise floor": scores["dfm_ratio"],
            "baseline / noise floor": scores["baseline_ratio"],
        },
        command=f"dfm demo --only projection --seed {seed}",
        tables=[
            (
                "energy distance to exact posterior samples",
                ["samples", "energy distance", "/ noise floor"],
                rows,
            )
        ],
        images={
            f"samples: exact vs DFM vs baseline, {min(e.plot_contexts, e.num_contexts)} held-out contexts (d={p.signal_dim}, k={p.observation_dim})": evaluation.files[
                "samples"
            ],
            **(
                {
                    "the sampler's signal estimates along its trajectory": evaluation.files[
                        "denoising"
                    ]
                }
                if "denoising" in evaluation.files
                else {}
            ),
        },
    )


CONFIG = ProjectionConfig
"""This application's structured config (see ``dfm_apps.applications``)."""
FROZEN = PROJECTION_FROZEN
"""Config sections that fix the weights."""


def main(argv: list[str] | None = None) -> int:
    """``python -m dfm_apps.projection ship RUN_DIR [OUT]``: ship a finished run's weights."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3) or args[0] != "ship":
        print("usage: python -m dfm_apps.projection ship RUN_DIR [OUT]", file=sys.stderr)
        return 2
    out = ship_weights(Path(args[1]), Path(args[2]) if len(args) == 3 else None)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
