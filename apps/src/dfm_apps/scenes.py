"""The inverse-graphics application: one image in, K sampled 3D scenes out.

Trains dfm-render's DFM model and its deterministic pixelNeRF baseline on posed views read by
dfm-data's loaders (the CO3D v2 layout: real CO3D, or the synthetic objects world written in
it and synthesized on first use), then samples and scores them on held-out objects.

Run directory::

    config.yaml          resolved config
    baseline/            the pixelNeRF baseline's run (trained first; DFM starts from it)
    checkpoints/         DFM checkpoints (safetensors, EMA included), metrics.jsonl
    scenes/              per held-out object: the input view, K sampled backs, turntable and
                         depth videos of each sample and of the baseline (mp4 + gif)
    scores.json          visible-side PSNR/SSIM, hidden-side palette statistics
    report.html          all of the above, offline

Training items: ``SceneTrainingSet`` turns each ``ViewBatch`` into the dfm-core batch of the
3D model (``dfm_render.make_scene_batch``): context views, the full target image the network
denoises, random loss patches on the target and novel views. Patch origins come from torch's
global RNG, which the trainer seeds per item (``dfm_core.data_order.SeededItems``), so an item
stays a pure function of (seed, epoch, index).

Real data (``data.format: co3d`` with ``synthesize: false``, e.g. the ``co3d-hydrant`` preset,
or ``data.format: re10k``, the ``re10k`` preset) is scored by fixed context/target pairs instead:
``PROTOCOLS`` and ``run_protocol`` (``dfm eval RUN_DIR --protocol NAME``), implemented in
``dfm_apps.scene_protocols``, which also states which published protocol each figure follows.

Scoring on the objects world (its ground truth says what the hidden back of each object is,
and the world renders it exactly): given only the front view (frame 0),

* **visible side**: PSNR/SSIM of the renders at the frames within +-30 degrees of the front
  against the true frames, DFM (every sample) and baseline;
* **hidden side**: the view from behind (frame N/2) of each sample, compared with the exact
  render of the true scene repainted with each palette colour in turn (so shading is the
  truth's); a sample's back "is" the nearest palette colour when its RMS distance over the
  hidden pixels is below ``evaluation.palette_tolerance`` (a real colour, not a blend).
  Reported: the fraction of such samples, the mean number of distinct colours among the K
  samples of an object, and a chi-squared test of the pooled counts against uniform.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dfm_apps.applications import (
    Trained,
    load_ema_models,
    train_baseline_then_dfm,
    wait_unless_rank_zero,
)
from dfm_apps.scene_protocols import (
    PROTOCOLS,
    ProtocolConfig,
    check_protocol_weights,
    default_protocol,
    evaluate_protocol,
    run_protocol,
    uses_protocol,
)
from dfm_core.checkpoint import list_checkpoints
from dfm_core.diffusion import DFMBatch, ForwardDiffusion
from dfm_core.guidance import classifier_free_guidance, reconstruction_guidance
from dfm_core.sampling import SAMPLERS, sample
from dfm_core.trainer import OptimizerConfig, Trainer, TrainerConfig
from dfm_core.tree import tree_cat, tree_index
from dfm_render import (
    Camera,
    PixelNeRFBaseline,
    SceneModelConfig,
    VolumeRenderer,
    estimate_look_at_point,
    load_baseline_into,
    make_scene_batch,
    scene_config,
)

__all__ = [
    "DATA_FORMATS",
    "FROZEN",
    "PROTOCOLS",
    "SAMPLING_KEYS",
    "DataRootError",
    "ProtocolConfig",
    "SceneDataConfig",
    "SceneEvaluationConfig",
    "SceneTrainingSet",
    "ScenesConfig",
    "Trained",
    "WorldConfig",
    "collate_scene_batches",
    "default_protocol",
    "evaluate",
    "load_models",
    "pool_scores",
    "run_protocol",
    "scene_batch_from_views",
    "train",
]

BASELINE_DIR = "baseline"


# ----------------------------------------------------------------------------- configs


@dataclass
class WorldConfig:
    """The synthetic objects world written when the data root does not exist yet."""

    n_sequences: int = 160
    """Objects (sequences); a fifth go to the val/test splits."""
    n_frames: int = 48
    """Frames per orbit (frame 0 is the front view)."""
    size: int = 64
    """Side of the square frames written to disk."""
    seed: int = 0
    """World seed (the held-out world uses ``evaluation.world_seed``)."""


DATA_FORMATS = ("co3d", "re10k")
"""Values of ``data.format``: the on-disk format dfm-data reads."""
RE10K_LAYOUTS = ("torch", "mat", "txt")
"""Values of ``data.layout`` (RealEstate10k only; ``dfm_data.RealEstate10kConfig.layout``)."""


class DataRootError(FileNotFoundError):
    """The dataset root of a real-data preset does not exist (the message says what to get)."""


@dataclass
class SceneDataConfig:
    """Training views."""

    root: str = "data/objects-world"
    """Dataset root (relative to the working directory): a CO3D v2 root (holding
    ``<category>/frame_annotations.jgz``) or a RealEstate10k root in ``layout``."""
    format: str = "co3d"
    """``co3d`` (CO3D v2 layout: real CO3D or the objects world) or ``re10k``
    (RealEstate10k, read by ``dfm_data.RealEstate10kConfig``)."""
    layout: str = "torch"
    """RealEstate10k layout: ``torch`` (pixelSplat chunks ``<root>/<split>/*.torch`` +
    ``index.json``), ``mat`` (DFM's jpg folders + ``<split>.mat``) or ``txt`` (the official
    camera files). Ignored for CO3D."""
    categories: list[str] = field(default_factory=lambda: ["orb"])
    """Categories to read (CO3D only)."""
    synthesize: bool = True
    """Write the objects world to ``root`` when it does not exist (synthetic data only)."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """Options of that world."""
    min_gap: int = 8
    """Fewest frames between the context view and the target."""
    max_gap: int = 24
    """Most frames between the context view and the target (24 = half an orbit)."""
    num_novel: int = 1
    """Extra views per item for the novel-view loss."""

    def __post_init__(self) -> None:
        if self.format not in DATA_FORMATS:
            raise ValueError(
                f"data.format: expected one of {list(DATA_FORMATS)}, got {self.format!r}"
            )
        if self.layout not in RE10K_LAYOUTS:
            raise ValueError(
                f"data.layout: expected one of {list(RE10K_LAYOUTS)}, got {self.layout!r}"
            )
        if self.synthesize and self.format != "co3d":
            raise ValueError(
                "data.synthesize: only the objects world (data.format=co3d) is synthesized; "
                "set data.synthesize=false for RealEstate10k"
            )


@dataclass
class SceneEvaluationConfig:
    """Sampling and scoring held-out objects.

    The fixed-pair protocols (real data, ``dfm eval``) read ``protocol`` and the sampler
    settings (``steps``, ``sampler``, ``guidance_scale``, ``temperature``, ``seed``) and
    ``palette_margin``; the other fields concern the objects world's held-out evaluation.
    """

    num_scenes: int = 4
    """Held-out objects, each seen only from its front view."""
    num_samples: int = 4
    """Samples K per object."""
    steps: int = 50
    """Sampler steps."""
    sampler: str = "ddim"
    """``ddim``, ``ddpm``, ``edm`` or ``dpmpp_2m`` (``dfm_core.sampling.SAMPLERS``; DPM-Solver++
    reaches DDIM-50 fidelity at ~15 evaluations, and every evaluation renders the scene)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance scale (1: none)."""
    temperature: float = 1.0
    """Scale of the initial noise."""
    world_seed: int = 1000
    """Seed of the held-out world (never used in training)."""
    palette_margin: float = 1 / 3
    """A sample's back counts as palette colour p when its RMS distance to the truth painted p
    is at most this fraction of the distance from that render to the nearest other colour's
    (an even blend of two colours lies at 1/2: never counted)."""
    videos: bool = True
    """Write turntable and depth videos (mp4 + gif) of every sample."""
    reconstruction_weight: float = 0.0
    """Reconstruction guidance towards the context view while sampling (0: off; dfm-core's
    ``reconstruction_guidance``)."""
    autoregressive_views: int = 0
    """Also sample the first object autoregressively: this many generated views, each added
    to the context before the next (0: off; the original's 360-degree CO3D procedure)."""
    autoregressive_step: int = 8
    """Frames between consecutive autoregressive targets."""
    export: bool = True
    """Export the first object's first sample as a point cloud and a mesh (.ply, .obj)."""
    seed: int = 1234
    """Seed of the sampler noise."""
    num_shards: int = 1
    """Split the held-out objects over this many processes (a large evaluation on CPU)."""
    shard: int = 0
    """This process scores objects ``shard, shard + num_shards, ...`` of the ``num_scenes``
    (same world, same per-object seeds: ``pool_scores`` of all shards is the unsplit result)."""
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    """Fixed-pair evaluation protocols (``dfm eval --protocol``; ``evaluate`` of the
    real-data presets): pairs, metrics and the LPIPS/FID weight files
    (``dfm_apps.scene_protocols``)."""

    def __post_init__(self) -> None:
        for name in ("num_scenes", "num_samples", "steps", "autoregressive_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"evaluation.{name}: expected >= 1, got {getattr(self, name)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(
                f"evaluation.sampler: expected one of {sorted(SAMPLERS)}, got {self.sampler!r}"
            )
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(
                f"evaluation.shard: expected 0 <= shard < num_shards = {self.num_shards}, "
                f"got {self.shard}"
            )
        if self.reconstruction_weight < 0 or self.autoregressive_views < 0:
            raise ValueError(
                "evaluation.reconstruction_weight and autoregressive_views must be >= 0"
            )


def _scenes_trainer() -> TrainerConfig:
    return TrainerConfig(
        max_steps=20_000,
        batch_size=8,
        optimizer=OptimizerConfig(lr=2e-4, warmup_steps=500, schedule="cosine", min_lr_ratio=0.1),
        ema_decay=0.999,
        num_workers=0,
        log_every=50,
        checkpoint_every=500,
        keep_last=2,
        callback_every=500,
    )


@dataclass
class ScenesConfig:
    """Inverse graphics: DFM and a pixelNeRF baseline on posed views (schema of the 3D presets)."""

    app: str = "scenes"
    """Which application the config belongs to (fixed)."""
    name: str = "objects-demo"
    """Preset name, used in titles and run directory names."""
    model: SceneModelConfig = field(default_factory=lambda: scene_config("objects-demo"))
    """The 3D model (dfm-render's presets)."""
    data: SceneDataConfig = field(default_factory=SceneDataConfig)
    """Training views."""
    trainer: TrainerConfig = field(default_factory=_scenes_trainer)
    """Training loop of the DFM model."""
    baseline_steps: int = 2000
    """Optimiser steps of the baseline (same trainer settings otherwise)."""
    init_from_baseline: bool = True
    """Start DFM from the trained baseline (the paper's CO3D recipe)."""
    evaluation: SceneEvaluationConfig = field(default_factory=SceneEvaluationConfig)
    """Sampling and scoring."""
    num_threads: int | None = None
    """``torch.set_num_threads`` for the run; null keeps torch's default."""

    def __post_init__(self) -> None:
        if self.app != "scenes":
            raise ValueError(f"app: expected 'scenes' for this schema, got {self.app!r}")
        if self.baseline_steps < 1:
            raise ValueError(f"baseline_steps must be >= 1, got {self.baseline_steps}")
        if not 0 < self.data.min_gap <= self.data.max_gap:
            raise ValueError("data.min_gap/max_gap: expected 0 < min_gap <= max_gap")


CONFIG = ScenesConfig
FROZEN = ("app", "model")
SAMPLING_KEYS = ("model.renderer.field_dtype",)
"""Keys under ``FROZEN`` that ``dfm sample``/``eval`` may still override: they change how
the trained field is evaluated (bfloat16 matmuls), not its weights."""
"""Config sections that fix the weights: a resumed run or ``dfm sample`` may not change them."""


# ----------------------------------------------------------------------------- data


def scene_batch_from_views(
    views: Any, *, patch_size: int | None, absolute_pose: bool = False
) -> DFMBatch:
    """A 3D-model batch from a dfm-data ``ViewBatch`` (target view 0 is denoised).

    Args:
        views: ``dfm_data.ViewBatch`` with Nc >= 1 context views, Nt >= 1 targets and
            Nn >= 0 novel views; further targets join the novel views.
        patch_size: side of the loss patches, or None for whole images.
        absolute_pose: also pass absolute poses (``world_from_context @ c2w``).
    """
    novel_images = torch.cat([views.target.images[:, 1:], views.novel.images], dim=1)
    novel_c2w = torch.cat([views.target.c2w[:, 1:], views.novel.c2w], dim=1)
    novel_k = torch.cat([views.target.intrinsics[:, 1:], views.novel.intrinsics], dim=1)
    has_novel = novel_images.shape[1] > 0
    world = views.world_from_context[:, None]
    return make_scene_batch(
        context_images=views.context.images,
        context_c2w=views.context.c2w,
        context_intrinsics=views.context.intrinsics,
        target_image=views.target.images[:, 0],
        target_c2w=views.target.c2w[:, 0],
        target_intrinsics=views.target.intrinsics[:, 0],
        novel_images=novel_images if has_novel else None,
        novel_c2w=novel_c2w if has_novel else None,
        novel_intrinsics=novel_k if has_novel else None,
        near=views.near,
        far=views.far,
        patch_size=patch_size,
        context_absolute_c2w=(world @ views.context.c2w) if absolute_pose else None,
        target_absolute_c2w=(world[:, 0] @ views.target.c2w[:, 0]) if absolute_pose else None,
    )


class SceneTrainingSet(Dataset):
    """dfm-data views as 3D-model training items (``DFMBatch`` with B = 1).

    Args:
        views: a map-style dataset of ``ViewBatch`` items (B = 1).
        patch_size: side of the loss patches.
        absolute_pose: pass absolute poses (presets whose encoder conditions on them).
    """

    def __init__(self, views: Dataset, *, patch_size: int | None, absolute_pose: bool = False):
        self.views = views
        self.patch_size = patch_size
        self.absolute_pose = absolute_pose

    def __len__(self) -> int:
        return len(self.views)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the wrapped dataset (its frame choice depends on the epoch)."""
        set_epoch = getattr(self.views, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __getitem__(self, index: int) -> DFMBatch:
        return scene_batch_from_views(
            self.views[index], patch_size=self.patch_size, absolute_pose=self.absolute_pose
        )


def collate_scene_batches(items: list[DFMBatch]) -> DFMBatch:
    """Concatenate B = 1 items along the batch (the trainer's ``collate_fn``)."""
    return tree_cat(items)


def ensure_world(root: Path, world: WorldConfig, *, seed: int, categories: list[str]) -> Path:
    """Write the objects world to ``root`` unless it is there already (marker file last);
    under torchrun only rank 0 writes, the others wait for its marker."""
    marker = root / "category_to_subset_name_list.json"
    if marker.is_file() or wait_unless_rank_zero(marker, "the objects world"):
        return root
    from dfm_data.worlds.objects import ObjectsWorldConfig, synthesize_objects

    synthesize_objects(
        root,
        ObjectsWorldConfig(
            n_sequences=world.n_sequences,
            n_frames=world.n_frames,
            image_size_hw=(world.size, world.size),
            categories=tuple(categories),
            seed=seed,
        ),
    )
    return root


_DOWNLOAD = {
    "co3d": (
        "CO3D v2 (https://github.com/facebookresearch/co3d: download the categories {categories} "
        "with its download_dataset.py) and put it there, so that {root}/<category>/"
        "frame_annotations.jgz exists, or pass data.root=PATH"
    ),
    "re10k": (
        "RealEstate10k in the {layout!r} layout (torch: pixelSplat's preprocessed chunks, "
        "https://github.com/dcharatan/pixelsplat, unpacked so that {root}/train/index.json and "
        "{root}/test/index.json exist; mat/txt: the DFM / official camera layouts, see "
        "packages/dfm-data/README.md) and put it there, or pass data.root=PATH data.layout=..."
    ),
}


def check_data_root(data: SceneDataConfig) -> Path:
    """The dataset root of a config, which must exist unless the objects world is synthesized.

    Raises:
        DataRootError: the root does not exist; the message names what to download and where
            to put it.
    """
    root = Path(data.root)
    if not root.is_dir() and not (data.synthesize and data.format == "co3d"):
        how = _DOWNLOAD[data.format].format(
            categories=", ".join(data.categories), root=root, layout=data.layout
        )
        raise DataRootError(f"data.root: {root} does not exist; download {how}")
    return root


def _views_dataset(config: ScenesConfig, root: Path, split: str, num_novel: int) -> Any:
    """dfm-data's loader for ``data.format`` over ``root`` (views at the model's size)."""
    from dfm_data import CO3DConfig, FrameSamplingConfig, RealEstate10kConfig

    model = config.model
    sampling = FrameSamplingConfig(
        num_context=model.num_context,
        num_target=1,
        num_novel=num_novel,
        min_gap=config.data.min_gap,
        max_gap=config.data.max_gap,
    )
    if config.data.format == "re10k":
        return RealEstate10kConfig(
            root=str(root),
            layout=config.data.layout,  # type: ignore[arg-type]
            split=split,  # type: ignore[arg-type]
            image_size=model.image_size,
            sampling=sampling,
            near=model.near,
            far=model.far,
        ).build()
    return CO3DConfig(
        root=str(root),
        categories=tuple(config.data.categories),
        split=split,  # type: ignore[arg-type]
        image_size=model.image_size,
        sampling=sampling,
        near=model.near,
        far=model.far,
        progress=False,
    ).build()


def training_set(config: ScenesConfig) -> SceneTrainingSet:
    """The training items of a config, synthesizing the objects world if asked to."""
    root = check_data_root(config.data)
    if config.data.synthesize:
        ensure_world(
            root, config.data.world, seed=config.data.world.seed, categories=config.data.categories
        )
    views = _views_dataset(config, root, "train", config.data.num_novel)
    return SceneTrainingSet(
        views, patch_size=config.model.patch_size, absolute_pose=config.model.encoder.absolute_pose
    )


# ----------------------------------------------------------------------------- training


def _set_threads(config: ScenesConfig) -> None:
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)


def build_models(config: ScenesConfig) -> tuple[ForwardDiffusion, PixelNeRFBaseline]:
    """DFM and the baseline, initial weights seeded from ``trainer.seed``."""
    torch.manual_seed(config.trainer.seed)
    diffusion = config.model.build()
    baseline = config.model.build_baseline()
    return diffusion, baseline


def train(config: ScenesConfig, run_dir: Path, *, run_config: dict[str, Any]) -> Trained:
    """Train (or resume) the baseline, then DFM (initialised from it on a fresh run).

    Raises:
        DataRootError: a real-data preset's dataset root does not exist.
        MissingWeightsError: the evaluation after training will need LPIPS/FID weights that
            are not there (checked first, not after hours of training).
    """
    _set_threads(config)
    if uses_protocol(config):
        check_protocol_weights(config.evaluation.protocol)
    dataset = training_set(config)
    diffusion, baseline = build_models(config)

    def init_from_baseline(base_trainer: Trainer) -> None:
        fresh = not list_checkpoints(run_dir / "checkpoints")
        if fresh and config.init_from_baseline:
            load_baseline_into(diffusion.predictor, base_trainer.ema_model().state_dict())

    return train_baseline_then_dfm(
        baseline,
        diffusion,
        dataset,
        config.trainer,
        baseline_steps=config.baseline_steps,
        run_dir=run_dir,
        baseline_dir=run_dir / BASELINE_DIR,
        before_dfm=init_from_baseline,
        collate_fn=collate_scene_batches,
        run_config=run_config,
    )


def load_models(config: ScenesConfig, run_dir: Path) -> Trained:
    """The EMA weights of a run's newest complete checkpoints, on the CPU, in eval mode.

    Raises:
        CheckpointError: the run (or its baseline) has no complete checkpoint yet.
    """
    return load_ema_models(*build_models(config), run_dir, baseline_dir=run_dir / BASELINE_DIR)


# ----------------------------------------------------------------------------- sampling


def sample_scenes(
    diffusion: ForwardDiffusion,
    batch: DFMBatch,
    *,
    num_samples: int,
    seeds: list[int],
    steps: int = 50,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    reconstruction_weight: float = 0.0,
    sampler: str = "ddim",
    callback: Any = None,
) -> Any:
    """K scenes per input in one batched call, each sample with its own seed.

    Args:
        diffusion: the trained model (eval mode).
        batch: B inputs (context views and the target camera).
        num_samples: K.
        seeds: B * K seeds, sample ``b * K + k``'s seed at that position: a sample depends
            on its seed and input, not on its position in the batch.
        reconstruction_weight: > 0 pulls every estimate towards scenes that re-render the
            first context view (Ho et al. 2022, eq. 7; dfm-core's ``reconstruction_guidance``).

    Returns:
        ``SampleOutput``: observation (B*K, 3, H, W) at the target camera and the signal, a
        ``SceneField`` batched B*K (input-major) that renders at any camera.
    """
    repeat = torch.arange(batch.target.shape[0]).repeat_interleave(num_samples)
    context, target = tree_index(batch.context, repeat), tree_index(batch.target_params, repeat)
    if len(seeds) != len(repeat):
        raise ValueError(f"seeds: expected {len(repeat)} (B * K), got {len(seeds)}")
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    with torch.no_grad():
        condition = diffusion.condition(context, target)
        if guidance_scale != 1.0:
            null = diffusion.condition(context, target, drop=True)
            denoiser = classifier_free_guidance(diffusion.denoise, condition, null, guidance_scale)
        else:
            denoiser = diffusion.denoiser(condition)
        if reconstruction_weight > 0:
            camera = context.params
            first = Camera(
                camera.c2w[:, 0], camera.intrinsics[:, 0], camera.near, camera.far,
                camera.height, camera.width,
            )  # fmt: skip
            denoiser = reconstruction_guidance(
                denoiser,
                diffusion.schedule,
                forward_model=diffusion.forward_model,
                context_observation=context.observation[:, 0],
                context_params=first,
                weight=reconstruction_weight,
            )
        return sample(
            sampler,
            denoiser,
            diffusion.schedule,
            (len(repeat), *batch.target.shape[1:]),
            steps=steps,
            generator=generators,
            temperature=temperature,
            callback=callback,
        )


def sample_autoregressive(
    diffusion: ForwardDiffusion,
    batch: DFMBatch,
    targets: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    seed: int,
    steps: int = 50,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
) -> tuple[Any, list[torch.Tensor]]:
    """Autoregressive sampling: each generated view joins the context of the next.

    The original's 360-degree CO3D procedure (its reference section 3.4): for each target
    camera in turn, sample a view conditioned on the input and every view generated so far,
    then append it (image and camera) to the context. The returned scene is the last
    sample's, conditioned on the input and all earlier generated views.

    Args:
        diffusion: the trained model (eval mode).
        batch: one input (B = 1): its context views and planes.
        targets: ``(c2w (1, 4, 4), intrinsics (1, 3, 3))`` per generated view, relative to
            context view 0.
        seed: seed of the first view (view i uses ``seed + i``).

    Returns:
        The last scene (a ``SceneField``) and the generated images, each (1, 3, H, W).
    """
    context = batch.context
    generated: list[torch.Tensor] = []
    scene = None
    for i, (c2w, intrinsics) in enumerate(targets):
        target = dataclasses.replace(batch.target_params, c2w=c2w, intrinsics=intrinsics)
        step_batch = dataclasses.replace(batch, context=context, target_params=target)
        out = sample_scenes(
            diffusion, step_batch, num_samples=1, seeds=[seed + i], steps=steps,
            guidance_scale=guidance_scale, temperature=temperature,
        )  # fmt: skip
        scene = out.signal
        generated.append(out.observation)
        camera = context.params
        context = dataclasses.replace(
            context,
            observation=torch.cat([context.observation, out.observation[:, None]], dim=1),
            params=dataclasses.replace(
                camera,
                c2w=torch.cat([camera.c2w, c2w[:, None]], dim=1),
                intrinsics=torch.cat([camera.intrinsics, intrinsics[:, None]], dim=1),
                absolute_c2w=None,
            ),
        )
    return scene, generated


def render_at(renderer: VolumeRenderer, scene: Any, camera: Camera) -> Any:
    """Render a batched scene at a camera without gradients."""
    with torch.no_grad():
        return renderer.eval()(scene, camera)


def camera_like(template: Camera, c2w: torch.Tensor, intrinsics: torch.Tensor) -> Camera:
    """``template``'s planes (of its first sample) and image size at other poses (B, [N,] 4, 4)."""
    batch = c2w.shape[0]
    near = template.near[:1].expand(batch)
    far = template.far[:1].expand(batch)
    return Camera(c2w, intrinsics, near, far, template.height, template.width)


# ----------------------------------------------------------------------------- evaluation


def _uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _chi_squared_uniform(counts: np.ndarray) -> tuple[float, float]:
    """Pearson's chi-squared statistic of counts against uniform, and its p-value."""
    from scipy.stats import chisquare

    if counts.sum() == 0:
        return float("nan"), float("nan")
    result = chisquare(counts)
    return float(result.statistic), float(result.pvalue)


@dataclass
class Evaluation:
    """Scores and files of one evaluation."""

    scores: dict[str, float]
    files: dict[str, Path]

    def scores_dict(self) -> dict[str, float]:
        return dict(self.scores)


def palette_candidates(views: Any, truth: dict, index: int, item: Any) -> tuple:
    """The exact target view of object ``index`` painted with each palette colour in turn.

    The hidden back of an object of the objects world is one palette colour; rendering the
    true scene with each colour gives what every hypothesis looks like under the true shading.

    Args:
        views: the ``CO3DDataset`` over the objects world.
        truth: its ``synthetic_ground_truth.json``.
        index: sequence index.
        item: ``views.views_at(index, ...)``; its target view 0 is rendered.

    Returns:
        candidates (P, 3, H, W) in [0, 1] at the model's image size, and hidden (H, W) bool:
        the pixels that show the hidden back (more than 90 % of their area).
    """
    from dfm_data.worlds.objects import ObjectScene, render_object_scene
    from dfm_data.worlds.raycast import box_downsample

    name = views.sequences[index][1]
    record = truth["sequences"][name]
    # The loader's poses are scaled so the object sits mean_depth_scale away; undo it.
    c2w = (item.world_from_context[0] @ item.target.c2w[0, 0]).double().numpy()
    c2w[:3, 3] *= (views.scales.get(name) or 1.0) / views.config.mean_depth_scale
    scene = ObjectScene.from_json(record["scene"])
    h, w = record["image_size_hw"]
    factor = h // views.config.image_size
    renders, hidden = [], None
    for colour in truth["palette"]:
        painted = dataclasses.replace(scene, hidden_colour=tuple(colour))
        out = render_object_scene(painted, c2w, np.asarray(record["intrinsics_px"]), h, w, 2)
        renders.append(box_downsample(out["rgb"], factor))
        hidden = box_downsample(out["hidden"], factor)
    candidates = torch.from_numpy(np.stack(renders)).permute(0, 3, 1, 2).float()
    return candidates, torch.from_numpy(hidden > 0.9)


def exact_depths(views: Any, truth: dict, index: int, c2w: torch.Tensor, item: Any) -> torch.Tensor:
    """Exact z-depth of object ``index`` at cameras ``c2w``, in the loader's scaled units.

    Rendered by the world's own ray caster at the model's image size (intrinsics scaled with
    the image: pixel (i, j) covers [j, j+1] x [i, i+1] at both sizes), so each pixel's depth is
    that of the ray through its centre, as the volume renderer's rays are.

    Args:
        views: the ``CO3DDataset`` over the objects world.
        truth: its ``synthetic_ground_truth.json``.
        index: sequence index.
        c2w: (V, 4, 4) the loader's (scaled, context-relative) camera-to-world matrices.
        item: ``views.views_at(index, ...)`` (for ``world_from_context``).

    Returns:
        (V, H, W) depths, 0 where the ray misses the object.
    """
    from dfm_data.worlds.objects import ObjectScene, render_object_scene

    name = views.sequences[index][1]
    record = truth["sequences"][name]
    to_world = (views.scales.get(name) or 1.0) / views.config.mean_depth_scale
    scene = ObjectScene.from_json(record["scene"])
    h, w = record["image_size_hw"]
    size = views.config.image_size
    intrinsics = np.asarray(record["intrinsics_px"], dtype=np.float64).copy()
    intrinsics[0] *= size / w
    intrinsics[1] *= size / h
    depths = []
    for camera in c2w:
        pose = (item.world_from_context[0] @ camera).double().numpy()
        pose[:3, 3] *= to_world
        out = render_object_scene(scene, pose, intrinsics, size, size, 1)
        depths.append(out["depth"] / to_world)
    return torch.from_numpy(np.stack(depths)).float()


def depth_error(depth: torch.Tensor, opacity: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean relative depth error over the object's pixels: mean |d - d*| / d*.

    Args:
        depth: (..., V, H, W) rendered depth (the renderer's expected depth, unnormalised).
        opacity: (..., V, H, W) rendered opacity, to turn expected depth into depth given a hit.
        exact: (V, H, W) exact depth, 0 off the object.
    """
    hit = exact > 0
    given_hit = depth / opacity.clamp_min(1e-6)
    relative = (given_hit - exact).abs() / exact.clamp_min(1e-6)
    return float(relative[..., hit].mean())


def palette_distances(
    images: torch.Tensor, candidates: torch.Tensor, hidden: torch.Tensor
) -> torch.Tensor:
    """RMS distance over the hidden pixels of each image (N, 3, H, W) in [0, 1] to each
    candidate (P, 3, H, W): (N, P)."""
    diff = (images[:, None] - candidates[None]) ** 2  # (N, P, 3, H, W)
    return diff[..., hidden].mean(dim=(2, 3)).sqrt()


def classify_backs(
    images: torch.Tensor, candidates: torch.Tensor, hidden: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which palette colour each back shows, if any (see ``palette_margin``).

    Returns:
        nearest (N,) candidate index, real (N,) bool (close enough to count), and the
        distance (N,) to the nearest candidate.
    """
    distances = palette_distances(images, candidates, hidden)  # (N, P)
    best, nearest = distances.min(dim=1)
    between = palette_distances(candidates, candidates, hidden)  # (P, P)
    between.fill_diagonal_(float("inf"))
    separation = between.min(dim=1).values[nearest]  # (N,)
    return nearest, best <= margin * separation, best


def evaluate(
    config: ScenesConfig,
    trained: Trained,
    out_dir: Path,
    *,
    run_dir: Path | None = None,
    config_yaml: str = "",
) -> Evaluation:
    """Sample and score; write pictures, videos, scores.json and report.html.

    The objects world synthesized by the run is scored on a held-out world (visible side,
    palette of the hidden back: the module docstring). Real data (and any data the run did not
    synthesize) is scored by the fixed-pair protocol of its format
    (``dfm_apps.scene_protocols``), which also writes metrics.json and metrics.md.
    """
    if uses_protocol(config):
        return evaluate_protocol(config, trained, out_dir, run_dir=run_dir, config_yaml=config_yaml)
    from dfm_apps import media, report
    from dfm_apps.image_metrics import psnr, ssim

    _set_threads(config)
    ev = config.evaluation
    out_dir = Path(out_dir)
    # Objects of the world's "train" split are used (3/5 of them: size the world to fit).
    world = dataclasses.replace(config.data.world, n_sequences=math.ceil(ev.num_scenes / 0.6) + 2)
    root = Path(config.data.root).with_name(
        f"{Path(config.data.root).name}-heldout-seed{ev.world_seed}-{world.n_sequences}x"
        f"{world.n_frames}-{world.size}px"
    )
    ensure_world(root, world, seed=ev.world_seed, categories=config.data.categories[:1])
    views = _views_dataset(config, root, "train", 0)
    truth = json.loads(
        (root / config.data.categories[0] / "synthetic_ground_truth.json").read_text()
    )
    frames = config.data.world.n_frames
    visible = [f for f in range(1, frames) if min(f, frames - f) * 360.0 / frames <= 30.0]
    back = frames // 2
    diffusion, baseline = trained.diffusion.eval(), trained.baseline.eval()
    renderer = VolumeRenderer(config.model.renderer).eval()
    k = ev.num_samples
    size = config.model.image_size
    palette_counts = np.zeros(len(truth["palette"]), dtype=np.int64)
    stats: dict[str, list[float]] = {
        "dfm_visible_psnr": [], "dfm_visible_ssim": [], "baseline_visible_psnr": [],
        "baseline_visible_ssim": [], "real_colour": [], "distinct": [], "baseline_real_colour": [],
        "dfm_back_rmse_best": [], "dfm_visible_depth_error": [],
        "baseline_visible_depth_error": [],
    }  # fmt: skip
    files: dict[str, Path] = {}
    pictures: list[tuple[str, np.ndarray]] = []
    indices = range(ev.shard, min(ev.num_scenes, len(views)), ev.num_shards)
    count = len(indices)
    for index in media.progress(indices, desc="held-out objects"):
        name = views.sequences[index][1]
        item = views.views_at(index, [0], [back], visible + list(range(frames)))
        absolute = config.model.encoder.absolute_pose
        batch = scene_batch_from_views(item, patch_size=None, absolute_pose=absolute)
        seeds = [ev.seed * 1000 + index * k + j for j in range(k)]
        recorder = media.ProgressiveRecorder(max_items=k, desc=f"sampling {name}")
        out = sample_scenes(
            diffusion, batch, num_samples=k, seeds=seeds, steps=ev.steps,
            guidance_scale=ev.guidance_scale, temperature=ev.temperature,
            reconstruction_weight=ev.reconstruction_weight, sampler=ev.sampler, callback=recorder,
        )  # fmt: skip
        scene_k = out.signal
        if index == 0:  # the x0 estimate over the denoising steps, every sample side by side
            path = out_dir / "scenes" / name / "progressive.gif"
            media.write_video(path, recorder.frames(), fps=8)
            files[f"{name} progressive.gif"] = path
        if index == 0 and ev.export:
            files |= export_scene(renderer, scene_k, batch, item, out_dir / "scenes" / name, config)
        if index == 0 and ev.autoregressive_views:
            files |= autoregressive_video(diffusion, renderer, batch, item, out_dir, config)
        with torch.no_grad():
            base_scene = baseline.scene(batch.context)
        novel = item.novel
        n_visible = len(visible)
        vis_c2w, vis_k = novel.c2w[:, :n_visible], novel.intrinsics[:, :n_visible]
        truth_visible = (novel.images[0, :n_visible] + 1) / 2
        dfm_vis = render_at(
            renderer,
            scene_k,
            camera_like(
                batch.target_params, vis_c2w.expand(k, -1, -1, -1), vis_k.expand(k, -1, -1, -1)
            ),
        )
        base_vis = render_at(renderer, base_scene, camera_like(batch.target_params, vis_c2w, vis_k))
        for j in range(k):
            pred = (dfm_vis.observation[j] + 1) / 2
            stats["dfm_visible_psnr"].append(float(psnr(pred, truth_visible).mean()))
            stats["dfm_visible_ssim"].append(float(ssim(pred, truth_visible).mean()))
        pred = (base_vis.observation[0] + 1) / 2
        stats["baseline_visible_psnr"].append(float(psnr(pred, truth_visible).mean()))
        stats["baseline_visible_ssim"].append(float(ssim(pred, truth_visible).mean()))
        # 3D consistency: the samples' depth on the visible side against the exact depth.
        exact = exact_depths(views, truth, index, vis_c2w[0], item)
        stats["dfm_visible_depth_error"].append(
            depth_error(dfm_vis.depth[:, :, 0], dfm_vis.opacity[:, :, 0], exact)
        )
        stats["baseline_visible_depth_error"].append(
            depth_error(base_vis.depth[0, :, 0], base_vis.opacity[0, :, 0], exact)
        )
        # Hidden side: the back view of each sample against the repainted truths.
        candidates, hidden = palette_candidates(views, truth, index, item)
        backs = (out.observation.clamp(-1, 1) + 1) / 2  # (K, 3, H, W): the target is the back
        nearest, real, best = classify_backs(backs, candidates, hidden, ev.palette_margin)
        stats["dfm_back_rmse_best"] += best.tolist()
        stats["real_colour"] += real.float().tolist()
        stats["distinct"].append(float(len(set(nearest[real].tolist()))))
        palette_counts += np.bincount(nearest[real].numpy(), minlength=len(palette_counts))
        base_back = render_at(renderer, base_scene, batch.target_params)
        base_rgb = (base_back.observation.clamp(-1, 1) + 1) / 2
        _, base_real, _ = classify_backs(base_rgb, candidates, hidden, ev.palette_margin)
        stats["baseline_real_colour"].append(float(base_real[0]))
        # Pictures: input, true back, baseline back, K sample backs.
        true_back = (item.target.images[0, 0] + 1) / 2
        row = [_uint8(batch.context.observation[0] )[0], _uint8(true_back[None] * 2 - 1)[0],
               _uint8(base_back.observation)[0], *_uint8(out.observation)]  # fmt: skip
        pictures.append((name, np.stack(row)))
        if ev.videos:
            all_c2w, all_k = novel.c2w[:, n_visible:], novel.intrinsics[:, n_visible:]
            for label, scene, count_k in (("dfm", scene_k, k), ("baseline", base_scene, 1)):
                cams = camera_like(
                    batch.target_params,
                    all_c2w.expand(count_k, -1, -1, -1),
                    all_k.expand(count_k, -1, -1, -1),
                )
                turn = render_at(renderer, scene, cams)  # (n, F, 3, H, W)
                rgb = turn.observation.permute(1, 0, 3, 4, 2).reshape(frames, size, -1, 3)
                depth = turn.depth[:, :, 0].permute(1, 2, 0, 3).reshape(frames, size, -1)
                rgb_frames = media.to_uint8_frames((rgb.clamp(-1, 1) + 1) / 2)
                depth_frames = media.colorize_depth(
                    depth, vmin=config.model.near, vmax=config.model.far
                )
                for kind, frames_ in (("turntable", rgb_frames), ("depth", depth_frames)):
                    for suffix in (".mp4", ".gif"):
                        path = out_dir / "scenes" / name / f"{label}-{kind}{suffix}"
                        media.write_video(path, frames_, fps=12)
                        files[f"{name} {label} {kind}{suffix}"] = path
    grid = media.image_grid(
        [img for _, row in pictures for img in row],
        ncols=3 + k,
        captions=[
            c
            for _ in pictures
            for c in ["input", "true back", "baseline", *[f"sample {j}" for j in range(k)]]
        ],
        scale=max(1, 64 // size),  # captions are ~60 pixels wide
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(grid).save(out_dir / "backs.png")
    files["backs"] = out_dir / "backs.png"
    chi2, p = _chi_squared_uniform(palette_counts)
    scores = {
        key: float(np.mean(values)) if values else float("nan") for key, values in stats.items()
    }
    scores |= {
        "palette_chi2": chi2,
        "palette_p": p,
        "num_objects": float(count),
        "num_samples": float(k),
    }
    scores["palette_counts"] = palette_counts.tolist()  # type: ignore[assignment]
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=1))
    files["scores"] = out_dir / "scores.json"
    html = report.render_page(
        title=f"DFM inverse graphics: {config.name}",
        summary=(
            f"DFM ({trained.dfm_step} steps) and the pixelNeRF baseline ({trained.baseline_step} "
            f"steps), given only the front view of {count} held-out objects (world seed "
            f"{ev.world_seed}); {k} samples each, sampler {ev.sampler}, {ev.steps} steps."
        ),
        tables=[_score_table(scores)],
        images={"input, true back, baseline back, sampled backs": out_dir / "backs.png"},
        videos={label: path for label, path in files.items() if label.endswith(".mp4")},
        config_yaml=config_yaml,
        base=out_dir,
    )
    (out_dir / "report.html").write_text(html)
    files["report"] = out_dir / "report.html"
    return Evaluation(scores=scores, files=files)


def pool_scores(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``scores.json`` of an evaluation split over processes (``evaluation.num_shards``).

    Each object adds the same number of values to every mean, so a mean over all objects is
    the shards' means weighted by their object counts; the palette counts add up and the
    chi-squared test is rerun on the sum. Equals the unsplit evaluation up to rounding.
    """
    if not shards:
        raise ValueError("pool_scores: no shards")
    weights = np.array([shard["num_objects"] for shard in shards], dtype=np.float64)
    pooled: dict[str, Any] = {}
    for key in shards[0]:
        if key in ("palette_counts", "palette_chi2", "palette_p", "num_samples"):
            continue
        values = np.array([shard[key] for shard in shards], dtype=np.float64)
        pooled[key] = float(
            values.sum() if key == "num_objects" else values @ weights / weights.sum()
        )
    counts = np.sum([shard["palette_counts"] for shard in shards], axis=0)
    pooled["palette_chi2"], pooled["palette_p"] = _chi_squared_uniform(counts)
    pooled["num_samples"] = shards[0]["num_samples"]
    pooled["palette_counts"] = counts.tolist()
    return pooled


def export_scene(
    renderer: VolumeRenderer, scenes_k: Any, batch: DFMBatch, item: Any, out: Path, config: Any
) -> dict[str, Path]:
    """The first sample as a point cloud fused from its turntable renders and a mesh."""
    from dfm_render import extract_mesh, fuse_point_cloud, save_mesh, save_point_cloud

    scene = tree_index(scenes_k, slice(0, 1))
    c2w, intrinsics = item.novel.c2w[0], item.novel.intrinsics[0]  # every frame of the orbit
    views = render_at(
        renderer, scene, camera_like(batch.target_params, c2w[None], intrinsics[None])
    )
    cloud = fuse_point_cloud(
        views.depth[0, :, 0],
        (views.observation[0].clamp(-1, 1) + 1) / 2,
        c2w,
        intrinsics,
        opacity=views.opacity[0, :, 0],
        divide_by_opacity=True,
        max_depth=0.9 * config.model.far,
    )
    # The object sits around the point all cameras look at; mesh a box around it.
    centre = estimate_look_at_point(c2w)
    radius = 0.35 * float(torch.linalg.norm(c2w[0, :3, 3] - centre))
    bounds = torch.stack([centre - radius, centre + radius])

    def density(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return scene.query(points[None].to(c2w.dtype)).density[0]

    def colour(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return scene.query(points[None].to(c2w.dtype)).rgb[0]

    # A voxel is mostly opaque when density * voxel size ~ 1.
    voxel = 2 * radius / 63
    mesh = extract_mesh(density, bounds, 64, level=1.0 / voxel, colour=colour)
    return {
        "point cloud": save_point_cloud(out / "sample0-points.ply", cloud),
        "mesh (ply)": save_mesh(out / "sample0-mesh.ply", mesh),
        "mesh (obj)": save_mesh(out / "sample0-mesh.obj", mesh),
    }


def autoregressive_video(
    diffusion: ForwardDiffusion,
    renderer: VolumeRenderer,
    batch: DFMBatch,
    item: Any,
    out_dir: Path,
    config: Any,
) -> dict[str, Path]:
    """Autoregressive 360-degree sample of one object, rendered along its orbit."""
    from dfm_apps import media

    ev = config.evaluation
    frames = config.data.world.n_frames
    c2w, intrinsics = item.novel.c2w[:, -frames:], item.novel.intrinsics[:, -frames:]
    positions = [(i + 1) * ev.autoregressive_step % frames for i in range(ev.autoregressive_views)]
    targets = [(c2w[:, p], intrinsics[:, p]) for p in positions]
    scene, _ = sample_autoregressive(
        diffusion, batch, targets, seed=ev.seed, steps=ev.steps,
        guidance_scale=ev.guidance_scale, temperature=ev.temperature,
    )  # fmt: skip
    turn = render_at(renderer, scene, camera_like(batch.target_params, c2w, intrinsics))
    video = media.to_uint8_frames((turn.observation[0].clamp(-1, 1) + 1).permute(0, 2, 3, 1) / 2)
    path = out_dir / "scenes" / "autoregressive-turntable.mp4"
    media.write_video(path, video, fps=12)
    return {"autoregressive turntable.mp4": path}


def _score_table(scores: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    def f(key: str, digits: int = 2) -> str:
        value = scores.get(key, float("nan"))
        return "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}"

    rows = [
        ["visible side PSNR (dB), +-30 deg", f("dfm_visible_psnr"), f("baseline_visible_psnr")],
        ["visible side SSIM", f("dfm_visible_ssim", 3), f("baseline_visible_ssim", 3)],
        [
            "visible side depth error |d - d*| / d* on the object",
            f("dfm_visible_depth_error", 3),
            f("baseline_visible_depth_error", 3),
        ],
        ["backs that are a palette colour", f("real_colour"), f("baseline_real_colour")],
        ["distinct colours among the K samples", f("distinct"), "1 at most"],
        ["chi-squared p of pooled colours vs uniform", f("palette_p", 3), ""],
    ]
    return ("scores", ["", "DFM", "baseline"], rows)


def demo(out_dir: Path, *, seed: int = 0) -> Any:
    """The objects-demo model on its shipped weights (``dfm_apps.scene_demo``)."""
    from dfm_apps.scene_demo import run_demo

    return run_demo(out_dir, seed=seed)
