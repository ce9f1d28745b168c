"""The motion application: one image in, K sampled motions (and next frames) out.

Trains dfm-flow's single-image motion DFM (a DiT predicts a flow field; the forward model
softmax-splats the input image by it, supplementary section 2.2 of Tewari, Yin et al.) and
its deterministic flow regressor (same backbone, no noise) on clips read by dfm-data's
Vimeo-90K loader: real Vimeo-90K, or the synthetic motion world written in that layout and
synthesized on first use. Then samples K motions per held-out input image and scores them.

Run directory::

    config.yaml          resolved config
    baseline/            the flow regressor's run (checkpoints/, metrics.jsonl)
    checkpoints/         DFM checkpoints (safetensors, EMA included), metrics.jsonl
    motions.png          per held-out input: the input and the true next frame, the
                         regressor's flow and warped frame, K sampled flows and warped frames
    flow-key.png         the flow colour wheel (hue = direction, saturation = speed)
    motions/<clip>.mp4   the input splatted from time 0 to ``evaluation.max_time`` along the
                         regressor's flow and along each sampled flow, side by side (+ .gif)
    scores.json          the figures below, with the settings that produced them
    report.html          all of the above, offline

Items: a dfm-data ``FrameBatch`` (context, target and novel frames of one clip with their
frame numbers) becomes dfm-flow's ``DFMBatch`` through ``frames_to_batch``, which places the
novel frames at their times under the constant-velocity assumption (Vimeo's im3 is time 2).

Held-out clips: a synthetic world of seed ``evaluation.world_seed`` (never trained on) when
``data.synthesize`` is on, else the data root's test list. Sampling, scoring and pictures live
in ``dfm_apps.motion_heldout``; ``demo`` runs them on dfm-flow's shipped weights.

Scores, given the context frame of each held-out clip only:

* **Frames** (every dataset): PSNR and SSIM (``dfm_apps.image_metrics``: per-image PSNR on
  [0, 1] images, MSE over all pixels and channels; SSIM of Wang et al. 2004, 11x11 Gaussian
  window, sigma 1.5) of the input warped by the predicted flow against the true target frame
  (time 1), averaged over inputs: DFM mean over its K samples, DFM best of K, and the
  regressor's one answer; with ``evaluation.lpips`` also LPIPS v0.1 (VGG16 or AlexNet
  backbone, stated in the report; best of K = the smallest distance). Splatting leaves holes
  (zeros) where the background was hidden; they count as errors.
* **Motions** (the synthetic world, whose ground truth says how every sprite moves): dfm-flow's
  ``dfm_flow.evaluation`` figures (issue 9, section 4). Each sprite's motion is the median
  flow over its visible interior, classified to the nearest member of the world's velocity set
  (directions x speeds): the fraction of samples within half the set's spacing of a member
  (a member, not a blend), the mean number of distinct members among a sprite's K samples, a
  chi-squared test of the pooled counts against uniform (p), and the best-of-K and mean
  end-point errors against the true velocity. The regressor is scored the same way (its K
  "samples" are one answer repeated).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dfm_apps.applications import (
    DemoSection,
    MissingWeights,
    Trained,
    load_ema_models,
    read_metrics,
    train_baseline_then_dfm,
    wait_unless_rank_zero,
    write_text_atomic,
)
from dfm_apps.motion_heldout import (
    HeldOut,
    MotionOutputs,
    frame_scores,
    motion_scores,
    read_heldout,
    sample_heldout,
    score_all,
    score_tables,
    velocity_set,
    write_media,
)
from dfm_core.diffusion import DFMBatch, ForwardDiffusion
from dfm_core.dit import DIT_PRESETS
from dfm_core.sampling import SAMPLERS
from dfm_core.trainer import OptimizerConfig, TrainerConfig
from dfm_flow import (
    MotionModelConfig,
    frames_to_batch,
    motion_preset,
)
from dfm_flow.motion import MotionRegressor

__all__ = [
    "BASELINE_DIR",
    "CONFIG",
    "FROZEN",
    "Evaluation",
    "HeldOut",
    "MotionConfig",
    "MotionDataConfig",
    "MotionDataMissing",
    "MotionEvaluationConfig",
    "MotionOutputs",
    "SyntheticWorldConfig",
    "Trained",
    "collate_motion_batches",
    "demo",
    "ensure_world",
    "evaluate",
    "frame_scores",
    "load_models",
    "motion_scores",
    "sample_heldout",
    "train",
    "velocity_set",
]

BASELINE_DIR = "baseline"
LAYOUTS = {"triplet": ("tri", 3, "vimeo_triplet.zip", "33 GB"),
           "septuplet": ("sep", 7, "vimeo_septuplet.zip", "82 GB")}  # fmt: skip
"""Vimeo-90K layout -> (list prefix, frames per clip, official zip, its size)."""
DOWNLOAD = "http://data.csail.mit.edu/tofu/dataset/"
"""Where the official Vimeo-90K zips are (see http://toflow.csail.mit.edu)."""


class MotionDataMissing(FileNotFoundError):
    """The configured Vimeo-90K root is not there (the message says what to download)."""


# ----------------------------------------------------------------------------- configs


@dataclass
class SyntheticWorldConfig:
    """The synthetic motion world written when ``data.synthesize`` is on and the root is empty.

    Frames are written at the model's ``image_size_hw``; sprites move with a velocity drawn
    uniformly from 4 directions x 2 speeds (dfm-data's ``MotionWorldConfig``).
    """

    n_sequences: int = 3000
    """Clips; a fifth go to the test list."""
    seed: int = 0
    """World seed (the held-out world uses ``evaluation.world_seed``)."""


@dataclass
class MotionDataConfig:
    """Training clips in the Vimeo-90K layout (dfm-data's loader)."""

    root: str = "data/motion-world"
    """Folder holding ``sequences/`` and the ``tri_``/``sep_`` lists (relative to the
    working directory)."""
    synthesize: bool = True
    """Write the synthetic motion world to ``root`` when it is not there yet; False: ``root``
    must hold Vimeo-90K (a missing root is an error saying what to download)."""
    world: SyntheticWorldConfig = field(default_factory=SyntheticWorldConfig)
    """Options of that world."""
    layout: str = "triplet"
    """``triplet`` (im1..im3, ``tri_*list.txt``) or ``septuplet`` (im1..im7, ``sep_*``)."""
    context_frame: int = 1
    """1-based frame number of the input frame."""
    target_frame: int = 2
    """1-based frame number of the target frame (time 1)."""
    novel_frames: list[int] = field(default_factory=lambda: [3])
    """Frames of the novel-frame loss, at times (k - context) / (target - context) under the
    constant-velocity assumption (empty: no novel loss)."""
    crop_size_hw: list[int] | None = None
    """Crop (random in training, centred in evaluation) before resizing to the model size;
    null keeps the whole frame."""
    hflip_probability: float = 0.0
    """Probability of flipping a training clip horizontally."""
    time_reverse_probability: float = 0.0
    """Probability of swapping the input and target frames of a training clip."""
    on_error: str = "raise"
    """``raise`` on a bad clip, or ``skip`` it (counted; dfm-data's policy)."""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"data.layout: expected one of {sorted(LAYOUTS)}, got {self.layout!r}")
        frames = LAYOUTS[self.layout][1]
        numbers = {"context_frame": self.context_frame, "target_frame": self.target_frame}
        numbers |= {f"novel_frames[{i}]": k for i, k in enumerate(self.novel_frames)}
        for name, k in numbers.items():
            if not 1 <= k <= frames:
                raise ValueError(f"data.{name}: expected 1..{frames} ({self.layout}), got {k}")
        if self.context_frame == self.target_frame:
            raise ValueError("data.target_frame: must differ from data.context_frame")
        if self.crop_size_hw is not None and len(self.crop_size_hw) != 2:
            raise ValueError(f"data.crop_size_hw: expected [H, W] or null, got {self.crop_size_hw}")
        for name in ("hflip_probability", "time_reverse_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.{name}: expected in [0, 1], got {getattr(self, name)}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error: expected 'raise' or 'skip', got {self.on_error!r}")
        if self.world.n_sequences < 2:
            raise ValueError(f"data.world.n_sequences: expected >= 2, got {self.world.n_sequences}")


