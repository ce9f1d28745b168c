"""Camera paths: closed-form rotations (Rodrigues), projection of the orbit centre, frame algebra."""

from __future__ import annotations

import math

import pytest
import torch

from dfm_render.trajectories import (
    absolute_from,
    estimate_look_at_point,
    estimate_up,
    interpolate_poses,
    look_at,
    orbit_poses,
    relative_to,
    rigid_inverse,
)

F64 = torch.float64


def rodrigues(axis: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotation by ``angle`` (radians) about unit ``axis``: I + sin a K + (1 - cos a) K^2."""
    axis = axis / axis.norm()
    kx, ky, kz = axis.tolist()
    k = torch.tensor([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]], dtype=F64)
    return torch.eye(3, dtype=F64) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def pose(rot: torch.Tensor, centre: list[float]) -> torch.Tensor:
    out = torch.eye(4, dtype=F64)
    out[:3, :3], out[:3, 3] = rot, torch.tensor(centre, dtype=F64)
    return out


def geodesic_angle(r_a: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
    """Angle of r_a^T r_b, from its trace (independent of quaternions)."""
    cos = ((r_a.transpose(-1, -2) @ r_b).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.arccos(cos.clamp(-1, 1))


def assert_rigid(c2w: torch.Tensor, atol: float = 1e-6) -> None:
    rot = c2w[..., :3, :3]
    eye = torch.eye(3, dtype=c2w.dtype).expand_as(rot)
    torch.testing.assert_close(rot.transpose(-1, -2) @ rot, eye, atol=atol, rtol=0)
    torch.testing.assert_close(
        torch.linalg.det(rot), torch.ones_like(rot[..., 0, 0]), atol=atol, rtol=0
    )
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype).expand_as(c2w[..., 3, :])
    torch.testing.assert_close(c2w[..., 3, :], bottom, atol=0, rtol=0)


R0 = rodrigues(torch.tensor([0.3, -1.0, 0.5], dtype=F64), 0.7)
AXIS = torch.tensor([1.0, 2.0, -0.5], dtype=F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interpolation_endpoints_are_exact(dtype: torch.dtype) -> None:
    start = pose(R0, [0.1, 0.2, -3.0]).to(dtype)
    end = pose(R0 @ rodrigues(AXIS, 1.9), [2.0, -1.0, 0.5]).to(dtype)
    path = interpolate_poses(start, end, 7)
    assert path.shape == (7, 4, 4) and path.dtype == dtype
    assert torch.equal(path[0], start) and torch.equal(path[-1], end)
    assert_rigid(path, atol=1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("angle", [0.4, 2.5])
def test_interpolation_matches_closed_form_geodesic(angle: float) -> None:
    """R_k = R0 exp(s_k * angle * [axis]x): constant angular speed about a fixed axis."""
    start, end = pose(R0, [0.0, 0.0, 0.0]), pose(R0 @ rodrigues(AXIS, angle), [3.0, 0.0, -6.0])
    n = 9
    path = interpolate_poses(start, end, n)
    s = torch.linspace(0, 1, n, dtype=F64)
    for k in range(n):
        expected = R0 @ rodrigues(AXIS, float(s[k]) * angle)
        torch.testing.assert_close(path[k, :3, :3], expected, atol=1e-12, rtol=0)
        torch.testing.assert_close(path[k, :3, 3], s[k] * end[:3, 3], atol=1e-12, rtol=0)
    steps = geodesic_angle(path[:-1, :3, :3], path[1:, :3, :3])
    torch.testing.assert_close(
        steps, torch.full((n - 1,), angle / (n - 1), dtype=F64), atol=1e-7, rtol=0
    )


def test_interpolation_takes_the_shorter_arc() -> None:
    """A 200-degree turn about an axis is a 160-degree turn about the opposite axis."""
    start, end = pose(R0, [0, 0, 0]), pose(R0 @ rodrigues(AXIS, math.radians(200)), [0, 0, 0])
    path = interpolate_poses(start, end, 5)
    for k, s in enumerate(torch.linspace(0, 1, 5).tolist()):
        expected = R0 @ rodrigues(-AXIS, s * math.radians(160))
        torch.testing.assert_close(path[k, :3, :3], expected, atol=1e-12, rtol=0)


def test_interpolation_of_identical_rotations_is_stable() -> None:
    start, end = pose(R0, [0, 0, 0]), pose(R0, [1, 1, 1])
    path = interpolate_poses(start, end, 4)
    assert torch.isfinite(path).all()
    torch.testing.assert_close(path[:, :3, :3], R0.expand(4, 3, 3), atol=1e-12, rtol=0)


def test_interpolation_rejects_bad_input() -> None:
    good = torch.eye(4)
    with pytest.raises(ValueError, match="num_frames"):
        interpolate_poses(good, good, 1)
    with pytest.raises(ValueError, match=r"c2w_end must have shape \(4, 4\)"):
        interpolate_poses(good, torch.eye(3), 3)


def project(c2w: torch.Tensor, intrinsics: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Normalised uv of a world point, through torch.linalg.inv (independent of rigid_inverse)."""
    w2c = torch.linalg.inv(c2w)
    cam = w2c[..., :3, :3] @ point + w2c[..., :3, 3]  # (N, 3)
    pix = (intrinsics @ (cam / cam[..., 2:3]).unsqueeze(-1)).squeeze(-1)
    return pix[..., :2], cam[..., 2]


@pytest.mark.parametrize("elevation", [-35.0, 0.0, 20.0])
def test_orbit_cameras_look_at_the_centre(elevation: float) -> None:
    centre = torch.tensor([0.5, 1.0, -2.0], dtype=F64)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    n, radius = 12, 3.5
    c2w = orbit_poses(centre, radius, n, elevation=elevation, up=up, start_azimuth=30.0, dtype=F64)
    assert c2w.shape == (n, 4, 4)
    assert_rigid(c2w, atol=1e-12)
    intrinsics = torch.tensor([[0.9, 0, 0.45], [0, 1.2, 0.55], [0, 0, 1]], dtype=F64)
    uv, depth = project(c2w, intrinsics, centre)
    torch.testing.assert_close(
        uv, torch.tensor([0.45, 0.55], dtype=F64).expand(n, 2), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(depth, torch.full((n,), radius, dtype=F64), atol=1e-12, rtol=0)
    offset = c2w[:, :3, 3] - centre
    # Elevation: angle between the camera offset and the horizontal plane.
    torch.testing.assert_close(
        torch.rad2deg(torch.arcsin(offset @ up / radius)), torch.full((n,), elevation, dtype=F64)
    )
    # Equal azimuth steps of 360/N, counter-clockwise about +y seen from above.
    azimuth = torch.atan2(-offset[:, 2], offset[:, 0])  # right-handed about +y: x -> -z
    step = torch.remainder(azimuth[1:] - azimuth[:-1], 2 * math.pi)
    torch.testing.assert_close(step, torch.full((n - 1,), 2 * math.pi / n, dtype=F64))
    # Image y (down) points against world up, so the world appears upright.
    assert (c2w[:, :3, 1] @ up < 0).all()


def test_orbit_reference_sets_the_first_camera() -> None:
    centre = torch.zeros(3, dtype=F64)
    context_eye = torch.tensor([0.0, 1.0, -4.0], dtype=F64)
    c2w = orbit_poses(centre, 2.0, 8, reference=context_eye, endpoint=True, sweep=90.0, dtype=F64)
    horizontal = torch.tensor([0.0, 0.0, -2.0], dtype=F64)
    torch.testing.assert_close(c2w[0, :3, 3], horizontal, atol=1e-12, rtol=0)
    # endpoint=True: the last camera is a quarter turn further (-z rotated by +90 degrees about +y is -x).
    torch.testing.assert_close(
        c2w[-1, :3, 3], torch.tensor([-2.0, 0.0, 0.0], dtype=F64), atol=1e-12, rtol=0
    )


def test_orbit_with_other_up_vector() -> None:
    up = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    c2w = orbit_poses([0.0, 0.0, 0.0], 1.0, 5, elevation=10.0, up=up, dtype=F64)
    assert_rigid(c2w, atol=1e-12)
    torch.testing.assert_close(
        c2w[:, 2, 3], torch.full((5,), math.sin(math.radians(10.0)), dtype=F64)
    )


def test_orbit_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="radius"):
        orbit_poses([0, 0, 0], 0.0, 4)
    with pytest.raises(ValueError, match="elevation"):
        orbit_poses([0, 0, 0], 1.0, 4, elevation=90.0)
    with pytest.raises(ValueError, match="reference"):
        orbit_poses([0, 0, 0], 1.0, 4, reference=[0.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="centre"):
        orbit_poses([0, 0], 1.0, 4)


def test_look_at_rejects_degenerate_views() -> None:
    eye = torch.tensor([0.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="parallel"):
        look_at(eye, torch.zeros(3))
    with pytest.raises(ValueError, match="coincides"):
        look_at(eye, eye.clone())


def test_relative_to_and_back() -> None:
    path = orbit_poses([0.2, 0.0, 1.0], 2.0, 6, elevation=15.0, dtype=F64)
    reference = pose(R0, [1.0, -2.0, 0.5])
    rel = relative_to(path, reference)
    torch.testing.assert_close(relative_to(reference[None], reference)[0], torch.eye(4, dtype=F64))
    torch.testing.assert_close(rel, torch.linalg.inv(reference) @ path, atol=1e-12, rtol=0)
    torch.testing.assert_close(absolute_from(rel, reference), path, atol=1e-12, rtol=0)
    # Relative geometry is unchanged: camera-to-camera transforms and distances.
    torch.testing.assert_close(
        torch.cdist(rel[:, :3, 3], rel[:, :3, 3]), torch.cdist(path[:, :3, 3], path[:, :3, 3])
    )
    torch.testing.assert_close(rigid_inverse(rel[0]) @ rel[3], rigid_inverse(path[0]) @ path[3])
    with pytest.raises(ValueError, match=r"c2w must have shape \(N, 4, 4\)"):
        relative_to(reference, reference)


def test_orbit_parameters_are_recovered_from_the_cameras() -> None:
    up = torch.tensor([0.3, 0.9, -0.2], dtype=F64)
    up = up / up.norm()
    centre = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    # A partial orbit (a CO3D-like arc), tilted up vector, cameras above the object.
    c2w = orbit_poses(centre, 3.0, 7, elevation=25.0, up=up, sweep=200.0, dtype=F64)
    torch.testing.assert_close(estimate_look_at_point(c2w), centre, atol=1e-10, rtol=0)
    torch.testing.assert_close(estimate_up(c2w), up, atol=1e-10, rtol=0)
    # Cameras that look slightly off-centre: the least-squares point against a brute-force
    # minimisation of the summed squared distances to the axes.
    tilted = c2w.clone()
    for k in range(len(c2w)):
        jitter = rodrigues(torch.tensor([1.0, k, 0.5], dtype=F64), 0.05)
        tilted[k, :3, :3] = c2w[k, :3, :3] @ jitter
    point = estimate_look_at_point(tilted)

    def cost(p: torch.Tensor) -> torch.Tensor:
        z = tilted[:, :3, 2]
        diff = p - tilted[:, :3, 3]
        return ((diff - (diff * z).sum(-1, keepdim=True) * z) ** 2).sum()

    grad = torch.func.grad(cost)(point)
    torch.testing.assert_close(grad, torch.zeros(3, dtype=F64), atol=1e-9, rtol=0)
    for delta in torch.eye(3, dtype=F64) * 1e-3:
        assert cost(point + delta) > cost(point) and cost(point - delta) > cost(point)
    with pytest.raises(ValueError, match="parallel"):
        estimate_look_at_point(torch.eye(4, dtype=F64).repeat(3, 1, 1))
    line = torch.eye(4, dtype=F64).repeat(3, 1, 1)
    line[:, 0, 3] = torch.arange(3.0)
    with pytest.raises(ValueError, match="collinear"):
        estimate_up(line)
