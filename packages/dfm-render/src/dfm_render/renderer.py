"""The 3D forward model: render a radiance field at a camera (the ``forward`` of DFM's eq. 8-9).

A *signal* here is a ``SceneField``: the encoded views and the MLP that together define density
and colour at every 3D point. ``VolumeRenderer(field, camera)`` renders it at a ``Camera`` (the
forward-model parameters phi) into a ``SceneRendering`` whose ``observation`` is the image in
[-1, 1]; depth, opacity, compositing weights and rendered feature channels ride along for the
regularisers (dfm-core's ``LossInputs``).

Rendering a ray (Mildenhall et al. 2020, eq. 3; hierarchical sampling, section 5.2):

1. ``num_coarse`` depths between near and far (bin centres, or one uniform draw per bin while
   training);
2. the field at those points; their compositing weights, detached, define a piecewise-constant
   pdf from which ``num_fine`` more depths are drawn;
3. the field at the new points; both sets are merged, sorted and composited.

The original DFM code evaluates a separate *coarse* MLP in step 2 that never receives a gradient
(its output only places samples, under ``no_grad``), then re-evaluates all coarse + fine points
with the fine MLP. Here one field serves both passes and the coarse evaluations are reused in the
final composite: the proposal is the trained field itself, and a ray costs num_coarse + num_fine
field evaluations instead of num_coarse + (num_coarse + num_fine).

Memory: full images are rendered in chunks of rays; while training, each chunk's field
evaluations can be recomputed in the backward pass (``checkpoint``), so a training step stores
only the chunk's inputs and outputs, not the MLP's activations for every (point, view).

Precision: ``RendererConfig.field_dtype = "bfloat16"`` evaluates the field (93-99 % of a
denoising step's FLOPs) under ``torch.autocast`` on the rays' device type: its matmuls, hidden
activations and pixel-feature gather run in bfloat16 from float32 weights, while the field's
output activations (density, colour) and all of volume compositing stay float32 (``_query``;
``dfm_render.field`` says which steps run in which dtype). The default ``"float32"`` enters no
autocast at all and is bit for bit the plain evaluation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dfm_render.cameras import patch_grid, pixel_grid, rays_from_pixels
from dfm_render.field import FieldOutput, RadianceFieldMLP
from dfm_render.ray_sampling import sample_along_rays, sample_pdf
from dfm_render.raymarching import composite, merge_samples

__all__ = [
    "Camera",
    "CoarseCache",
    "RendererConfig",
    "SceneField",
    "SceneRendering",
    "VolumeRenderer",
]

FIELD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""``RendererConfig.field_dtype`` values and the autocast dtype each selects."""


@dataclass(frozen=True)
class Camera:
    """Forward-model parameters of one view per batch element (or N views: extra dim N).

    Attributes:
        c2w: (B, 4, 4) or (B, N, 4, 4) OpenCV camera-to-world, relative to context view 0.
        intrinsics: (B, 3, 3) or (B, N, 3, 3) normalised intrinsics.
        near: (B,) near plane (z-depth, scene units).
        far: (B,) far plane.
        height: image height H in pixels.
        width: image width W.
        patch_origin: None to render the whole image, else (B, 2) or (B, N, 2) int64 (row,
            col) of the top-left pixel of a ``patch_size`` square patch.
        patch_size: side of the patch (with ``patch_origin``).
        absolute_c2w: absolute pose(s), same shape as ``c2w``; read only by encoders that
            condition on absolute poses.
    """

    c2w: Tensor
    intrinsics: Tensor
    near: Tensor
    far: Tensor
    height: int
    width: int
    patch_origin: Tensor | None = None
    patch_size: int | None = None
    absolute_c2w: Tensor | None = None

    def __post_init__(self) -> None:
        if self.c2w.shape[-2:] != (4, 4) or self.c2w.ndim not in (3, 4):
            raise ValueError(
                f"Camera.c2w: expected (B, 4, 4) or (B, N, 4, 4), got {tuple(self.c2w.shape)}"
            )
        if self.intrinsics.shape[:-2] != self.c2w.shape[:-2] or self.intrinsics.shape[-2:] != (
            3,
            3,
        ):
            raise ValueError(
                f"Camera.intrinsics: expected {(*self.c2w.shape[:-2], 3, 3)}, got {tuple(self.intrinsics.shape)}"
            )
        if (self.patch_origin is None) != (self.patch_size is None):
            raise ValueError("Camera: patch_origin and patch_size go together")
        if self.patch_size is not None and not 1 <= self.patch_size <= min(self.height, self.width):
            raise ValueError(
                f"Camera.patch_size: expected 1..{min(self.height, self.width)}, got {self.patch_size}"
            )

    @property
    def multi_view(self) -> bool:
        """Whether the camera holds N views per batch element."""
        return self.c2w.ndim == 4

    def full_image(self) -> Camera:
        """The same view(s) without the patch selection."""
        return Camera(
            self.c2w, self.intrinsics, self.near, self.far, self.height, self.width,
            absolute_c2w=self.absolute_c2w,
        )  # fmt: skip


