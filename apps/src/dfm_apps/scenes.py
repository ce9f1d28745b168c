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

Scoring on the objects world (the hidden back of each object is known and rendered exactly):
``dfm_apps.scene_heldout``, which states the visible-side and hidden-side scores.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dfm_apps.applications import (
    InitWeightsError,
    Trained,
    init_from_run,
    is_rank_zero,
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
    """A sample's back counts as palette colour p when its colour (mean over the hidden pixels)
    is within this fraction of the distance from the truth painted p to the nearest other
    colour's (an even blend of two colours lies at 1/2: never counted; the stricter per-pixel
    figure uses the RMS over the hidden pixels; ``scene_heldout.classify_backs``)."""
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
    init_from: str | None = None
    """Fine-tune: a run directory whose newest EMA weights start this (fresh) run, its
    baseline's the baseline and its DFM's DFM (instead of this run's baseline). Tensors it
    lacks keep their initialisation and are named on stderr (e.g. the zero-initialised head of
    ``model.field.view_pooling=learned``, which then starts equal to the source's mean); a
    tensor this model lacks or of another shape is an error. Unused once this run has
    checkpoints."""
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
"""Config sections that fix the weights: a resumed run or ``dfm sample`` may not change them."""
SAMPLING_KEYS = ("model.renderer.field_dtype",)
"""Keys under ``FROZEN`` that ``dfm sample``/``eval`` may still override: they change how
the trained field is evaluated (bfloat16 matmuls), not its weights."""


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
    source = None if config.init_from is None else Path(config.init_from)
    if source is not None and not list_checkpoints(run_dir / BASELINE_DIR / "checkpoints"):
        _init_from(baseline, source / BASELINE_DIR, "baseline")

    def init_dfm(base_trainer: Trainer) -> None:
        if list_checkpoints(run_dir / "checkpoints"):
            return  # resuming: the checkpoint has the weights
        if source is not None:
            _init_from(diffusion, source, "DFM")
        elif config.init_from_baseline:
            load_baseline_into(diffusion.predictor, base_trainer.ema_model().state_dict())

    return train_baseline_then_dfm(
        baseline,
        diffusion,
        dataset,
        config.trainer,
        baseline_steps=config.baseline_steps,
        run_dir=run_dir,
        baseline_dir=run_dir / BASELINE_DIR,
        before_dfm=init_dfm,
        collate_fn=collate_scene_batches,
        run_config=run_config,
    )


def _init_from(model: torch.nn.Module, source: Path, what: str) -> None:
    """Start ``model`` from ``source``'s newest EMA weights (``init_from``) and say so."""
    try:
        step, kept = init_from_run(model, source)
    except InitWeightsError as error:
        raise InitWeightsError(f"init_from: {error}") from None
    if is_rank_zero():
        fresh = f"; kept at their initialisation: {', '.join(kept)}" if kept else ""
        print(f"dfm: init_from -> {what} from {source} (step {step}){fresh}", file=sys.stderr)


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


@dataclass
class Evaluation:
    """Scores and files of one evaluation."""

    scores: dict[str, float]
    files: dict[str, Path]

    def scores_dict(self) -> dict[str, float]:
        return dict(self.scores)


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
    palette of the hidden back: ``dfm_apps.scene_heldout``). Real data (and any data the run
    did not synthesize) is scored by the fixed-pair protocol of its format
    (``dfm_apps.scene_protocols``), which also writes metrics.json and metrics.md.
    """
    if uses_protocol(config):
        return evaluate_protocol(config, trained, out_dir, run_dir=run_dir, config_yaml=config_yaml)
    from dfm_apps.scene_heldout import evaluate_world

    return evaluate_world(config, trained, out_dir, config_yaml=config_yaml)


def demo(out_dir: Path, *, seed: int = 0) -> Any:
    """The objects-demo model on its shipped weights (``dfm_apps.scene_demo``)."""
    from dfm_apps.scene_demo import run_demo

    return run_demo(out_dir, seed=seed)
