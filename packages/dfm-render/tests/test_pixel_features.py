"""Pixel-aligned sampling: exact pixel reads, masking, and a brute-force bilinear reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from dfm_render.cameras import pixel_grid, project_points, rays_from_pixels
from dfm_render.pixel_features import sample_pixel_features

F64 = torch.float64


def distinct_features(batch, views, channels, height, width):
    """Every (view, channel, pixel) holds a different value."""
    n = batch * views * channels * height * width
    return torch.arange(n, dtype=F64).reshape(batch, views, channels, height, width) / n


def brute_force_bilinear(image, u, v):
    """Bilinear read of ``image (C, H, W)`` at normalised (u, v), pixel centres at (j + .5) / W,
    coordinates clamped to the outermost centres (border padding)."""
    _, height, width = image.shape
    x = min(max(u * width - 0.5, 0.0), width - 1.0)
    y = min(max(v * height - 0.5, 0.0), height - 1.0)
    j0, i0 = math.floor(x), math.floor(y)
    j1, i1 = min(j0 + 1, width - 1), min(i0 + 1, height - 1)
    a, b = x - j0, y - i0
    return (
        (1 - a) * (1 - b) * image[:, i0, j0]
        + a * (1 - b) * image[:, i0, j1]
        + (1 - a) * b * image[:, i1, j0]
        + a * b * image[:, i1, j1]
    )


def test_projected_pixel_centre_reads_exactly_that_pixels_feature():
    height, width = 5, 7
    features = distinct_features(1, 2, 3, height, width)
    # Two cameras: identity, and one moved and turned 90 degrees about y.
    c2w = torch.eye(4, dtype=F64).repeat(1, 2, 1, 1)
    c2w[0, 1, :3, :3] = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=F64)
    c2w[0, 1, :3, 3] = torch.tensor([-3.0, 0.2, 2.0], dtype=F64)
    k = torch.tensor([[0.9, 0, 0.45], [0, 1.1, 0.55], [0, 0, 1]], dtype=F64).expand(1, 2, 3, 3)
    # Points through pixel (row 3, col 2) of view 0 and pixel (row 1, col 5) of view 1.
    grid = pixel_grid(height, width, dtype=F64)
    rays0 = rays_from_pixels(c2w[:, 0], k[:, 0], grid[None, [3 * width + 2]])
    rays1 = rays_from_pixels(c2w[:, 1], k[:, 1], grid[None, [1 * width + 5]])
    points = torch.cat(
        [rays0.origins + 2.0 * rays0.directions, rays1.origins + 1.5 * rays1.directions], 1
    )
    proj = project_points(points, c2w, k)
    values, valid = sample_pixel_features(features, proj.uv, proj.depth)
    assert values.shape == (1, 2, 2, 3) and valid.shape == (1, 2, 2) and valid.dtype == torch.bool
    assert valid[0, 0, 0] and valid[0, 1, 1]
    torch.testing.assert_close(values[0, 0, 0], features[0, 0, :, 3, 2], rtol=0, atol=1e-12)
    torch.testing.assert_close(values[0, 1, 1], features[0, 1, :, 1, 5], rtol=0, atol=1e-12)


def test_interior_reads_match_brute_force_bilinear_with_border_clamping():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 6, 5, generator=g, dtype=F64)
    uv = torch.rand(2, 3, 20, 2, generator=g, dtype=F64)
    uv[0, 0, 0] = torch.tensor([0.02, 0.5])  # in the outer half pixel: reads the edge column
    uv[0, 0, 1] = torch.tensor([1.0, 1.0])  # the corner itself is inside the image
    values, valid = sample_pixel_features(features, uv, torch.ones(2, 3, 20, dtype=F64))
    assert valid.all()
    for b in range(2):
        for v in range(3):
            for p in range(20):
                u_, v_ = uv[b, v, p].tolist()
                ref = brute_force_bilinear(features[b, v], u_, v_)
                torch.testing.assert_close(values[b, v, p], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(values[0, 0, 1], features[0, 0, :, -1, -1])


def test_points_behind_the_camera_or_outside_the_image_are_masked():
    features = distinct_features(1, 1, 2, 4, 4) + 1.0  # no feature is 0
    c2w = torch.eye(4, dtype=F64)[None, None]
    k = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]], dtype=F64)[None, None]
    points = torch.tensor(
        [
            [0.1, 0.1, 2.0],  # visible
            [-0.1, -0.1, -2.0],  # behind: its uv lands inside [0, 1]^2, only depth can reject it
            [2.0, 0.0, 1.0],  # right of the image (u = 2.5)
            [0.0, -1.0, 1.0],  # above the image (v = -0.5)
            [0.3, 0.0, 0.0],  # on the camera plane
        ],
        dtype=F64,
    )[None]
    proj = project_points(points, c2w, k)
    assert ((proj.uv[0, 0, 1] >= 0) & (proj.uv[0, 0, 1] <= 1)).all()
    values, valid = sample_pixel_features(features, proj.uv, proj.depth)
    assert valid[0, 0].tolist() == [True, False, False, False, False]
    assert (values[0, 0, 0] > 0).all()
    assert (values[0, 0, 1:] == 0).all()


def test_gradients_are_finite_and_only_flow_from_valid_points():
    features = torch.randn(1, 2, 3, 4, 4, dtype=F64, requires_grad=True)
    uv = torch.tensor([[[[0.3, 0.6], [5.0, 0.5]], [[0.5, 0.5], [1e30, -1e30]]]], dtype=F64)
    uv.requires_grad_()
    depth = torch.tensor([[[1.0, 1.0], [-1.0, 1.0]]], dtype=F64)
    values, valid = sample_pixel_features(features, uv, depth)
    assert valid.tolist() == [[[True, False], [False, False]]]
    values.sum().backward()
    assert torch.isfinite(features.grad).all() and torch.isfinite(uv.grad).all()
    assert features.grad[0, 1].abs().sum() == 0  # view 1 sees nothing valid
    assert uv.grad[0, 0, 0].abs().sum() > 0 and uv.grad[0, 0, 1].abs().sum() == 0


def test_float32_features_with_float64_coordinates():
    features = torch.rand(1, 1, 2, 3, 3)
    values, _ = sample_pixel_features(
        features, torch.full((1, 1, 1, 2), 0.5, dtype=F64), torch.ones(1, 1, 1)
    )
    assert values.dtype == torch.float32
    torch.testing.assert_close(values[0, 0, 0], features[0, 0, :, 1, 1])


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="features must be"):
        sample_pixel_features(
            torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2)
        )
    with pytest.raises(ValueError, match=r"uv must be a \(1, 2, P, 2\)"):
        sample_pixel_features(
            torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2)
        )
    with pytest.raises(ValueError, match="depth must have shape"):
        sample_pixel_features(
            torch.zeros(1, 1, 3, 4, 4), torch.zeros(1, 1, 2, 2), torch.zeros(1, 2)
        )


def test_gradcheck_in_features_and_uv():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(1, 2, 2, 3, 4, generator=g, dtype=F64, requires_grad=True)
    # Interior points away from pixel-centre lines, where bilinear sampling is smooth.
    uv = torch.tensor([[[[0.31, 0.42], [0.7, 0.9]], [[0.55, 0.27], [0.2, 0.6]]]], dtype=F64)
    uv.requires_grad_()
    depth = torch.ones(1, 2, 2, dtype=F64)
    assert torch.autograd.gradcheck(
        lambda f, x: sample_pixel_features(f, x, depth)[0], (features, uv)
    )


def grid_sample_reference(features, uv, depth):
    """The documented equivalent: grid_sample(border, align_corners=False) at 2 uv - 1, then masked."""
    b, v, c, h, w = features.shape
    out = F.grid_sample(
        features.reshape(b * v, c, h, w),
        (2 * uv - 1).reshape(b * v, -1, 1, 2),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[..., 0]  # (B*V, C, P)
    valid = ((uv >= 0) & (uv <= 1)).all(-1) & (depth > 0)
    return out.reshape(b, v, c, -1).transpose(-1, -2) * valid[..., None], valid


@pytest.mark.parametrize(("height", "width"), [(5, 7), (1, 4), (3, 1), (1, 1)])
def test_equals_grid_sample_values_and_gradients(height, width):
    g = torch.Generator().manual_seed(height * 10 + width)
    base = torch.randn(2, 3, 4, height, width, generator=g, dtype=F64)
    uv0 = torch.rand(2, 3, 40, 2, generator=g, dtype=F64) * 1.4 - 0.2  # some outside the image
    depth = torch.randn(2, 3, 40, generator=g, dtype=F64) + 1.0  # some behind the camera
    ours = [base.clone().requires_grad_(), uv0.clone().requires_grad_()]
    ref = [base.clone().requires_grad_(), uv0.clone().requires_grad_()]
    values, valid = sample_pixel_features(ours[0], ours[1], depth)
    expected, expected_valid = grid_sample_reference(ref[0], ref[1], depth)
    assert torch.equal(valid, expected_valid) and 0 < valid.sum() < valid.numel()
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(values.shape, generator=g, dtype=F64)
    (values * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(ours[0].grad, ref[0].grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours[1].grad, ref[1].grad, rtol=1e-10, atol=1e-10)


def test_any_memory_layout_of_the_feature_maps():
    g = torch.Generator().manual_seed(9)
    features = torch.randn(1, 2, 6, 4, 5, generator=g)
    channels_last = features.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    uv = torch.rand(1, 2, 10, 2, generator=g)
    depth = torch.ones(1, 2, 10)
    torch.testing.assert_close(
        sample_pixel_features(channels_last, uv, depth)[0],
        sample_pixel_features(features, uv, depth)[0],
    )
