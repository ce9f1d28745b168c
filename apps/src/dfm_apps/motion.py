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

Scores, given the context frame of each held-out clip only:

* **Frames** (every dataset): PSNR and SSIM (``dfm_apps.image_metrics``: per-image PSNR on
  [0, 1] images, MSE over all pixels and channels; SSIM of Wang et al. 2004, 11x11 Gaussian
  window, sigma 1.5) of the input warped by the predicted flow against the true target frame
  (time 1), averaged over inputs: DFM mean over its K samples, DFM best of K, and the
  regressor's one answer. Splatting leaves holes (zeros) where the background was hidden;
  they count as errors.
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
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dfm_apps.applications import DemoSection, MissingWeights, newest_checkpoint
from dfm_core.checkpoint import load_weights
from dfm_core.diffusion import DFMBatch, ForwardDiffusion
from dfm_core.dit import DIT_PRESETS
from dfm_core.sampling import SAMPLERS
from dfm_core.trainer import OptimizerConfig, Trainer, TrainerConfig
from dfm_flow import (
    MotionModelConfig,
    MotionParams,
    MotionSignal,
    flow_to_rgb,
    frames_to_batch,
    motion_preset,
    sample_motion,
)
from dfm_flow.evaluation import score_motions, sprite_masks, sprite_velocities
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
        if not self.max_time > 0:
            raise ValueError(f"evaluation.max_time: expected > 0, got {self.max_time}")


