"""Pixel-aligned features (pixelNeRF, Yu et al. 2021, eq. 1-2): read each view's feature map where a
point projects.

Coordinates follow :mod:`dfm_render.cameras`: normalised ``uv`` in ``[0, 1]^2`` with pixel centres at
``((j + 0.5) / W, (i + 0.5) / H)``. The read is bilinear with border clamping, value for value what
``grid_sample(..., mode="bilinear", padding_mode="border", align_corners=False)`` returns at
``grid = 2 * uv - 1`` (the tests check that equality). Unlike the original DFM code
(``align_corners=True`` with border padding and no mask), points behind a camera or outside its image
are *masked*: their features are zero and ``valid`` is False, so a view that cannot see a point
contributes nothing rather than its border pixels' features.

**Why not ``grid_sample`` itself.** ``grid_sample`` reads an ``(N, C, H, W)`` map one channel plane at
a time, so each point touches ``4 C`` scattered floats, and its output is ``(N, C, P)``, the
transpose of what the field consumes. Here the map is laid out as a table of ``H W`` rows of ``C``
contiguous channels and the four bilinear taps are one ``embedding_bag`` (weighted sum of 4 rows per
point): contiguous reads, output already ``(P, C)``, and masked points get zero weights instead of a
second pass. On CPU (1 thread, 131k points x 2 views x 512 channels, median of 3) that measured
7.3 s -> 1.3 s forward and 36.6 s -> 4.0 s forward + backward against ``grid_sample`` + masking
(64 channels: 0.38 -> 0.22 s and 1.96 -> 1.38 s).
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
    # Invalid points (possibly huge uv from near-zero depth) are read at the image centre with zero
    # weight, so they can produce neither non-finite values nor gradients.
    uv = torch.where(valid[..., None], uv, torch.full_like(uv, 0.5))  # (B, V, P, 2)
    # Continuous pixel coordinates with the pixel centres on integers, clamped to the outermost
    # centres: border padding, as grid_sample(padding_mode="border", align_corners=False).
    x = (uv[..., 0] * width - 0.5).clamp(0, width - 1)  # (B, V, P)
    y = (uv[..., 1] * height - 0.5).clamp(0, height - 1)  # (B, V, P)
    # Top-left tap; at the last column/row use the previous one with weight 1 on the far tap.
    col0 = x.detach().floor().clamp(max=max(width - 2, 0))  # (B, V, P)
    row0 = y.detach().floor().clamp(max=max(height - 2, 0))  # (B, V, P)
    a, b = x - col0, y - row0  # (B, V, P): fractional offsets, differentiable in uv
    col0, row0 = col0.long(), row0.long()
    col1 = (col0 + 1).clamp(max=width - 1)
    row1 = (row0 + 1).clamp(max=height - 1)
    # Row of each tap in the (B*V*H*W, C) table.
    view_offset = torch.arange(batch * views, device=uv.device).reshape(batch, views, 1) * (
        height * width
    )  # (B, V, 1)
    taps = (
        torch.stack(
            [row0 * width + col0, row0 * width + col1, row1 * width + col0, row1 * width + col1], -1
        )
        + view_offset[..., None]
    )  # (B, V, P, 4)
    keep = valid.to(a.dtype)
    tap_weights = (
        torch.stack([(1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b], dim=-1) * keep[..., None]
    )  # (B, V, P, 4): bilinear weights, zero for invalid points
    table = features.permute(0, 1, 3, 4, 2).reshape(batch * views * height * width, channels)
    values = F.embedding_bag(
        taps.reshape(-1, 4),
        table,
        per_sample_weights=tap_weights.reshape(-1, 4).to(table.dtype),
        mode="sum",
    )  # (B*V*P, C)
    return values.reshape(batch, views, points, channels), valid
