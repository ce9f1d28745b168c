"""Cameras: pixel grids, patches, rays and projection against independent references.

The ray reference is dfm-data's numpy ray caster (pixel intrinsics, its own pixel-centre arithmetic);
projections are checked against points built from known pixels and depths by hand.
"""

import math

import numpy as np
import pytest
import torch

from dfm_data.cameras import look_at
from dfm_data.worlds.raycast import camera_rays
from dfm_render.cameras import (
    Projection,
    crop_patches,
    patch_grid,
    pixel_grid,
    project_points,
    random_patch_origins,
    rays_from_pixels,
)


def random_c2w(generator: torch.Generator, batch: int, dtype=torch.float64) -> torch.Tensor:
    """Random rigid camera-to-world poses (rotation from a QR decomposition, det +1)."""
    q, r = torch.linalg.qr(torch.randn(batch, 3, 3, generator=generator, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q = torch.where(torch.linalg.det(q)[:, None, None] < 0, -q, q)
    c2w = torch.eye(4, dtype=dtype).repeat(batch, 1, 1)
    c2w[:, :3, :3] = q
    c2w[:, :3, 3] = torch.randn(batch, 3, generator=generator, dtype=dtype)
    return c2w


def pixel_intrinsics(fx, fy, cx, cy) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def normalise(k_pix: np.ndarray, height: int, width: int) -> torch.Tensor:
    k = k_pix.copy()
    k[0] /= width
    k[1] /= height
    return torch.from_numpy(k)


def test_pixel_grid_is_row_major_pixel_centres():
    uv = pixel_grid(3, 5, dtype=torch.float64)
    assert uv.shape == (15, 2)
    for i in range(3):
        for j in range(5):
            assert uv[i * 5 + j].tolist() == [(j + 0.5) / 5, (i + 0.5) / 3]


def test_rays_match_dfm_data_numpy_ray_caster():
    g = torch.Generator().manual_seed(0)
    height, width = 6, 8
    c2w = random_c2w(g, 2)
    k_pix = [pixel_intrinsics(9.0, 7.5, 4.2, 2.9), pixel_intrinsics(5.0, 6.0, 3.0, 3.5)]
    k = torch.stack([normalise(kp, height, width) for kp in k_pix])
    uv = pixel_grid(height, width, dtype=torch.float64).expand(2, -1, -1)
    rays = rays_from_pixels(c2w, k, uv)
    assert rays.origins.shape == rays.directions.shape == (2, height * width, 3)
    for b in range(2):
        o_ref, d_ref = camera_rays(c2w[b].numpy(), k_pix[b], height, width)
        np.testing.assert_allclose(rays.origins[b].numpy(), o_ref.reshape(-1, 3), atol=1e-10)
        np.testing.assert_allclose(rays.directions[b].numpy(), d_ref.reshape(-1, 3), atol=1e-10)


def test_ray_through_pixel_centre_hits_known_point_at_its_depth():
    # A camera at (0, 0, -5) looking at the origin; pixel (row 1, col 2) of a 4x4 image with
    # f = 4 px, c = (2, 2): its centre (2.5, 1.5) is 0.5 px right and 0.5 px up of the principal
    # point, so at depth 4 the ray passes through camera-frame (0.5, -0.5, 4) = world (0.5, -0.5, -1).
    c2w = torch.from_numpy(look_at(np.array([0.0, 0.0, -5.0]), np.zeros(3), np.array([0.0, -1, 0])))
    k = normalise(pixel_intrinsics(4.0, 4.0, 2.0, 2.0), 4, 4)
    uv = pixel_grid(4, 4, dtype=torch.float64)[1 * 4 + 2]
    rays = rays_from_pixels(c2w[None], k[None], uv[None, None])
    # look_at with up = -y gives the identity rotation here, so the world point is known by hand.
    torch.testing.assert_close(c2w[:3, :3], torch.eye(3, dtype=torch.float64))
    point = rays.at(torch.tensor([[[4.0]]], dtype=torch.float64))[0, 0, 0]
    torch.testing.assert_close(point, torch.tensor([0.5, -0.5, -1.0], dtype=torch.float64))


def test_rays_broadcast_over_views():
    g = torch.Generator().manual_seed(1)
    c2w = random_c2w(g, 6).reshape(2, 3, 4, 4)
    k = normalise(pixel_intrinsics(5.0, 5.0, 2.0, 2.0), 4, 4).expand(2, 3, 3, 3)
    uv = torch.rand(2, 3, 7, 2, generator=g, dtype=torch.float64)
    rays = rays_from_pixels(c2w, k, uv)
    flat = rays_from_pixels(c2w.reshape(6, 4, 4), k.reshape(6, 3, 3), uv.reshape(6, 7, 2))
    torch.testing.assert_close(rays.directions.reshape(6, 7, 3), flat.directions)


def test_patch_grid_and_crop_patches_address_the_same_pixels():
    g = torch.Generator().manual_seed(2)
    height, width, p = 7, 9, 3
    origin = random_patch_origins(4, height, width, p, generator=g)
    # Encode each pixel's own normalised centre in the image: cropping must reproduce patch_grid.
    centres = pixel_grid(height, width, dtype=torch.float64).reshape(height, width, 2)
    images = centres.permute(2, 0, 1)[None].expand(4, -1, -1, -1)
    crops = crop_patches(images, origin, p)  # (4, 2, P, P)
    grid = patch_grid(height, width, p, origin, dtype=torch.float64)  # (4, P*P, 2)
    torch.testing.assert_close(crops.permute(0, 2, 3, 1).reshape(4, p * p, 2), grid)
    # And the top-left of each patch is exactly the requested pixel.
    for b in range(4):
        i, j = origin[b].tolist()
        assert grid[b, 0].tolist() == [(j + 0.5) / width, (i + 0.5) / height]


def test_crop_patches_is_differentiable():
    images = torch.randn(2, 3, 5, 5, requires_grad=True)
    origin = torch.tensor([[0, 1], [2, 2]])
    crop_patches(images, origin, 3).sum().backward()
    assert images.grad.sum().item() == pytest.approx(2 * 3 * 9)


def test_random_patch_origins_cover_every_valid_position_uniformly():
    g = torch.Generator().manual_seed(3)
    height, width, p = 5, 4, 3
    origin = random_patch_origins(6000, height, width, p, generator=g)
    assert origin.dtype == torch.int64 and origin.shape == (6000, 2)
    counts = torch.zeros(height - p + 1, width - p + 1)
    for r, c in origin.tolist():
        counts[r, c] += 1
    # 6 positions, 1000 expected each; a 5-sigma band of the binomial.
    assert counts.numel() == 6 and (counts - 1000).abs().max() < 5 * math.sqrt(1000 * 5 / 6)
    again = random_patch_origins(6000, height, width, p, generator=torch.Generator().manual_seed(3))
    assert torch.equal(origin, again)


def test_patch_errors_are_clear():
    with pytest.raises(ValueError, match="patch_size 5 does not fit in a 4x8 image"):
        random_patch_origins(1, 4, 8, 5)
    with pytest.raises(ValueError, match="origin must keep"):
        patch_grid(4, 4, 3, torch.tensor([[2, 0]]))
    with pytest.raises(ValueError, match="integer"):
        crop_patches(torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 0.0]]), 2)
    with pytest.raises(ValueError, match="images must be a"):
        crop_patches(torch.zeros(4, 4), torch.tensor([[0, 0]]), 2)


