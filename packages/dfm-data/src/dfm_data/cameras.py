"""Cameras: PyTorch3D NDC <-> OpenCV, normalised intrinsics, crops, sanity checks.

**Pixel-centre convention (stated once, used everywhere in dfm-data).** Continuous pixel coordinates
put the top-left *corner* of the top-left pixel at ``(0, 0)`` and the bottom-right corner of the image
at ``(W, H)``; pixel ``(row i, col j)`` has its centre at ``(j + 0.5, i + 0.5)``. Normalised
coordinates divide by ``(W, H)``, so the image spans ``[0, 1]²`` and the normalised intrinsics
``[[fx/W, 0, cx/W], [0, fy/H, cy/H], [0, 0, 1]]`` serve every resolution. This is PyTorch3D's screen
space and the convention of ``grid_sample(..., align_corners=False)`` and of antialiased
``interpolate(..., align_corners=False)``: resizing an image never changes its normalised K.

**Extrinsics.** OpenCV camera axes (x right, y down, z forward). A pose is a 4×4 camera-to-world
``c2w``; the world-to-camera is ``[R | t]`` with ``x_cam = R @ X + t``.

**PyTorch3D / CO3D.** Row-vector extrinsics ``X_cam = X_world @ R + T`` with +X left, +Y up;
``R_cv = diag(-1, -1, 1) @ R.T`` and ``t_cv = diag(-1, -1, 1) @ T``. Intrinsics come in NDC, either
``"ndc_isotropic"`` (the short side spans ``[-1, 1]``; PyTorch3D >= 0.5, CO3D v2) or the legacy
``"ndc_norm_image_bounds"`` (each axis spans ``[-1, 1]``). To pixels, with ``half = (W/2, H/2)`` and
``s = min(W, H)/2`` (isotropic) or ``s = half`` per axis (legacy): ``f_px = f_ndc * s`` and
``c_px = half - p_ndc * s`` — the same arithmetic as PyTorch3D's ``opencv_from_cameras_projection``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dfm_data.errors import BadCameraError

__all__ = [
    "INTRINSICS_FORMATS",
    "c2w_from_w2c",
    "centre_square_crop",
    "check_c2w",
    "check_intrinsics",
    "crop_intrinsics",
    "look_at",
    "normalise_intrinsics",
    "opencv_to_pytorch3d",
    "pytorch3d_to_opencv",
    "relative_to_first",
    "unnormalise_intrinsics",
]

INTRINSICS_FORMATS = ("ndc_isotropic", "ndc_norm_image_bounds")
_FLIP_XY = np.diag([-1.0, -1.0, 1.0])


def _ndc_scale(height: int, width: int, intrinsics_format: str) -> np.ndarray:
    """Pixels per NDC unit along (x, y)."""
    if intrinsics_format == "ndc_isotropic":
        return np.full(2, min(width, height) / 2.0)
    if intrinsics_format == "ndc_norm_image_bounds":
        return np.array([width / 2.0, height / 2.0])
    raise ValueError(
        f"unknown intrinsics_format {intrinsics_format!r}; expected {INTRINSICS_FORMATS}"
    )


def pytorch3d_to_opencv(
    R: np.ndarray,
    T: np.ndarray,
    focal_length: Sequence[float],
    principal_point: Sequence[float],
    image_size_hw: tuple[int, int],
    intrinsics_format: str = "ndc_isotropic",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Converts one PyTorch3D NDC camera (CO3D ``viewpoint``) to OpenCV.

    Args:
        R: ``(3, 3)`` PyTorch3D rotation (row-vector convention).
        T: ``(3,)`` PyTorch3D translation.
        focal_length: ``(fx, fy)`` in NDC units of ``intrinsics_format``.
        principal_point: ``(px, py)`` in NDC units.
        image_size_hw: ``(H, W)`` of the image the camera belongs to.
        intrinsics_format: ``"ndc_isotropic"`` or ``"ndc_norm_image_bounds"``.

    Returns:
        ``(R_cv (3, 3), t_cv (3,), K (3, 3))`` float64, with ``x_pix ~ K @ (R_cv @ X + t_cv)`` in the
        pixel convention of this module.
    """
    h, w = image_size_hw
    scale = _ndc_scale(h, w, intrinsics_format)
    half = np.array([w / 2.0, h / 2.0])
    f = np.asarray(focal_length, dtype=np.float64) * scale
    c = half - np.asarray(principal_point, dtype=np.float64) * scale
    K = np.array([[f[0], 0.0, c[0]], [0.0, f[1], c[1]], [0.0, 0.0, 1.0]])
    R_cv = _FLIP_XY @ np.asarray(R, dtype=np.float64).T
    t_cv = _FLIP_XY @ np.asarray(T, dtype=np.float64)
    return R_cv, t_cv, K