def _motion_trainer() -> TrainerConfig:
    # The shipped demo's recipe (dfm-flow's MODEL_CARD.md): batch 16, lr 3e-4 after 200
    # warm-up steps, EMA 0.999 with warm-up, all data in the training process.
    return TrainerConfig(
        max_steps=4300,
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
    if (root / "motion_ground_truth.json").is_file():
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


@dataclass
class Trained:
    """The EMA models after training and the steps they were trained for."""

    diffusion: ForwardDiffusion
    baseline: MotionRegressor
    dfm_step: int
    baseline_step: int
    resumed_from: int | None


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
    common = {"collate_fn": collate_motion_batches, "run_config": run_config,
              "frozen_config_keys": FROZEN}  # fmt: skip
    base_trainer = Trainer(
        baseline,
        dataset,
        dataclasses.replace(config.trainer, max_steps=config.baseline_steps),
        run_dir=run_dir / BASELINE_DIR,
        **common,  # type: ignore[arg-type]
    )
    base_trainer.resume()
    base_trainer.train()
    dfm_trainer = Trainer(diffusion, dataset, config.trainer, run_dir=run_dir, **common)  # type: ignore[arg-type]
    resumed = dfm_trainer.resume()
    dfm_trainer.train()
    result = Trained(
        diffusion=dfm_trainer.ema_model(),  # type: ignore[arg-type]
        baseline=base_trainer.ema_model(),  # type: ignore[arg-type]
        dfm_step=dfm_trainer.step,
        baseline_step=base_trainer.step,
        resumed_from=resumed,
    )
    for trainer in (base_trainer, dfm_trainer):  # once, at the very end (the first owns DDP)
        trainer.close()
    return result


def load_models(config: MotionConfig, run_dir: Path) -> Trained:
    """The EMA weights of a run's newest complete checkpoints, on the CPU, in eval mode.

    Raises:
        CheckpointError: the run (or its baseline) has no complete checkpoint yet.
    """
    diffusion, baseline = build_models(config)
    dfm_step, dfm_path = newest_checkpoint(run_dir)
    base_step, base_path = newest_checkpoint(run_dir / BASELINE_DIR)
    diffusion.load_state_dict(load_weights(dfm_path, ema=True)[0])
    baseline.load_state_dict(load_weights(base_path, ema=True)[0])
    return Trained(diffusion.eval(), baseline.eval(), dfm_step, base_step, None)


# ----------------------------------------------------------------------------- held-out clips


@dataclass
class HeldOut:
    """Held-out clips: the input frames and what the model should predict from them.

    Attributes:
        names: N clip names (``00001/0001``).
        images: (N, 3, H, W) input frames in [-1, 1].
        frames: (N, T, 3, H, W) the true target and novel frames in [-1, 1].
        times: (T,) their times (1 = the target frame).
        clips: the N clips' motion-world ground truth, or None (real data).
        velocity_set: (M, 2) the world's velocities in pixels per frame, or None.
    """

    names: list[str]
    images: Tensor
    frames: Tensor
    times: Tensor
    clips: list[dict] | None = None
    velocity_set: Tensor | None = None


def velocity_set(truth: dict) -> Tensor:
    """The (M, 2) float64 velocity set of a motion world (``motion_ground_truth.json``):
    every direction (0 deg = +x, 90 deg = +y, image axes) times every speed (pixels/frame)."""
    return torch.tensor(
        [
            [speed * math.cos(math.radians(d)), speed * math.sin(math.radians(d))]
            for d in truth["directions_deg"]
            for speed in truth["speeds_px"]
        ],
        dtype=torch.float64,
    )


def read_heldout(dataset: Any, limit: int, truth: dict | None = None) -> HeldOut:
    """The first ``limit`` clips of a Vimeo-90K dataset (with the world's ground truth)."""
    count = min(limit, len(dataset))
    items = [dataset[i] for i in range(count)]
    first = items[0].frame_index[0].to(torch.float64)
    times = (first[1:] - first[0]) / (first[1] - first[0])  # constant velocity (frames_to_batch)
    names = [dataset.clips[i] for i in range(count)]
    frames = torch.cat([torch.cat([it.target[:, None], it.novel], dim=1) for it in items])
    return HeldOut(
        names=names,
        images=torch.cat([it.context for it in items]),
        frames=frames,
        times=times.float(),
        clips=[truth["clips"][name] for name in names] if truth is not None else None,
        velocity_set=velocity_set(truth) if truth is not None else None,
    )


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


# ----------------------------------------------------------------------------- sampling


@dataclass
class MotionOutputs:
    """What the two models predict for N held-out inputs.

    Attributes:
        flow: (N, K, 2, H, W) sampled flows in pixels (to time 1).
        metric: (N, K, 1, H, W) their importance Z, or None.
        frames: (N, K, T, 3, H, W) the input splatted at the held-out frames' times.
        baseline_flow: (N, 2, H, W) the regressor's flow.
        baseline_metric: (N, 1, H, W) or None.
        baseline_frames: (N, T, 3, H, W).
    """

    flow: Tensor
    metric: Tensor | None
    frames: Tensor
    baseline_flow: Tensor
    baseline_metric: Tensor | None
    baseline_frames: Tensor


@torch.no_grad()
def sample_heldout(
    diffusion: ForwardDiffusion,
    regressor: MotionRegressor,
    images: Tensor,
    times: Tensor,
    *,
    num_samples: int,
    steps: int,
    sampler: str = "ddim",
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
) -> MotionOutputs:
    """K motions per input from DFM and the regressor's one answer, rendered at ``times``.

    Args:
        images: (N, 3, H, W) input frames in [-1, 1].
        times: (T,) frame times to render (1 = the next frame).
        seed: sample k of input n uses ``seed * 10**6 + n * K + k`` (as
            ``dfm_flow.evaluation.sampled_sprite_velocities``), so a sample depends on its
            seed, not on how inputs are batched.
    """
    k = num_samples
    flows, metrics, frames = [], [], []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size]
        generators = [
            torch.Generator().manual_seed(seed * 10**6 + (start + i) * k + j)
            for i in range(chunk.shape[0])
            for j in range(k)
        ]
        out = sample_motion(
            diffusion, chunk, num_samples=k, steps=steps, sampler=sampler,
            guidance_scale=guidance_scale, generator=generators, times=times.tolist(),
        )  # fmt: skip
        flows.append(out.flow)
        metrics.append(out.metric)
        frames.append(out.frames)
    signal = regressor.predict(images)
    params = MotionParams(images, times.to(images.dtype).expand(images.shape[0], -1))
    return MotionOutputs(
        flow=torch.cat(flows),
        metric=None if metrics[0] is None else torch.cat(metrics),  # type: ignore[arg-type]
        frames=torch.cat(frames),
        baseline_flow=signal.flow,
        baseline_metric=signal.metric,
        baseline_frames=regressor.forward_model(signal, params),
    )


# ----------------------------------------------------------------------------- scores


