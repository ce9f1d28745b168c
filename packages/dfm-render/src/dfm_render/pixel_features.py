"""Pixel-aligned features (pixelNeRF, Yu et al. 2021, eq. 1-2): read each view's feature map where a
point projects.

Coordinates follow :mod:`dfm_render.cameras`: normalised ``uv`` in ``[0, 1]^2`` with pixel centres at
``((j + 0.5) / W, (i + 0.5) / H)``, which is ``grid_sample(..., align_corners=False)`` at
``grid = 2 * uv - 1``. Unlike the original DFM code (``align_corners=True`` with border padding and no
mask), points behind a camera or outside its image are *masked*: their features are zero and
``valid`` is False, so a view that cannot see a point contributes nothing rather than its border
pixels' features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sample_pixel_features"]


def sample_pixel_features(features: Tensor, uv: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinearly sample per-view feature maps at projected points.

    Args:
        features: ``(B, V, C, H, W)`` feature maps of ``V`` views.
        uv: ``(B, V, P, 2)`` normalised image coordinates of ``P`` points in each view
            (:attr:`dfm_render.cameras.Projection.uv`).
        depth: ``(B, V, P)`` camera-space z of those points (:attr:`Projection.depth`).

    Returns:
        ``values (B, V, P, C)``, zero where invalid, and ``valid (B, V, P)`` bool: ``depth > 0`` and
        ``0 <= u, v <= 1``. Inside the image the outermost half pixel reads the edge pixel's value
        (border padding), so valid points are never blended with zeros. Differentiable in
        ``features`` and, where valid, in ``uv``.
    """
    if not isinstance(features, Tensor) or features.ndim != 5:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a (B, V, C, H, W) tensor, got {shape}")
    batch, views, channels, height, width = features.shape
    if (
        not isinstance(uv, Tensor)
        or uv.ndim != 4
        or uv.shape[:2] != (batch, views)
        or uv.shape[-1] != 2
    ):
        shape = tuple(uv.shape) if isinstance(uv, Tensor) else type(uv).__name__
        raise ValueError(f"uv must be a ({batch}, {views}, P, 2) tensor, got {shape}")
    if not isinstance(depth, Tensor) or depth.shape != uv.shape[:-1]:
        shape = tuple(depth.shape) if isinstance(depth, Tensor) else type(depth).__name__
        raise ValueError(f"depth must have shape {tuple(uv.shape[:-1])}, got {shape}")
    points = uv.shape[2]
    inside = ((uv >= 0) & (uv <= 1)).all(dim=-1)  # (B, V, P)
    valid = inside & (depth > 0)  # (B, V, P)
    # Invalid points (possibly huge uv from near-zero depth) are sent to the image centre before
    # sampling so they cannot produce non-finite values or gradients; their result is zeroed below.
    grid = torch.where(valid[..., None], 2 * uv - 1, torch.zeros_like(uv))  # (B, V, P, 2)
    sampled = F.grid_sample(
        features.reshape(batch * views, channels, height, width),
        grid.reshape(batch * views, points, 1, 2).to(features.dtype),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )  # (B*V, C, P, 1)
    values = sampled.view(batch, views, channels, points)  # (B, V, C, P)
    # In place: grid_sample's backward does not need its output, and at paper sizes this tensor
    # is the largest in the field (C = 512 channels per point and view), so no second copy.
    values.masked_fill_(~valid[:, :, None, :], 0.0)
    return values.transpose(-1, -2), valid  # (B, V, P, C), (B, V, P)
