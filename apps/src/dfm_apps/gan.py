"""The GAN-inversion application: one visible patch in, K completions out.

dfm-gan's inversion model (the paper's supplementary section 2.3): the context is an image
masked down to one patch (plus the mask), the signal a StyleGAN2 latent ``w``, the forward
model the frozen generator followed by area down-sampling to the diffusion resolution. The
deterministic baseline is dfm-gan's ``LatentRegressor`` (the same network fed the context
only, trained with the same losses). Training images are generator samples
(``dfm_gan.InversionDataset``: z ~ N(0, I), truncation psi), so the truth behind every
held-out patch is known exactly.

Run directory::

    config.yaml          resolved config
    baseline/            the regressor's run (trained first): checkpoints/, metrics.jsonl
    checkpoints/         DFM checkpoints (safetensors, EMA included); metrics.jsonl
    completions.png      per held-out image: masked input, truth, regressor, K samples
    denoising.mp4/.gif   the first image's K latent estimates, rendered, over the sampler steps
    scores.json          patch PSNR, diversity and error outside the patch, latent error
    report.html          all of the above, offline

Completing, scoring and drawing held-out patches live in ``dfm_apps.gan_completion``.

Checkpoints hold the trained networks only (:class:`InversionTraining`): the generator is
frozen and is read again from ``generator.path`` (or the shipped demo generator), so its
weights are not written twice (model and EMA) into every checkpoint.

Scoring (``dfm_gan.quality``, the protocol of the shipped weights' model card): held-out
generator samples from an RNG stream of their own (``evaluation.heldout_seed``), a square
patch of side ``evaluation.patch_fraction`` (0.5: 25 % of the image) at a random place, K
completions at the diffusion resolution, pixels on [0, 1]. PSNR inside the patch; diversity
= mean pairwise RMS difference between completions outside it (0 for the regressor by
construction); RMS error outside it, and its smallest value among the K completions (best
of K: how close the nearest completion comes to the unseen truth); RMS distance of the
sampled ``w`` to the true one, next to the chance level (two unrelated held-out latents).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dfm_apps.applications import (
    DemoSection,
    MissingWeights,
    Trained,
    load_ema_models,
    read_metrics,
    train_baseline_then_dfm,
    write_text_atomic,
)
from dfm_apps.gan_completion import (
    Completions,
    complete_held_out,
    completion_scores,
    describe_evaluation,
    score_table,
    write_completions_png,
    write_denoising_video,
)
from dfm_core.diffusion import DFMBatch, ForwardDiffusion
from dfm_core.sampling import SAMPLERS
from dfm_core.schedules import SCHEDULES
from dfm_core.trainer import OptimizerConfig, TrainerConfig
from dfm_gan.inversion import (
    DEFAULT_DEMO_WEIGHTS,
    FFHQ256_PICKLE,
    InversionDataset,
    InversionModelConfig,
    collate_inversion,
    inversion_config,
)
from dfm_gan.networks import Generator
from dfm_gan.quality import LatentRegressor

__all__ = [
    "BASELINE_DIR",
    "CONFIG",
    "FROZEN",
    "Completions",
    "Evaluation",
    "GanConfig",
    "GanDataConfig",
    "GanEvaluationConfig",
    "GanGeneratorConfig",
    "InversionTraining",
    "Trained",
    "complete_held_out",
    "demo",
    "evaluate",
    "load_generator",
    "load_models",
    "train",
]

BASELINE_DIR = "baseline"
ASSETS = DEFAULT_DEMO_WEIGHTS.parent
DEMO_INVERSION = ASSETS / "inversion.safetensors"
DEMO_REGRESSOR = ASSETS / "regressor.safetensors"
FFHQ256_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"
    f"transfer-learning-source-nets/{FFHQ256_PICKLE}"
)
DEMO_COMMAND = (
    "uv run --package dfm-gan python -m dfm_gan.demo --inversion "
    "packages/dfm-gan/src/dfm_gan/assets/demo32.safetensors "
    "--out packages/dfm-gan/src/dfm_gan/assets --minutes 25 --regressor-minutes 8 "
    "--batch-size 16 --lr 5e-4 --threads 1"
)
"""Makes the shipped inversion and regressor weights (dfm-gan's MODEL_CARD.md)."""


# ----------------------------------------------------------------------------- configs


@dataclass
class GanGeneratorConfig:
    """The frozen StyleGAN2 generator the latents are rendered with."""

    path: str | None = None
    """null: the 32x32 demo generator shipped with dfm-gan. Otherwise an official StyleGAN2-ADA
    network pickle (``.pkl``, read by dfm-gan's restricted unpickler: nothing in it is
    executed) or its conversion by ``dfm export stylegan2 PKL OUT`` (``OUT.safetensors``);
    ``~`` is expanded, a relative path is relative to the working directory."""

    def __post_init__(self) -> None:
        if self.path is not None and Path(self.path).suffix not in (".pkl", ".safetensors"):
            raise ValueError(
                f"generator.path: expected an official StyleGAN2-ADA .pkl or a .safetensors "
                f"from `dfm export stylegan2`, got {self.path!r}"
            )

    def resolved(self) -> Path:
        """The weights file this section names."""
        if self.path is None:
            return DEFAULT_DEMO_WEIGHTS
        return Path(os.path.expanduser(self.path))


@dataclass
class GanDataConfig:
    """Training images: generator samples with random patch masks, made on the fly."""

    length: int = 1_000_000
    """Items per epoch; item i is a pure function of (seed, i), so none is stored."""
    seed: int = 0
    """Seed of the training latents and masks."""

    def __post_init__(self) -> None:
        if self.length < 1 or self.seed < 0:
            raise ValueError(
                f"data.length >= 1 and data.seed >= 0 expected, got {self.length}, {self.seed}"
            )


@dataclass
class GanEvaluationConfig:
    """Completing held-out patches and scoring the completions."""

    num_contexts: int = 16
    """Held-out generator samples, each seen through one patch."""
    num_samples: int = 8
    """Completions K per patch."""
    steps: int = 50
    """Sampler steps (paper: 50 DDIM steps)."""
    sampler: str = "ddim"
    """``ddim``, ``ddpm``, ``edm`` or ``dpmpp_2m`` (``dfm_core.sampling.SAMPLERS``)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance scale (1: none)."""
    reconstruction_weight: float = 0.0
    """Reconstruction guidance towards the visible patch through the frozen generator
    (dfm-core's ``reconstruction_guidance``; 0: none). The gan-demo preset uses 0.5."""
    patch_fraction: float = 0.5
    """Side of the visible square patch / image side (0.5: 25 % of the image, issue 10)."""
    heldout_seed: int = 10_000_019
    """Seed of the held-out latents and patch positions (a stream never used in training)."""
    seed: int = 0
    """Seed of the sampler noise (sample k of image b draws from ``(seed + b) * 1000 + k``)."""
    picture_contexts: int = 4
    """Held-out images drawn in ``completions.png`` (the first ones of the scored set)."""
    video: bool = True
    """Write the denoising video (mp4 + gif) of the first image's K samples."""

    def __post_init__(self) -> None:
        for name in ("num_contexts", "num_samples", "steps", "picture_contexts"):
            if getattr(self, name) < 1:
                raise ValueError(f"evaluation.{name}: expected >= 1, got {getattr(self, name)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(
                f"evaluation.sampler: expected one of {sorted(SAMPLERS)}, got {self.sampler!r}"
            )
        if not 0 < self.patch_fraction <= 1:
            raise ValueError(
                f"evaluation.patch_fraction: expected in (0, 1], got {self.patch_fraction}"
            )
        if not self.guidance_scale >= 0:
            raise ValueError(f"evaluation.guidance_scale: expected >= 0, got {self.guidance_scale}")
        if not self.reconstruction_weight >= 0:
            raise ValueError(
                f"evaluation.reconstruction_weight: expected >= 0, got {self.reconstruction_weight}"
            )


def _demo_model() -> InversionModelConfig:
    # No DiT overrides in the schema: OmegaConf merges a preset's dict into the default
    # one key by key, so defaults here would leak into every preset (the presets set them).
    return inversion_config("gan-demo", generator_path=None, dit_overrides={})


def _demo_trainer() -> TrainerConfig:
    # The recipe of the shipped weights (dfm-gan MODEL_CARD.md): AdamW 5e-4 (torch's default
    # betas), 100 warm-up steps, grad-norm clip 1, EMA 0.99, batch 16; items are rendered
    # in-process.
    return TrainerConfig(
        max_steps=2600,
        batch_size=16,
        optimizer=OptimizerConfig(lr=5e-4, betas=(0.9, 0.999), warmup_steps=100),
        grad_clip=1.0,
        ema_decay=0.99,
        num_workers=0,
        log_every=25,
        checkpoint_every=500,
        keep_last=2,
        callback_every=500,
    )


@dataclass
class GanConfig:
    """GAN inversion: DFM and a latent regressor on a frozen StyleGAN2 (gan-* and ffhq256 presets)."""

    app: str = "gan"
    """Which application the config belongs to (fixed)."""
    name: str = "gan-demo"
    """Preset name, used in titles and run directory names."""
    generator: GanGeneratorConfig = field(default_factory=GanGeneratorConfig)
    """The frozen generator."""
    model: InversionModelConfig = field(default_factory=_demo_model)
    """The inversion model (dfm-gan's ``InversionModelConfig``; its ``generator_path`` stays
    null: the generator comes from the ``generator`` section)."""
    data: GanDataConfig = field(default_factory=GanDataConfig)
    """Training images."""
    trainer: TrainerConfig = field(default_factory=_demo_trainer)
    """Training loop of the DFM model."""
    baseline_steps: int = 1000
    """Optimiser steps of the regressor baseline (same trainer settings otherwise)."""
    evaluation: GanEvaluationConfig = field(default_factory=GanEvaluationConfig)
    """Completing and scoring held-out patches."""
    num_threads: int | None = 1
    """``torch.set_num_threads`` for the run; null keeps torch's default."""

    def __post_init__(self) -> None:
        from dfm_core.dit import DIT_PRESETS

        m = self.model
        if self.app != "gan":
            raise ValueError(f"app: expected 'gan' for this schema, got {self.app!r}")
        if m.generator_path is not None or m.random_generator:
            raise ValueError(
                "model.generator_path / model.random_generator: leave them null/false; the "
                "application reads the generator from generator.path"
            )
        if m.novel_resolution is not None:
            raise ValueError(
                "model.novel_resolution: leave it null; dfm-gan's novel observation is always "
                "the generator's full resolution"
            )
        if m.latent not in ("w", "w+"):
            raise ValueError(f"model.latent: expected one of ['w', 'w+'], got {m.latent!r}")
        if m.dit_preset not in DIT_PRESETS:
            raise ValueError(
                f"model.dit_preset: expected one of {sorted(DIT_PRESETS)}, got {m.dit_preset!r}"
            )
        if m.train_resolution < 1 or m.feature_channels < 1 or m.latent_stats_samples < 2:
            raise ValueError(
                "model.train_resolution, model.feature_channels >= 1 and "
                "model.latent_stats_samples >= 2 expected"
            )
        if not 0 < m.patch_min_fraction <= m.patch_max_fraction <= 1:
            raise ValueError(
                "model.patch_min_fraction/patch_max_fraction: expected 0 < min <= max <= 1, got "
                f"{m.patch_min_fraction}, {m.patch_max_fraction}"
            )
        if m.schedule.name not in SCHEDULES:
            raise ValueError(
                f"model.schedule.name: expected one of {sorted(SCHEDULES)}, got {m.schedule.name!r}"
            )
        if self.baseline_steps < 1:
            raise ValueError(f"baseline_steps: expected >= 1, got {self.baseline_steps}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads: expected >= 1 or null, got {self.num_threads}")


CONFIG = GanConfig
"""This application's structured config (see ``dfm_apps.applications``)."""
FROZEN = ("app", "generator", "model")
"""Config sections that fix the weights: a resumed run or ``dfm sample`` may not change them."""


# ----------------------------------------------------------------------------- models


def _missing_generator(path: Path) -> str:
    if path.name.startswith("ffhq") or path.suffix == ".pkl":
        return (
            f"generator.path: {path} not found. Download {FFHQ256_PICKLE} (NVIDIA's "
            f"StyleGAN2-ADA FFHQ 256) from {FFHQ256_URL} and put it at that path, or set "
            "generator.path=FILE; optionally convert it once with `dfm export stylegan2 "
            f"{FFHQ256_PICKLE} ffhq256` and set generator.path=ffhq256.safetensors (the .pkl "
            "is read without executing any code from it)"
        )
    return (
        f"generator.path: {path} not found (expected an official StyleGAN2-ADA .pkl or a "
        ".safetensors written by `dfm export stylegan2 PKL OUT`)"
    )


def load_generator(config: GanGeneratorConfig) -> Generator:
    """The frozen generator a config names, in eval mode on the CPU.

    Raises:
        MissingWeights: the file is missing (the message says what to download, and where).
    """
    from dfm_gan.weights import load_generator as load_safetensors
    from dfm_gan.weights import load_official_generator

    path = config.resolved()
    if not path.is_file():
        raise MissingWeights(_missing_generator(path))
    if path.suffix == ".pkl":
        return load_official_generator(path).eval()
    return load_safetensors(path).eval()


def build_models(
    config: GanConfig, generator: Generator
) -> tuple[ForwardDiffusion, LatentRegressor]:
    """DFM and the regressor (same initial predictor, seeded by ``model.seed``), sharing the
    frozen generator."""
    diffusion = config.model.build(generator=generator)
    return diffusion, LatentRegressor(diffusion)


def _drop_frozen(module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    del module, metadata
    for key in [k for k in state if k.startswith(prefix + "model.forward_model.")]:
        del state[key]


def _frozen_not_missing(module: nn.Module, incompatible: Any) -> None:
    del module
    keep = [k for k in incompatible.missing_keys if not k.startswith("model.forward_model.")]
    incompatible.missing_keys[:] = keep


class InversionTraining(nn.Module):
    """What the trainer trains: the DFM model or the regressor, checkpointed without the GAN.

    ``state_dict`` leaves out the frozen generator (``model.forward_model.*``): it never
    changes, is loaded again from ``generator.path``, and would otherwise be written twice
    (model and EMA) into every checkpoint (200 MB per checkpoint for FFHQ 256).
    ``load_state_dict`` accepts such a state and leaves the generator as loaded.

    Args:
        model: an inversion ``ForwardDiffusion`` or a ``LatentRegressor``.
    """

    def __init__(self, model: ForwardDiffusion | LatentRegressor) -> None:
        super().__init__()
        self.model = model
        self.register_state_dict_post_hook(_drop_frozen)
        self.register_load_state_dict_post_hook(_frozen_not_missing)

    def forward(self, batch: DFMBatch, *, generator: torch.Generator) -> dict[str, Tensor]:
        """The loss terms of one batch (the regressor draws no noise)."""
        if isinstance(self.model, LatentRegressor):
            return self.model(batch)
        return self.model(batch, generator=generator)


def _set_threads(config: GanConfig) -> None:
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)


def train(config: GanConfig, run_dir: Path, *, run_config: dict[str, Any]) -> Trained:
    """Train (or resume) the regressor baseline, then DFM, with ``dfm_core.trainer.Trainer``.

    Resumes each from its newest checkpoint; a finished run is not trained further. Call on
    every rank.

    Args:
        config: the validated config.
        run_dir: the run directory (the regressor's run is ``run_dir/baseline``).
        run_config: the resolved config as plain data, embedded in every checkpoint.
    """
    _set_threads(config)
    generator = load_generator(config.generator)
    diffusion, regressor = build_models(config, generator)
    # The dataset renders its items on the CPU (in loader workers, too) while the models'
    # generator moves to the training device: it gets a copy of its own.
    dataset = InversionDataset(
        copy.deepcopy(generator), config.model, num=config.data.length, seed=config.data.seed
    )
    return train_baseline_then_dfm(
        InversionTraining(regressor),
        InversionTraining(diffusion),
        dataset,
        config.trainer,
        baseline_steps=config.baseline_steps,
        run_dir=run_dir,
        baseline_dir=run_dir / BASELINE_DIR,
        unwrap=lambda ema: ema.model.eval(),  # type: ignore[union-attr]
        collate_fn=collate_inversion,
        run_config=run_config,
        frozen_config_keys=FROZEN,
    )


def load_models(config: GanConfig, run_dir: Path) -> Trained:
    """The EMA weights of a run's newest complete checkpoints, on the CPU, in eval mode.

    Raises:
        CheckpointError: the run (or its baseline) has no complete checkpoint yet.
        MissingWeights: the generator file is gone.
    """
    diffusion, regressor = build_models(config, load_generator(config.generator))
    return load_ema_models(
        diffusion, regressor, run_dir, baseline_dir=run_dir / BASELINE_DIR, wrap=InversionTraining
    )


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """Scores, the completions they were computed from, and the files written."""

    scores: dict[str, float]
    completions: Completions
    files: dict[str, Path]

    def scores_dict(self) -> dict[str, float]:
        return dict(self.scores)


def evaluate(
    config: GanConfig,
    trained: Trained,
    out_dir: Path,
    *,
    run_dir: Path | None = None,
    config_yaml: str = "",
) -> Evaluation:
    """Complete held-out patches with both models; write pictures, video, scores and report.

    Args:
        config: the run's config (``config.evaluation`` says how to sample).
        trained: the EMA models.
        out_dir: where ``completions.png``, ``denoising.mp4``/``.gif``, ``scores.json`` and
            ``report.html`` go (created if missing).
        run_dir: the run, for the report's training curves (default ``out_dir``).
        config_yaml: the resolved config, shown in the report.
    """
    from dfm_apps import report

    _set_threads(config)
    ev = config.evaluation
    out_dir = Path(out_dir)
    run_dir = out_dir if run_dir is None else Path(run_dir)
    result = complete_held_out(
        trained.diffusion,
        trained.baseline,
        ev,
        resolution=config.model.train_resolution,
        psi=config.model.truncation_psi,
    )
    scores = completion_scores(result)
    files: dict[str, Path] = {}
    files["completions"] = write_completions_png(
        result, out_dir / "completions.png", rows=ev.picture_contexts
    )
    generator = trained.diffusion.forward_model.generator  # type: ignore[union-attr]
    if ev.video:
        files |= write_denoising_video(result, generator, out_dir)
    summary = {
        **scores,
        "dfm_step": trained.dfm_step,
        "baseline_step": trained.baseline_step,
        **{f"evaluation.{k}": v for k, v in dataclasses.asdict(ev).items()},
    }
    files["scores"] = write_text_atomic(
        out_dir / "scores.json", json.dumps(summary, indent=2) + "\n"
    )
    full = result.truth.shape[-1]
    html = report.render_page(
        title=f"DFM GAN inversion: {config.name}",
        summary=(
            f"DFM ({trained.dfm_step} steps) and the latent regressor ({trained.baseline_step} "
            f"steps) on a frozen {full}x{full} StyleGAN2 "
            f"({config.generator.path or 'the shipped demo32 generator'}). "
            + describe_evaluation(ev, config.model.train_resolution, full)
        ),
        tables=[score_table(scores)],
        images={
            "masked input, truth, regressor, K DFM samples (full resolution)": files["completions"]
        },
        videos={"denoising: the K latent estimates, rendered": files["denoising.mp4"]}
        if "denoising.mp4" in files
        else {},
        config_yaml=config_yaml,
        base=out_dir,
        metrics={
            "DFM": read_metrics(run_dir / "metrics.jsonl"),
            "regressor": read_metrics(run_dir / BASELINE_DIR / "metrics.jsonl"),
        },
        commands=[f"dfm sample {run_dir} --seed {ev.seed}"],
    )
    files["report"] = write_text_atomic(out_dir / "report.html", html)
    return Evaluation(scores=scores, completions=result, files=files)


# ----------------------------------------------------------------------------- demo

DEMO_EVALUATION = GanEvaluationConfig(
    num_contexts=4, num_samples=8, steps=50, reconstruction_weight=1.0, picture_contexts=4
)
"""The demo's sampling: 4 held-out images x 8 completions, 50 DDIM steps, reconstruction
guidance 1 as in the gan-demo preset (the model card's protocol on fewer images; ``python -m pytest packages/dfm-gan/tests/test_demo_quality.py -m
slow`` runs it on 16)."""


def load_demo_models() -> tuple[ForwardDiffusion, LatentRegressor, InversionModelConfig]:
    """The shipped inversion model and regressor on the shipped demo32 generator.

    Raises:
        MissingWeights: a shipped file is missing (the message names it and the command
            that makes it).
    """
    from dfm_gan.inversion import load_inversion_model

    for path in (DEFAULT_DEMO_WEIGHTS, DEMO_INVERSION, DEMO_REGRESSOR):
        if not path.is_file():
            command = (
                "uv run --package dfm-gan python -m dfm_gan.demo --out "
                "packages/dfm-gan/src/dfm_gan/assets/demo32 --minutes 40 --threads 1"
                if path == DEFAULT_DEMO_WEIGHTS
                else DEMO_COMMAND
            )
            raise MissingWeights(
                f"{path}: the GAN demo's shipped weights are not installed; make them with "
                f"`{command}` (see dfm-gan's assets/MODEL_CARD.md)"
            )
    diffusion, config = load_inversion_model(DEMO_INVERSION)
    generator = diffusion.forward_model.generator  # type: ignore[union-attr]
    holder, _ = load_inversion_model(DEMO_REGRESSOR, generator=generator)
    return diffusion.eval(), LatentRegressor(holder).eval(), config


def demo(out_dir: Path, *, seed: int = 0) -> DemoSection:
    """The shipped gan-demo weights completing held-out patches (no training).

    Writes ``completions.png``, ``denoising.mp4``/``.gif`` and ``scores.json`` under
    ``out_dir``; held-out images are fixed, ``seed`` seeds the sampler.
    """
    # One thread: the 350k-parameter model gains nothing from intra-op threads, which only
    # contend on a shared CPU (the caller's setting is restored).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _demo(Path(out_dir), seed)
    finally:
        torch.set_num_threads(threads)


def _demo(out_dir: Path, seed: int) -> DemoSection:
    diffusion, regressor, model_config = load_demo_models()
    ev = dataclasses.replace(DEMO_EVALUATION, seed=seed)
    result = complete_held_out(
        diffusion,
        regressor,
        ev,
        resolution=model_config.train_resolution,
        psi=model_config.truncation_psi,
    )
    scores = completion_scores(result)
    png = write_completions_png(result, out_dir / "completions.png", rows=ev.picture_contexts)
    videos = write_denoising_video(result, diffusion.forward_model.generator, out_dir)  # type: ignore[arg-type]
    write_text_atomic(
        out_dir / "scores.json",
        json.dumps({**scores, "seed": seed, **dataclasses.asdict(ev)}, indent=2) + "\n",
    )
    full = result.truth.shape[-1]
    return DemoSection(
        title="GAN inversion: one patch -> K completions",
        summary=(
            "The shipped gan-demo inversion model (DFM: a DiT predicting one StyleGAN2 w, "
            "rendered by the frozen demo32 generator trained on procedural faces) and the "
            "deterministic latent regressor, no training. "
            + describe_evaluation(ev, model_config.train_resolution, full)
        ),
        scores={
            "DFM patch PSNR (dB)": scores["dfm_psnr_patch_db"],
            "regressor patch PSNR (dB)": scores["baseline_psnr_patch_db"],
            "DFM diversity outside patch": scores["dfm_diversity_outside"],
            "regressor diversity outside patch": scores["baseline_diversity_outside"],
            "DFM latent RMS": scores["dfm_latent_rms"],
            "latent RMS chance": scores["latent_rms_chance"],
        },
        command="dfm demo --only gan",
        tables=[score_table(scores)],
        images={"masked input, truth, regressor, K DFM samples (32x32)": png},
        videos={
            "denoising: the first image's K latent estimates, rendered": videos["denoising.mp4"]
        },
    )
