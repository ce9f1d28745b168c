"""Where to evaluate the field along each ray.

:func:`sample_along_rays` places the coarse samples: ``[near, far]`` is cut into ``S`` bins, evenly in
depth (``"linear"``) or evenly in inverse depth (``"inverse_depth"``, for unbounded scenes), and each
bin contributes its centre or, when stratified, one uniform draw (NeRF, Mildenhall et al. 2020,
eq. 2). :func:`sample_pdf` is NeRF's hierarchical sampling (§5.2): the coarse compositing weights
define a piecewise-constant pdf along the ray and new depths are drawn from it by inverting its
piecewise-linear CDF.

All depths are ray parameters ``t``; with :func:`dfm_render.cameras.rays_from_pixels` rays they are
camera z-depths.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SPACINGS", "sample_along_rays", "sample_pdf"]

SPACINGS = ("linear", "inverse_depth")

# Added to every bin's weight before normalising: empty rays (all weights 0) sample uniformly, and
# no bin's probability is exactly zero (NeRF uses the same 1e-5).
_PDF_EPS = 1e-5


def _per_ray(name: str, value: Tensor, batch: int, num_rays: int) -> Tensor:
    """``(B,)`` or ``(B, R)`` -> ``(B, 1 or R, 1)`` for broadcasting against ``(B, R, S)``."""
    if not isinstance(value, Tensor) or value.ndim not in (1, 2) or value.shape[0] != batch:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a ({batch},) or ({batch}, R) tensor, got {shape}")
    if value.ndim == 2 and value.shape[1] not in (1, num_rays):
        raise ValueError(f"{name} has {value.shape[1]} rays, expected {num_rays}")
    return value.reshape(batch, -1, 1)


def _draw(shape, generator, like: Tensor) -> Tensor:
    """Uniform ``[0, 1)`` draw made on the generator's device, then moved next to ``like``."""
    device = generator.device if generator is not None else like.device
    u = torch.rand(shape, generator=generator, device=device, dtype=like.dtype)
    return u.to(like.device)