@dataclass
class MotionEvaluationConfig:
    """Sampling and scoring held-out clips."""

    num_inputs: int = 32
    """Held-out clips scored (from the held-out world, or the data root's test list)."""
    num_pictures: int = 4
    """Of those, the first ones drawn in ``motions.png`` and given a video."""
    num_samples: int = 8
    """Sampled motions K per input."""
    steps: int = 20
    """Sampler steps."""
    sampler: str = "ddim"
    """``ddim``, ``ddpm``, ``edm`` or ``dpmpp_2m`` (``dfm_core.sampling.SAMPLERS``)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance scale (1: none)."""
    batch_size: int = 16
    """Inputs per sampler call (each call draws ``batch_size * num_samples`` motions)."""
    world_seed: int = 1000
    """Seed of the held-out synthetic world (never used in training); with
    ``data.synthesize`` off the data root's test list is scored instead."""
    max_time: float = 2.0
    """Videos run from time 0 (the input) to this time (1 = the next frame)."""
    video_frames: int = 25
    """Frames per video."""
    videos: bool = True
    """Write the per-input videos (mp4, and gif)."""
    lpips: str | None = None
    """Also score LPIPS v0.1 with this backbone: ``vgg`` (VGG16) or ``alex``; null: off."""
    lpips_backbone: str | None = None
    """torchvision's state-dict file of that backbone (null: the torch hub cache path); a
    missing file is an error naming it and its URL (``dfm_apps.image_metrics.LPIPSMetric``)."""
    seed: int = 1234
    """Seed of the sampler noise (sample k of input n uses ``seed * 10**6 + n * K + k``)."""

    def __post_init__(self) -> None:
        for name in ("num_inputs", "num_pictures", "num_samples", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"evaluation.{name}: expected >= 1, got {getattr(self, name)}")
        if self.video_frames < 2:
            raise ValueError(f"evaluation.video_frames: expected >= 2, got {self.video_frames}")
        if self.sampler not in SAMPLERS:
            raise ValueError(
                f"evaluation.sampler: expected one of {sorted(SAMPLERS)}, got {self.sampler!r}"
            )
        if self.lpips is not None and self.lpips not in ("vgg", "alex"):
            raise ValueError(
                f"evaluation.lpips: expected 'vgg', 'alex' or null, got {self.lpips!r}"
            )
        if not self.max_time > 0:
            raise ValueError(f"evaluation.max_time: expected > 0, got {self.max_time}")


