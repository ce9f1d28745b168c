"""The built-in projection problem: exact posterior against independent references."""

import math

import numpy as np
import pytest
import torch

from dfm_core.diffusion import Context
from dfm_core.metrics import energy_distance, sliced_wasserstein
from dfm_core.projection_fit import posterior_samples, score_samples
from dfm_core.projection_models import (
    FourierFeatures,
    ProjectionPredictor,
    RegressionBaseline,
    context_correction,
)
from dfm_core.projection_problem import (
    GaussianMixture,
    ProjectionDataset,
    ProjectionProblem,
    SubspaceProjection,
    complement_projections,
    exact_denoiser,
    exact_posterior,
    random_projections,
)
from dfm_core.sampling import sample_ddim, sample_dpmpp_2m
from dfm_core.schedules import NoiseSchedule


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


@pytest.mark.parametrize("noise_std", [0.0, 0.2])
def test_exact_denoiser_matches_importance_weighted_posterior_samples(noise_std):
    # E[S | O_ctxt, x_t] by self-normalised importance sampling: draw (S, O_trgt) from the
    # exact posterior and the observation model, weight by N(x_t; a O_trgt, s^2 I).
    problem = ProjectionProblem.build(4, 2, num_components=3, noise_std=noise_std, seed=2)
    g = torch.Generator().manual_seed(0)
    context_params = random_projections(1, 2, 4, g)
    context_obs = problem.observe(problem.prior.sample(1, g), context_params, g)
    posterior = exact_posterior(problem.prior, context_obs, context_params, noise_std)
    target_params = complement_projections(context_params, g)
    schedule = NoiseSchedule.from_name("cosine", 100)
    denoise = exact_denoiser(posterior, target_params, schedule, noise_std)
    signals = posterior.sample(400_000, g)[0]  # (N, d)
    targets = signals @ target_params[0].double().T
    targets = targets + noise_std * torch.randn(targets.shape, generator=g, dtype=torch.float64)
    for t in (10, 50, 90):
        alpha_bar = schedule.alpha_bar(torch.tensor(float(t)))
        x_t = alpha_bar.sqrt() * targets[:1] + (1 - alpha_bar).sqrt() * 0.5  # a fixed state
        log_lik = -0.5 * ((x_t - alpha_bar.sqrt() * targets) ** 2).sum(-1) / (1 - alpha_bar)
        weights = torch.softmax(log_lik, 0)[:, None]
        out = denoise(x_t.float(), torch.tensor([float(t)]))
        assert out.x0.shape == (1, 2) and out.signal.shape == (1, 4)
        effective = 1 / weights.square().sum()
        assert effective > 500, "too few effective samples for the reference"
        assert torch.allclose(out.signal[0], (weights * signals).sum(0), atol=0.02)
        assert torch.allclose(out.x0[0], (weights * targets).sum(0), atol=0.02)


@pytest.mark.parametrize("dims", [(2, 1, 5), (6, 3, 6)])
def test_ddim_with_the_exact_denoiser_samples_the_exact_posterior(dims):
    # Proposition 1 with a perfect network: 50 DDIM steps over the target observation
    # turn the Bayes-optimal denoiser into exact posterior samples of S, so the energy
    # distance to exact samples is at the noise floor (exact vs exact).
    d, k, components = dims
    problem = ProjectionProblem.build(d, k, num_components=components, seed=0)
    g = torch.Generator().manual_seed(5)
    contexts, n = 48, 48
    context_params = random_projections(contexts, k, d, g)
    context_obs = problem.observe(problem.prior.sample(contexts, g), context_params, g)
    posterior = exact_posterior(problem.prior, context_obs, context_params)
    exact, exact_repeat = posterior.sample(n, g), posterior.sample(n, g)
    repeated = GaussianMixture(
        posterior.weights.repeat_interleave(n, 0),
        posterior.means.repeat_interleave(n, 0),
        posterior.covariances.repeat_interleave(n, 0),
    )
    target_params = complement_projections(context_params.repeat_interleave(n, 0), g)
    schedule = NoiseSchedule.from_name("cosine", 1000)
    denoise = exact_denoiser(repeated, target_params, schedule)
    out = sample_ddim(denoise, schedule, (contexts * n, k), steps=50, generator=g)
    dfm = out.signal.reshape(contexts, n, d)
    floor = energy_distance(exact_repeat, exact).mean()
    assert energy_distance(dfm, exact).mean() < 1.25 * floor
    # and the test has power: the posterior mean (one answer per context) is far off
    mean = (posterior.weights[..., None] * posterior.means).sum(1)
    assert energy_distance(mean[:, None].expand(-1, n, -1), exact).mean() > 5 * floor


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