@dataclass(frozen=True)
class CoarseCache:
    """Per-view field activations of views that do not change while sampling (the contexts),
    at the coarse samples of one camera's full image.

    While sampling, the coarse depths are deterministic and the context views' features and
    time (t = 0) are fixed, so their per-view blocks give the same activations at every
    denoising step: computed once per sample, reused by every step's render at that camera.

    Attributes:
        c2w: (B, 4, 4) the camera the activations belong to; intrinsics (B, 3, 3).
        near, far: (B,) the planes the coarse depths were placed between.
        spacing: the coarse spacing they were placed with.
        hidden: (B, Vc, R, Sc, W) activations of the first Vc views after the per-view blocks.
        valid: (B, Vc, R, Sc) whether each of those views sees each point.
    """

    c2w: Tensor
    intrinsics: Tensor
    near: Tensor
    far: Tensor
    spacing: str
    hidden: Tensor
    valid: Tensor


@dataclass(frozen=True)
class SceneField:
    """A radiance field defined by encoded views: the signal DFM samples (module docstring).

    Attributes:
        maps: (B, V, W, H, W_img) projected feature maps (``RadianceFieldMLP.project_features``).
        c2w: (B, V, 4, 4) poses of the views.
        intrinsics: (B, V, 3, 3) normalised intrinsics of the views.
        time_embedding: (B, V, T) FiLM time embedding per view (the last view's conditions
            the blocks after the mean over views).
        near, far: (B,) the scene's depth range.
        mlp: the field network (shared, not batched).
        cache: activations of the first views at one camera's coarse samples, or None.
    """

    maps: Tensor
    c2w: Tensor
    intrinsics: Tensor
    time_embedding: Tensor
    near: Tensor
    far: Tensor
    mlp: RadianceFieldMLP
    cache: CoarseCache | None = None

    def query(self, points: Tensor, cached: tuple[Tensor, Tensor] | None = None) -> FieldOutput:
        """Density, colour and features at world points (B, P, 3); ``cached`` per-view
        activations of the first views at these points (``RadianceFieldMLP.forward``)."""
        return self.mlp(
            points, self.maps, self.c2w, self.intrinsics, self.time_embedding, cached=cached
        )


@dataclass(frozen=True)
class SceneRendering:
    """A rendered view (or patch) and its auxiliaries.

    For a single-view ``Camera``, image-like fields are (B, C, h, w), with (h, w) the image
    or patch size; for N views they are (B, N, C, h, w).

    Attributes:
        observation: RGB in [-1, 1] (what the DFM losses compare).
        depth: expected z-depth sum_i w_i t_i, one channel.
        opacity: sum_i w_i, one channel.
        features: rendered feature channels, or None.
        weights: (B, R, S) compositing weights of every ray (R = N h w), for the distortion loss.
        t: (B, R, S) sample depths of every ray.
    """

    observation: Tensor
    depth: Tensor
    opacity: Tensor
    features: Tensor | None
    weights: Tensor
    t: Tensor


@dataclass
class RendererConfig:
    """Sampling along rays (module docstring)."""

    num_coarse: int = 64
    """Depths per ray placed between near and far (the original: 64)."""
    num_fine: int = 64
    """Depths per ray drawn from the coarse weights (the original: 64; 0 disables)."""
    spacing: str = "linear"
    """Coarse spacing: ``linear`` in depth or ``inverse_depth`` (denser near the camera)."""
    stratified: bool = True
    """Jitter coarse depths within their bins while training (deterministic otherwise)."""
    chunk: int = 4096
    """Rays per chunk when no gradient is needed (sampling); bounds memory."""
    train_chunk: int = 512
    """Rays per chunk with gradients; each chunk's field evaluations are recomputed in the
    backward pass (``checkpoint``), so this bounds a training step's activation memory."""
    far_delta: float = 1e10
    """Interval of the last sample: a large value makes it an opaque backdrop (NeRF)."""
    checkpoint: bool = True
    """Recompute each chunk's field evaluations in the backward pass (training only)."""
    cache_context: bool = True
    """While sampling, compute the context views' activations at the target camera's coarse
    samples once per sample, not once per denoising step (``CoarseCache``; exact)."""
    field_dtype: str = "float32"
    """Precision of the field's matmuls: ``float32``, or ``bfloat16`` (autocast around every
    field evaluation, float32 weights, float32 compositing; module docstring). bfloat16 is
    ~2.8x faster per DDIM step on this project's AVX512-BF16 CPU (1.9x with CFG); see
    docs/benchmarks.md for its measured agreement with float32 before using it for a run's
    results. A sampling run's ``model`` section is frozen: set it for new runs
    (``dfm train ... model.renderer.field_dtype=bfloat16``) or on a loaded model's renderers."""

    def __post_init__(self) -> None:
        if self.num_coarse < 1 or self.num_fine < 0 or min(self.chunk, self.train_chunk) < 1:
            raise ValueError(
                "RendererConfig: need num_coarse >= 1, num_fine >= 0, chunk and train_chunk >= 1, "
                f"got {self.num_coarse}, {self.num_fine}, {self.chunk}, {self.train_chunk}"
            )
        if self.spacing not in ("linear", "inverse_depth"):
            raise ValueError(
                f"RendererConfig.spacing: expected 'linear' or 'inverse_depth', got {self.spacing!r}"
            )
        if self.field_dtype not in FIELD_DTYPES:
            raise ValueError(
                f"RendererConfig.field_dtype: expected one of {sorted(FIELD_DTYPES)}, "
                f"got {self.field_dtype!r}"
            )


