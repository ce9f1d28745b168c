"""Configs of the inverse-graphics model and its named presets.

``SceneModelConfig.build()`` gives the dfm-core ``ForwardDiffusion`` (predictor + volume
renderer + schedule + losses); ``build_baseline()`` the deterministic pixelNeRF with the same
encoder, field and renderer. Presets (``scene_config(name)``):

* ``co3d-hydrant``: the paper's CO3D model at 64^2 (reference sections 1.5-1.6, 2, 11):
  DiT-XL/2 encoder (28 x 1152) after a 64-channel stem, 512-channel features, 512-wide
  5-block field pooled before block 3 with a 2048-d time embedding, 64 + 64 samples per ray,
  O_det with 64 samples and 64 feature channels, absolute-pose conditioning, 24^2 patches on
  the target and one novel view, up to 3 contexts, near/far 0.5/40, LPIPS 0.2.
* ``re10k``: the same network for RealEstate10k at 64^2: one context, O_det with 32 samples,
  no absolute pose, near/far 0.7/10, LPIPS 1.0, depth smoothness 0.002, distortion 0.005.
* ``objects-demo``: small enough to train on 2 CPU cores, for the synthetic objects world
  (32^2 images, a 4-block DiT of width 128, 64-channel features, a 64-wide field, 16 + 16
  samples, 8^2 patches).

Classifier-free guidance: every preset drops the context of 10 % of the samples in training
(the method as the paper states it). The original trained CO3D without it and RealEstate10k
with whole-batch dropout; per-sample dropout is dfm-core's.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass

from dfm_core.diffusion import ForwardDiffusion
from dfm_core.schedules import ScheduleConfig
from dfm_render.encoder import EncoderConfig
from dfm_render.field import FieldConfig
from dfm_render.losses import LossWeights
from dfm_render.model import PixelNeRFBaseline, ScenePredictor
from dfm_render.renderer import RendererConfig, VolumeRenderer

__all__ = ["SCENE_PRESETS", "SamplingConfig", "SceneModelConfig", "scene_config"]


@dataclass
class SamplingConfig:
    """How scenes are sampled (the original's inference settings)."""

    steps: int = 50
    """DDIM steps."""
    guidance_scale: float = 1.0
    """Classifier-free guidance scale (1: none; the original used 2.0 on RealEstate10k)."""
    temperature: float = 1.0
    """Scale of the initial noise (the original: 1.0 on CO3D, 0.85 on RealEstate10k)."""
    near: float | None = None
    """Near plane at sampling; None keeps training's (the original used 1.0 on CO3D)."""


@dataclass
class SceneModelConfig:
    """The inverse-graphics DFM model: networks, rendering, losses and diffusion."""

    image_size: int = 64
    """Side of the (square) training images."""
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    """Image encoder (conv stem + DiT + refinement)."""
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    """Pixel-aligned radiance field."""
    renderer: RendererConfig = dataclasses.field(default_factory=RendererConfig)
    """Ray sampling of the denoiser's renders."""
    det_samples: int = 64
    """Samples per ray of O_det (uniform, one pass)."""
    det_features: int = 64
    """Feature channels O_det renders for the target encoder."""
    patch_size: int = 24
    """Side of the target/novel patches the training losses compare."""
    num_context: int = 1
    """Context views per training sample (the largest count, when the data varies it)."""
    near: float = 0.5
    """Near plane in scene units."""
    far: float = 40.0
    """Far plane in scene units."""
    losses: LossWeights = dataclasses.field(default_factory=LossWeights)
    """Weights of the extra loss terms."""
    novel_weight: float = 1.0
    """Weight of the novel-view loss (DFM eq. 9)."""
    context_dropout: float = 0.1
    """Probability of dropping a sample's context in training (classifier-free guidance)."""
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    """Noise process over target images (the original: cosine, T = 1000, x0 prediction)."""
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    """Defaults for sampling."""

    def __post_init__(self) -> None:
        if self.image_size % (2 * self.encoder.patch_size):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2 * encoder.patch_size = "
                f"{2 * self.encoder.patch_size}"
            )
        if not 1 <= self.patch_size <= self.image_size:
            raise ValueError(f"patch_size: expected 1..image_size, got {self.patch_size}")
        if not 0 < self.near < self.far:
            raise ValueError(f"near/far: expected 0 < near < far, got {self.near}, {self.far}")
        if self.num_context < 1 or self.det_samples < 1 or self.det_features < 0:
            raise ValueError("num_context and det_samples must be >= 1, det_features >= 0")
        self.field = dataclasses.replace(self.field, feature_channels=self.encoder.feature_channels)

    def build_predictor(self) -> ScenePredictor:
        """The DFM signal predictor."""
        return ScenePredictor(
            self.encoder,
            self.field,
            det_samples=self.det_samples,
            det_features=self.det_features,
            renderer=self.renderer,
        )

    def build(self) -> ForwardDiffusion:
        """The trainable DFM model (dfm-core ``ForwardDiffusion``)."""
        return ForwardDiffusion(
            self.build_predictor(),
            VolumeRenderer(self.renderer),
            self.schedule.build(),
            novel_weight=self.novel_weight,
            context_dropout=self.context_dropout,
            regularizers=self.losses.regularizers(),  # type: ignore[arg-type]
        )

    def build_baseline(self) -> PixelNeRFBaseline:
        """The deterministic pixelNeRF with the same encoder, field and renderer."""
        extras = dataclasses.replace(self.losses, det=0.0).regularizers()
        return PixelNeRFBaseline(
            self.encoder,
            self.field,
            self.renderer,
            novel_weight=self.novel_weight,
            regularizers=extras,  # type: ignore[arg-type]
        )

    def reduced(self, image_size: int = 16) -> SceneModelConfig:
        """The same structure at toy size, for 2-step CPU smoke tests of every preset."""
        encoder = dataclasses.replace(
            self.encoder, hidden_size=32, depth=1, num_heads=2, stem_channels=8,
            skip_channels=8, feature_channels=16,
        )  # fmt: skip
        return dataclasses.replace(
            self,
            image_size=image_size,
            encoder=encoder,
            field=dataclasses.replace(self.field, width=16, time_embed_dim=32),
            renderer=dataclasses.replace(
                self.renderer, num_coarse=4, num_fine=4, chunk=64, train_chunk=64
            ),
            det_samples=4,
            det_features=4,
            patch_size=min(self.patch_size, image_size // 2),
            losses=dataclasses.replace(self.losses, lpips=0.0),
        )


def _co3d() -> SceneModelConfig:
    return SceneModelConfig(
        image_size=64,
        encoder=EncoderConfig(absolute_pose=True, gradient_checkpointing=True),
        field=FieldConfig(),
        renderer=RendererConfig(num_coarse=64, num_fine=64, chunk=1024, train_chunk=256),
        det_samples=64,
        det_features=64,
        patch_size=24,
        num_context=3,
        near=0.5,
        far=40.0,
        losses=LossWeights(det=1.0, lpips=0.2),
        sampling=SamplingConfig(steps=50, guidance_scale=1.0, temperature=1.0, near=1.0),
    )


def _re10k() -> SceneModelConfig:
    # The same network as CO3D; what differs is the data's geometry and the loss weights.
    return dataclasses.replace(
        _co3d(),
        encoder=EncoderConfig(absolute_pose=False, gradient_checkpointing=True),
        det_samples=32,
        num_context=1,
        near=0.7,
        far=10.0,
        losses=LossWeights(det=1.0, lpips=1.0, depth_smooth=0.002, distortion=0.005),
        sampling=SamplingConfig(steps=50, guidance_scale=2.0, temperature=0.85),
    )


def _objects_demo() -> SceneModelConfig:
    return SceneModelConfig(
        image_size=32,
        encoder=EncoderConfig(
            hidden_size=128,
            depth=4,
            num_heads=4,
            patch_size=2,
            stem_channels=32,
            skip_channels=32,
            feature_channels=64,
        ),
        field=FieldConfig(width=64, num_blocks=4, combine_layer=2, time_embed_dim=128),
        renderer=RendererConfig(num_coarse=16, num_fine=16, chunk=1024, train_chunk=512),
        det_samples=16,
        det_features=16,
        patch_size=8,
        num_context=1,
        # The CO3D loader scales scenes so the object sits ~10 units from the camera.
        near=4.0,
        far=24.0,
        losses=LossWeights(det=1.0),
        sampling=SamplingConfig(steps=50),
    )


_BUILDERS = {"co3d-hydrant": _co3d, "re10k": _re10k, "objects-demo": _objects_demo}

SCENE_PRESETS: Mapping[str, SceneModelConfig] = types.MappingProxyType(
    {name: build() for name, build in _BUILDERS.items()}
)
"""Named configs (read-only; ``scene_config`` returns an editable copy)."""


def scene_config(name: str) -> SceneModelConfig:
    """A fresh copy of preset ``name``.

    Raises:
        ValueError: unknown name (the message lists the presets).
    """
    if name not in _BUILDERS:
        raise ValueError(
            f"scene_config: unknown preset {name!r}; expected one of {sorted(_BUILDERS)}"
        )
    return _BUILDERS[name]()