def _rotate(params: torch.Tensor, obs: torch.Tensor, g: torch.Generator):
    """The same measurement in another orthonormal basis: (R A, R O), R random orthogonal."""
    k = params.shape[1]
    rotation, _ = torch.linalg.qr(torch.randn(params.shape[0], k, k, generator=g))
    return rotation @ params, (rotation @ obs[..., None]).squeeze(-1)


@pytest.mark.parametrize("preconditioned", [False, True])
def test_predictors_do_not_depend_on_the_basis_of_a_view(preconditioned):
    # A k x d parameter matrix and any rotation of its rows describe one measurement:
    # the predictor's signal must not change (up to float32 round-off).
    d, k, batch = 4, 2, 5
    g = torch.Generator().manual_seed(0)
    schedule = NoiseSchedule.from_name("cosine", 100)
    torch.manual_seed(0)
    predictor = ProjectionPredictor(
        d,
        k,
        100,
        hidden=32,
        depth=2,
        fourier_features=8,
        schedule=schedule if preconditioned else None,
        context_consistent=True,
    )
    baseline = RegressionBaseline(d, k, hidden=32, depth=2, fourier_features=8)
    context_params = random_projections(batch, k, d, g)
    context_obs = torch.randn(batch, k, generator=g)
    target_params = complement_projections(context_params, g)
    noisy = torch.randn(batch, k, generator=g)
    t = torch.tensor([0.0, 10.0, 50.0, 80.0, 99.0])
    signal = predictor(Context(context_obs, context_params), noisy, t, target_params)
    rotated_context = Context(*reversed(_rotate(context_params, context_obs, g)))
    rotated_target_params, rotated_noisy = _rotate(target_params, noisy, g)
    rotated_signal = predictor(rotated_context, rotated_noisy, t, rotated_target_params)
    assert torch.allclose(signal, rotated_signal, atol=1e-5)
    # context-consistent: the signal reproduces the context exactly
    assert torch.allclose((context_params @ signal[..., None]).squeeze(-1), context_obs, atol=1e-5)
    assert torch.allclose(
        baseline.predict(Context(context_obs, context_params)),
        baseline.predict(rotated_context),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="noisy_target"):
        predictor(Context(context_obs, context_params), noisy[:, :1], t, target_params)


def test_preconditioned_predictor_is_near_identity_at_low_noise():
    # c_skip -> 1 and c_out -> sigma as sigma -> 0: at t = 0 the target view of the
    # predicted signal is x_t / sqrt(abar) up to sigma_min times the raw network output.
    d, k = 4, 2
    g = torch.Generator().manual_seed(1)
    schedule = NoiseSchedule.from_name("cosine", 1000)
    torch.manual_seed(1)
    predictor = ProjectionPredictor(d, k, 1000, hidden=32, depth=2, schedule=schedule)
    context_params = random_projections(64, k, d, g)
    target_params = complement_projections(context_params, g)
    context = Context(torch.randn(64, k, generator=g), context_params)
    noisy = torch.randn(64, k, generator=g)
    t = torch.zeros(64)
    x0 = (target_params @ predictor(context, noisy, t, target_params)[..., None]).squeeze(-1)
    alpha_bar = schedule.alpha_bar(t).float()[:, None]
    error = (x0 - noisy / alpha_bar.sqrt()).abs().max()
    assert error < 10 * schedule.sigma_min
    t = torch.full((64,), 999.0)  # and at high noise the network output is all there is
    x0 = (target_params @ predictor(context, noisy, t, target_params)[..., None]).squeeze(-1)
    assert (x0 - noisy / schedule.alpha_bar(t).float()[:, None].sqrt()).abs().max() > 1