def _motion_trainer() -> TrainerConfig:
    # The shipped demo's recipe (dfm-flow's MODEL_CARD.md): batch 16, lr 3e-4 after 200
    # warm-up steps, EMA 0.999 with warm-up, all data in the training process; 33,600 steps
    # (the shipped weights took them in two runs, 4,300 + 29,300).
    return TrainerConfig(
        max_steps=33_600,
        batch_size=16,
        optimizer=OptimizerConfig(lr=3e-4, warmup_steps=200),
        grad_clip=1.0,
        ema_decay=0.999,
        ema_warmup=True,
        num_workers=0,
        log_every=100,
        checkpoint_every=500,
        keep_last=2,
        callback_every=500,
    )


@dataclass
class MotionConfig:
    """Single-image motion: DFM and a flow regressor on Vimeo-format clips (schema of the
    ``motion-demo`` and ``vimeo`` presets)."""

    app: str = "motion"
    """Which application the config belongs to (fixed)."""
    name: str = "motion-demo"
    """Preset name, used in titles and run directory names."""
    model: MotionModelConfig = field(default_factory=lambda: motion_preset("motion-demo").model)
    """The motion model (dfm-flow's ``MotionModelConfig``; presets ``motion-demo``, ``vimeo``)."""
    data: MotionDataConfig = field(default_factory=MotionDataConfig)
    """Training clips."""
    trainer: TrainerConfig = field(default_factory=_motion_trainer)
    """Training loop of the DFM model."""
    baseline_steps: int = 1500
    """Optimiser steps of the flow regressor (same trainer settings otherwise)."""
    evaluation: MotionEvaluationConfig = field(default_factory=MotionEvaluationConfig)
    """Sampling and scoring."""
    num_threads: int | None = 1
    """``torch.set_num_threads`` for the run; null keeps torch's default."""

    def __post_init__(self) -> None:
        if self.app != "motion":
            raise ValueError(f"app: expected 'motion' for this schema, got {self.app!r}")
        if self.baseline_steps < 1:
            raise ValueError(f"baseline_steps: expected >= 1, got {self.baseline_steps}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads: expected >= 1 or null, got {self.num_threads}")
        from dfm_core.schedules import SCHEDULES

        if self.model.schedule.name not in SCHEDULES:
            raise ValueError(
                f"model.schedule.name: expected one of {sorted(SCHEDULES)}, "
                f"got {self.model.schedule.name!r}"
            )
        if self.model.dit not in DIT_PRESETS:
            raise ValueError(
                f"model.dit: expected one of {sorted(DIT_PRESETS)}, got {self.model.dit!r}"
            )


