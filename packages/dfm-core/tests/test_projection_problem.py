"""The built-in projection problem: exact posterior against independent references."""

import math

import numpy as np
import pytest
import torch

from dfm_core.metrics import energy_distance, sliced_wasserstein
from dfm_core.projection_problem import (
    GaussianMixture,
    ProjectionDataset,
    ProjectionProblem,
    SubspaceProjection,
    complement_projections,
    exact_posterior,
    random_projections,
)


def mixture_pdf(points: np.ndarray, prior: GaussianMixture) -> np.ndarray:
    """Mixture density by the textbook formula, in numpy float64 (independent of torch code)."""
    total = np.zeros(len(points))
    for w, mu, cov in zip(
        prior.weights.numpy(), prior.means.numpy(), prior.covariances.numpy(), strict=True
    ):
        diff = points - mu
        inv = np.linalg.inv(cov)
        norm = 1 / (2 * math.pi * math.sqrt(np.linalg.det(cov)))
        total += w * norm * np.exp(-0.5 * np.einsum("ni,ij,nj->n", diff, inv, diff))
    return total


def test_noiseless_posterior_matches_quadrature_along_the_line():
    # d=2, k=1: p(S | u.S = o) is the prior restricted to a line; integrate it numerically.
    problem = ProjectionProblem.build(2, 1, num_components=5, seed=3)
    u = torch.tensor([[[math.cos(0.7), math.sin(0.7)]]], dtype=torch.float64)
    o = torch.tensor([[0.4]], dtype=torch.float64)
    posterior = exact_posterior(problem.prior, o, u)
    normal = np.array([-math.sin(0.7), math.cos(0.7)])
    s = np.linspace(-4, 4, 200001)
    points = 0.4 * u[0, 0].numpy() + s[:, None] * normal
    density = mixture_pdf(points, problem.prior)
    density /= np.trapezoid(density, s)
    mean_s = np.trapezoid(density * s, s)
    var_s = np.trapezoid(density * (s - mean_s) ** 2, s)
    samples = posterior.sample(1, None)  # exercise sampling path shape
    assert samples.shape == (1, 1, 2)
    w, means, covs = posterior.weights[0], posterior.means[0], posterior.covariances[0]
    mix_mean = (w[:, None] * means).sum(0)
    mix_second = (w[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0)
    mix_cov = mix_second - mix_mean[:, None] * mix_mean[None, :]
    assert float(mix_mean @ torch.tensor(normal)) == pytest.approx(mean_s, abs=1e-6)
    assert float(torch.tensor(normal) @ mix_cov @ torch.tensor(normal)) == pytest.approx(
        var_s, rel=1e-5
    )
    assert float(mix_mean @ u[0, 0]) == pytest.approx(0.4, abs=1e-12)  # on the line


def test_noisy_posterior_matches_importance_sampling():
    problem = ProjectionProblem.build(
        3, 1, num_components=4, noise_std=0.3, seed=1, target_views="uniform"
    )
    g = torch.Generator().manual_seed(0)
    a = random_projections(1, 1, 3, g).double()
    o = torch.tensor([[0.5]], dtype=torch.float64)
    posterior = exact_posterior(problem.prior, o, a, noise_std=0.3)
    prior_samples = problem.prior.sample(400_000, g)
    log_lik = -0.5 * ((prior_samples @ a[0].T - o) ** 2).sum(-1) / 0.3**2
    weights = torch.softmax(log_lik, 0)
    reference_mean = (weights[:, None] * prior_samples).sum(0)
    mean = (posterior.weights[0, :, None] * posterior.means[0]).sum(0)
    assert torch.allclose(mean, reference_mean, atol=0.01)


def test_projections_are_orthonormal_and_complements_orthogonal():
    g = torch.Generator().manual_seed(0)
    p = random_projections(10, 3, 6, g, dtype=torch.float64)
    assert torch.allclose(
        p @ p.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(10, 3, 3), atol=1e-12
    )
    q = complement_projections(p, g)
    assert torch.allclose(
        q @ q.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(10, 3, 3), atol=1e-12
    )
    assert torch.allclose(
        q @ p.transpose(-1, -2), torch.zeros(10, 3, 3, dtype=torch.float64), atol=1e-12
    )
    with pytest.raises(ValueError, match="2k <= d"):
        complement_projections(random_projections(2, 2, 3, g))


def test_forward_model_and_dataset_are_consistent_and_deterministic():
    problem = ProjectionProblem.build(6, 3, num_components=6)
    batch, signal = problem.draw(5, torch.Generator().manual_seed(2))
    forward = SubspaceProjection()
    assert torch.allclose(forward(signal, batch.target_params), batch.target, atol=1e-5)
    assert torch.allclose(
        forward(signal, batch.context.params), batch.context.observation, atol=1e-5
    )
    stacked = torch.stack([batch.target_params, batch.novel_params], dim=1)
    assert forward(signal, stacked).shape == (5, 2, 3)
    dataset = ProjectionDataset(problem, batch_size=4)
    assert torch.equal(dataset[7].target, dataset[7].target) and not torch.equal(
        dataset[7].target, dataset[8].target
    )


def test_energy_distance_closed_forms():
    a, b = torch.zeros(1, 1, 2), torch.tensor([[[3.0, 4.0]]])
    assert energy_distance(a, b).item() == pytest.approx(10.0)  # 2|a-b| for point masses
    x = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(energy_distance(x, x), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    # Brute-force V-statistic for one pair of sets.
    y = x[1] + 0.5
    xs, ys = x[0].double(), y.double()
    ref = 2 * torch.stack([(p - q).norm() for p in xs for q in ys]).mean()
    ref -= torch.stack([(p - q).norm() for p in xs for q in xs]).mean()
    ref -= torch.stack([(p - q).norm() for p in ys for q in ys]).mean()
    assert energy_distance(x[0], y).item() == pytest.approx(ref.item(), rel=1e-10)
    shift = sliced_wasserstein(
        torch.zeros(1, 10, 2), torch.ones(1, 10, 2), generator=torch.Generator().manual_seed(0)
    )
    assert shift.item() == pytest.approx(1.0, rel=0.2)  # E[(u.1)^2]^(1/2) = 1 for unit u in 2-D
    with pytest.raises(ValueError, match="incompatible"):
        energy_distance(torch.zeros(3, 2), torch.zeros(3, 3))


def test_bad_problem_definitions_are_named():
    with pytest.raises(ValueError, match="observation_dim"):
        ProjectionProblem.build(2, 2)
    with pytest.raises(ValueError, match="target_views"):
        ProjectionProblem.build(3, 2)  # complement needs 2k <= d
    with pytest.raises(ValueError, match="num_components"):
        ProjectionProblem.build(2, 1, num_components=0)