def frame_scores(outputs: MotionOutputs, held: HeldOut) -> dict[str, float]:
    """PSNR/SSIM of the warped input against the true target frame (time 1; see the module
    docstring): DFM mean over samples and best of K, and the regressor."""
    from dfm_apps.image_metrics import best_of_k_psnr, psnr, ssim

    def unit(x: Tensor) -> Tensor:
        return (x.to(torch.float64).clamp(-1, 1) + 1) / 2

    truth = unit(held.frames[:, 0])  # (N, 3, H, W)
    samples = unit(outputs.frames[:, :, 0])  # (N, K, 3, H, W)
    flat_truth = truth[:, None].expand_as(samples).flatten(0, 1)
    base = unit(outputs.baseline_frames[:, 0])
    return {
        "dfm_psnr": float(psnr(samples.flatten(0, 1), flat_truth).mean()),
        "dfm_best_psnr": float(best_of_k_psnr(samples, truth).mean()),
        "dfm_ssim": float(ssim(samples.flatten(0, 1), flat_truth).mean()),
        "baseline_psnr": float(psnr(base, truth).mean()),
        "baseline_ssim": float(ssim(base, truth).mean()),
    }


def motion_scores(outputs: MotionOutputs, held: HeldOut) -> tuple[dict[str, float], dict]:
    """dfm-flow's velocity-set figures for DFM and the regressor (synthetic world only).

    Returns:
        Scores (``dfm_on_set``, ``dfm_distinct``, ``dfm_chi2_p``, ``dfm_best_epe``,
        ``dfm_mean_epe`` and the ``baseline_*`` counterparts, plus ``num_sprites``) and the
        pooled counts per member (``{"dfm": [...], "baseline": [...]}``).
    """
    assert held.clips is not None and held.velocity_set is not None
    h, w = held.images.shape[-2:]
    k = outputs.flow.shape[1]
    estimates, base_estimates = [], []
    for n, clip in enumerate(held.clips):
        masks = sprite_masks(clip, h, w)  # (S, H, W)
        estimates.append(sprite_velocities(outputs.flow[n].double(), masks))  # (S, K, 2)
        base = sprite_velocities(outputs.baseline_flow[n : n + 1].double(), masks)  # (S, 1, 2)
        base_estimates.append(base.expand(-1, k, -1))
    truth = torch.tensor(
        [s["velocity_px"] for clip in held.clips for s in clip["sprites"]], dtype=torch.float64
    )
    scores: dict[str, float] = {}
    counts: dict[str, list[int]] = {}
    for label, values in (("dfm", estimates), ("baseline", base_estimates)):
        s = score_motions(torch.cat(values), truth, held.velocity_set)
        scores |= {
            f"{label}_on_set": s.fraction_on_set,
            f"{label}_distinct": s.mean_distinct,
            f"{label}_chi2_p": s.chi2_p,
            f"{label}_best_epe": s.best_of_k_epe,
            f"{label}_mean_epe": s.mean_epe,
        }
        counts[label] = list(s.counts)
        scores["num_sprites"] = float(s.num_sprites)
    return scores, counts


def _score_tables(scores: dict[str, float], k: int) -> list[tuple[str, list[str], list[list[str]]]]:
    def f(key: str, digits: int = 2) -> str:
        value = scores.get(key, float("nan"))
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"

    tables = [
        (
            "next frame (time 1): the input warped by the predicted flow vs the true frame",
            ["", f"DFM (mean of {k})", f"DFM (best of {k})", "regressor"],
            [
                ["PSNR (dB)", f("dfm_psnr"), f("dfm_best_psnr"), f("baseline_psnr")],
                ["SSIM (Gaussian 11x11)", f("dfm_ssim", 3), "", f("baseline_ssim", 3)],
            ],
        )
    ]
    if "dfm_on_set" in scores:
        rows = [
            ["samples on the velocity set (within half its spacing)", f("dfm_on_set"),
             f("baseline_on_set")],
            ["distinct members per sprite", f("dfm_distinct"), f("baseline_distinct")],
            ["chi-squared p of pooled members vs uniform", f("dfm_chi2_p", 3),
             f("baseline_chi2_p", 3)],
            [f"best-of-{k} end-point error (px)", f("dfm_best_epe"), f("baseline_best_epe")],
            ["mean end-point error (px)", f("dfm_mean_epe"), f("baseline_mean_epe")],
        ]  # fmt: skip
        tables.append(("sprite motions vs the known velocity set", ["", "DFM", "regressor"], rows))
    return tables