def test_preconditioning_leaves_what_the_target_does_not_observe_unscaled():
    # (I - A_t^T A_t) S is the raw network output at every noise level; only the target
    # view is c_skip x + c_out A_t raw (closed form, checked here with a stub network).
    d, k, batch = 5, 1, 8
    g = torch.Generator().manual_seed(2)
    schedule = NoiseSchedule.from_name("cosine", 1000)
    predictor = ProjectionPredictor(d, k, 1000, hidden=8, depth=1, schedule=schedule)
    raw = torch.randn(batch, d, generator=g)

    class Stub(torch.nn.Module):
        def forward(self, features):
            return raw

    predictor.mlp = Stub()
    context_params = random_projections(batch, k, d, g)
    target_params = complement_projections(context_params, g)
    context = Context(torch.randn(batch, k, generator=g), context_params)
    noisy = torch.randn(batch, k, generator=g)
    for step in (0.0, 300.0, 999.0):
        t = torch.full((batch,), step)
        signal = predictor(context, noisy, t, target_params).double()
        a = target_params.double()
        projector = a.transpose(-1, -2) @ a
        outside = signal - (projector @ signal[..., None]).squeeze(-1)
        raw64 = raw.double()
        assert torch.allclose(
            outside, raw64 - (projector @ raw64[..., None]).squeeze(-1), atol=1e-5
        )
        abar = schedule.alpha_bar(t.double())[:, None]
        sigma_sq = (1 - abar) / abar
        c_skip, c_out = 1 / (sigma_sq + 1), (sigma_sq / (sigma_sq + 1)).sqrt()
        view = (a @ signal[..., None]).squeeze(-1)
        expected = c_skip * noisy.double() / abar.sqrt() + c_out * (a @ raw64[..., None]).squeeze(
            -1
        )
        assert torch.allclose(view, expected, atol=1e-5)


def test_fourier_features_are_fixed_saved_and_optional():
    torch.manual_seed(0)
    lift = FourierFeatures(3, 5, scale=2.0)
    x = torch.randn(7, 3)
    out = lift(x)
    assert out.shape == (7, 3 + 10) and lift.out_features == 13
    angles = 2 * math.pi * x.double() @ lift.frequencies.double()
    assert torch.allclose(out[:, 3:8].double(), angles.sin(), atol=1e-5)
    assert torch.allclose(out[:, :3], x)
    assert "frequencies" in lift.state_dict()
    assert not any(p.requires_grad for p in lift.parameters())
    assert torch.equal(FourierFeatures(3, 0)(x), x)
    with pytest.raises(ValueError, match="num_frequencies"):
        FourierFeatures(3, -1)


def _mixture(weights, means, covariances):
    return GaussianMixture(
        torch.tensor(weights, dtype=torch.float64),
        torch.tensor(means, dtype=torch.float64),
        torch.tensor(covariances, dtype=torch.float64),
    )


