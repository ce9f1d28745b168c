"""Volume rendering against closed forms, pytorch3d's raymarcher and brute-force sums."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch3d.renderer import EmissionAbsorptionRaymarcher

from dfm_data.cameras import look_at
from dfm_data.worlds.raycast import intersect_sphere
from dfm_render.cameras import pixel_grid, project_points, rays_from_pixels
from dfm_render.pixel_features import sample_pixel_features
from dfm_render.ray_sampling import sample_along_rays, sample_pdf
from dfm_render.raymarching import (
    RayRendering,
    composite,
    distortion_loss,
    merge_samples,
    render_in_chunks,
)

F64 = torch.float64


def test_step_density_gives_the_step_depth_and_full_opacity():
    # Density 0 before z0 and huge after: the first sample past z0 takes all the weight.
    t = torch.linspace(0.5, 4.0, 351, dtype=F64).expand(1, 3, -1)  # spacing 0.01
    z0 = torch.tensor([1.234, 2.5, 3.777], dtype=F64)
    density = torch.where(t >= z0[None, :, None], 1e4, 0.0)
    colour = torch.rand(1, 3, 351, 3, dtype=F64)
    out = composite(density, colour, t)
    assert isinstance(out, RayRendering)
    torch.testing.assert_close(out.opacity, torch.ones(1, 3, dtype=F64))
    assert ((out.depth[0] - z0) >= 0).all() and ((out.depth[0] - z0) <= 0.01 + 1e-12).all()
    # The rendered colour is the colour of that first sample.
    first = (t[0] >= z0[:, None]).to(torch.int64).argmax(dim=-1)
    torch.testing.assert_close(out.features[0], colour[0, torch.arange(3), first])


def test_constant_slab_transmittance_colour_and_depth_in_closed_form():
    sigma, a, b, dt = 1.7, 1.0, 2.5, 1e-3
    t = torch.arange(0.0, 4.0, dt, dtype=F64)[None, None]  # slab edges fall on sample positions
    inside = (t >= a - dt / 2) & (t < b - dt / 2)
    density = torch.where(inside, sigma, 0.0)
    colour = torch.tensor([0.2, 0.9], dtype=F64).expand(*t.shape, 2)
    background = torch.tensor([1.0, 0.5], dtype=F64)
    out = composite(density, colour, t, background=background)
    trans = math.exp(-sigma * (b - a))
    torch.testing.assert_close(1 - out.opacity, torch.full((1, 1), trans, dtype=F64))
    expected = (1 - trans) * torch.tensor([0.2, 0.9], dtype=F64) + trans * background
    torch.testing.assert_close(out.features[0, 0], expected)
    # E[depth] = ∫_0^L (a + x) sigma e^{-sigma x} dx, up to the quadrature's left-edge bias (< dt).
    length = b - a
    depth = a * (1 - trans) + (1 - trans * (1 + sigma * length)) / sigma
    assert abs(out.depth.item() - depth) < dt


def test_agrees_with_pytorch3d_emission_absorption_raymarcher():
    g = torch.Generator().manual_seed(0)
    shape = (2, 5, 12)
    t = torch.rand(shape, generator=g, dtype=F64).cumsum(-1) + 0.5
    density = 3 * torch.rand(shape, generator=g, dtype=F64)
    density[0, 0] = 0.0  # an empty ray
    colour = torch.rand(*shape, 4, generator=g, dtype=F64)
    out = composite(density, colour, t, far_delta=0.3)
    # pytorch3d's "densities" are per-sample opacities alpha_i with T_i = prod_{j<i} (1 - alpha_j).
    delta = torch.cat([t[..., 1:] - t[..., :-1], torch.full_like(t[..., :1], 0.3)], -1)
    alpha = 1 - torch.exp(-density * delta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # alpha must be inside pytorch3d's [0, 1]
        ref = EmissionAbsorptionRaymarcher()(alpha[..., None], colour, eps=0.0)
    torch.testing.assert_close(out.features, ref[..., :4], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.opacity, ref[..., 4], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("far_delta", [1e10, 0.7])
def test_composite_gradcheck(far_delta):
    g = torch.Generator().manual_seed(1)
    t = (torch.rand(1, 2, 4, generator=g, dtype=F64).cumsum(-1) + 1).requires_grad_()
    density = torch.rand(1, 2, 4, generator=g, dtype=F64).requires_grad_()
    colour = torch.rand(1, 2, 4, 3, generator=g, dtype=F64).requires_grad_()
    background = torch.rand(3, generator=g, dtype=F64).requires_grad_()

    def fn(density, colour, t, background):
        out = composite(density, colour, t, far_delta=far_delta, background=background)
        return out.features, out.depth, out.opacity, out.weights

    assert torch.autograd.gradcheck(fn, (density, colour, t, background))


@settings(max_examples=40, deadline=None, database=None)
@given(
    density=st.lists(
        st.one_of(st.just(0.0), st.floats(0.0, 1e6), st.just(1e30)), min_size=1, max_size=6
    ),
    gaps=st.lists(st.floats(0.0, 3.0), min_size=6, max_size=6),
    far_delta=st.sampled_from([1e10, 0.25]),
)
def test_composite_invariants(density, gaps, far_delta):
    # Any non-negative densities (zeros, huge values, coincident samples): weights are a
    # sub-probability vector, 1 - opacity is the closed-form transmittance, and a constant
    # colour renders as colour * opacity.
    s = len(density)
    sigma = torch.tensor(density, dtype=F64)[None, None]
    t = (1.0 + torch.tensor(gaps[:s], dtype=F64).cumsum(0))[None, None]
    out = composite(sigma, torch.full((1, 1, s, 2), 0.3, dtype=F64), t, far_delta=far_delta)
    assert torch.isfinite(out.weights).all() and (out.weights >= 0).all()
    assert out.opacity.item() <= 1.0 + 1e-12
    delta = torch.cat([t.diff(dim=-1), torch.tensor([[[far_delta]]], dtype=F64)], -1)
    assert (1 - out.opacity).item() == pytest.approx(
        math.exp(-(sigma * delta).sum().item()), abs=1e-12
    )
    torch.testing.assert_close(out.features[0, 0], 0.3 * out.opacity[0, 0].expand(2))


def test_background_fills_the_remaining_transmittance():
    g = torch.Generator().manual_seed(2)
    t = torch.rand(3, 4, 6, generator=g).cumsum(-1)
    density = torch.rand(3, 4, 6, generator=g)
    density[1] = 0.0
    colour = torch.rand(3, 4, 6, 3, generator=g)
    bg = torch.tensor([0.1, 0.2, 0.3])
    plain = composite(density, colour, t, far_delta=0.5)
    with_bg = composite(density, colour, t, far_delta=0.5, background=bg)
    torch.testing.assert_close(
        with_bg.features, plain.features + (1 - plain.opacity)[..., None] * bg
    )
    torch.testing.assert_close(
        with_bg.features[1], bg.expand(4, 3)
    )  # empty rays see the background
    torch.testing.assert_close(plain.features[1], torch.zeros(4, 3))
    assert with_bg.depth.dtype == torch.float32


def test_weights_match_the_product_formula():
    g = torch.Generator().manual_seed(3)
    t = torch.rand(2, 3, 5, generator=g, dtype=F64).cumsum(-1)
    density = torch.rand(2, 3, 5, generator=g, dtype=F64)
    out = composite(density, torch.zeros(2, 3, 5, 1, dtype=F64), t, far_delta=1.0)
    delta = torch.cat([t.diff(dim=-1), torch.ones_like(t[..., :1])], -1)
    for b in range(2):
        for r in range(3):
            trans = 1.0
            for i in range(5):
                alpha = 1 - math.exp(-density[b, r, i].item() * delta[b, r, i].item())
                assert out.weights[b, r, i].item() == pytest.approx(trans * alpha, rel=1e-12)
                trans *= 1 - alpha
            assert out.depth[b, r].item() == pytest.approx(
                sum(out.weights[b, r, i].item() * t[b, r, i].item() for i in range(5)), rel=1e-12
            )


def test_composite_shape_errors():
    with pytest.raises(ValueError, match="t must have the shape of density"):
        composite(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3, 1), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="features must be"):
        composite(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4, 1), torch.zeros(1, 2, 3))


def test_merge_samples_orders_the_union():
    g = torch.Generator().manual_seed(4)
    t_a = torch.rand(2, 3, 4, generator=g).sort(-1).values
    t_b = torch.rand(2, 3, 5, generator=g).sort(-1).values
    t_b[0, 0, 0] = t_a[0, 0, 1]  # a tie keeps t_a first
    t, order = merge_samples(t_a, t_b)
    assert t.shape == order.shape == (2, 3, 9) and order.dtype == torch.int64
    assert (t[..., 1:] >= t[..., :-1]).all()
    torch.testing.assert_close(t, torch.cat([t_a, t_b], -1).gather(-1, order))
    for b in range(2):
        for r in range(3):
            assert sorted(order[b, r].tolist()) == list(range(9))
            assert t[b, r].tolist() == sorted(t_a[b, r].tolist() + t_b[b, r].tolist())
    assert order[0, 0].tolist().index(1) < order[0, 0].tolist().index(4)
    with pytest.raises(ValueError, match="share all but the last"):
        merge_samples(torch.zeros(2, 3, 4), torch.zeros(2, 2, 4))


def test_render_in_chunks_equals_one_call():
    g = torch.Generator().manual_seed(5)
    uv = torch.rand(2, 11, 2, generator=g)
    t = torch.linspace(1, 3, 7).expand(2, 11, 7)
    seen = []

    def render(uv_chunk):
        seen.append(uv_chunk.shape[1])
        r = uv_chunk.shape[1]
        density = (uv_chunk.sum(-1, keepdim=True) * t[:, :r]).sin().abs()  # (B, r, S)
        colour = uv_chunk[:, :, None, :].expand(-1, -1, 7, -1)  # (B, r, S, 2)
        return composite(density, colour, t[:, :r]), {"uv": uv_chunk, "tag": "x"}

    whole = render(uv)
    for chunk in (1, 3, 11, 20):
        seen.clear()
        parts = render_in_chunks(render, uv, chunk)
        assert max(seen) <= chunk and sum(seen) == 11
        assert parts[1]["tag"] == "x"
        for name in ("features", "depth", "opacity", "weights", "t"):
            torch.testing.assert_close(getattr(parts[0], name), getattr(whole[0], name))
        torch.testing.assert_close(parts[1]["uv"], uv)
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        render_in_chunks(render, uv, 0)
    with pytest.raises(ValueError, match="ray dimension"):
        render_in_chunks(lambda x: x.sum(), uv, 4)


def brute_force_distortion(weights, t, near, far):
    """Eq. 15 of mip-NeRF 360 as a double loop over the documented intervals."""
    s = [(x - near) / (far - near) for x in t]
    edges = [0.0] + [(s[i] + s[i + 1]) / 2 for i in range(len(s) - 1)] + [1.0]
    mids = [(edges[i] + edges[i + 1]) / 2 for i in range(len(s))]
    total = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            total += weights[i] * weights[j] * abs(mids[i] - mids[j])
        total += weights[i] ** 2 * (edges[i + 1] - edges[i]) / 3
    return total


def test_distortion_loss_equals_the_double_sum():
    g = torch.Generator().manual_seed(6)
    near = torch.tensor([0.5, 1.0], dtype=F64)
    far = torch.tensor([3.0, 6.0], dtype=F64)
    t = (
        near[:, None, None]
        + (far - near)[:, None, None] * torch.rand(2, 3, 9, generator=g, dtype=F64).sort(-1).values
    )
    weights = torch.rand(2, 3, 9, generator=g, dtype=F64) / 9
    loss = distortion_loss(weights, t, near, far)
    assert loss.shape == (2, 3)
    for b in range(2):
        for r in range(3):
            ref = brute_force_distortion(
                weights[b, r].tolist(), t[b, r].tolist(), near[b].item(), far[b].item()
            )
            assert loss[b, r].item() == pytest.approx(ref, rel=1e-12)


def test_distortion_loss_of_one_bin_is_a_third_of_its_width_and_has_gradients():
    # All weight on one bin-centre sample of 4 even bins: only the w^2 d / 3 term remains.
    t = torch.tensor([[[1.25, 1.75, 2.25, 2.75]]], dtype=F64)
    weights = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]], dtype=F64, requires_grad=True)
    loss = distortion_loss(
        weights, t, torch.tensor([1.0], dtype=F64), torch.tensor([3.0], dtype=F64)
    )
    assert loss.item() == pytest.approx(0.25 / 3, rel=1e-12)
    loss.sum().backward()
    assert weights.grad.abs().sum() > 0


def render_sphere(device, dtype, *, stratified=False, generator=None):
    """Coarse + importance pass over an opaque unit sphere seen from (0, 0, -3), 8x8 image."""
    c2w = torch.from_numpy(look_at(np.array([0.0, 0.0, -3.0]), np.zeros(3), np.array([0, -1.0, 0])))
    c2w = c2w.to(device, dtype)[None]
    k = torch.tensor([[1.2, 0, 0.5], [0, 1.2, 0.5], [0, 0, 1]], device=device, dtype=dtype)[None]
    rays = rays_from_pixels(c2w, k, pixel_grid(8, 8, device=device, dtype=dtype)[None])
    near = torch.tensor([1.0], device=device, dtype=dtype)
    far = torch.tensor([5.0], device=device, dtype=dtype)

    def density(t):  # (1, R, S): 1e3 inside the sphere, 0 outside
        inside = rays.at(t).norm(dim=-1) < 1.0
        return torch.where(inside, 1e3, 0.0).to(dtype)

    def colour(t):  # (1, R, S, 3): the point itself, so features are depth-dependent
        return rays.at(t)

    t_c = sample_along_rays(near, far, 32, 64, stratified=stratified, generator=generator)
    coarse = composite(density(t_c), colour(t_c), t_c)
    t_f = sample_pdf(
        t_c,
        coarse.weights,
        64,
        near=near,
        far=far,
        deterministic=not stratified,
        generator=generator,
    )
    t, order = merge_samples(t_c, t_f)
    both = torch.cat([density(t_c), density(t_f)], -1).gather(-1, order)
    torch.testing.assert_close(both, density(t))  # reordering cached outputs == re-evaluating
    fine = composite(both, colour(t), t)
    return rays, fine, distortion_loss(fine.weights, fine.t, near, far)


def test_sphere_depth_and_opacity_end_to_end():
    rays, out, dist = render_sphere("cpu", F64)
    o, d = rays.origins[0].numpy(), rays.directions[0].numpy()
    t_hit = intersect_sphere(o, d, np.zeros(3), 1.0)  # z-depth, because d has camera-z 1
    # Distance of each ray's line from the centre: keep rays clearly hitting or missing.
    closest = np.linalg.norm(np.cross(d, -o), axis=-1) / np.linalg.norm(d, axis=-1)
    hit, miss = closest < 0.95, closest > 1.05
    assert hit.sum() > 10 and miss.sum() > 10
    depth, opacity = out.depth[0].numpy(), out.opacity[0].numpy()
    # The coarse bins are 0.125 deep; importance samples resolve the surface to a fraction of that.
    np.testing.assert_allclose(depth[hit], t_hit[hit], atol=0.02)
    np.testing.assert_allclose(opacity[hit], 1.0, atol=1e-6)
    np.testing.assert_allclose(opacity[miss], 0.0, atol=1e-12)
    # The rendered "colour" is the first surface point: on the unit sphere.
    np.testing.assert_allclose(
        np.linalg.norm(out.features[0].numpy()[hit], axis=-1), 1.0, atol=0.02
    )
    assert (dist[0].numpy()[miss] == 0).all() and (dist[0].numpy()[hit] > 0).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cuda_matches_cpu(dtype):
    for stratified in (False, True):
        cpu = render_sphere(
            "cpu", dtype, stratified=stratified, generator=torch.Generator().manual_seed(0)
        )
        # A CPU generator drives CUDA tensors: the draws are identical on both devices.
        cuda = render_sphere(
            "cuda", dtype, stratified=stratified, generator=torch.Generator().manual_seed(0)
        )
        for a, b in zip(
            (cpu[1].depth, cpu[1].opacity, cpu[1].features, cpu[2]),
            (cuda[1].depth, cuda[1].opacity, cuda[1].features, cuda[2]),
            strict=True,
        ):
            # float32: the density is a step, so a last-bit difference in a point's radius can move
            # the surface sample by one fine step (~0.01); float64 agrees to rounding.
            tol = 2e-2 if dtype == torch.float32 else 1e-8
            torch.testing.assert_close(b.cpu(), a, atol=tol, rtol=tol)
    features = torch.rand(1, 2, 4, 6, 6, dtype=dtype)
    points = torch.randn(1, 30, 3, dtype=dtype) + torch.tensor([0.0, 0.0, 3.0], dtype=dtype)
    c2w = torch.eye(4, dtype=dtype).repeat(1, 2, 1, 1)
    c2w[0, 1, 0, 3] = 0.5
    k = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]], dtype=dtype).expand(1, 2, 3, 3)
    results = []
    for device in ("cpu", "cuda"):
        proj = project_points(points.to(device), c2w.to(device), k.to(device))
        results.append(sample_pixel_features(features.to(device), proj.uv, proj.depth))
    torch.testing.assert_close(results[1][0].cpu(), results[0][0], atol=1e-5, rtol=1e-5)
    assert torch.equal(results[1][1].cpu(), results[0][1])
