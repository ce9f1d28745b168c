"""Pixel grids, patches, camera rays and point projection.

**Pixel-centre convention (stated once, used by rays, projection and ``grid_sample`` alike; identical
to dfm-data's ``dfm_data.cameras``).** Continuous pixel coordinates put the top-left *corner* of the
image at ``(0, 0)`` and its bottom-right corner at ``(W, H)``; pixel ``(row i, col j)`` covers
``[j, j + 1] x [i, i + 1]`` and has its centre at ``(j + 0.5, i + 0.5)``. Normalised coordinates are
``uv = (x / W, y / H)``, so the image spans ``[0, 1]^2``. This is exactly the convention of
``torch.nn.functional.grid_sample(..., align_corners=False)`` with ``grid = 2 * uv - 1``.

**Cameras.** OpenCV axes (x right, y down, z forward); poses are 4x4 camera-to-world ``c2w``;
intrinsics are normalised by the image size, ``[[fx/W, s/W, cx/W], [0, fy/H, cy/H], [0, 0, 1]]``, so
one ``K`` serves every resolution and maps camera-frame points straight to normalised ``uv``:
``(u, v, 1)^T ~ K x_cam`` (pinhole model).

**Rays.** A ray through ``uv`` is ``origin + t * direction`` with the direction scaled so that its
camera-frame z component is 1 (``direction = R K^{-1} (u, v, 1)^T``): the ray parameter ``t`` *is* the
z-depth of the point in that camera, which is what near/far planes and rendered depth maps measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Projection",
    "Rays",
    "crop_patches",
    "patch_grid",
    "pixel_grid",
    "project_points",
    "random_patch_origins",
    "rays_from_pixels",
]


def _check_size(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def pixel_grid(
    height: int, width: int, *, device: torch.device | str | None = None, dtype=torch.float32
) -> Tensor:
    """Normalised ``(u, v)`` of every pixel centre, row-major.

    Args:
        height: image height ``H`` in pixels.
        width: image width ``W`` in pixels.
        device: device of the result.
        dtype: floating dtype of the result.

    Returns:
        ``(H * W, 2)``; row ``i * W + j`` is ``((j + 0.5) / W, (i + 0.5) / H)``.
    """
    _check_size("height", height)
    _check_size("width", width)
    u = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width  # (W,)
    v = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height  # (H,)
    vv, uu = torch.meshgrid(v, u, indexing="ij")  # (H, W) each
    return torch.stack([uu, vv], dim=-1).reshape(height * width, 2)


def _check_origin(origin: Tensor, height: int, width: int, patch_size: int) -> None:
    if not isinstance(origin, Tensor) or origin.ndim != 2 or origin.shape[-1] != 2:
        shape = tuple(origin.shape) if isinstance(origin, Tensor) else type(origin).__name__
        raise ValueError(f"origin must be a (B, 2) tensor of (row, col), got {shape}")
    if origin.dtype.is_floating_point or origin.dtype == torch.bool:
        raise ValueError(f"origin must be an integer tensor, got {origin.dtype}")
    if origin.numel() and (
        bool((origin < 0).any())
        or bool((origin[:, 0] > height - patch_size).any())
        or bool((origin[:, 1] > width - patch_size).any())
    ):
        raise ValueError(
            f"origin must keep a {patch_size}x{patch_size} patch inside the {height}x{width} image "
            f"(rows in [0, {height - patch_size}], cols in [0, {width - patch_size}])"
        )


def patch_grid(
    height: int, width: int, patch_size: int, origin: Tensor, *, dtype=torch.float32
) -> Tensor:
    """Normalised ``(u, v)`` of the pixel centres of square patches.

    Args:
        height: image height ``H``.
        width: image width ``W``.
        patch_size: patch side ``P`` in pixels.
        origin: ``(B, 2)`` int64 ``(row, col)`` of each patch's top-left pixel.
        dtype: floating dtype of the result.

    Returns:
        ``(B, P * P, 2)`` normalised uv, row-major inside the patch (index ``a * P + b`` is pixel
        ``(row + a, col + b)``); the same pixels, in the same order, as :func:`crop_patches`.
    """
    _check_size("height", height)
    _check_size("width", width)
    _check_size("patch_size", patch_size)
    _check_origin(origin, height, width, patch_size)
    offsets = torch.arange(patch_size, device=origin.device)  # (P,)
    rows = (origin[:, 0:1] + offsets).to(dtype)  # (B, P)
    cols = (origin[:, 1:2] + offsets).to(dtype)  # (B, P)
    v = (rows + 0.5) / height  # (B, P)
    u = (cols + 0.5) / width  # (B, P)
    uu = u[:, None, :].expand(-1, patch_size, -1)  # (B, P, P): varies along the column index
    vv = v[:, :, None].expand(-1, -1, patch_size)  # (B, P, P): varies along the row index
    return torch.stack([uu, vv], dim=-1).reshape(origin.shape[0], patch_size * patch_size, 2)


def random_patch_origins(
    batch: int,
    height: int,
    width: int,
    patch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Top-left pixels of random square patches, uniform over every fully-inside position.

    Args:
        batch: number of patches ``B``.
        height: image height ``H``.
        width: image width ``W``.
        patch_size: patch side ``P``; must not exceed ``H`` or ``W``.
        generator: source of randomness (its device is where the draw happens).
        device: device of the result (defaults to the generator's device, else CPU).

    Returns:
        ``(B, 2)`` int64 ``(row, col)`` with ``row`` in ``[0, H - P]`` and ``col`` in ``[0, W - P]``.

    Raises:
        ValueError: if the patch is larger than the image or a size is not a positive int.
    """
    if not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch must be a non-negative int, got {batch!r}")
    _check_size("height", height)
    _check_size("width", width)
    _check_size("patch_size", patch_size)
    if patch_size > height or patch_size > width:
        raise ValueError(
            f"patch_size {patch_size} does not fit in a {height}x{width} image "
            f"(need patch_size <= min(height, width) = {min(height, width)})"
        )
    draw_device = generator.device if generator is not None else device
    # One uniform draw per coordinate, scaled to the number of valid positions.
    r = torch.rand(batch, 2, generator=generator, device=draw_device, dtype=torch.float64)
    counts = torch.tensor(
        [height - patch_size + 1, width - patch_size + 1], device=draw_device, dtype=torch.float64
    )
    origin = (r * counts).floor().long()
    origin = torch.minimum(origin, counts.long() - 1)  # guards r * n == n after rounding
    return origin.to(device if device is not None else draw_device)