CONFIG = MotionConfig
"""This application's structured config (see ``dfm_apps.applications``)."""
FROZEN = ("app", "model")
"""Config sections that fix the weights: a resumed run or ``dfm sample`` may not change them."""


# ----------------------------------------------------------------------------- data


def ensure_world(
    root: Path, world: SyntheticWorldConfig, *, size_hw: tuple[int, int], layout: str
) -> Path:
    """Write the synthetic motion world to ``root`` unless it is there (ground truth last)."""
    marker = root / "motion_ground_truth.json"
    if marker.is_file():
        return root
    lists = sorted(p.name for p in root.glob("*_*list.txt")) if root.is_dir() else []
    if lists:  # never write sprites over someone's Vimeo-90K
        raise FileExistsError(
            f"data.root: {root} holds {lists[0]} but no motion_ground_truth.json, so it is not "
            "the synthetic motion world; set data.synthesize=false to train on it (or delete "
            "it if it is a synthetic world whose writing was interrupted)"
        )
    if wait_unless_rank_zero(marker, "the motion world"):
        return root
    from dfm_data.worlds.motion import MotionWorldConfig, synthesize_motion

    synthesize_motion(
        root,
        MotionWorldConfig(
            n_sequences=world.n_sequences,
            layout=layout,  # type: ignore[arg-type]
            image_size_hw=tuple(size_hw),  # type: ignore[arg-type]
            seed=world.seed,
        ),
        progress=False,
    )
    return root


def check_vimeo_root(root: Path, layout: str, split: str) -> None:
    """Raise ``MotionDataMissing`` (saying what to download, and where) unless ``root`` holds
    a Vimeo-90K set of this layout: its list file and ``sequences/``."""
    prefix, _, archive, size = LAYOUTS[layout]
    listing = root / f"{prefix}_{split}list.txt"
    if listing.is_file() and (root / "sequences").is_dir():
        return
    missing = listing if not listing.is_file() else root / "sequences"
    raise MotionDataMissing(
        f"data.root: no Vimeo-90K {layout} set at {root} ({missing} is missing); download "
        f"{DOWNLOAD}{archive} ({size}, see http://toflow.csail.mit.edu), unzip it and pass "
        f"data.root=<the folder holding {prefix}_trainlist.txt and sequences/>, or use "
        "data.synthesize=true for the synthetic motion world"
    )


def frames_dataset(config: MotionConfig, root: Path, split: str) -> Dataset:
    """dfm-data's Vimeo-90K loader over ``root``, frames resized to the model's size."""
    from dfm_data import Vimeo90KConfig

    data = config.data
    check_vimeo_root(root, data.layout, split)
    crop = tuple(data.crop_size_hw) if data.crop_size_hw is not None else None
    return Vimeo90KConfig(
        root=str(root),
        layout=data.layout,  # type: ignore[arg-type]
        split=split,  # type: ignore[arg-type]
        context_frame=data.context_frame,
        target_frame=data.target_frame,
        novel_frames=tuple(data.novel_frames),
        expected_size_hw=None,
        crop_size_hw=crop,  # type: ignore[arg-type]
        resize_hw=tuple(config.model.image_size_hw),  # type: ignore[arg-type]
        hflip_probability=data.hflip_probability,
        time_reverse_probability=data.time_reverse_probability,
        on_error=data.on_error,  # type: ignore[arg-type]
        seed=config.trainer.seed,
    ).build()


