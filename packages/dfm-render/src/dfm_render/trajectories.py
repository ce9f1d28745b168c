"""Camera paths for videos and evaluation: pose interpolation, orbits, relative re-expression.

Every path is a tensor of OpenCV camera-to-world poses ``c2w (N, 4, 4)`` (x right, y down,
z forward; the world-to-camera is the rigid inverse). Three building blocks:

* :func:`interpolate_poses` — a geodesic between two poses: the rotation follows the great arc
  between the two unit quaternions (spherical linear interpolation, Shoemake 1985,
  ``slerp(q0, q1; s) = sin((1-s)θ)/sin θ · q0 + sin(sθ)/sin θ · q1``, with ``cos θ = |q0·q1|``),
  so it turns at constant angular speed; the camera centre moves linearly. The first and last
  frames are the given poses exactly.
* :func:`orbit_poses` — cameras on a circle of latitude around a centre point, all looking at it.
* :func:`relative_to` / :func:`absolute_from` — re-express a path in the frame of a reference
  camera (``inv(ref) @ c2w``), the convention the networks see (poses relative to the first
  context camera), and back.
* :func:`estimate_look_at_point` / :func:`estimate_up` — the orbit parameters of a captured
  turntable-like sequence (e.g. CO3D): the point closest to all optical axes in the least-squares
  sense, and the normal of the plane best fitting the camera centres.

The dataset's own poses are already such a tensor and need no helper. Arithmetic runs in
float64 and the result is cast back to the input dtype, so long paths stay orthonormal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pytorch3d.transforms import matrix_to_quaternion, quaternion_to_matrix
from torch import Tensor

__all__ = [
    "absolute_from",
    "estimate_look_at_point",
    "estimate_up",
    "interpolate_poses",
    "look_at",
    "orbit_poses",
    "relative_to",
    "rigid_inverse",
]

# Below this angle (radians, between quaternions) slerp's sin θ denominator is ill-conditioned and
# normalised linear interpolation agrees with it to O(θ²).
_SLERP_EPS = 1e-6


def _check_pose(c2w: Tensor, name: str, *, batched: bool) -> None:
    """Raises ``ValueError`` unless ``c2w`` is ``(4, 4)`` (or ``(N, 4, 4)`` when ``batched``)."""
    if not isinstance(c2w, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(c2w).__name__}")
    expected = 3 if batched else 2
    if c2w.dim() != expected or c2w.shape[-2:] != (4, 4):
        shape = "(N, 4, 4)" if batched else "(4, 4)"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(c2w.shape)}")
    if not c2w.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {c2w.dtype}")


def _as_vector(value: Tensor | Sequence[float], name: str, like: Tensor | None = None) -> Tensor:
    """A float64 ``(3,)`` tensor from a tensor or a sequence of three numbers."""
    device = like.device if like is not None else None
    vec = torch.as_tensor(value, dtype=torch.float64, device=device)
    if vec.shape != (3,):
        raise ValueError(f"{name} must have 3 components, got shape {tuple(vec.shape)}")
    if not torch.isfinite(vec).all():
        raise ValueError(f"{name} must be finite, got {vec.tolist()}")
    return vec


def rigid_inverse(c2w: Tensor) -> Tensor:
    """Inverse of rigid transforms, ``[R | t]^-1 = [R^T | -R^T t]`` (exact, no ``torch.inverse``).

    Args:
        c2w: ``(..., 4, 4)`` rigid transforms (rotation block orthonormal, last row ``0 0 0 1``).

    Returns:
        ``(..., 4, 4)`` the inverse transforms, same dtype and device.
    """
    rot_t = c2w[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(c2w)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ c2w[..., :3, 3:4]).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


def look_at(eye: Tensor, target: Tensor, up: Tensor | Sequence[float] = (0.0, 1.0, 0.0)) -> Tensor:
    """OpenCV ``c2w`` of cameras at ``eye`` looking at ``target``.

    The camera z axis points from the eye to the target, x = z × up (image right), and
    y = z × x (image down), so world ``up`` appears upward in the image.

    Args:
        eye: ``(..., 3)`` camera centres (world).
        target: ``(..., 3)`` points looked at (world), broadcastable with ``eye``.
        up: ``(3,)`` world up direction; must not be parallel to any viewing direction.

    Returns:
        ``(..., 4, 4)`` camera-to-world poses, dtype of ``eye``.

    Raises:
        ValueError: if an eye coincides with its target or looks along ``up``.
    """
    dtype = eye.dtype
    eye64, target64 = eye.to(torch.float64), target.to(torch.float64)
    eye64, target64 = torch.broadcast_tensors(eye64, target64)
    up64 = _as_vector(up, "up", like=eye)
    z = target64 - eye64
    z_norm = z.norm(dim=-1, keepdim=True)
    if (z_norm < 1e-12).any():
        raise ValueError("look_at: an eye coincides with its target")
    z = z / z_norm
    x = torch.cross(z, up64.expand_as(z), dim=-1)
    x_norm = x.norm(dim=-1, keepdim=True)
    if (x_norm < 1e-9 * up64.norm()).any():
        raise ValueError(
            "look_at: a viewing direction is parallel to `up`; choose another up vector"
        )
    x = x / x_norm
    y = torch.cross(z, x, dim=-1)
    c2w = torch.zeros(*eye64.shape[:-1], 4, 4, dtype=torch.float64, device=eye.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2] = x, y, z
    c2w[..., :3, 3] = eye64
    c2w[..., 3, 3] = 1.0
    return c2w.to(dtype)


def interpolate_poses(c2w_start: Tensor, c2w_end: Tensor, num_frames: int) -> Tensor:
    """Constant-speed geodesic between two camera poses (slerp rotation, linear centre).

    Frame ``k`` is at ``s = k / (num_frames - 1)``: its rotation is ``slerp(q0, q1; s)`` along
    the shorter arc (``q1`` is negated when ``q0·q1 < 0``, since ``q`` and ``-q`` are the same
    rotation), so the angle between consecutive rotations is constant; its centre is
    ``(1 - s) t0 + s t1``.

    Args:
        c2w_start: ``(4, 4)`` first pose (OpenCV camera-to-world).
        c2w_end: ``(4, 4)`` last pose.
        num_frames: number of poses ``N >= 2``, endpoints included.

    Returns:
        ``(N, 4, 4)`` poses, dtype/device of ``c2w_start``; frame 0 equals ``c2w_start`` and
        frame ``N - 1`` equals ``c2w_end`` exactly.

    Raises:
        ValueError: on bad shapes or ``num_frames < 2``.
    """
    _check_pose(c2w_start, "c2w_start", batched=False)
    _check_pose(c2w_end, "c2w_end", batched=False)
    if not isinstance(num_frames, int) or num_frames < 2:
        raise ValueError(f"num_frames must be an int >= 2, got {num_frames!r}")
    a = c2w_start.to(torch.float64)
    b = c2w_end.to(device=a.device, dtype=torch.float64)
    s = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64, device=a.device)  # (N,)

    q0 = matrix_to_quaternion(a[:3, :3])  # (4,) w, x, y, z
    q1 = matrix_to_quaternion(b[:3, :3])
    dot = (q0 * q1).sum()
    if dot < 0:  # shorter arc: q and -q encode the same rotation
        q1, dot = -q1, -dot
    theta = torch.arccos(dot.clamp(-1.0, 1.0))
    if theta < _SLERP_EPS:
        w0, w1 = 1.0 - s, s
    else:
        w0 = torch.sin((1.0 - s) * theta) / torch.sin(theta)
        w1 = torch.sin(s * theta) / torch.sin(theta)
    q = w0[:, None] * q0 + w1[:, None] * q1  # (N, 4)
    q = q / q.norm(dim=-1, keepdim=True)

    out = torch.zeros(num_frames, 4, 4, dtype=torch.float64, device=a.device)
    out[:, :3, :3] = quaternion_to_matrix(q)
    out[:, :3, 3] = (1.0 - s)[:, None] * a[:3, 3] + s[:, None] * b[:3, 3]
    out[:, 3, 3] = 1.0
    out = out.to(c2w_start.dtype)
    out[0], out[-1] = c2w_start, c2w_end.to(out)
    return out


def _default_reference(up: Tensor) -> Tensor:
    """The world axis least aligned with ``up``, made orthogonal to it (azimuth 0 direction)."""
    axis = torch.zeros(3, dtype=torch.float64, device=up.device)
    axis[int(up.abs().argmin())] = 1.0
    return axis


def orbit_poses(
    centre: Tensor | Sequence[float],
    radius: float,
    num_frames: int,
    *,
    elevation: float = 0.0,
    up: Tensor | Sequence[float] = (0.0, 1.0, 0.0),
    start_azimuth: float = 0.0,
    reference: Tensor | Sequence[float] | None = None,
    sweep: float = 360.0,
    endpoint: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Cameras on a circle of latitude around ``centre``, each looking at it.

    With ``u = up/|up|``, ``e1`` the ``reference`` direction made orthogonal to ``u`` and
    ``e2 = u × e1``, frame ``k`` sits at azimuth ``φ_k = start_azimuth + k·Δ`` and elevation
    ``ε``::

        eye_k = centre + radius · (cos ε (cos φ_k e1 + sin φ_k e2) + sin ε u)

    so azimuth increases counter-clockwise seen from above (right-handed about ``up``) and
    positive elevation puts the camera above the centre. ``Δ = sweep / N`` (a closed loop
    without a repeated frame) or ``sweep / (N - 1)`` with ``endpoint=True``. Angles in degrees.

    Args:
        centre: ``(3,)`` world point the cameras orbit and look at.
        radius: distance from every camera to ``centre`` (> 0).
        num_frames: number of cameras ``N >= 1``.
        elevation: latitude ``ε`` in degrees, strictly inside ``(-90, 90)``.
        up: ``(3,)`` world up direction (the synthetic worlds of dfm-data use ``+y``).
        start_azimuth: azimuth of the first camera, degrees from ``reference``.
        reference: ``(3,)`` direction from ``centre`` of azimuth 0 (projected off ``up``); default:
            the world axis least aligned with ``up``. Pass ``context_eye - centre`` to start
            the orbit at a context camera.
        sweep: total azimuth swept, degrees (negative: clockwise).
        endpoint: include the azimuth ``start_azimuth + sweep`` as the last frame.
        dtype: floating dtype of the result.

    Returns:
        ``(N, 4, 4)`` OpenCV camera-to-world poses.

    Raises:
        ValueError: on a non-positive radius, elevation outside (-90, 90), ``num_frames < 1``, or
            a ``reference`` parallel to ``up``.
    """
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    if not (radius > 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    if not -90.0 < elevation < 90.0:
        raise ValueError(f"elevation must lie strictly inside (-90, 90) degrees, got {elevation!r}")
    if endpoint and num_frames < 2:
        raise ValueError("endpoint=True needs num_frames >= 2")
    device = centre.device if isinstance(centre, Tensor) else None
    c = _as_vector(centre, "centre").to(device)
    u = _as_vector(up, "up").to(device)
    if u.norm() < 1e-12:
        raise ValueError("up must be a non-zero vector")
    u = u / u.norm()
    ref = _default_reference(u) if reference is None else _as_vector(reference, "reference")
    ref = ref.to(device)
    e1 = ref - (ref @ u) * u
    if e1.norm() < 1e-9 * max(float(ref.norm()), 1e-300):
        raise ValueError("reference must not be parallel to up")
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(u, e1)

    step = sweep / (num_frames - 1 if endpoint else num_frames)
    k = torch.arange(num_frames, dtype=torch.float64, device=device)
    phi = torch.deg2rad(start_azimuth + k * step)  # (N,)
    eps = math.radians(elevation)
    direction = (
        math.cos(eps) * (torch.cos(phi)[:, None] * e1 + torch.sin(phi)[:, None] * e2)
        + math.sin(eps) * u
    )  # (N, 3) unit vectors from centre to eye
    eye = c + radius * direction
    return look_at(eye, c.expand_as(eye), u).to(dtype)


def relative_to(c2w: Tensor, reference: Tensor) -> Tensor:
    """Poses expressed in the frame of a reference camera: ``inv(reference) @ c2w``.

    The reference camera becomes the identity; relative geometry (distances, angles between
    cameras) is unchanged.

    Args:
        c2w: ``(N, 4, 4)`` camera-to-world poses.
        reference: ``(4, 4)`` camera-to-world pose of the reference camera (e.g. the first
            context view).

    Returns:
        ``(N, 4, 4)`` camera-to-reference poses, dtype of ``c2w``.
    """
    _check_pose(c2w, "c2w", batched=True)
    _check_pose(reference, "reference", batched=False)
    ref_inv = rigid_inverse(reference.to(device=c2w.device, dtype=torch.float64))
    return (ref_inv @ c2w.to(torch.float64)).to(c2w.dtype)


def absolute_from(c2w_relative: Tensor, reference: Tensor) -> Tensor:
    """Inverse of :func:`relative_to`: ``reference @ c2w_relative``.

    Args:
        c2w_relative: ``(N, 4, 4)`` poses in the reference camera's frame.
        reference: ``(4, 4)`` camera-to-world pose of the reference camera.

    Returns:
        ``(N, 4, 4)`` camera-to-world poses, dtype of ``c2w_relative``.
    """
    _check_pose(c2w_relative, "c2w_relative", batched=True)
    _check_pose(reference, "reference", batched=False)
    ref = reference.to(device=c2w_relative.device, dtype=torch.float64)
    return (ref @ c2w_relative.to(torch.float64)).to(c2w_relative.dtype)


def estimate_look_at_point(c2w: Tensor) -> Tensor:
    """The world point closest to every camera's optical axis (least squares).

    Minimises ``Σ_i |(I − z_i z_iᵀ)(p − o_i)|²`` over ``p``, with ``o_i`` the camera centres and
    ``z_i`` their unit viewing directions: the normal equations
    ``(Σ_i P_i) p = Σ_i P_i o_i`` with projectors ``P_i = I − z_i z_iᵀ``.

    Args:
        c2w: ``(N, 4, 4)`` OpenCV camera-to-world poses, ``N >= 2`` with non-parallel axes.

    Returns:
        ``(3,)`` the point, dtype of ``c2w``.

    Raises:
        ValueError: if all axes are parallel (the point is not determined).
    """
    _check_pose(c2w, "c2w", batched=True)
    pose = c2w.to(torch.float64)
    z = pose[:, :3, 2] / pose[:, :3, 2].norm(dim=-1, keepdim=True)  # (N, 3)
    proj = torch.eye(3, dtype=torch.float64, device=c2w.device) - z[:, :, None] * z[:, None, :]
    a = proj.sum(0)  # (3, 3)
    b = (proj @ pose[:, :3, 3:4]).sum(0)  # (3, 1)
    eig = torch.linalg.eigvalsh(a)
    if eig[0] < 1e-9 * eig[-1]:
        raise ValueError("estimate_look_at_point: the optical axes are (nearly) parallel")
    return torch.linalg.solve(a, b)[:, 0].to(c2w.dtype)


def estimate_up(c2w: Tensor) -> Tensor:
    """World up of an orbit capture: the normal of the plane best fitting the camera centres.

    The normal is the right singular vector of the centred camera positions with the smallest
    singular value; its sign is chosen to agree with the cameras' mean image-up direction
    (``−y`` in OpenCV), so the result points up in the pictures.

    Args:
        c2w: ``(N, 4, 4)`` camera-to-world poses, ``N >= 3`` centres not on one line.

    Returns:
        ``(3,)`` unit vector, dtype of ``c2w``.

    Raises:
        ValueError: with fewer than 3 cameras or collinear centres.
    """
    _check_pose(c2w, "c2w", batched=True)
    if len(c2w) < 3:
        raise ValueError(f"estimate_up needs >= 3 cameras, got {len(c2w)}")
    pose = c2w.to(torch.float64)
    centres = pose[:, :3, 3]
    _, sv, vh = torch.linalg.svd(centres - centres.mean(0), full_matrices=False)
    if sv[1] < 1e-9 * max(float(sv[0]), 1e-300):
        raise ValueError("estimate_up: the camera centres are collinear")
    normal = vh[-1]
    image_up = -pose[:, :3, 1].mean(0)
    if normal @ image_up < 0:
        normal = -normal
    return normal.to(c2w.dtype)