# ----------------------------------------------------------------------------- pictures


def _upscale(images: Tensor, factor: int) -> Tensor:
    """(..., C, H, W) -> (..., C, H*f, W*f), nearest (pixels stay visible)."""
    if factor == 1:
        return images
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def _hwc(images: Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def flow_key(size: int, max_magnitude: float) -> Tensor:
    """(3, size, size) picture of the colour wheel: the flow at each pixel is its offset from
    the centre, scaled so the inscribed circle has speed ``max_magnitude``."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2) / (size / 2)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    flow = torch.stack([x, y]) * max_magnitude
    picture = flow_to_rgb(flow, max_magnitude=max_magnitude)
    outside = (x * x + y * y) > 1
    return picture.masked_fill(outside[None], 1.0)


def write_media(
    out_dir: Path,
    held: HeldOut,
    outputs: MotionOutputs,
    forward_model: Any,
    *,
    count: int,
    max_time: float,
    video_frames: int,
    videos: bool = True,
    gif: bool = True,
) -> tuple[dict[str, Path], dict[str, Path]]:
    """The picture grid, the flow key and per-input videos.

    Returns:
        (images: caption -> PNG, videos: caption -> mp4), paths under ``out_dir``.
    """
    from PIL import Image

    from dfm_apps import media

    out_dir.mkdir(parents=True, exist_ok=True)
    count = min(count, held.images.shape[0])
    n_k = outputs.flow.shape[1]
    h, w = held.images.shape[-2:]
    factor = max(1, 128 // max(h, w))
    # One colour scale for every flow of the figure: the largest true speed when known,
    # else the 99th percentile of the predicted speeds.
    if held.velocity_set is not None:
        top = float(held.velocity_set.norm(dim=1).max())
    else:
        top = float(torch.quantile(outputs.flow[:count].norm(dim=2).flatten()[:1_000_000], 0.99))
    top = top if top > 0 else 1.0

    def unit(x: Tensor) -> Tensor:
        return (x.clamp(-1, 1) + 1) / 2

    tiles, captions = [], []
    for n in range(count):
        flows = torch.cat([outputs.baseline_flow[n : n + 1], outputs.flow[n]])  # (1 + K, 2, H, W)
        warped = torch.cat([outputs.baseline_frames[n : n + 1, 0], outputs.frames[n, :, 0]])
        row1 = torch.cat([unit(held.images[n : n + 1]), flow_to_rgb(flows, max_magnitude=top)])
        row2 = torch.cat([unit(held.frames[n : n + 1, 0]), unit(warped)])
        tiles += [row1, row2]
        captions += ["input", "regressor flow", *[f"flow {j}" for j in range(n_k)]]
        captions += ["true next", "regressor", *[f"sample {j}" for j in range(n_k)]]
    grid = media.image_grid(
        _hwc(_upscale(torch.cat(tiles), factor)), ncols=2 + n_k, captions=captions
    )
    images = {"motions.png": out_dir / "motions.png", "flow-key.png": out_dir / "flow-key.png"}
    Image.fromarray(grid).save(images["motions.png"])
    Image.fromarray(_hwc(flow_key(96, top)[None])[0]).save(images["flow-key.png"])
    image_captions = {
        f"per input (rows of 2): the input and the true next frame; the regressor's flow and "
        f"warped frame; {n_k} sampled flows and warped frames": images["motions.png"],
        f"flow colours: hue = direction (right = red), saturation = speed (full at {top:.2f} "
        "px/frame), white = still": images["flow-key.png"],
    }
    clips: dict[str, Path] = {}
    if not videos:
        return image_captions, clips
    times = torch.linspace(0.0, max_time, video_frames)
    for n in range(count):
        flows = torch.cat([outputs.baseline_flow[n : n + 1], outputs.flow[n]])  # (1 + K, ...)
        metric = None
        if outputs.metric is not None and outputs.baseline_metric is not None:
            metric = torch.cat([outputs.baseline_metric[n : n + 1], outputs.metric[n]])
        source = held.images[n : n + 1].expand(flows.shape[0], -1, -1, -1)
        with torch.no_grad():
            frames = forward_model(
                MotionSignal(flows, metric),
                MotionParams(source, times.expand(flows.shape[0], -1)),
            )  # (1 + K, F, 3, H, W)
        frames = _upscale(unit(frames), factor)
        pad = torch.ones(*frames.shape[:-1], 2)  # white separator after each tile
        strip = torch.cat([frames, pad], dim=-1).permute(1, 2, 3, 0, 4).flatten(3)  # (F, 3, H', W')
        video = _hwc(strip[..., :-2])
        name = held.names[n].replace("/", "-")
        caption = f"{held.names[n]}: time 0 -> {max_time:g}, regressor then {n_k} samples (mp4)"
        clips[caption] = media.write_video(out_dir / "motions" / f"{name}.mp4", video, fps=12)
        if gif:
            media.write_video(out_dir / "motions" / f"{name}.gif", video, fps=12)
    return image_captions, clips


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """Scores and files of one evaluation."""

    scores: dict[str, float]
    files: dict[str, Path]

    def scores_dict(self) -> dict[str, float]:
        return dict(self.scores)


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


def _write_text(path: Path, text: str) -> Path:
    """Write atomically (temp file + rename)."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _score_all(
    outputs: MotionOutputs, held: HeldOut
) -> tuple[dict[str, float], dict[str, list[int]]]:
    scores = frame_scores(outputs, held)
    counts: dict[str, list[int]] = {}
    if held.clips is not None:
        sprite, counts = motion_scores(outputs, held)
        scores |= sprite
    scores["num_inputs"] = float(held.images.shape[0])
    scores["num_samples"] = float(outputs.flow.shape[1])
    return scores, counts


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
    held = heldout_clips(config)
    outputs = sample_heldout(
        diffusion, baseline, held.images, held.times, num_samples=ev.num_samples,
        steps=ev.steps, sampler=ev.sampler, guidance_scale=ev.guidance_scale, seed=ev.seed,
        batch_size=ev.batch_size,
    )  # fmt: skip
    scores, counts = _score_all(outputs, held)
    images, videos = write_media(
        out_dir, held, outputs, diffusion.forward_model, count=ev.num_pictures,
        max_time=ev.max_time, video_frames=ev.video_frames, videos=ev.videos,
    )  # fmt: skip
    files: dict[str, Path] = {Path(p).name: Path(p) for p in images.values()}
    files |= {Path(p).name: Path(p) for p in videos.values()}
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
    files["scores"] = _write_text(out_dir / "scores.json", json.dumps(summary, indent=1) + "\n")
    where = summary["heldout"]
    html = report.render_page(
        title=f"DFM single-image motion: {config.name}",
        summary=(
            f"DFM ({trained.dfm_step} steps) and the deterministic flow regressor "
            f"({trained.baseline_step} steps), given only the first frame of "
            f"{held.images.shape[0]} held-out clips ({where}); {ev.num_samples} motions each, "
            f"{ev.sampler} {ev.steps} steps, guidance {ev.guidance_scale:g}. The forward model "
            "splats the input by time x flow (constant velocity). Scores: see the tables "
            "(PSNR on [0, 1] images over all pixels; SSIM with an 11x11 Gaussian window)."
        ),
        tables=_score_tables(scores, ev.num_samples),
        images=images,
        videos=videos,
        config_yaml=config_yaml,
        base=out_dir,
        metrics={
            "DFM": _read_metrics(run_dir / "metrics.jsonl"),
            "regressor": _read_metrics(run_dir / BASELINE_DIR / "metrics.jsonl"),
        },
        commands=[f"dfm sample {run_dir} --seed {ev.seed}"],
    )
    files["report"] = _write_text(out_dir / "report.html", html)
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
    scores, counts = _score_all(outputs, held)
    images, videos = write_media(
        out_dir, held, outputs, diffusion.forward_model, count=num_pictures, max_time=2.0,
        video_frames=25,
    )  # fmt: skip
    _write_text(
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
        tables=_score_tables(scores, num_samples),
        images=images,
        videos=videos,
        seconds=time.perf_counter() - start,
    )