def collate_motion_batches(items: list[Any]) -> DFMBatch:
    """dfm-data ``FrameBatch`` items (B = 1 each) -> one motion ``DFMBatch`` (the trainer's
    ``collate_fn``); frame numbers become times via ``frames_to_batch``."""
    context = torch.cat([item.context for item in items])  # (B, 3, H, W)
    target = torch.cat([item.target for item in items])  # (B, 3, H, W)
    novel = torch.cat([item.novel for item in items])  # (B, Nn, 3, H, W)
    frame_index = torch.cat([item.frame_index for item in items])  # (B, 2 + Nn)
    return frames_to_batch(context, target, novel if novel.shape[1] else None, frame_index)


def training_set(config: MotionConfig) -> Dataset:
    """The training clips of a config, synthesizing the motion world if asked to."""
    root = Path(config.data.root)
    if config.data.synthesize:
        ensure_world(
            root,
            config.data.world,
            size_hw=tuple(config.model.image_size_hw),  # type: ignore[arg-type]
            layout=config.data.layout,
        )
    return frames_dataset(config, root, "train")


# ----------------------------------------------------------------------------- training


def _set_threads(config: MotionConfig) -> None:
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)


def build_models(config: MotionConfig) -> tuple[ForwardDiffusion, MotionRegressor]:
    """DFM and the flow regressor, initial weights seeded from ``trainer.seed``."""
    torch.manual_seed(config.trainer.seed)
    return config.model.build(), config.model.build_regressor()


def train(config: MotionConfig, run_dir: Path, *, run_config: dict[str, Any]) -> Trained:
    """Train (or resume) the flow regressor in ``run_dir/baseline``, then DFM in ``run_dir``.

    Resumes each from its newest checkpoint; a finished one is not trained further. Call on
    every rank.
    """
    _set_threads(config)
    dataset = training_set(config)
    diffusion, baseline = build_models(config)
    return train_baseline_then_dfm(
        baseline,
        diffusion,
        dataset,
        config.trainer,
        baseline_steps=config.baseline_steps,
        run_dir=run_dir,
        baseline_dir=run_dir / BASELINE_DIR,
        collate_fn=collate_motion_batches,
        run_config=run_config,
        frozen_config_keys=FROZEN,
    )


def load_models(config: MotionConfig, run_dir: Path) -> Trained:
    """The EMA weights of a run's newest complete checkpoints, on the CPU, in eval mode.

    Raises:
        CheckpointError: the run (or its baseline) has no complete checkpoint yet.
    """
    return load_ema_models(*build_models(config), run_dir, baseline_dir=run_dir / BASELINE_DIR)


# ----------------------------------------------------------------------------- held-out clips


def heldout_world(config: MotionConfig, root: Path, count: int) -> HeldOut:
    """``count`` clips of a synthetic world of seed ``evaluation.world_seed`` written at
    ``root`` (its train list: every clip but a fifth); frames at the model's size."""
    size = tuple(config.model.image_size_hw)
    world = dataclasses.replace(
        config.data.world, n_sequences=math.ceil(count / 0.8) + 1, seed=config.evaluation.world_seed
    )
    ensure_world(root, world, size_hw=size, layout=config.data.layout)  # type: ignore[arg-type]
    held_config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, hflip_probability=0.0,
                                         time_reverse_probability=0.0, crop_size_hw=None),
    )  # fmt: skip
    views = frames_dataset(held_config, root, "train")
    truth = json.loads((root / "motion_ground_truth.json").read_text())
    # Training-split items flip and reverse at random: both are off here, so an item is the clip.
    return read_heldout(views, count, truth)


def heldout_clips(config: MotionConfig) -> HeldOut:
    """The clips ``evaluate`` scores: a held-out synthetic world, or the root's test list."""
    ev = config.evaluation
    if config.data.synthesize:
        h, w = config.model.image_size_hw
        base = Path(config.data.root)
        n = math.ceil(ev.num_inputs / 0.8) + 1
        root = base.with_name(f"{base.name}-heldout-seed{ev.world_seed}-{n}x{h}x{w}")
        return heldout_world(config, root, ev.num_inputs)
    views = frames_dataset(config, Path(config.data.root), "test")
    return read_heldout(views, ev.num_inputs)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """Scores and files of one evaluation."""

    scores: dict[str, float]
    files: dict[str, Path]

    def scores_dict(self) -> dict[str, float]:
        return dict(self.scores)


