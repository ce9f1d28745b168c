"""Emission-absorption volume rendering, sample merging, chunked rendering and the distortion loss.

:func:`composite` is the quadrature of the volume rendering integral used by NeRF (Mildenhall et al.
2020, eq. 3; Max 1995): with ``delta_i = t_{i+1} - t_i``,

    alpha_i = 1 - exp(-sigma_i delta_i),   T_i = prod_{j<i} (1 - alpha_j) = exp(-sum_{j<i} sigma_j delta_j),
    w_i = T_i alpha_i,   C = sum_i w_i c_i + (1 - sum_i w_i) c_background.

Densities are per unit of the ray parameter ``t``; with :func:`dfm_render.cameras.rays_from_pixels`
rays, ``t`` is z-depth, so a density is "per unit of depth" (the field learns that scale).
Transmittance is computed as ``exp(-exclusive cumsum)`` (no products of many factors near 1, no
division) and ``alpha`` with ``expm1``, which keeps tiny densities accurate.

:func:`distortion_loss` is mip-NeRF 360's regulariser (Barron et al. 2022, eq. 15) in its O(S)
prefix-sum form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dfm_core.tree import tree_cat, tree_map

__all__ = ["RayRendering", "composite", "distortion_loss", "merge_samples", "render_in_chunks"]


@dataclass(frozen=True)
class RayRendering:
    """What :func:`composite` returns for each ray.

    Attributes:
        features: ``(B, R, C)`` composited features (RGB and any extra channels), background added.
        depth: ``(B, R)`` expected depth ``sum_i w_i t_i``, *not* divided by the opacity (so empty
            rays have depth 0; divide by ``opacity`` for the depth of the visible surface).
        opacity: ``(B, R)`` accumulated opacity ``sum_i w_i`` in ``[0, 1]``.
        weights: ``(B, R, S)`` compositing weights ``w_i``.
        t: ``(B, R, S)`` sample depths.
    """

    features: Tensor
    depth: Tensor
    opacity: Tensor
    weights: Tensor
    t: Tensor


def _shape(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def composite(
    density: Tensor,
    features: Tensor,
    t: Tensor,
    *,
    far_delta: float = 1e10,
    background: Tensor | None = None,
) -> RayRendering:
    """Emission-absorption compositing of samples along rays (NeRF eq. 3).

    Args:
        density: ``(B, R, S)`` non-negative densities ``sigma_i`` (the caller applies relu/softplus).
        features: ``(B, R, S, C)`` per-sample features ``c_i`` (colour, feature channels).
        t: ``(B, R, S)`` ascending sample depths.
        far_delta: length of the last interval; the default makes the last sample absorb whatever
            light is left wherever its density is positive (NeRF's 1e10).
        background: ``(C,)`` (or anything broadcastable to ``(B, R, C)``) colour seen through the
            transmittance left after the last sample; ``None`` means 0.

    Returns:
        :class:`RayRendering`; every field is differentiable in ``density``, ``features`` and ``t``.
    """
    if not isinstance(density, Tensor) or density.ndim < 1:
        raise ValueError(f"density must be a (B, R, S) tensor, got {_shape(density)}")
    if not isinstance(t, Tensor) or t.shape != density.shape:
        raise ValueError(
            f"t must have the shape of density {tuple(density.shape)}, got {_shape(t)}"
        )
    if not isinstance(features, Tensor) or features.shape[:-1] != density.shape:
        raise ValueError(
            f"features must be (*density.shape, C) = {(*density.shape, 'C')}, got {_shape(features)}"
        )
    delta = torch.cat([t[..., 1:] - t[..., :-1], torch.full_like(t[..., :1], far_delta)], dim=-1)
    optical = density * delta  # (B, R, S): sigma_i delta_i
    alpha = -torch.expm1(-optical)  # (B, R, S): 1 - exp(-sigma_i delta_i)
    # Exclusive prefix sum: T_i depends only on the samples before i.
    before = torch.cumsum(optical, dim=-1)[..., :-1]  # (B, R, S-1)
    transmittance = torch.exp(-torch.cat([torch.zeros_like(optical[..., :1]), before], dim=-1))
    weights = transmittance * alpha  # (B, R, S)
    opacity = weights.sum(dim=-1)  # (B, R)
    rendered = (weights[..., None] * features).sum(dim=-2)  # (B, R, C)
    if background is not None:
        rendered = rendered + (1.0 - opacity)[..., None] * background.to(rendered)
    depth = (weights * t).sum(dim=-1)  # (B, R)
    return RayRendering(features=rendered, depth=depth, opacity=opacity, weights=weights, t=t)


def merge_samples(t_a: Tensor, t_b: Tensor) -> tuple[Tensor, Tensor]:
    """Union of two sample sets along the last dimension, sorted.

    Args:
        t_a: ``(B, R, Sa)`` depths (e.g. coarse samples).
        t_b: ``(B, R, Sb)`` depths (e.g. importance samples).

    Returns:
        ``t (B, R, Sa + Sb)`` ascending and ``order (B, R, Sa + Sb)`` int64 with
        ``t == cat([t_a, t_b], -1).gather(-1, order)``, so field outputs already computed for either
        set can be reordered the same way (``x.gather(-2, order[..., None].expand_as(x))``).
        Ties keep ``t_a`` first (stable sort).
    """
    if (
        not isinstance(t_a, Tensor)
        or not isinstance(t_b, Tensor)
        or t_a.shape[:-1] != t_b.shape[:-1]
    ):
        raise ValueError(
            f"t_a and t_b must share all but the last dimension, got {_shape(t_a)} and {_shape(t_b)}"
        )
    t, order = torch.sort(torch.cat([t_a, t_b.to(t_a)], dim=-1), dim=-1, stable=True)
    return t, order


def _cat_dim1(results: list[Any]) -> Any:
    """``tree_cat`` along dim 1 (rays) instead of dim 0 (batch)."""

    def to_front(x: Tensor) -> Tensor:
        if x.ndim < 2:
            raise ValueError(
                f"render_in_chunks: every tensor the render returns needs a ray dimension 1, "
                f"got shape {tuple(x.shape)}"
            )
        return x.movedim(1, 0)

    return tree_map(lambda x: x.movedim(0, 1), tree_cat([tree_map(to_front, r) for r in results]))


def render_in_chunks(render: Callable[[Tensor], Any], uv: Tensor, chunk: int) -> Any:
    """Render many rays a chunk at a time and stitch the results.

    Peak memory is that of one chunk (plus the stitched outputs) when called under
    ``torch.no_grad()``; with gradients enabled every chunk's graph is kept, as it must be.

    Args:
        render: ``render(uv_chunk (B, r, 2)) -> result`` where ``result`` is a tensor or any tree of
            tensors (tuples, dicts, dataclasses such as :class:`RayRendering`) whose tensor leaves
            have the ray dimension at dim 1.
        uv: ``(B, R, 2)`` normalised pixel coordinates.
        chunk: rays per call, ``>= 1``.

    Returns:
        The results of every chunk, tensor leaves concatenated along dim 1 (non-tensor leaves must
        agree across chunks).
    """
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if not isinstance(uv, Tensor) or uv.ndim != 3:
        raise ValueError(f"uv must be a (B, R, 2) tensor, got {_shape(uv)}")
    results = [render(uv[:, i : i + chunk]) for i in range(0, uv.shape[1], chunk)]
    if len(results) == 1:
        return results[0]
    return _cat_dim1(results)


def distortion_loss(weights: Tensor, t: Tensor, near: Tensor, far: Tensor) -> Tensor:
    """mip-NeRF 360 distortion loss (Barron et al. 2022, eq. 15) of each ray.

    Depths are normalised to ``s = (t - near) / (far - near)``. Sample ``i`` stands for the interval
    between the midpoints to its neighbours, the first and last extended to ``s = 0`` and ``s = 1``
    (the same intervals :func:`dfm_render.ray_sampling.sample_pdf` uses; for bin-centre samples
    they are the bins themselves). With interval edges ``e``, midpoints ``m_i`` and widths
    ``d_i = e_{i+1} - e_i``,

        L = sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 d_i.

    Because ``m`` is sorted, the double sum is ``2 sum_i w_i (m_i W_{<i} - (wm)_{<i})`` with
    exclusive prefix sums ``W_{<i} = sum_{j<i} w_j`` and ``(wm)_{<i} = sum_{j<i} w_j m_j``: O(S).

    Args:
        weights: ``(B, R, S)`` compositing weights.
        t: ``(B, R, S)`` ascending sample depths in ``[near, far]``.
        near: ``(B,)`` or ``(B, R)`` near depths.
        far: ``(B,)`` or ``(B, R)`` far depths, ``> near``.

    Returns:
        ``(B, R)`` loss per ray (average it yourself); differentiable in ``weights`` and ``t``.
    """
    if not isinstance(t, Tensor) or t.ndim != 3:
        raise ValueError(f"t must be a (B, R, S) tensor, got {_shape(t)}")
    if not isinstance(weights, Tensor) or weights.shape != t.shape:
        raise ValueError(
            f"weights must have the shape of t {tuple(t.shape)}, got {_shape(weights)}"
        )
    batch = t.shape[0]
    planes = []
    for name, value in (("near", near), ("far", far)):
        if not isinstance(value, Tensor) or value.ndim not in (1, 2) or value.shape[0] != batch:
            raise ValueError(
                f"{name} must be a ({batch},) or ({batch}, R) tensor, got {_shape(value)}"
            )
        planes.append(value.to(t).reshape(batch, -1, 1))
    near3, far3 = planes
    s = (t - near3) / (far3 - near3)  # (B, R, S)
    mids = 0.5 * (s[..., 1:] + s[..., :-1])  # (B, R, S-1)
    edges = torch.cat([torch.zeros_like(s[..., :1]), mids, torch.ones_like(s[..., :1])], dim=-1)
    centre = 0.5 * (edges[..., 1:] + edges[..., :-1])  # (B, R, S): m_i
    width = edges[..., 1:] - edges[..., :-1]  # (B, R, S): d_i
    w = weights
    w_before = torch.cumsum(w, dim=-1) - w  # (B, R, S): W_{<i}
    wm_before = torch.cumsum(w * centre, dim=-1) - w * centre  # (B, R, S): (wm)_{<i}
    pairwise = 2.0 * (w * (centre * w_before - wm_before)).sum(dim=-1)  # (B, R)
    own = (w.square() * width).sum(dim=-1) / 3.0  # (B, R)
    return pairwise + own