def opencv_to_pytorch3d(
    c2w: np.ndarray,
    K: np.ndarray,
    image_size_hw: tuple[int, int],
    intrinsics_format: str = "ndc_isotropic",
) -> dict[str, object]:
    """Inverse of :func:`pytorch3d_to_opencv`: an OpenCV camera as a CO3D ``viewpoint`` record.

    Args:
        c2w: ``(4, 4)`` OpenCV camera-to-world.
        K: ``(3, 3)`` intrinsics in pixels.
        image_size_hw: ``(H, W)``.
        intrinsics_format: NDC flavour to write.

    Returns:
        dict with ``R`` (3×3 list), ``T``, ``focal_length``, ``principal_point``, ``intrinsics_format``.
    """
    h, w = image_size_hw
    scale = _ndc_scale(h, w, intrinsics_format)
    half = np.array([w / 2.0, h / 2.0])
    w2c = np.linalg.inv(np.asarray(c2w, dtype=np.float64))
    R = (_FLIP_XY @ w2c[:3, :3]).T
    T = _FLIP_XY @ w2c[:3, 3]
    f = np.array([K[0, 0], K[1, 1]]) / scale
    p = (half - np.array([K[0, 2], K[1, 2]])) / scale
    return {
        "R": R.tolist(),
        "T": T.tolist(),
        "focal_length": f.tolist(),
        "principal_point": p.tolist(),
        "intrinsics_format": intrinsics_format,
    }


def c2w_from_w2c(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(4, 4)`` camera-to-world from world-to-camera ``R (3, 3)``, ``t (3,)`` (exact inverse)."""
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return c2w


def normalise_intrinsics(K: np.ndarray, image_size_hw: tuple[int, int]) -> np.ndarray:
    """Pixel ``K (3, 3)`` -> normalised: row 0 divided by W, row 1 by H."""
    h, w = image_size_hw
    out = np.array(K, dtype=np.float64)
    out[0] /= w
    out[1] /= h
    return out


def unnormalise_intrinsics(K: np.ndarray, image_size_hw: tuple[int, int]) -> np.ndarray:
    """Normalised ``K (3, 3)`` -> pixels for an ``(H, W)`` image."""
    h, w = image_size_hw
    out = np.array(K, dtype=np.float64)
    out[0] *= w
    out[1] *= h
    return out


def centre_square_crop(height: int, width: int) -> tuple[int, int, int]:
    """Largest centred square: ``(top, left, side)`` with ``side = 2 * min(H // 2, W // 2)``."""
    side = 2 * min(height // 2, width // 2)
    return (height - side) // 2, (width - side) // 2, side


def crop_intrinsics(
    K_norm: np.ndarray, image_size_hw: tuple[int, int], box: tuple[int, int, int, int]
) -> np.ndarray:
    """Normalised intrinsics of a crop.

    Args:
        K_norm: ``(3, 3)`` normalised intrinsics of the full ``(H, W)`` image.
        image_size_hw: ``(H, W)`` of the full image.
        box: ``(top, left, crop_h, crop_w)`` in pixels.

    Returns:
        ``(3, 3)`` normalised intrinsics of the crop (resize-invariant, see module docstring).
    """
    top, left, ch, cw = box
    K = unnormalise_intrinsics(K_norm, image_size_hw)
    K[0, 2] -= left
    K[1, 2] -= top
    return normalise_intrinsics(K, (ch, cw))


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """OpenCV ``c2w (4, 4)`` of a camera at ``eye`` looking at ``target``; ``up`` is world up.

    The camera's y axis (down in the image) points along ``-up`` projected off the view axis.
    """
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def check_c2w(c2w: np.ndarray, *, path: str | Path | None, field: str, tol: float = 1e-3) -> None:
    """Raises :class:`BadCameraError` unless ``c2w (4, 4)`` is a finite rigid transform."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape != (4, 4):
        raise BadCameraError(f"pose has shape {c2w.shape}, expected (4, 4)", path=path, field=field)
    if not np.isfinite(c2w).all():
        raise BadCameraError("pose has a non-finite entry", path=path, field=field)
    R = c2w[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > tol or abs(np.linalg.det(R) - 1.0) > tol:
        raise BadCameraError("rotation is not orthonormal with det +1", path=path, field=field)
    if np.abs(c2w[3] - np.array([0.0, 0.0, 0.0, 1.0])).max() > tol:
        raise BadCameraError("last row of the pose is not (0, 0, 0, 1)", path=path, field=field)


def check_intrinsics(
    K_norm: np.ndarray,
    *,
    path: str | Path | None,
    field: str,
    principal_point_field: str | None = None,
) -> None:
    """Raises :class:`BadCameraError` unless normalised ``K (3, 3)`` has finite, positive focals.

    Args:
        K_norm: ``(3, 3)`` normalised intrinsics.
        path: file named in errors.
        field: record field named for focal-length problems.
        principal_point_field: record field named for principal-point problems
            (default: ``field``).
    """
    K_norm = np.asarray(K_norm, dtype=np.float64)
    pp_field = principal_point_field or field
    if not np.isfinite(K_norm[:2, :2]).all():
        raise BadCameraError("focal length has a non-finite entry", path=path, field=field)
    if not np.isfinite(K_norm).all():
        raise BadCameraError("principal point has a non-finite entry", path=path, field=pp_field)
    if K_norm[0, 0] <= 0 or K_norm[1, 1] <= 0:
        raise BadCameraError("focal length must be positive", path=path, field=field)
    if np.abs(K_norm[:2, 2]).max() > 10:
        raise BadCameraError("principal point far outside the image", path=path, field=pp_field)


def relative_to_first(c2w: Tensor) -> Tensor:
    """Re-expresses poses relative to the first one: ``inv(c2w[0]) @ c2w``.

    Args:
        c2w: ``(N, 4, 4)`` camera-to-world.

    Returns:
        ``(N, 4, 4)``; entry 0 is the identity (up to rounding).
    """
    return torch.linalg.inv(c2w[:1]) @ c2w