def test_known_point_projects_onto_known_pixel():
    g = torch.Generator().manual_seed(4)
    height, width = 6, 8
    c2w = random_c2w(g, 2).reshape(1, 2, 4, 4)
    k_pix = pixel_intrinsics(7.0, 6.0, 3.7, 3.1)
    k = normalise(k_pix, height, width).expand(1, 2, 3, 3)
    # Pixel (row 4, col 1) at depth 2.5 in view 0, built by hand from the pixel-space pinhole model.
    i, j, z = 4, 1, 2.5
    x_cam = torch.tensor(
        [(j + 0.5 - 3.7) / 7.0 * z, (i + 0.5 - 3.1) / 6.0 * z, z], dtype=torch.float64
    )
    world = c2w[0, 0, :3, :3] @ x_cam + c2w[0, 0, :3, 3]
    proj = project_points(world[None, None], c2w, k)
    assert isinstance(proj, Projection)
    assert proj.uv.shape == (1, 2, 1, 2) and proj.depth.shape == (1, 2, 1)
    torch.testing.assert_close(
        proj.uv[0, 0, 0], torch.tensor([(j + 0.5) / width, (i + 0.5) / height], dtype=torch.float64)
    )
    torch.testing.assert_close(proj.depth[0, 0, 0], torch.tensor(z, dtype=torch.float64))
    torch.testing.assert_close(proj.points[0, 0, 0], x_cam)
    # View 1 agrees with a brute-force inverse of its pose.
    cam1 = torch.linalg.inv(c2w[0, 1]) @ torch.cat([world, world.new_ones(1)])
    torch.testing.assert_close(proj.points[0, 1, 0], cam1[:3])