def sample_along_rays(
    near: Tensor,
    far: Tensor,
    num_samples: int,
    num_rays: int,
    *,
    stratified: bool = False,
    spacing: str = "linear",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Depths along each ray, one per bin of ``[near, far]``.

    Args:
        near: ``(B,)`` (or per-ray ``(B, R)``) near depths, ``> 0`` for ``"inverse_depth"``.
        far: same shape as ``near``, ``far >= near``.
        num_samples: ``S``, the number of bins and of samples per ray.
        num_rays: ``R``.
        stratified: one uniform draw inside each bin (from ``generator``) instead of its centre.
        spacing: ``"linear"`` (bins evenly spaced in depth) or ``"inverse_depth"`` (evenly spaced
            in ``1 / depth``: dense near the camera, sparse far away).
        generator: randomness for ``stratified``.

    Returns:
        ``(B, R, S)`` ascending depths in ``[near, far]``, dtype and device of ``near``.

    Raises:
        ValueError: on an unknown ``spacing`` (the message lists :data:`SPACINGS`), non-positive
            counts, mismatched shapes, ``far < near`` or ``near <= 0`` with inverse-depth spacing.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    for name, value in (("num_samples", num_samples), ("num_rays", num_rays)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(near, Tensor) or near.ndim == 0:
        raise ValueError(f"near must be a (B,) or (B, R) tensor, got {near!r}")
    batch = near.shape[0]
    near3 = _per_ray("near", near, batch, num_rays)  # (B, 1|R, 1)
    far3 = _per_ray("far", far, batch, num_rays).to(near3)  # (B, 1|R, 1)
    if bool((far3 < near3).any()):
        raise ValueError("far must be >= near on every ray")
    if spacing == "inverse_depth" and bool((near3 <= 0).any()):
        raise ValueError('near must be > 0 with spacing="inverse_depth"')

    # Position inside [0, 1] of each sample: bin k is [k / S, (k + 1) / S].
    k = torch.arange(num_samples, device=near3.device, dtype=near3.dtype)  # (S,)
    if stratified:
        offset = _draw((batch, num_rays, num_samples), generator, near3)  # (B, R, S)
    else:
        offset = torch.full_like(k, 0.5)
    s = (k + offset) / num_samples  # (B, R, S) or (S,)
    s = s.expand(batch, num_rays, num_samples)

    if spacing == "linear":
        return near3 + (far3 - near3) * s  # (B, R, S)
    # Interpolate disparity linearly from 1/near down to 1/far; depth increases with s.
    inv = 1.0 / near3 + (1.0 / far3 - 1.0 / near3) * s  # (B, R, S)
    return (1.0 / inv).clamp(near3, far3)  # clamp only removes rounding outside [near, far]


def sample_pdf(
    t: Tensor,
    weights: Tensor,
    num_samples: int,
    *,
    near: Tensor,
    far: Tensor,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Hierarchical importance sampling from coarse compositing weights (NeRF §5.2).

    Sample ``i`` stands for the interval between the midpoints to its neighbours, the first and last
    intervals extended to ``near`` and ``far``: bin edges
    ``e = (near, (t_0 + t_1) / 2, ..., (t_{S-2} + t_{S-1}) / 2, far)``. The pdf is constant on each
    bin with mass proportional to ``weights_i + 1e-5``; its CDF is piecewise linear and is inverted
    at ``N`` uniform levels (sorted random draws, or the centres ``(k + 0.5) / N`` when
    ``deterministic``), so the result is sorted.

    Args:
        t: ``(B, R, S)`` ascending sample depths inside ``[near, far]``.
        weights: ``(B, R, S)`` non-negative compositing weights of those samples.
        num_samples: ``N``, new samples per ray.
        near: ``(B,)`` or ``(B, R)`` near depths.
        far: ``(B,)`` or ``(B, R)`` far depths.
        deterministic: use evenly spaced CDF levels instead of random ones.
        generator: randomness for the random levels.

    Returns:
        ``(B, R, N)`` sorted depths in ``[near, far]``, detached: no gradient flows through sample
        placement (as in NeRF and mip-NeRF 360; the proposal is trained by its own loss).
    """
    if not isinstance(t, Tensor) or t.ndim != 3:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"t must be a (B, R, S) tensor, got {shape}")
    if not isinstance(weights, Tensor) or weights.shape != t.shape:
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must have the shape of t {tuple(t.shape)}, got {shape}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    batch, num_rays, _ = t.shape
    with torch.no_grad():
        t = t.detach()
        near3 = _per_ray("near", near, batch, num_rays).to(t).expand(batch, num_rays, 1)
        far3 = _per_ray("far", far, batch, num_rays).to(t).expand(batch, num_rays, 1)
        mids = 0.5 * (t[..., 1:] + t[..., :-1])  # (B, R, S-1)
        edges = torch.cat([near3, mids, far3], dim=-1)  # (B, R, S+1)

        w = weights.detach().to(t).clamp_min(0) + _PDF_EPS  # (B, R, S)
        pdf = w / w.sum(dim=-1, keepdim=True)  # (B, R, S): probability of each bin
        cdf = torch.cumsum(pdf, dim=-1).clamp_max(1.0)  # (B, R, S)
        cdf = torch.cat(
            [torch.zeros_like(cdf[..., :1]), cdf[..., :-1], torch.ones_like(cdf[..., :1])], -1
        )

        if deterministic:
            u = (torch.arange(num_samples, device=t.device, dtype=t.dtype) + 0.5) / num_samples
            u = u.expand(batch, num_rays, num_samples).contiguous()  # (B, R, N)
        else:
            u = _draw((batch, num_rays, num_samples), generator, t).sort(dim=-1).values  # (B, R, N)

        # Bin of each level: cdf[idx - 1] <= u < cdf[idx].
        idx = torch.searchsorted(cdf.contiguous(), u, right=True).clamp(1, cdf.shape[-1] - 1)
        below, above = idx - 1, idx  # (B, R, N)
        cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
        e_lo, e_hi = edges.gather(-1, below), edges.gather(-1, above)
        mass = cdf_hi - cdf_lo
        frac = torch.where(mass > 0, (u - cdf_lo) / mass.clamp_min(torch.finfo(t.dtype).tiny), 0.5)
        samples = e_lo + frac.clamp(0, 1) * (e_hi - e_lo)  # (B, R, N)
        # Levels are sorted and the inverse CDF is monotone; sorting again only fixes float ties.
        return samples.sort(dim=-1).values
