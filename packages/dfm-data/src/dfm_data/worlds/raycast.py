"""Exact analytic ray casting shared by the synthetic worlds (numpy, float64).

Rays follow the pixel convention of :mod:`dfm_data.cameras`: a ray passes through the centre
``(j + 0.5 + δ, i + 0.5 + δ)`` of each (sub)pixel. Ray directions are scaled so that their camera-space
z component is 1, hence the ray parameter ``t`` of a hit *is* the hit's z-depth (CO3D depth maps store
z-depth along the optical axis).
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_downsample", "camera_rays", "intersect_box", "intersect_plane", "intersect_sphere"]


def camera_rays(
    c2w: np.ndarray, K: np.ndarray, height: int, width: int, supersample: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """World-space rays through (sub)pixel centres.

    Args:
        c2w: ``(4, 4)`` OpenCV camera-to-world.
        K: ``(3, 3)`` intrinsics in pixels of the ``(height, width)`` image.
        height, width: image size.
        supersample: ``s``; each pixel gets an ``s × s`` grid of sub-samples.

    Returns:
        ``origins (H*s, W*s, 3)`` and ``directions (H*s, W*s, 3)`` with camera-z component 1.
    """
    s = supersample
    u = (np.arange(width * s) + 0.5) / s
    v = (np.arange(height * s) + 0.5) / s
    uu, vv = np.meshgrid(u, v)
    x = (uu - K[0, 2]) / K[0, 0]
    y = (vv - K[1, 2]) / K[1, 1]
    d_cam = np.stack([x, y, np.ones_like(x)], axis=-1)
    d = d_cam @ c2w[:3, :3].T
    o = np.broadcast_to(c2w[:3, 3], d.shape)
    return o, d


def intersect_sphere(o: np.ndarray, d: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Nearest positive ray parameter of a sphere hit (``inf`` on a miss). Shapes ``(..., 3)`` -> ``(...)``."""
    oc = o - centre
    a = np.einsum("...i,...i->...", d, d)
    b = 2.0 * np.einsum("...i,...i->...", oc, d)
    c = np.einsum("...i,...i->...", oc, oc) - radius * radius
    disc = b * b - 4 * a * c
    hit = disc >= 0
    sq = np.sqrt(np.where(hit, disc, 0.0))
    t0 = (-b - sq) / (2 * a)
    t1 = (-b + sq) / (2 * a)
    eps = 1e-9
    t = np.where(t0 > eps, t0, np.where(t1 > eps, t1, np.inf))
    return np.where(hit, t, np.inf)


def intersect_plane(o: np.ndarray, d: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """Positive ray parameter where ``normal · x = offset`` (``inf`` if parallel or behind)."""
    denom = d @ normal
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (offset - o @ normal) / denom
    return np.where((np.abs(denom) > 1e-12) & (t > 1e-9), t, np.inf)


def intersect_box(
    o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, inside: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box hit (slab method).

    Args:
        o, d: ``(..., 3)`` rays.
        lo, hi: ``(3,)`` box corners.
        inside: if True, return the exit hit (rays starting inside a room); else the entry hit.

    Returns:
        ``t (...)`` (``inf`` on a miss) and ``axis (...)`` int in ``{0, 1, 2}``: the axis of the face hit.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        ta = (lo - o) * inv
        tb = (hi - o) * inv
    tmin = np.nan_to_num(np.minimum(ta, tb), nan=-np.inf)
    tmax = np.nan_to_num(np.maximum(ta, tb), nan=np.inf)
    t_enter = tmin.max(-1)
    t_exit = tmax.min(-1)
    valid = t_exit >= np.maximum(t_enter, 1e-9)
    if inside:
        t = np.where(valid, t_exit, np.inf)
        axis = tmax.argmin(-1)
    else:
        valid &= t_enter > 1e-9
        t = np.where(valid, t_enter, np.inf)
        axis = tmin.argmax(-1)
    return t, axis


def box_downsample(x: np.ndarray, s: int) -> np.ndarray:
    """Averages ``s × s`` blocks: ``(H*s, W*s, ...)`` -> ``(H, W, ...)``."""
    if s == 1:
        return x
    h, w = x.shape[0] // s, x.shape[1] // s
    return x.reshape(h, s, w, s, *x.shape[2:]).mean(axis=(1, 3))
