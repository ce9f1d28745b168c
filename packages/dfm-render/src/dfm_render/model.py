"""The inverse-graphics DFM model and its deterministic pixelNeRF baseline.

DFM for 3D (Tewari et al. 2023, section 3.2, Fig. 2), in the terms of dfm-core:

* **signal**: a ``SceneField``, the radiance field defined by the encoded context views and the
  encoded noisy target view together;
* **forward model**: ``VolumeRenderer`` (volume rendering at a camera);
* **predictor** ``ScenePredictor``:

  - ``encode_condition(context, target_camera)``, once per sample: encode each context image
    with the DiT at t = 0, build a context-only field (``det_field``) and render it at the
    target camera over the full image: O_det = (RGB, depth, F feature channels). This is the
    deterministic estimate of the target view that DFM concatenates to the noisy target;
  - ``forward(condition, x_t, t, target_camera)``, once per denoising step: encode
    [x_t, O_det] with the same DiT at time t and return the joint field over the context
    views (t = 0) and the target view (t).

* **sampled 3D scene**: the samplers return the signal of the last denoiser evaluation. With
  dfm-core's default (trailing) DDIM spacing that evaluation is at t = 0, on the state that
  equals the last clean estimate, so the sampled scene is the joint field whose target view is
  the generated image itself (encoded at t = 0). It renders at any camera
  (``VolumeRenderer(scene, camera)``). The original code instead keeps the field from its last
  evaluation at t = 19 (its spacing never evaluates t = 0).

The deterministic baseline ``PixelNeRFBaseline`` is the same encoder and field from the context
views alone, trained to render the target view. Every tensor it trains carries over into DFM
(``load_baseline_into``): encoder -> encoder, field -> both fields, its RGB/density head into the
first rows of ``det_field``'s wider head (the original drops the trained head, its
reference section 2.5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dfm_core.diffusion import Context, DFMBatch
from dfm_render.cameras import crop_patches, random_patch_origins
from dfm_render.encoder import EncoderConfig, ImageEncoder
from dfm_render.field import FieldConfig
from dfm_render.renderer import (
    Camera,
    CoarseCache,
    RendererConfig,
    SceneField,
    SceneRendering,
    VolumeRenderer,
)

__all__ = [
    "PixelNeRFBaseline",
    "SceneCondition",
    "ScenePredictor",
    "load_baseline_into",
    "make_scene_batch",
    "normalised_disparity",
]


def normalised_disparity(depth: Tensor, near: Tensor) -> Tensor:
    """near / depth in (0, 1], an input scale the network can use at any scene scale.

    The original feeds raw depth in scene units to the DiT (its issue list, item 10).

    Args:
        depth: (B, 1, H, W) z-depth.
        near: (B,) near plane.
    """
    near = near.reshape(-1, 1, 1, 1).to(depth)
    return near / depth.clamp(min=1e-6).maximum(near)


@dataclass(frozen=True)
class SceneCondition:
    """What ``ScenePredictor.encode_condition`` computes once per sample.

    Attributes:
        context_maps: (B, Nc, W, H, W_img) context features projected for the joint field.
        context_c2w: (B, Nc, 4, 4).
        context_intrinsics: (B, Nc, 3, 3).
        det: O_det, the context-only field rendered at the target camera (full image).
        cache: while sampling, the context views' activations at the target camera's coarse
            samples (``CoarseCache``), reused by every denoising step; None in training.
    """

    context_maps: Tensor
    context_c2w: Tensor
    context_intrinsics: Tensor
    det: SceneRendering
    cache: CoarseCache | None = None


def _context_features(encoder: ImageEncoder, context: Context) -> Tensor:
    """Encode every context image at t = 0: (B, Nc, 3, H, W) -> (B*Nc, C, H, W)."""
    images = context.observation
    batch, views = images.shape[:2]
    camera: Camera = context.params
    absolute = None
    if camera.absolute_c2w is not None:
        absolute = camera.absolute_c2w.reshape(batch * views, 4, 4)
    t = torch.zeros(batch * views, device=images.device, dtype=images.dtype)
    return encoder(images.flatten(0, 1), t, absolute)


def _check_context(context: Context) -> Camera:
    camera = context.params
    if not isinstance(camera, Camera) or not camera.multi_view:
        raise TypeError(
            "context.params must be a Camera with one pose per context view, c2w (B, Nc, 4, 4)"
        )
    if context.observation.ndim != 5 or context.observation.shape[:2] != camera.c2w.shape[:2]:
        raise ValueError(
            f"context.observation: expected (B, Nc, 3, H, W) matching c2w {tuple(camera.c2w.shape)}, "
            f"got {tuple(context.observation.shape)}"
        )
    return camera


class ScenePredictor(nn.Module):
    """The DFM signal predictor for inverse graphics (module docstring).

    Args:
        encoder: encoder sizes (the target stem's width is derived here).
        field: field sizes (the joint field renders RGB only; ``det_field`` adds
            ``det_features`` channels).
        det_samples: samples per ray of O_det (uniform, no importance pass; 64 on CO3D).
        det_features: feature channels O_det renders (64 in the paper).
        renderer: ray sampling of the denoiser's renders (the forward model's config; O_det
            uses it with ``det_samples`` and no fine pass).
    """

    def __init__(
        self,
        encoder: EncoderConfig,
        field: FieldConfig,
        *,
        det_samples: int,
        det_features: int,
        renderer: RendererConfig,
    ) -> None:
        super().__init__()
        self.det_features = det_features
        # The noisy target is concatenated with O_det: RGB (3), disparity (1), features (F).
        self.encoder = ImageEncoder(encoder, target_channels=3 + 3 + 1 + det_features)
        # O_det's field pools the context views alone: the plain mean (FieldConfig.view_pooling
        # is about the joint field, where the noisy target view joins them).
        self.det_field = dataclasses.replace(
            field, output_features=det_features, view_pooling="mean"
        ).build()
        self.field = dataclasses.replace(field, output_features=0).build()
        self.det_renderer = VolumeRenderer(
            dataclasses.replace(renderer, num_coarse=det_samples, num_fine=0)
        )
        # The forward model's sampling, to place the cached context activations exactly.
        self.renderer = VolumeRenderer(renderer)

    def encode_condition(self, context: Context, target: Camera) -> SceneCondition:
        """Context features and O_det, once per sample (dfm-core's ``encode_condition``).

        Args:
            context: observation (B, Nc, 3, H, W) in [-1, 1]; params a ``Camera`` with
                c2w (B, Nc, 4, 4).
            target: the target view's ``Camera`` (c2w (B, 4, 4)); O_det covers its whole image.
        """
        camera = _check_context(context)
        batch, views = context.observation.shape[:2]
        features = _context_features(self.encoder, context)  # (B*Nc, C, H, W)
        det_maps = self.det_field.project_features(features)
        joint_maps = self.field.project_features(features)
        times = torch.zeros(batch, views, device=features.device, dtype=features.dtype)
        det_scene = SceneField(
            maps=det_maps.reshape(batch, views, *det_maps.shape[1:]),
            c2w=camera.c2w,
            intrinsics=camera.intrinsics,
            time_embedding=self.det_field.time_embedding(times),
            near=target.near,
            far=target.far,
            mlp=self.det_field,
        )
        det = self.det_renderer(det_scene, target.full_image())
        context_maps = joint_maps.reshape(batch, views, *joint_maps.shape[1:])
        cache = None
        if not self.training and self.renderer.config.cache_context:
            cache = self._context_cache(context_maps, camera, target.full_image())
        return SceneCondition(
            context_maps=context_maps,
            context_c2w=camera.c2w,
            context_intrinsics=camera.intrinsics,
            det=det,
            cache=cache,
        )

    def _context_cache(self, maps: Tensor, context: Camera, target: Camera) -> CoarseCache:
        """The context views' per-view activations at the target's coarse samples."""
        renderer = self.renderer  # in eval mode with the predictor: no jitter
        origins, directions, _, _, _ = renderer.rays(target)  # (B, R, 3)
        batch, rays = origins.shape[:2]
        times = torch.zeros(batch, maps.shape[1], device=maps.device, dtype=maps.dtype)
        time_embedding = self.field.time_embedding(times)
        hidden, valid = [], []
        for start in range(0, rays, renderer.config.chunk):
            o = origins[:, start : start + renderer.config.chunk]
            d = directions[:, start : start + renderer.config.chunk]
            t = renderer.coarse_depths(target.near, target.far, o.shape[1]).to(o)  # (B, r, Sc)
            points = o[:, :, None] + t[..., None] * d[:, :, None]  # (B, r, Sc, 3)
            h, v = self.field.per_view(
                points.reshape(batch, -1, 3), maps, context.c2w, context.intrinsics, time_embedding
            )  # (B, Vc, r*Sc, W), (B, Vc, r*Sc)
            hidden.append(h.reshape(*h.shape[:2], *t.shape[1:], -1))
            valid.append(v.reshape(*v.shape[:2], *t.shape[1:]))
        return CoarseCache(
            c2w=target.c2w,
            intrinsics=target.intrinsics,
            near=target.near,
            far=target.far,
            spacing=renderer.config.spacing,
            hidden=torch.cat(hidden, dim=2),
            valid=torch.cat(valid, dim=2),
        )

    def forward(
        self, condition: SceneCondition, noisy_target: Tensor, t: Tensor, target: Camera
    ) -> SceneField:
        """The joint field over the context views and the noisy target view.

        Args:
            condition: from ``encode_condition``.
            noisy_target: x_t, (B, 3, H, W).
            t: (B,) diffusion times.
            target: the target ``Camera`` (c2w (B, 4, 4)).
        """
        det = condition.det
        assert det.features is not None
        inputs = torch.cat(
            [
                noisy_target,
                det.observation,
                normalised_disparity(det.depth, target.near),
                det.features,
            ],
            dim=1,
        )  # (B, 3 + 3 + 1 + F, H, W)
        target_features = self.encoder(inputs, t, target.absolute_c2w, target=True)
        target_maps = self.field.project_features(target_features)  # (B, W, H, W_img)
        batch, context_views = condition.context_c2w.shape[:2]
        times = torch.cat(
            [torch.zeros(batch, context_views, device=t.device, dtype=t.dtype), t[:, None]], dim=1
        )
        return SceneField(
            maps=torch.cat([condition.context_maps, target_maps[:, None]], dim=1),
            c2w=torch.cat([condition.context_c2w, target.c2w[:, None]], dim=1),
            intrinsics=torch.cat([condition.context_intrinsics, target.intrinsics[:, None]], dim=1),
            time_embedding=self.field.time_embedding(times),
            near=target.near,
            far=target.far,
            mlp=self.field,
            cache=condition.cache,
        )


class PixelNeRFBaseline(nn.Module):
    """Deterministic pixelNeRF: the DFM encoder and field over the context views only.

    Trains on its own (``forward(batch, generator=)`` returns the loss terms, the dfm-core
    ``Trainer`` contract) with the same target and novel patch losses as DFM, and renders its
    one answer at any camera (``scene`` then ``renderer``).
    """

    def __init__(
        self,
        encoder: EncoderConfig,
        field: FieldConfig,
        renderer: RendererConfig,
        *,
        novel_weight: float = 1.0,
        regularizers: Mapping[str, tuple[float, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = ImageEncoder(encoder, target_channels=0)
        # Context views only, like O_det's field: the plain mean over them.
        self.field = dataclasses.replace(field, output_features=0, view_pooling="mean").build()
        self.renderer = VolumeRenderer(renderer)
        self.novel_weight = novel_weight
        self.regularizers = dict(regularizers or {})

    def scene(self, context: Context) -> SceneField:
        """The field of the context views (all at t = 0)."""
        camera = _check_context(context)
        batch, views = context.observation.shape[:2]
        features = _context_features(self.encoder, context)
        maps = self.field.project_features(features)
        times = torch.zeros(batch, views, device=maps.device, dtype=maps.dtype)
        return SceneField(
            maps=maps.reshape(batch, views, *maps.shape[1:]),
            c2w=camera.c2w,
            intrinsics=camera.intrinsics,
            time_embedding=self.field.time_embedding(times),
            near=camera.near,
            far=camera.far,
            mlp=self.field,
        )

    def forward(
        self, batch: DFMBatch, *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Loss terms of one batch: L2 on the target (patch) and novel renders, plus extras."""
        from dfm_core.diffusion import LossInputs

        scene = self.scene(batch.context)
        params = (
            batch.target_params if batch.target_loss_params is None else batch.target_loss_params
        )
        observed = (
            batch.target if batch.target_loss_observation is None else batch.target_loss_observation
        )
        target_render = self.renderer(scene, params)
        terms = {"target": (target_render.observation - observed).square().mean()}
        total = terms["target"]
        novel_render = None
        if batch.novel is not None:
            novel_render = self.renderer(scene, batch.novel_params)
            terms["novel"] = (novel_render.observation - batch.novel).square().mean()
            total = total + self.novel_weight * terms["novel"]
        if self.regularizers:
            keep = torch.ones(batch.target.shape[0], dtype=torch.bool, device=batch.target.device)
            t = torch.zeros(batch.target.shape[0], dtype=torch.long, device=batch.target.device)
            inputs = LossInputs(batch, t, keep, None, scene, target_render, novel_render)
            for name, (weight, fn) in self.regularizers.items():
                terms[name] = fn(inputs)
                total = total + weight * terms[name]
        terms["loss"] = total
        return terms


def load_baseline_into(
    predictor: ScenePredictor, baseline_state: Mapping[str, Tensor]
) -> list[str]:
    """Initialise DFM from a trained baseline, carrying over every baseline tensor.

    Encoder tensors go to the DFM encoder (the context stem, DiT, skip and refinement; the
    target stem, which the baseline lacks, keeps its initialisation). Field tensors go to both
    DFM fields; ``det_field``'s output head is wider (it also renders O_det's features), so the
    baseline's RGB/density rows fill its first four rows.

    Args:
        predictor: the DFM predictor (modified in place).
        baseline_state: ``PixelNeRFBaseline.state_dict()``.

    Returns:
        The DFM parameter names that were written.

    Raises:
        ValueError: a baseline tensor has no place in DFM or its shape does not fit (names both).
    """
    target = predictor.state_dict()
    written: list[str] = []
    with torch.no_grad():
        for name, value in baseline_state.items():
            if name.startswith("encoder."):
                destinations = [name]
            elif name.startswith("field."):
                destinations = [name, "det_" + name]
            else:
                raise ValueError(
                    f"load_baseline_into: baseline tensor {name!r} has no place in DFM"
                )
            for dest in destinations:
                if dest not in target:
                    raise ValueError(f"load_baseline_into: DFM has no tensor {dest!r} for {name!r}")
                slot = target[dest]
                if slot.shape == value.shape:
                    slot.copy_(value)
                elif dest.startswith("det_field.lin_out.") and slot.shape[1:] == value.shape[1:]:
                    slot[: value.shape[0]].copy_(value)
                else:
                    raise ValueError(
                        f"load_baseline_into: {name!r} has shape {tuple(value.shape)}, "
                        f"DFM's {dest!r} has {tuple(slot.shape)}"
                    )
                written.append(dest)
    return written


def make_scene_batch(
    *,
    context_images: Tensor,
    context_c2w: Tensor,
    context_intrinsics: Tensor,
    target_image: Tensor,
    target_c2w: Tensor,
    target_intrinsics: Tensor,
    near: Tensor,
    far: Tensor,
    patch_size: int | None,
    novel_images: Tensor | None = None,
    novel_c2w: Tensor | None = None,
    novel_intrinsics: Tensor | None = None,
    context_absolute_c2w: Tensor | None = None,
    target_absolute_c2w: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> DFMBatch:
    """A dfm-core batch for the inverse-graphics model, from plain posed images.

    The network sees the whole (noisy) target image; the target and novel losses compare
    random ``patch_size`` patches (one origin per sample, shared by its target and novel
    views, as in the original), or whole images with ``patch_size=None``.

    Args:
        context_images: (B, Nc, 3, H, W) in [-1, 1].
        context_c2w: (B, Nc, 4, 4), relative to context view 0.
        context_intrinsics: (B, Nc, 3, 3) normalised.
        target_image: (B, 3, H, W); target_c2w (B, 4, 4); target_intrinsics (B, 3, 3).
        near, far: (B,).
        patch_size: side of the loss patches, or None.
        novel_images: (B, Nn, 3, H, W) views for the novel-view loss (Nn >= 1), or None.
        novel_c2w, novel_intrinsics: (B, Nn, 4, 4), (B, Nn, 3, 3).
        context_absolute_c2w, target_absolute_c2w: absolute poses for absolute-pose encoders.
        generator: draws the patch origins.
    """
    batch, _, _, height, width = context_images.shape
    context = Context(
        observation=context_images,
        params=Camera(
            context_c2w, context_intrinsics, near, far, height, width,
            absolute_c2w=context_absolute_c2w,
        ),
    )  # fmt: skip
    target = Camera(
        target_c2w, target_intrinsics, near, far, height, width, absolute_c2w=target_absolute_c2w
    )
    origin = None
    if patch_size is not None:
        origin = random_patch_origins(
            batch, height, width, patch_size, generator=generator, device=target_image.device
        )
    loss_params = loss_observation = None
    if origin is not None:
        loss_params = dataclasses.replace(target, patch_origin=origin, patch_size=patch_size)
        loss_observation = crop_patches(target_image, origin, patch_size)
    novel = novel_params = None
    if novel_images is not None:
        if novel_c2w is None or novel_intrinsics is None:
            raise ValueError("make_scene_batch: novel_images needs novel_c2w and novel_intrinsics")
        views = novel_images.shape[1]
        novel_params = Camera(novel_c2w, novel_intrinsics, near, far, height, width)
        novel = novel_images
        if origin is not None:
            novel_origin = origin[:, None].expand(batch, views, 2)
            novel_params = dataclasses.replace(
                novel_params, patch_origin=novel_origin, patch_size=patch_size
            )
            novel = crop_patches(
                novel_images.flatten(0, 1), novel_origin.reshape(-1, 2), patch_size
            ).reshape(batch, views, 3, patch_size, patch_size)
    return DFMBatch(
        context=context,
        target=target_image,
        target_params=target,
        novel=novel,
        novel_params=novel_params,
        target_loss_params=loss_params,
        target_loss_observation=loss_observation,
    )