def evaluate(
    config: MotionConfig,
    trained: Trained,
    out_dir: Path,
    *,
    run_dir: Path | None = None,
    config_yaml: str = "",
) -> Evaluation:
    """Sample K motions per held-out input; score; write pictures, videos, scores, report."""
    from dfm_apps import report

    _set_threads(config)
    ev = config.evaluation
    out_dir = Path(out_dir)
    run_dir = out_dir if run_dir is None else Path(run_dir)
    diffusion, baseline = trained.diffusion.eval(), trained.baseline.eval()
    lpips = None
    if ev.lpips is not None:  # before sampling: a missing backbone file fails at once
        from dfm_apps.image_metrics import LPIPSMetric

        lpips = LPIPSMetric(ev.lpips, backbone_path=ev.lpips_backbone)  # type: ignore[arg-type]
    held = heldout_clips(config)
    outputs = sample_heldout(
        diffusion, baseline, held.images, held.times, num_samples=ev.num_samples,
        steps=ev.steps, sampler=ev.sampler, guidance_scale=ev.guidance_scale, seed=ev.seed,
        batch_size=ev.batch_size,
    )  # fmt: skip
    scores, counts = score_all(outputs, held, lpips=lpips)
    images, videos = write_media(
        out_dir, held, outputs, diffusion.forward_model, count=ev.num_pictures,
        max_time=ev.max_time, video_frames=ev.video_frames, videos=ev.videos,
    )  # fmt: skip
    files: dict[str, Path] = {Path(p).stem: Path(p) for p in images.values()}
    files |= {f"video {i}": Path(p) for i, p in enumerate(videos.values())}
    summary = {
        **scores,
        "pooled_counts": counts,
        "dfm_step": trained.dfm_step,
        "baseline_step": trained.baseline_step,
        "sampler": ev.sampler,
        "steps": ev.steps,
        "guidance_scale": ev.guidance_scale,
        "seed": ev.seed,
        "heldout": (
            f"synthetic world seed {ev.world_seed}"
            if config.data.synthesize
            else f"{config.data.root} test list"
        ),
    }
    files["scores"] = write_text_atomic(
        out_dir / "scores.json", json.dumps(summary, indent=1) + "\n"
    )
    where = summary["heldout"]
    html = report.render_page(
        title=f"DFM single-image motion: {config.name}",
        summary=(
            f"DFM ({trained.dfm_step} steps) and the deterministic flow regressor "
            f"({trained.baseline_step} steps), given only the first frame of "
            f"{held.images.shape[0]} held-out clips ({where}); {ev.num_samples} motions each, "
            f"{ev.sampler} {ev.steps} steps, guidance {ev.guidance_scale:g}. The forward model "
            "splats the input by time x flow (constant velocity). Scores: see the tables "
            "(PSNR on [0, 1] images over all pixels; SSIM with an 11x11 Gaussian window"
            + (f"; LPIPS v0.1 with the {ev.lpips} backbone" if ev.lpips else "")
            + ")."
        ),
        tables=score_tables(scores, ev.num_samples),
        images=images,
        videos=videos,
        config_yaml=config_yaml,
        base=out_dir,
        metrics={
            "DFM": read_metrics(run_dir / "metrics.jsonl"),
            "regressor": read_metrics(run_dir / BASELINE_DIR / "metrics.jsonl"),
        },
        commands=[f"dfm sample {run_dir} --seed {ev.seed}"],
    )
    files["report"] = write_text_atomic(out_dir / "report.html", html)
    return Evaluation(scores=scores, files=files)


# ----------------------------------------------------------------------------- demo

DEMO_COMMAND = "dfm demo --only motion"
TRAIN_COMMANDS = (
    "python -m dfm_data synth motion DATA --n-sequences 3000 --size 64x64 --seed 0; "
    "python packages/dfm-flow/scripts/train_demo.py DATA RUN --kind {kind} --minutes {minutes}; "
    "copy RUN/{file} to {folder}"
)