def test_rays_and_projection_round_trip():
    g = torch.Generator().manual_seed(5)
    c2w = random_c2w(g, 3).reshape(3, 1, 4, 4)
    k = normalise(pixel_intrinsics(6.0, 5.0, 4.0, 3.0), 6, 8).expand(3, 1, 3, 3)
    uv = torch.rand(3, 10, 2, generator=g, dtype=torch.float64)
    t = 0.5 + 3 * torch.rand(3, 10, generator=g, dtype=torch.float64)
    rays = rays_from_pixels(c2w[:, 0], k[:, 0], uv)
    points = rays.origins + t[..., None] * rays.directions  # (3, 10, 3)
    proj = project_points(points, c2w, k)
    torch.testing.assert_close(proj.uv[:, 0], uv)
    torch.testing.assert_close(proj.depth[:, 0], t)


def test_points_behind_and_on_the_camera_plane_stay_finite():
    c2w = torch.eye(4).expand(1, 1, 4, 4)
    k = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]).expand(1, 1, 3, 3)
    points = torch.tensor([[[0.1, 0.2, -1.0], [0.3, 0.0, 0.0]]], requires_grad=True)
    proj = project_points(points, c2w, k)
    assert proj.depth[0, 0].tolist() == [-1.0, 0.0]
    assert torch.isfinite(proj.uv).all()
    proj.uv.sum().backward()
    assert torch.isfinite(points.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64(dtype):
    c2w = torch.eye(4, dtype=dtype)[None]
    k = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]], dtype=dtype)[None]
    rays = rays_from_pixels(c2w, k, pixel_grid(2, 2, dtype=dtype)[None])
    assert rays.directions.dtype == dtype
    proj = project_points(rays.origins + 2 * rays.directions, c2w[:, None], k[:, None])
    assert proj.uv.dtype == dtype
    torch.testing.assert_close(proj.uv[:, 0], pixel_grid(2, 2, dtype=dtype)[None])


def test_bad_camera_shapes_are_named():
    with pytest.raises(ValueError, match="c2w must be"):
        rays_from_pixels(torch.eye(3)[None], torch.eye(3)[None], torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="uv must be"):
        rays_from_pixels(torch.eye(4)[None], torch.eye(3)[None], torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="points must be"):
        project_points(torch.zeros(2, 3), torch.eye(4)[None, None], torch.eye(3)[None, None])


def test_rays_and_projection_gradcheck():
    g = torch.Generator().manual_seed(6)
    c2w = random_c2w(g, 1).requires_grad_()
    k = normalise(pixel_intrinsics(6.0, 5.0, 4.0, 3.0), 6, 8)[None].requires_grad_()
    uv = torch.rand(1, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda c, kk, x: tuple(vars(rays_from_pixels(c, kk, x)).values()), (c2w, k, uv)
    )
    # Points in front of the camera (depth 2 along three rays), so the division by z is smooth.
    rays = rays_from_pixels(c2w.detach(), k.detach(), uv.detach())
    points = rays.origins + 2.0 * rays.directions  # (1, 3, 3)
    points.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p, c, kk: (project_points(p, c[:, None], kk[:, None]).uv,), (points, c2w, k)
    )
