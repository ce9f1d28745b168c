"""Ray sampling: bins, spacings, stratification and hierarchical sampling against closed forms."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dfm_render.ray_sampling import SPACINGS, sample_along_rays, sample_pdf

NEAR = torch.tensor([1.0, 2.0], dtype=torch.float64)
FAR = torch.tensor([3.0, 10.0], dtype=torch.float64)


def test_linear_bin_centres():
    t = sample_along_rays(NEAR, FAR, 4, 3)
    assert t.shape == (2, 3, 4) and t.dtype == torch.float64
    for b in range(2):
        n, f = NEAR[b].item(), FAR[b].item()
        expected = [n + (f - n) * (k + 0.5) / 4 for k in range(4)]
        for r in range(3):
            np.testing.assert_allclose(t[b, r].numpy(), expected, rtol=0, atol=1e-12)


def test_inverse_depth_spacing_is_uniform_in_disparity():
    t = sample_along_rays(NEAR, FAR, 5, 2, spacing="inverse_depth")
    disparity = 1.0 / t
    steps = disparity[..., 1:] - disparity[..., :-1]
    # Evenly spaced, decreasing disparity; the first sample is half a bin inside 1/near.
    torch.testing.assert_close(steps, steps[..., :1].expand_as(steps))
    for b in range(2):
        bin_width = (1 / NEAR[b] - 1 / FAR[b]) / 5
        torch.testing.assert_close(steps[b], -bin_width.expand_as(steps[b]))
        torch.testing.assert_close(disparity[b, :, 0], (1 / NEAR[b] - bin_width / 2).expand(2))
    assert (t[..., 1:] > t[..., :-1]).all()
    assert (t >= NEAR[:, None, None]).all() and (t <= FAR[:, None, None]).all()


@pytest.mark.parametrize("spacing", SPACINGS)
def test_stratified_draws_stay_in_their_bins_and_are_seeded(spacing):
    g = torch.Generator().manual_seed(0)
    s = 6
    t = sample_along_rays(NEAR, FAR, s, 50, stratified=True, spacing=spacing, generator=g)
    again = sample_along_rays(
        NEAR,
        FAR,
        s,
        50,
        stratified=True,
        spacing=spacing,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(t, again)
    other = sample_along_rays(
        NEAR,
        FAR,
        s,
        50,
        stratified=True,
        spacing=spacing,
        generator=torch.Generator().manual_seed(1),
    )
    assert not torch.equal(t, other)
    # Bin edges computed independently, in the space where the bins are even.
    for b in range(2):
        n, f = NEAR[b].item(), FAR[b].item()
        if spacing == "linear":
            edges = np.linspace(n, f, s + 1)
        else:
            edges = 1.0 / np.linspace(1 / n, 1 / f, s + 1)
        for k in range(s):
            column = t[b, :, k].numpy()
            assert (column >= edges[k] - 1e-12).all() and (column <= edges[k + 1] + 1e-12).all()
            # The draws fill the bin rather than sitting on its centre.
            assert column.max() - column.min() > 0.5 * (edges[k + 1] - edges[k])
    assert (t[..., 1:] >= t[..., :-1]).all()


def test_per_ray_near_far_and_errors():
    near = torch.tensor([[1.0, 2.0, 3.0]])
    t = sample_along_rays(near, near + 1, 2, 3)
    torch.testing.assert_close(t, torch.tensor([[[1.25, 1.75], [2.25, 2.75], [3.25, 3.75]]]))
    with pytest.raises(ValueError, match=r"spacing must be one of \('linear', 'inverse_depth'\)"):
        sample_along_rays(NEAR, FAR, 4, 3, spacing="log")
    with pytest.raises(ValueError, match="far must be >= near"):
        sample_along_rays(FAR, NEAR, 4, 3)
    with pytest.raises(ValueError, match="near must be > 0"):
        sample_along_rays(NEAR - 5, FAR, 4, 3, spacing="inverse_depth")
    with pytest.raises(ValueError, match="far must be a"):
        sample_along_rays(NEAR, FAR[:1], 4, 3)


def test_importance_samples_fall_inside_the_only_weighted_bin():
    near, far = torch.tensor([2.0]), torch.tensor([6.0])
    t = sample_along_rays(near, far, 8, 2)  # centres of 0.5-wide bins
    weights = torch.zeros(1, 2, 8)
    weights[0, 0, 3] = 0.9  # interval [3.5, 4.0]
    weights[0, 1, 6] = 0.4  # interval [5.0, 5.5]
    for deterministic in (True, False):
        new = sample_pdf(
            t,
            weights,
            64,
            near=near,
            far=far,
            deterministic=deterministic,
            generator=torch.Generator().manual_seed(0),
        )
        assert new.shape == (1, 2, 64)
        assert (new[0, 0] >= 3.5).all() and (new[0, 0] <= 4.0).all()
        assert (new[0, 1] >= 5.0).all() and (new[0, 1] <= 5.5).all()
        assert (new[..., 1:] >= new[..., :-1]).all()


def test_empty_ray_samples_uniformly_between_near_and_far():
    near, far = torch.tensor([1.0]), torch.tensor([3.0])
    t = sample_along_rays(near, far, 4, 1)
    new = sample_pdf(t, torch.zeros(1, 1, 4), 4, near=near, far=far, deterministic=True)
    torch.testing.assert_close(new, torch.tensor([[[1.25, 1.75, 2.25, 2.75]]]))


def test_importance_samples_follow_the_piecewise_constant_pdf():
    # Kolmogorov-Smirnov test of 4000 draws against the CDF written independently in float64.
    near, far = torch.tensor([1.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)
    t = torch.tensor([[[1.2, 1.5, 2.3, 2.9, 3.6]]], dtype=torch.float64)
    weights = torch.tensor([[[0.1, 0.0, 0.5, 0.2, 0.3]]], dtype=torch.float64)
    edges = np.array([1.0, 1.35, 1.9, 2.6, 3.25, 4.0])
    mass = weights[0, 0].numpy() + 1e-5
    mass = mass / mass.sum()
    cdf_at_edges = np.concatenate([[0.0], np.cumsum(mass)])

    def cdf(x):
        return np.interp(x, edges, cdf_at_edges)

    new = sample_pdf(
        t, weights, 4000, near=near, far=far, generator=torch.Generator().manual_seed(3)
    )
    result = stats.kstest(new[0, 0].numpy(), cdf)
    assert result.pvalue > 0.01, result
    # The test has power: the same draws are far from the uniform distribution on [near, far].
    assert stats.kstest(new[0, 0].numpy(), stats.uniform(1.0, 3.0).cdf).pvalue < 1e-6
    # Deterministic levels hit the inverse CDF exactly.
    det = sample_pdf(t, weights, 10, near=near, far=far, deterministic=True)
    np.testing.assert_allclose(cdf(det[0, 0].numpy()), (np.arange(10) + 0.5) / 10, atol=1e-12)


@settings(max_examples=40, deadline=None, database=None)
@given(
    weights=st.lists(st.one_of(st.just(0.0), st.floats(0.0, 1.0)), min_size=1, max_size=7),
    deterministic=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sample_pdf_stays_sorted_inside_near_far(weights, deterministic, seed):
    near, far = torch.tensor([0.5]), torch.tensor([2.0])
    s = len(weights)
    t = sample_along_rays(near, far, s, 1)
    new = sample_pdf(
        t,
        torch.tensor(weights)[None, None],
        9,
        near=near,
        far=far,
        deterministic=deterministic,
        generator=torch.Generator().manual_seed(seed),
    )
    assert torch.isfinite(new).all() and (new >= 0.5).all() and (new <= 2.0).all()
    assert (new[..., 1:] >= new[..., :-1]).all()


def test_sample_pdf_is_detached_and_seeded():
    t = sample_along_rays(torch.tensor([1.0]), torch.tensor([2.0]), 4, 3).requires_grad_()
    weights = torch.rand(1, 3, 4, requires_grad=True)
    one = sample_pdf(
        t,
        weights * 2,
        5,
        near=torch.tensor([1.0]),
        far=torch.tensor([2.0]),
        generator=torch.Generator().manual_seed(7),
    )
    two = sample_pdf(
        t,
        weights * 2,
        5,
        near=torch.tensor([1.0]),
        far=torch.tensor([2.0]),
        generator=torch.Generator().manual_seed(7),
    )
    assert not one.requires_grad and one.grad_fn is None
    assert torch.equal(one, two)


def test_sample_pdf_shape_errors():
    with pytest.raises(ValueError, match="weights must have the shape of t"):
        sample_pdf(
            torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), 4, near=torch.zeros(1), far=torch.ones(1)
        )
    with pytest.raises(ValueError, match="t must be a"):
        sample_pdf(torch.zeros(2, 3), torch.zeros(2, 3), 4, near=torch.zeros(2), far=torch.ones(2))