def demo(
    out_dir: Path,
    *,
    seed: int = 0,
    num_inputs: int = 16,
    num_pictures: int = 3,
    num_samples: int = 8,
    steps: int = 20,
) -> DemoSection:
    """The shipped ``motion-demo`` weights (dfm-flow) on held-out clips of the motion world.

    No training: a world of seed ``1000 + seed`` (the weights were trained on seed 0) is
    synthesized in a temporary folder, K motions are sampled for the first frame of each of
    ``num_inputs`` clips and scored (module docstring); the first ``num_pictures`` inputs get
    a picture row and a video.

    Raises:
        MissingWeights: a shipped weights file is absent (the message names it and the
            command that makes it).
    """
    # One thread: the 1.3M-parameter DiT at 64 tokens gains little from intra-op threads,
    # which only contend on a shared CPU (the caller's setting is restored).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _demo(
            Path(out_dir), seed=seed, num_inputs=num_inputs, num_pictures=num_pictures,
            num_samples=num_samples, steps=steps,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def _demo(
    out_dir: Path, *, seed: int, num_inputs: int, num_pictures: int, num_samples: int, steps: int
) -> DemoSection:
    from dfm_flow import pretrained

    start = time.perf_counter()
    out_dir = Path(out_dir)
    paths = {}
    for kind, minutes in (("dfm", 30), ("regressor", 10)):
        path = pretrained.WEIGHTS_DIR / pretrained._FILES[kind]
        if not path.is_file():
            how = TRAIN_COMMANDS.format(
                kind=kind, minutes=minutes, file=path.name, folder=pretrained.WEIGHTS_DIR
            )
            raise MissingWeights(f"motion demo: no weights file {path}; make it with: {how}")
        paths[kind] = path
    diffusion = pretrained.load_motion_demo("dfm", path=paths["dfm"])
    regressor = pretrained.load_motion_demo("regressor", path=paths["regressor"])
    meta = pretrained.read_metadata(paths["dfm"])
    model = MotionModelConfig(**json.loads(meta["model_config"]))
    config = MotionConfig(
        name="motion-demo",
        model=model,
        evaluation=MotionEvaluationConfig(
            num_inputs=num_inputs, num_pictures=num_pictures, num_samples=num_samples,
            steps=steps, world_seed=1000 + seed, seed=seed,
        ),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dfm-motion-demo-") as tmp:
        held = heldout_world(config, Path(tmp) / "heldout", num_inputs)
    outputs = sample_heldout(
        diffusion, regressor, held.images, held.times, num_samples=num_samples, steps=steps,
        seed=seed,
    )  # fmt: skip
    scores, counts = score_all(outputs, held)
    images, videos = write_media(
        out_dir, held, outputs, diffusion.forward_model, count=num_pictures, max_time=2.0,
        video_frames=25,
    )  # fmt: skip
    write_text_atomic(
        out_dir / "scores.json",
        json.dumps({**scores, "pooled_counts": counts, "weights": meta}, indent=1) + "\n",
    )
    headline = {
        key: scores[key]
        for key in ("dfm_on_set", "baseline_on_set", "dfm_distinct", "baseline_distinct",
                    "dfm_best_epe", "baseline_best_epe", "dfm_best_psnr", "baseline_psnr")
    }  # fmt: skip
    return DemoSection(
        title="Single-image motion: one image -> K motions",
        summary=(
            f"The shipped motion-demo DFM ({meta.get('steps', '?')} CPU training steps) and its "
            f"deterministic flow regressor, given only the first frame of {held.images.shape[0]} "
            f"clips of a held-out synthetic motion world (seed {1000 + seed}): {num_samples} "
            f"sampled flows per input (DDIM {steps} steps), each splatted into the next frames. "
            "Every sprite moves with one of 4 directions x 2 speeds; a sample counts as on the "
            "set when its sprite's median flow is within half the set's spacing of a member. "
            "The regressor cannot choose and predicts the average (near-zero) motion."
        ),
        scores=headline,
        command=DEMO_COMMAND,
        tables=score_tables(scores, num_samples),
        images=images,
        videos=videos,
        seconds=time.perf_counter() - start,
    )