def crop_patches(images: Tensor, origin: Tensor, patch_size: int) -> Tensor:
    """Crop one square patch per image.

    Args:
        images: ``(B, C, H, W)``.
        origin: ``(B, 2)`` int64 ``(row, col)`` of each patch's top-left pixel.
        patch_size: patch side ``P``.

    Returns:
        ``(B, C, P, P)``: the pixels :func:`patch_grid` addresses, in the same (row-major) order.
        Differentiable with respect to ``images``.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
    batch, _, height, width = images.shape
    _check_size("patch_size", patch_size)
    _check_origin(origin, height, width, patch_size)
    if origin.shape[0] != batch:
        raise ValueError(f"origin has {origin.shape[0]} rows but images has batch {batch}")
    offsets = torch.arange(patch_size, device=images.device)  # (P,)
    origin = origin.to(images.device)
    rows = origin[:, 0:1] + offsets  # (B, P)
    cols = origin[:, 1:2] + offsets  # (B, P)
    b = torch.arange(batch, device=images.device)[:, None, None]  # (B, 1, 1)
    # Advanced indices separated by a slice move to the front: (B, P, P, C).
    patches = images[b, :, rows[:, :, None], cols[:, None, :]]
    return patches.permute(0, 3, 1, 2)  # (B, C, P, P)


@dataclass(frozen=True)
class Rays:
    """World-space rays ``origin + t * direction``.

    Attributes:
        origins: ``(..., 3)`` world-space origins (the camera centre).
        directions: ``(..., 3)`` world-space directions, scaled so the camera-space z component is 1:
            the ray parameter ``t`` is the z-depth in the camera the ray was cast from.
    """

    origins: Tensor
    directions: Tensor

    def at(self, t: Tensor) -> Tensor:
        """Points at depths ``t (..., S)`` -> ``(..., S, 3)``."""
        return self.origins[..., None, :] + t[..., None] * self.directions[..., None, :]


def _check_matrices(name: str, value: Tensor, size: int) -> None:
    if not isinstance(value, Tensor) or value.ndim < 2 or value.shape[-2:] != (size, size):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a (..., {size}, {size}) tensor, got {shape}")


def rays_from_pixels(c2w: Tensor, intrinsics: Tensor, uv: Tensor) -> Rays:
    """Rays through normalised pixel coordinates.

    Leading batch dimensions broadcast, so ``c2w (B, N, 4, 4)`` with ``uv (B, N, R, 2)`` casts rays
    for ``N`` views at once.

    Args:
        c2w: ``(B, 4, 4)`` OpenCV camera-to-world poses.
        intrinsics: ``(B, 3, 3)`` normalised intrinsics (see the module docstring).
        uv: ``(B, R, 2)`` normalised pixel coordinates (:func:`pixel_grid`, :func:`patch_grid` or any
            subset; pixel centres sit at ``(j + 0.5) / W, (i + 0.5) / H``).

    Returns:
        :class:`Rays` with ``(B, R, 3)`` origins and directions (camera-z component of the direction
        is 1, so ``t`` is z-depth).
    """
    _check_matrices("c2w", c2w, 4)
    _check_matrices("intrinsics", intrinsics, 3)
    if not isinstance(uv, Tensor) or uv.ndim < 2 or uv.shape[-1] != 2:
        shape = tuple(uv.shape) if isinstance(uv, Tensor) else type(uv).__name__
        raise ValueError(f"uv must be a (B, R, 2) tensor, got {shape}")
    k = intrinsics[..., None, :, :]  # (B, 1, 3, 3): broadcast over rays
    fx, fy, skew = k[..., 0, 0], k[..., 1, 1], k[..., 0, 1]  # (B, 1)
    cx, cy = k[..., 0, 2], k[..., 1, 2]  # (B, 1)
    # K^{-1} (u, v, 1)^T for an upper-triangular K with K[2] = (0, 0, 1), written out to avoid an inverse.
    y = (uv[..., 1] - cy) / fy  # (B, R)
    x = (uv[..., 0] - cx - skew * y) / fx  # (B, R)
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (B, R, 3)
    rotation = c2w[..., None, :3, :3]  # (B, 1, 3, 3)
    directions = (rotation @ d_cam[..., None])[..., 0]  # (B, R, 3)
    origins = c2w[..., None, :3, 3].expand_as(directions)  # (B, R, 3)
    return Rays(origins=origins, directions=directions)


@dataclass(frozen=True)
class Projection:
    """World points seen from several cameras.

    Attributes:
        uv: ``(B, V, P, 2)`` normalised image coordinates of each point in each view (meaningless
            where ``depth <= 0``).
        depth: ``(B, V, P)`` camera-space z; ``<= 0`` means behind (or on the plane of) the camera.
        points: ``(B, V, P, 3)`` points in each view's camera frame.
    """

    uv: Tensor
    depth: Tensor
    points: Tensor


def project_points(points: Tensor, c2w: Tensor, intrinsics: Tensor) -> Projection:
    """Project world points into every view (pinhole, normalised intrinsics).

    Args:
        points: ``(B, P, 3)`` world-space points.
        c2w: ``(B, V, 4, 4)`` OpenCV camera-to-world poses (rigid).
        intrinsics: ``(B, V, 3, 3)`` normalised intrinsics.

    Returns:
        :class:`Projection` with ``(B, V, P, ·)`` fields. ``uv = (K x_cam)_{xy} / z``; ``z`` is
        clamped away from 0 (keeping its sign) only in that division, so points on the camera plane
        give large but finite ``uv`` and finite gradients.
    """
    if not isinstance(points, Tensor) or points.ndim != 3 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"points must be a (B, P, 3) tensor, got {shape}")
    _check_matrices("c2w", c2w, 4)
    _check_matrices("intrinsics", intrinsics, 3)
    if c2w.ndim != 4 or intrinsics.ndim != 4:
        raise ValueError(
            f"c2w and intrinsics must be (B, V, 4, 4) and (B, V, 3, 3), got "
            f"{tuple(c2w.shape)} and {tuple(intrinsics.shape)}"
        )
    rotation = c2w[..., :3, :3]  # (B, V, 3, 3)
    translation = c2w[..., :3, 3]  # (B, V, 3)
    # World-to-camera is the rigid inverse (R^T, -R^T t): x_cam = R^T (X - t). Exact and cheaper
    # than torch.inverse, and it stays exact in float32 for far-away cameras.
    rel = points[:, None, :, :] - translation[:, :, None, :]  # (B, V, P, 3)
    cam = rel @ rotation  # (B, V, P, 3): row-vector form of R^T (X - t)
    depth = cam[..., 2]  # (B, V, P)
    eps = torch.finfo(cam.dtype).tiny ** 0.5
    z = torch.where(depth >= 0, depth.clamp_min(eps), depth.clamp_max(-eps))  # (B, V, P)
    pix = cam @ intrinsics.transpose(-1, -2)  # (B, V, P, 3): rows are (K x_cam)^T
    uv = pix[..., :2] / z[..., None]  # (B, V, P, 2)
    return Projection(uv=uv, depth=depth, points=cam)