def test_gaussian_mixture_validates_its_parameters():
    eye = [[1.0, 0.0], [0.0, 1.0]]
    _mixture([0.3, 0.7], [[0.0, 0.0], [1.0, 1.0]], [eye, eye])  # valid
    cases = [
        (
            ([0.3, 0.6], [[0, 0], [1, 1]], [eye, eye]),
            "weights: expected non-negative weights summing to 1",
        ),
        (([-0.3, 1.3], [[0, 0], [1, 1]], [eye, eye]), "weights: expected non-negative"),
        (([0.3, 0.7], [[0, 0]], [eye, eye]), r"means: expected shape \(2,\) \+ \(d,\)"),
        (([0.3, 0.7], [[0, 0], [1, 1]], [eye]), r"covariances: expected shape \(2, 2, 2\)"),
        (
            ([0.3, 0.7], [[0, 0], [1, 1]], [eye, [[1.0, 0.5], [0.0, 1.0]]]),
            "covariances: expected symmetric",
        ),
        (
            ([0.3, 0.7], [[0, 0], [1, 1]], [eye, [[1.0, 0.0], [0.0, -1.0]]]),
            "covariances: expected positive semi-definite",
        ),
        (([0.3, 0.7], [[0, float("nan")], [1, 1]], [eye, eye]), "means: contains NaN"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=f"GaussianMixture.{message}"):
            _mixture(*args)


def test_exact_posterior_and_problem_validate_their_inputs():
    prior = ProjectionProblem.build(3, 1, num_components=2, seed=0).prior
    a = random_projections(4, 1, 3, torch.Generator().manual_seed(0))
    o = torch.zeros(4, 1)
    with pytest.raises(ValueError, match=r"projection: expected shape \(B, k, 3\)"):
        exact_posterior(prior, o, a[..., :2])
    with pytest.raises(ValueError, match=r"observation: expected shape \(4, 1\)"):
        exact_posterior(prior, torch.zeros(4, 2), a)
    with pytest.raises(ValueError, match="noise_std: expected a finite number >= 0"):
        exact_posterior(prior, o, a, noise_std=-0.1)
    with pytest.raises(ValueError, match="prior: expected an unbatched mixture"):
        exact_posterior(exact_posterior(prior, o, a), o, a)
    with pytest.raises(ValueError, match="projection: A Sigma_j A"):
        exact_posterior(prior, o, torch.zeros(4, 1, 3))  # rank-deficient, noiseless
    posterior = exact_posterior(prior, o, a)
    schedule = NoiseSchedule.from_name("cosine", 10)
    with pytest.raises(ValueError, match=r"target_params: expected shape \(4, k, 3\)"):
        exact_denoiser(posterior, a[:2], schedule)
    with pytest.raises(ValueError, match="posterior: expected a mixture batched"):
        exact_denoiser(prior, a, schedule)
    with pytest.raises(ValueError, match="noise_std"):
        exact_denoiser(posterior, a, schedule, noise_std=float("nan"))
    with pytest.raises(ValueError, match="signal_dim: 4 does not match the prior's dimension 3"):
        ProjectionProblem(prior, 4, 1)
    with pytest.raises(ValueError, match="observation_dim: expected 1 <= k < d = 3"):
        ProjectionProblem(prior, 3, 3, target_views="uniform")
    with pytest.raises(ValueError, match="noise_std"):
        ProjectionProblem(prior, 3, 1, noise_std=-1.0)
    with pytest.raises(ValueError, match="prior: expected an unbatched mixture"):
        ProjectionProblem(posterior, 3, 1)


@pytest.mark.parametrize("noise_std", [0.05, 0.2, 1.0])
def test_context_correction_is_the_gaussian_posterior_mean(noise_std):
    # Independent reference: condition the joint Gaussian of (S, O) in float64 by the
    # block formula on the (d + k)-dimensional covariance, for a general (non-orthonormal) A.
    d, k, batch, tau_sq = 5, 2, 6, 0.7
    g = torch.Generator().manual_seed(0)
    s_hat = torch.randn(batch, d, generator=g, dtype=torch.float64)
    a = torch.randn(batch, k, d, generator=g, dtype=torch.float64)
    o = torch.randn(batch, k, generator=g, dtype=torch.float64)
    out = context_correction(s_hat, a, o, noise_std, tau_sq)
    for i in range(batch):
        joint = np.zeros((d + k, d + k))
        joint[:d, :d] = tau_sq * np.eye(d)
        joint[:d, d:] = tau_sq * a[i].numpy().T
        joint[d:, :d] = tau_sq * a[i].numpy()
        joint[d:, d:] = tau_sq * a[i].numpy() @ a[i].numpy().T + noise_std**2 * np.eye(k)
        mean_o = a[i].numpy() @ s_hat[i].numpy()
        expected = s_hat[i].numpy() + joint[:d, d:] @ np.linalg.solve(
            joint[d:, d:], o[i].numpy() - mean_o
        )
        np.testing.assert_allclose(out[i].numpy(), expected, atol=1e-12)


def test_context_correction_without_noise_reproduces_the_context_exactly():
    d, k, batch = 4, 2, 5
    g = torch.Generator().manual_seed(1)
    a = random_projections(batch, k, d, g, dtype=torch.float64)
    s_hat = torch.randn(batch, d, generator=g, dtype=torch.float64)
    o = torch.randn(batch, k, generator=g, dtype=torch.float64)
    for tau_sq in (0.1, 1.0, 9.0):
        out = context_correction(s_hat, a, o, 0.0, tau_sq)
        assert torch.allclose((a @ out[..., None]).squeeze(-1), o, atol=1e-12)
        # ... by the orthogonal projection: the part of S_hat orthogonal to the context stays.
        residual = o - (a @ s_hat[..., None]).squeeze(-1)
        hard = s_hat + (a.transpose(-1, -2) @ residual[..., None]).squeeze(-1)
        assert torch.allclose(out, hard, atol=1e-12)
    # With noise the residual shrinks by exactly tau^2 / (tau^2 + s^2) for orthonormal rows.
    out = context_correction(s_hat, a, o, 0.5, 1.0)
    before = o - (a @ s_hat[..., None]).squeeze(-1)
    after = o - (a @ out[..., None]).squeeze(-1)
    assert torch.allclose(after, before * 0.25 / 1.25, atol=1e-12)


def test_noisy_consistent_predictor_learns_its_prior_variance():
    problem = ProjectionProblem.build(4, 2, num_components=2, noise_std=0.2, seed=0)
    predictor = ProjectionPredictor(
        4, 2, 10, hidden=8, depth=1, context_consistent=True, noise_std=0.2
    )
    batch, _ = problem.draw(3, torch.Generator().manual_seed(0))
    signal = predictor(batch.context, batch.target, torch.zeros(3), batch.target_params)
    signal.square().sum().backward()
    assert predictor.log_consistency_var.grad is not None
    assert predictor.log_consistency_var.grad.abs() > 0
    # A noiseless predictor has no such parameter (state dicts of 0.2 models still load).
    assert "log_consistency_var" not in dict(
        ProjectionPredictor(4, 2, 10, hidden=8, depth=1, context_consistent=True).named_parameters()
    )


def test_problem_family_covers_the_documented_ranges():
    problems = [ProjectionProblem.from_family(seed) for seed in range(200)]
    dims = {(p.signal_dim, p.observation_dim) for p in problems}
    assert {d for d, _ in dims} == set(range(2, 9))
    assert all(1 <= k < d for d, k in dims)
    assert {p.prior.weights.shape[0] for p in problems} == set(range(2, 7))
    assert {p.noise_std for p in problems} == {0.0, 0.05, 0.2}
    strongest = []
    for p in problems:
        assert p.target_views == (
            "complement" if 2 * p.observation_dim <= p.signal_dim else "uniform"
        )
        cov = p.prior.covariances
        eigenvalues = torch.linalg.eigvalsh(cov)
        assert bool((eigenvalues[:, -1] / eigenvalues[:, 0] > 1.01).all())  # anisotropic
        std = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
        correlation = cov / (std[..., :, None] * std[..., None, :])
        off_diagonal = correlation - torch.diag_embed(torch.ones_like(std))
        strongest.append(off_diagonal.abs().amax((-2, -1)))
    # Randomly rotated axes: components are correlated, rarely axis-aligned by chance.
    assert float((torch.cat(strongest) > 0.05).double().mean()) > 0.9
    again = ProjectionProblem.from_family(5)
    assert torch.equal(again.prior.means, problems[5].prior.means)
    assert again.describe() == problems[5].describe()
    with pytest.raises(ValueError, match="seed: expected a non-negative int"):
        ProjectionProblem.from_family(-1)


def test_posterior_samples_exact_dfm_is_the_sampler_run_on_the_exact_denoiser():
    problem = ProjectionProblem.build(3, 1, num_components=3, noise_std=0.05, seed=2)
    schedule = NoiseSchedule.from_name("cosine", 100)
    m, n, seed = 3, 4, 7
    samples = posterior_samples(
        problem,
        None,
        None,
        num_contexts=m,
        num_samples=n,
        steps=5,
        seed=seed,
        exact_dfm=True,
        schedule=schedule,
        sampler="dpmpp_2m",
    )
    # Redo it by hand with the documented seeding: contexts, exact sets, target views.
    g = torch.Generator().manual_seed(seed)
    signal = problem.prior.sample(m, g)
    params = random_projections(m, 1, 3, g)
    obs = problem.observe(signal, params, g)
    posterior = exact_posterior(problem.prior, obs, params, 0.05)
    posterior.sample(n, g), posterior.sample(n, g)
    target = problem.target_params(params.repeat_interleave(n, 0), g)
    repeated = GaussianMixture(
        *(
            x.repeat_interleave(n, 0)
            for x in (posterior.weights, posterior.means, posterior.covariances)
        )
    )
    out = sample_dpmpp_2m(
        exact_denoiser(repeated, target, schedule, 0.05),
        schedule,
        (m * n, 1),
        steps=5,
        generator=torch.Generator().manual_seed(seed + 1),
        dtype=torch.float64,
    )
    assert torch.allclose(samples["exact_dfm"], out.signal.reshape(m, n, 3), atol=1e-12)
    with pytest.raises(ValueError, match="schedule: needed for exact_dfm"):
        posterior_samples(problem, None, None, num_contexts=1, num_samples=1, exact_dfm=True)


def test_score_medians_are_per_context_ratios():
    g = torch.Generator().manual_seed(0)
    samples = {
        name: torch.randn(5, 6, 2, generator=g, dtype=torch.float64)
        for name in ("exact", "exact_repeat", "dfm", "exact_dfm")
    }
    samples["dfm"] = samples["dfm"] * 2
    scores = score_samples(samples)
    means = {}
    for name in ("exact_repeat", "dfm", "exact_dfm"):
        per_context = []
        for c in range(5):
            x, y = samples[name][c].numpy(), samples["exact"][c].numpy()
            dist = lambda a, b: np.mean(np.linalg.norm(a[:, None] - b[None], axis=-1))  # noqa: E731
            per_context.append(2 * dist(x, y) - dist(x, x) - dist(y, y))
        means[name] = np.array(per_context)
    floor = means["exact_repeat"]
    assert scores.noise_floor == pytest.approx(floor.mean(), rel=1e-12)
    assert scores.dfm_median_ratio == pytest.approx(np.median(means["dfm"] / floor), rel=1e-12)
    assert scores.exact_dfm_median_ratio == pytest.approx(
        np.median(means["exact_dfm"] / floor), rel=1e-12
    )
    assert scores.relative_ratio == pytest.approx(
        means["dfm"].mean() / means["exact_dfm"].mean(), rel=1e-12
    )
    assert math.isnan(scores.baseline) and math.isnan(scores.baseline_median_ratio)


def test_names_moved_out_of_the_module_still_import_with_a_warning() -> None:
    import dfm_core.projection_fit
    import dfm_core.projection_problem as old_home

    with pytest.warns(FutureWarning, match="dfm_core.projection_fit.score_samples"):
        moved = old_home.score_samples
    assert moved is dfm_core.projection_fit.score_samples
    with pytest.raises(AttributeError, match="no_such_name"):
        old_home.no_such_name  # noqa: B018