class VolumeRenderer(nn.Module):
    """Renders a ``SceneField`` at a ``Camera``: the forward model of inverse graphics.

    Has no parameters; it is a module so ``.train()``/``.eval()`` switch the jitter.
    """

    def __init__(self, config: RendererConfig) -> None:
        super().__init__()
        self.config = config

    def rays(self, camera: Camera) -> tuple[Tensor, Tensor, int, int, int]:
        """The camera's rays: origins and directions (B, N*h*w, 3), h, w and N views."""
        batch = camera.c2w.shape[0]
        views = camera.c2w.shape[1] if camera.multi_view else 1
        c2w = camera.c2w.reshape(batch * views, 4, 4)
        intrinsics = camera.intrinsics.reshape(batch * views, 3, 3)
        if camera.patch_origin is None:
            h, w = camera.height, camera.width
            uv = pixel_grid(h, w, device=c2w.device, dtype=c2w.dtype).expand(batch * views, -1, -1)
        else:
            assert camera.patch_size is not None
            h = w = camera.patch_size
            uv = patch_grid(camera.height, camera.width, h, camera.patch_origin.reshape(-1, 2))
            uv = uv.to(c2w)
        rays = rays_from_pixels(c2w, intrinsics, uv)  # (B*N, h*w, 3)
        origins = rays.origins.reshape(batch, views * h * w, 3)
        directions = rays.directions.reshape(batch, views * h * w, 3)
        return origins, directions, h, w, views

    def coarse_depths(self, near: Tensor, far: Tensor, num_rays: int) -> Tensor:
        """Depths (B, R, num_coarse) of the first pass (jittered only while training)."""
        cfg = self.config
        return sample_along_rays(
            near,
            far,
            cfg.num_coarse,
            num_rays,
            stratified=self.training and cfg.stratified,
            spacing=cfg.spacing,
        )

    def cache_applies(self, cache: CoarseCache | None, camera: Camera) -> bool:
        """Whether ``cache`` holds activations at this render's coarse samples."""
        return (
            cache is not None
            and not self.training
            and camera.patch_origin is None
            and not camera.multi_view
            and cache.c2w.shape == camera.c2w.shape
            and cache.hidden.shape[2] == camera.height * camera.width
            and cache.hidden.shape[3] == self.config.num_coarse
            and cache.spacing == self.config.spacing
            and torch.equal(cache.c2w, camera.c2w)
            and torch.equal(cache.intrinsics, camera.intrinsics)
            and torch.equal(cache.near, camera.near)
            and torch.equal(cache.far, camera.far)
        )

    def forward(self, field: SceneField, camera: Camera) -> SceneRendering:
        """Render ``field`` at ``camera`` (full image or patch, one or N views)."""
        batch = camera.c2w.shape[0]
        origins, directions, h, w, views = self.rays(camera)
        cache = field.cache if self.cache_applies(field.cache, camera) else None
        color, depth, opacity, features, weights, t = self.render_rays(
            field, origins, directions, camera.near, camera.far, cache=cache
        )

        def image(x: Tensor) -> Tensor:  # (B, N*h*w, C) -> (B[, N], C, h, w)
            x = x.reshape(batch, views, h, w, -1).permute(0, 1, 4, 2, 3)
            return x if camera.multi_view else x[:, 0]

        return SceneRendering(
            observation=image(color) * 2 - 1,
            depth=image(depth[..., None]),
            opacity=image(opacity[..., None]),
            features=None if features is None else image(features),
            weights=weights,
            t=t,
        )

    def render_rays(
        self,
        field: SceneField,
        origins: Tensor,
        directions: Tensor,
        near: Tensor,
        far: Tensor,
        *,
        cache: CoarseCache | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """Render rays (B, R, 3) in chunks (``cache``: see ``CoarseCache``; None: no reuse).

        Returns:
            colour (B, R, 3) in [0, 1], depth (B, R), opacity (B, R), features (B, R, F) or
            None, weights (B, R, S), t (B, R, S).
        """
        cfg = self.config
        grad = torch.is_grad_enabled()
        recompute = cfg.checkpoint and self.training and grad
        size = cfg.train_chunk if grad else cfg.chunk
        outs = []
        for start in range(0, origins.shape[1], size):
            part = slice(start, start + size)
            cached = None
            if cache is not None:  # (B, Vc, r, Sc, ...) -> (B, Vc, r*Sc, ...)
                cached = (
                    cache.hidden[:, :, part].flatten(2, 3),
                    cache.valid[:, :, part].flatten(2, 3),
                )
            args = (field, origins[:, part], directions[:, part], near, far, cached)
            if recompute:
                outs.append(checkpoint(self._render_chunk, *args, use_reentrant=False))
            else:
                outs.append(self._render_chunk(*args))
        parts = list(zip(*outs, strict=True))
        cat = [None if part[0] is None else torch.cat(part, dim=1) for part in parts]
        return cat[0], cat[1], cat[2], cat[3], cat[4], cat[5]  # type: ignore[return-value]

    def _render_chunk(
        self,
        field: SceneField,
        origins: Tensor,
        directions: Tensor,
        near: Tensor,
        far: Tensor,
        cached: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        cfg = self.config
        t_coarse = self.coarse_depths(near, far, origins.shape[1]).to(origins)  # (B, r, Sc)
        coarse = self._query(field, origins, directions, t_coarse, cached)
        if cfg.num_fine == 0:
            t, out = t_coarse, coarse
        else:
            with torch.no_grad():
                proposal = composite(coarse.density, coarse.rgb, t_coarse, far_delta=cfg.far_delta)
            t_fine = sample_pdf(
                t_coarse,
                proposal.weights,
                cfg.num_fine,
                near=near,
                far=far,
                deterministic=not self.training,
            ).to(origins)  # (B, r, Sf), detached
            fine = self._query(field, origins, directions, t_fine)
            t, order = merge_samples(t_coarse, t_fine)  # reuse the coarse evaluations

            def merged(a: Tensor, b: Tensor) -> Tensor:  # (B, r, S*, [C]) -> sorted union
                both = torch.cat([a, b], dim=2)
                index = order if both.ndim == 3 else order[..., None].expand_as(both)
                return torch.gather(both, 2, index)

            out = FieldOutput(
                density=merged(coarse.density, fine.density),
                rgb=merged(coarse.rgb, fine.rgb),
                features=None
                if coarse.features is None or fine.features is None
                else merged(coarse.features, fine.features),
            )
        values = out.rgb if out.features is None else torch.cat([out.rgb, out.features], -1)
        background = torch.zeros(values.shape[-1], dtype=values.dtype, device=values.device)
        result = composite(out.density, values, t, far_delta=cfg.far_delta, background=background)
        color = result.features[..., :3]
        features = None if out.features is None else result.features[..., 3:]
        return color, result.depth, result.opacity, features, result.weights, result.t

    def field_precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The context in which field evaluations run on ``device``: autocast to
        ``config.field_dtype``, or nothing at all for float32 (bit-for-bit plain evaluation).

        Also for callers that evaluate the field outside ``forward`` at this renderer's
        samples (e.g. the per-sample ``CoarseCache``), so both see the same precision.
        """
        dtype = FIELD_DTYPES[self.config.field_dtype]
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def _query(
        self,
        field: SceneField,
        origins: Tensor,
        directions: Tensor,
        t: Tensor,
        cached: tuple[Tensor, Tensor] | None = None,
    ) -> FieldOutput:
        """The field at origins + t * directions: t (B, r, S) -> outputs (B, r, S, ...)."""
        batch, rays, samples = t.shape
        points = origins[:, :, None] + t[..., None] * directions[:, :, None]  # (B, r, S, 3)
        with self.field_precision(points.device):
            out = field.query(points.reshape(batch, rays * samples, 3), cached)
        # Compositing stays in the rays' dtype (float32) whatever the field ran in: the
        # transmittance T_i = prod_{j<i} (1 - alpha_j) (Mildenhall et al. 2020, eq. 3) is a
        # cumulative product over up to 128 samples, and bfloat16's 8-bit mantissa (relative
        # step 2^-8) would compound along it, while depth = sum_i w_i t_i needs more than 3
        # significant digits of t. No-ops when the field ran in float32.
        dtype = points.dtype
        return FieldOutput(
            density=out.density.to(dtype).reshape(batch, rays, samples),
            rgb=out.rgb.to(dtype).reshape(batch, rays, samples, 3),
            features=None
            if out.features is None
            else out.features.to(dtype).reshape(batch, rays, samples, -1),
        )
