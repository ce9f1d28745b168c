"""A built-in inverse problem with an exact posterior, to test DFM against the truth.

Signals S in R^d are drawn from a Gaussian mixture. The forward model projects S onto
a k-dimensional subspace chosen by the parameter phi (a k x d matrix with orthonormal
rows), optionally with Gaussian observation noise:

    O = forward(S, phi) + noise = phi @ S + noise_std * eps

One observation (k < d) leaves S ambiguous, so p(S | O^ctxt; phi^ctxt) is a genuine
distribution -- a Gaussian mixture whose weights, means and covariances have closed
forms (``exact_posterior``). The network is trained from observations only (context,
target, novel); it never sees S. Proposition 1 of the DFM supplementary says its
samples of S should then follow that posterior, which ``evaluate`` measures.

DFM's final signal is the network's estimate given the context and the (sampled)
target observation, so it is an exact posterior *sample* only when context and target
observations together determine S (2k >= d here). With 2k < d the residual ambiguity
is averaged away; this is the same assumption as the paper's Proposition 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dfm_core.data_order import derive_seed
from dfm_core.diffusion import Context, DFMBatch, ForwardDiffusion
from dfm_core.guidance import classifier_free_guidance
from dfm_core.metrics import energy_distance
from dfm_core.optim import OptimizerConfig
from dfm_core.sampling import Denoised, sample
from dfm_core.schedules import NoiseSchedule
from dfm_core.trainer import Trainer, TrainerConfig
from dfm_core.tree import tree_cat, tree_to

__all__ = [
    "FittedModels",
    "FourierFeatures",
    "GaussianMixture",
    "PosteriorScores",
    "ProjectionDataset",
    "ProjectionFitConfig",
    "ProjectionModelConfig",
    "ProjectionPredictor",
    "ProjectionProblem",
    "RegressionBaseline",
    "SubspaceProjection",
    "collate_projection",
    "complement_projections",
    "exact_denoiser",
    "exact_posterior",
    "fit_projection_models",
    "posterior_samples",
    "problem_record",
    "random_projections",
    "score_samples",
    "train_projection_models",
]


_INIT_DFM, _INIT_BASELINE = 1000, 1001  # seed-stream tags of the initial weights
_FAMILY = 1002  # seed-stream tag of ProjectionProblem.from_family


@dataclass(frozen=True)
class GaussianMixture:
    """A Gaussian mixture in R^d, batched over a leading dimension or not.

    Attributes:
        weights: shape (..., K), non-negative, summing to 1.
        means: shape (..., K, d).
        covariances: shape (..., K, d, d), symmetric positive semi-definite.
    """

    weights: Tensor
    means: Tensor
    covariances: Tensor

    def __post_init__(self) -> None:
        weights, means, covariances = self.weights, self.means, self.covariances
        if weights.ndim < 1 or weights.shape[-1] < 1:
            raise ValueError(
                f"GaussianMixture.weights: expected shape (..., K) with K >= 1, got {tuple(weights.shape)}"
            )
        batch, num = weights.shape[:-1], weights.shape[-1]
        if means.ndim != weights.ndim + 1 or means.shape[:-1] != weights.shape:
            raise ValueError(
                f"GaussianMixture.means: expected shape {(*batch, num)} + (d,) to match "
                f"weights {tuple(weights.shape)}, got {tuple(means.shape)}"
            )
        d = means.shape[-1]
        if covariances.shape != (*batch, num, d, d):
            raise ValueError(
                f"GaussianMixture.covariances: expected shape {(*batch, num, d, d)}, "
                f"got {tuple(covariances.shape)}"
            )
        for name, value in (("weights", weights), ("means", means), ("covariances", covariances)):
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"GaussianMixture.{name}: contains NaN or infinite values")
        w = weights.double()
        tolerance = 1e-5 if weights.dtype != torch.float64 else 1e-9
        if bool((w < 0).any()) or not torch.allclose(
            w.sum(-1), torch.ones_like(w[..., 0]), rtol=0, atol=tolerance
        ):
            raise ValueError(
                "GaussianMixture.weights: expected non-negative weights summing to 1, got sums "
                f"in [{float(w.sum(-1).min())}, {float(w.sum(-1).max())}] and minimum {float(w.min())}"
            )
        if covariances.numel() == 0:
            return
        cov = covariances.double()
        scale = 1 + float(cov.abs().max())
        if float((cov - cov.transpose(-1, -2)).abs().max()) > 1e-6 * scale:
            raise ValueError("GaussianMixture.covariances: expected symmetric matrices")
        smallest = float(torch.linalg.eigvalsh(cov).min())
        if smallest < -1e-6 * scale:
            raise ValueError(
                "GaussianMixture.covariances: expected positive semi-definite matrices, "
                f"smallest eigenvalue {smallest:.3g}"
            )

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw samples; returns shape (..., num_samples, d), float64."""
        weights = self.weights.double()
        batch_shape = weights.shape[:-1]
        flat_weights = weights.reshape(-1, weights.shape[-1])
        components = torch.multinomial(
            flat_weights, num_samples, replacement=True, generator=generator
        )
        components = components.reshape(*batch_shape, num_samples)
        d = self.means.shape[-1]
        means = torch.gather(
            self.means.double(), -2, components[..., None].expand(*components.shape, d)
        )
        # A symmetric square root rather than Cholesky: posterior covariances are only
        # positive semi-definite (rank d - k when the observation is noiseless).
        eigenvalues, eigenvectors = torch.linalg.eigh(self.covariances.double())
        root = (
            eigenvectors
            @ torch.diag_embed(eigenvalues.clamp(min=0).sqrt())
            @ eigenvectors.transpose(-1, -2)
        )
        chol = torch.gather(root, -3, components[..., None, None].expand(*components.shape, d, d))
        noise = torch.randn(*components.shape, d, 1, generator=generator, dtype=torch.float64)
        return means + (chol @ noise).squeeze(-1)

    @staticmethod
    def random(
        dim: int,
        num_components: int,
        generator: torch.Generator,
        *,
        radius: float = 1.2,
        min_std: float = 0.08,
        max_std: float = 0.2,
    ) -> GaussianMixture:
        """A random, well-separated mixture with unequal weights and anisotropic components.

        In 2-D the means sit evenly on a circle of ``radius``; in higher dimension they
        are random directions scaled to ``radius``.
        """
        if dim < 1 or num_components < 1:
            raise ValueError(f"dim and num_components must be >= 1, got {dim}, {num_components}")
        if dim == 2:
            angles = (
                2 * math.pi * torch.arange(num_components, dtype=torch.float64) / num_components
            )
            angles = angles + 2 * math.pi * torch.rand((), generator=generator, dtype=torch.float64)
            means = radius * torch.stack([angles.cos(), angles.sin()], dim=-1)
        else:
            directions = torch.randn(num_components, dim, generator=generator, dtype=torch.float64)
            means = radius * directions / directions.norm(dim=-1, keepdim=True)
        weights = 1 + torch.rand(num_components, generator=generator, dtype=torch.float64)
        rotations, _ = torch.linalg.qr(
            torch.randn(num_components, dim, dim, generator=generator, dtype=torch.float64)
        )
        stds = min_std + (max_std - min_std) * torch.rand(
            num_components, dim, generator=generator, dtype=torch.float64
        )
        covariances = rotations @ torch.diag_embed(stds**2) @ rotations.transpose(-1, -2)
        return GaussianMixture(weights / weights.sum(), means, covariances)


def random_projections(
    num: int,
    k: int,
    d: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniformly random k-dimensional subspaces of R^d, as matrices with orthonormal rows.

    Returns:
        shape (num, k, d).
    """
    if not 1 <= k <= d:
        raise ValueError(f"k: expected 1 <= k <= d = {d}, got {k}")
    gaussian = torch.randn(num, d, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    # Fix the sign ambiguity of QR so the distribution is exactly Haar.
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q.transpose(-1, -2).to(dtype)


class SubspaceProjection(nn.Module):
    """The forward model: ``forward(S (B, d), phi (B, k, d)) -> phi @ S (B, k)``.

    ``phi`` may also carry extra view dimensions: (B, V, k, d) gives (B, V, k).
    """

    def forward(self, signal: Tensor, params: Tensor) -> Tensor:
        if params.ndim == 3:
            return (params @ signal.unsqueeze(-1)).squeeze(-1)
        if params.ndim == 4:
            return (params @ signal[:, None, :, None]).squeeze(-1)
        raise ValueError(
            f"params: expected shape (B, k, d) or (B, V, k, d), got {tuple(params.shape)}"
        )


def exact_posterior(
    prior: GaussianMixture, observation: Tensor, projection: Tensor, noise_std: float = 0.0
) -> GaussianMixture:
    """p(S | O) for S ~ prior and O = projection @ S + noise_std * eps, in closed form.

    For each component j with weight pi_j, mean mu_j, covariance Sigma_j, and A = projection:
        C_j       = A Sigma_j A^T + noise_std^2 I
        w_j      ~= pi_j N(O; A mu_j, C_j)
        mean_j    = mu_j + Sigma_j A^T C_j^{-1} (O - A mu_j)
        cov_j     = Sigma_j - Sigma_j A^T C_j^{-1} A Sigma_j

    Args:
        prior: unbatched mixture, weights (K,), means (K, d), covariances (K, d, d).
        observation: shape (B, k).
        projection: shape (B, k, d).

    Returns:
        A mixture batched over B: weights (B, K), means (B, K, d), covariances (B, K, d, d),
        in float64.

    Raises:
        ValueError: an unbatched ``prior`` was expected; shapes of ``observation`` and
            ``projection`` disagree with each other or with the prior's dimension d;
            ``noise_std`` is negative; or (noiseless) ``A Sigma_j A^T`` is singular.
    """
    if prior.weights.ndim != 1:
        raise ValueError(
            f"prior: expected an unbatched mixture (weights of shape (K,)), got weights "
            f"{tuple(prior.weights.shape)}"
        )
    d = prior.means.shape[-1]
    if projection.ndim != 3 or projection.shape[-1] != d:
        raise ValueError(
            f"projection: expected shape (B, k, {d}) for a prior in R^{d}, got {tuple(projection.shape)}"
        )
    if observation.shape != projection.shape[:2]:
        raise ValueError(
            f"observation: expected shape {tuple(projection.shape[:2])} to match projection "
            f"{tuple(projection.shape)}, got {tuple(observation.shape)}"
        )
    _check_noise_std(noise_std)
    obs = observation.double()[:, None, :, None]  # (B, 1, k, 1)
    a = projection.double()[:, None]  # (B, 1, k, d)
    mu = prior.means.double()[None, :, :, None]  # (1, K, d, 1)
    sigma = prior.covariances.double()[None]  # (1, K, d, d)
    k = a.shape[-2]
    c = a @ sigma @ a.transpose(-1, -2) + noise_std**2 * torch.eye(
        k, dtype=torch.float64
    )  # (B, K, k, k)
    residual = obs - a @ mu  # (B, K, k, 1)
    c_chol, info = torch.linalg.cholesky_ex(c)
    if bool((info > 0).any()):
        raise ValueError(
            "projection: A Sigma_j A^T + noise_std^2 I is singular for some context and "
            "component (rank-deficient projection rows or a degenerate prior component); "
            "use projections with orthonormal rows or noise_std > 0"
        )
    solved = torch.cholesky_solve(residual, c_chol)  # C^{-1} r
    gain = sigma @ a.transpose(-1, -2)  # Sigma A^T, (B, K, d, k)
    means = (mu + gain @ solved).squeeze(-1)  # (B, K, d)
    covariances = sigma - gain @ torch.cholesky_solve(gain.transpose(-1, -2), c_chol)
    covariances = 0.5 * (covariances + covariances.transpose(-1, -2))
    log_det = 2 * torch.log(torch.diagonal(c_chol, dim1=-2, dim2=-1)).sum(-1)  # (B, K)
    mahalanobis = (residual * solved).sum(dim=(-2, -1))  # (B, K)
    log_weights = prior.weights.double().log()[None] - 0.5 * (mahalanobis + log_det)
    return GaussianMixture(torch.softmax(log_weights, dim=-1), means, covariances)


def _check_noise_std(noise_std: float) -> None:
    if not (
        isinstance(noise_std, numbers.Real)
        and not isinstance(noise_std, bool)
        and math.isfinite(noise_std)
        and noise_std >= 0
    ):
        raise ValueError(f"noise_std: expected a finite number >= 0, got {noise_std!r}")


def exact_denoiser(
    posterior: GaussianMixture,
    target_params: Tensor,
    schedule: NoiseSchedule,
    noise_std: float = 0.0,
) -> Callable[[Tensor, Tensor], Denoised]:
    """The Bayes-optimal DFM denoiser for a context whose posterior is known.

    With S | O^ctxt ~ sum_j w_j N(m_j, C_j), target O = A S + noise_std * eps and
    x_t = a O + s eps' (a = sqrt(abar_t), s = sqrt(1 - abar_t)), each component gives
        V_j = A C_j A^T + noise_std^2 I,   G_j = a^2 V_j + s^2 I,
        p(j | x_t)   ~ w_j N(x_t; a A m_j, G_j),
        E[O | x_t, j] = A m_j + a V_j G_j^{-1} (x_t - a A m_j),
        E[S | x_t, j] = m_j   + a C_j A^T G_j^{-1} (x_t - a A m_j),
    and the denoiser returns the mixtures of both: exactly what a perfectly trained DFM
    network would (the minimiser of the target and novel-view losses). It is the
    reference the samplers are tested against.

    Args:
        posterior: batched over B: weights (B, K), means (B, K, d), covariances (B, K, d, d).
        target_params: A, shape (B, k, d).

    Returns:
        ``denoiser(x_t (B, k), t (B,)) -> Denoised(x0 (B, k), signal (B, d))``, float64.
    """
    if posterior.weights.ndim != 2:
        raise ValueError(
            "posterior: expected a mixture batched over B (weights (B, K)), got weights "
            f"{tuple(posterior.weights.shape)}"
        )
    batch, d = posterior.weights.shape[0], posterior.means.shape[-1]
    if target_params.ndim != 3 or target_params.shape[0] != batch or target_params.shape[-1] != d:
        raise ValueError(
            f"target_params: expected shape ({batch}, k, {d}) to match the posterior, "
            f"got {tuple(target_params.shape)}"
        )
    _check_noise_std(noise_std)
    a_mat = target_params.double()[:, None]  # (B, 1, k, d)
    means = posterior.means.double()[..., None]  # (B, K, d, 1)
    cov_s = posterior.covariances.double()  # (B, K, d, d)
    k = a_mat.shape[-2]
    eye = torch.eye(k, dtype=torch.float64)
    obs_means = a_mat @ means  # (B, K, k, 1)
    obs_cov = a_mat @ cov_s @ a_mat.transpose(-1, -2) + noise_std**2 * eye  # V_j
    cross = cov_s @ a_mat.transpose(-1, -2)  # C_j A^T, (B, K, d, k)
    log_weights = posterior.weights.double().clamp(min=1e-300).log()

    def denoise(x_t: Tensor, t: Tensor) -> Denoised:
        alpha_bar = schedule.alpha_bar(t.double().cpu())[:, None, None, None]
        a, s_sq = alpha_bar.sqrt(), 1 - alpha_bar
        chol = torch.linalg.cholesky(a**2 * obs_cov + s_sq * eye)  # G_j
        residual = x_t.double().cpu()[:, None, :, None] - a * obs_means
        solved = torch.cholesky_solve(residual, chol)  # G_j^{-1} r
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        responsibility = torch.softmax(
            log_weights - 0.5 * ((residual * solved).sum((-2, -1)) + log_det), dim=-1
        )[..., None]  # (B, K, 1)
        x0 = ((obs_means + a * obs_cov @ solved).squeeze(-1) * responsibility).sum(1)
        signal = ((means + a * cross @ solved).squeeze(-1) * responsibility).sum(1)
        return Denoised(x0=x0.to(x_t.device), signal=signal.to(x_t.device))

    return denoise


def complement_projections(
    context_params: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Random k-dim subspaces inside the orthogonal complement of each context subspace.

    Args:
        context_params: shape (B, k, d) with orthonormal rows, 2k <= d.

    Returns:
        shape (B, k, d), orthonormal rows, each orthogonal to its context's rows.
    """
    batch, k, d = context_params.shape
    if 2 * k > d:
        raise ValueError(f"complement target views need 2k <= d, got k={k}, d={d}")
    basis = context_params.double()
    gaussian = torch.randn(batch, d, k, generator=generator, dtype=torch.float64)
    in_complement = gaussian - basis.transpose(-1, -2) @ (basis @ gaussian)  # (I - A^T A) G
    q, r = torch.linalg.qr(in_complement)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q.transpose(-1, -2).to(context_params.dtype)


@dataclass(frozen=True)
class ProjectionProblem:
    """The problem's fixed definition: prior, dimensions, noise, and how targets are chosen.

    ``target_views`` picks phi^trgt given phi^ctxt: ``"uniform"`` draws it independently;
    ``"complement"`` (2k <= d) draws it inside the orthogonal complement of the context
    subspace -- the analogue of the paper choosing target frames far from the context.
    A target nearly parallel to the context makes S = f(O_ctxt, O_trgt) ill-conditioned,
    so small errors of the learned target distribution are amplified into the signal.
    Novel views (the ones the network never sees) are always uniform.
    """

    prior: GaussianMixture
    signal_dim: int
    observation_dim: int
    noise_std: float = 0.0
    target_views: str = "complement"

    def __post_init__(self) -> None:
        if self.prior.weights.ndim != 1:
            raise ValueError(
                "prior: expected an unbatched mixture (weights of shape (K,)), got weights "
                f"{tuple(self.prior.weights.shape)}"
            )
        if self.prior.means.shape[-1] != self.signal_dim:
            raise ValueError(
                f"signal_dim: {self.signal_dim} does not match the prior's dimension "
                f"{self.prior.means.shape[-1]}"
            )
        if not 1 <= self.observation_dim < self.signal_dim:
            raise ValueError(
                f"observation_dim: expected 1 <= k < d = {self.signal_dim} (an ambiguous "
                f"problem), got {self.observation_dim}"
            )
        _check_noise_std(self.noise_std)
        if self.target_views not in ("uniform", "complement"):
            raise ValueError(
                f"target_views: expected 'uniform' or 'complement', got {self.target_views!r}"
            )
        if self.target_views == "complement" and 2 * self.observation_dim > self.signal_dim:
            raise ValueError(
                f"target_views='complement' needs 2k <= d, got k={self.observation_dim}, d={self.signal_dim}"
            )

    @staticmethod
    def build(
        signal_dim: int = 2,
        observation_dim: int = 1,
        num_components: int = 5,
        noise_std: float = 0.0,
        seed: int = 0,
        target_views: str = "complement",
    ) -> ProjectionProblem:
        if not 1 <= observation_dim < signal_dim:
            raise ValueError(
                f"observation_dim: expected 1 <= k < d = {signal_dim} (an ambiguous problem), got {observation_dim}"
            )
        if num_components < 1:
            raise ValueError(f"num_components: expected >= 1, got {num_components}")
        generator = torch.Generator().manual_seed(seed)
        prior = GaussianMixture.random(signal_dim, num_components, generator)
        return ProjectionProblem(prior, signal_dim, observation_dim, noise_std, target_views)

    @staticmethod
    def from_family(seed: int) -> ProjectionProblem:
        """Problem number ``seed`` of the seeded family used to test fidelity broadly.

        Drawn from ``seed`` alone: d uniform in 2..8, k uniform in 1..d-1, 2..6 mixture
        components (``GaussianMixture.random``: random rotations of anisotropic
        covariances with standard deviations in [0.08, 0.2], so components are
        correlated), observation noise uniform in {0, 0.05, 0.2}. Target views are
        ``"complement"`` when 2k <= d, else ``"uniform"``. Where 2k < d context and target
        do not determine S and DFM's final signal averages the rest (module docstring):
        score against the exact denoiser's DFM samples, not only the noise floor.

        Args:
            seed: any non-negative int; problem i of a test is ``from_family(i)``.
        """
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        generator = torch.Generator().manual_seed(derive_seed(int(seed), _FAMILY))
        d = int(torch.randint(2, 9, (), generator=generator))
        k = int(torch.randint(1, d, (), generator=generator))
        num_components = int(torch.randint(2, 7, (), generator=generator))
        noise_std = (0.0, 0.05, 0.2)[int(torch.randint(0, 3, (), generator=generator))]
        prior = GaussianMixture.random(d, num_components, generator)
        target_views = "complement" if 2 * k <= d else "uniform"
        return ProjectionProblem(prior, d, k, noise_std, target_views)

    def describe(self) -> str:
        """A short name: ``d6-k3-K4-n0.05``."""
        return (
            f"d{self.signal_dim}-k{self.observation_dim}-K{self.prior.weights.shape[-1]}"
            f"-n{self.noise_std:g}"
        )

    def target_params(
        self, context_params: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """phi^trgt (B, k, d) for contexts phi^ctxt (B, k, d), following ``target_views``."""
        if self.target_views == "complement":
            return complement_projections(context_params, generator)
        return random_projections(
            context_params.shape[0], self.observation_dim, self.signal_dim, generator
        )

    def observe(
        self, signal: Tensor, projection: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """O = projection @ S + noise. signal (B, d), projection (B, k, d) -> (B, k)."""
        clean = (projection.double() @ signal.double()[..., None]).squeeze(-1)
        if self.noise_std > 0:
            clean = clean + self.noise_std * torch.randn(
                clean.shape, generator=generator, dtype=torch.float64
            )
        return clean.float()

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[DFMBatch, Tensor]:
        """A training batch (context, target, novel) and the hidden signals (B, d)."""
        d, k = self.signal_dim, self.observation_dim
        signal = self.prior.sample(batch_size, generator)
        params = random_projections(3 * batch_size, k, d, generator).reshape(3, batch_size, k, d)
        params[1] = self.target_params(params[0], generator)
        observations = [self.observe(signal, params[i], generator) for i in range(3)]
        batch = DFMBatch(
            context=Context(observation=observations[0], params=params[0]),
            target=observations[1],
            target_params=params[1],
            novel=observations[2],
            novel_params=params[2],
        )
        return batch, signal.float()


class ProjectionDataset(Dataset):
    """Training batches of a ``ProjectionProblem``, deterministic per index.

    Each item is a whole batch (use a DataLoader with ``batch_size=None`` or the
    ``collate_projection`` collate): drawing 256 mixture samples at once is far cheaper
    than 256 separate draws.
    """

    def __init__(
        self, problem: ProjectionProblem, batch_size: int, length: int = 1_000_000, seed: int = 0
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.problem, self.batch_size, self.length, self.seed = problem, batch_size, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> DFMBatch:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return self.problem.draw(self.batch_size, generator)[0]


def collate_projection(items: list[DFMBatch]) -> DFMBatch:
    """Concatenate per-index batches (as a DataLoader ``collate_fn``)."""
    return tree_cat(items)


def _timestep_features(t: Tensor, num_timesteps: int, dim: int = 32) -> Tensor:
    """Sinusoidal features of t / T: (B,) -> (B, dim)."""
    # Highest frequency 100 half-turns over the schedule: well below the Nyquist limit of
    # integer timesteps, so training steps do not alias into parity-like features.
    frequencies = torch.exp(torch.linspace(0, math.log(100.0), dim // 2, device=t.device))
    angles = (t.float() / num_timesteps)[:, None] * frequencies[None] * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _projector(params: Tensor) -> Tensor:
    """A^T A (B, d, d) for A (B, k, d) with orthonormal rows: the subspace, basis-free."""
    return params.transpose(-1, -2) @ params


def _back_project(params: Tensor, observation: Tensor) -> Tensor:
    """A^T O: (B, k, d), (B, k) -> (B, d), the observation as a point of R^d."""
    return (params.transpose(-1, -2) @ observation[..., None]).squeeze(-1)


def _context_features(projector: Tensor, back_projection: Tensor) -> Tensor:
    """What a context says, independent of the basis its k x d matrix happens to use.

    Any orthonormal basis R A of the same subspace, with observation R O, describes the
    same measurement; the projector A^T A (B, d, d) and the back-projection A^T O (B, d)
    are invariant to R, so the network need not learn that symmetry (the analogue of
    pixelNeRF working in camera-relative geometry). Shape (B, d*d + d).
    """
    return torch.cat([projector.flatten(1), back_projection], dim=-1)


class FourierFeatures(nn.Module):
    """Random Fourier features (Tancik et al. 2020): x -> [x, sin(2 pi x B), cos(2 pi x B)].

    The posterior's weights are sharp functions of the context (narrow mixture
    components), and a plain MLP's spectral bias leaves them unlearned for a long time:
    it settles on the smooth part. A fixed Gaussian B (std ``scale``) lifts the inputs so
    that high frequencies are cheap -- the role NeRF's positional encoding plays for the
    renderer. B is a persistent buffer: saved with the weights, never trained.

    Args:
        in_features: size of x's last dimension.
        num_frequencies: columns of B; 0 passes x through unchanged.
        scale: standard deviation of B's entries.
    """

    def __init__(self, in_features: int, num_frequencies: int, scale: float = 1.0) -> None:
        super().__init__()
        if num_frequencies < 0 or scale <= 0:
            raise ValueError(
                f"FourierFeatures: expected num_frequencies >= 0 and scale > 0, got {num_frequencies}, {scale}"
            )
        self.frequencies: Tensor
        self.register_buffer("frequencies", scale * torch.randn(in_features, num_frequencies))
        self.out_features = in_features + 2 * num_frequencies

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        if self.frequencies.shape[1] == 0:
            return x
        angles = 2 * math.pi * x @ self.frequencies
        return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


def context_correction(
    signal: Tensor,
    params: Tensor,
    observation: Tensor,
    noise_std: float,
    prior_var: Tensor | float = 1.0,
) -> Tensor:
    """Data consistency with a noisy linear observation: the Gaussian posterior mean.

    Treat the network's signal as a Gaussian estimate of the true one, S ~ N(S_hat, tau^2 I),
    and the context as O = A S + noise_std * eps. (S, O) is then jointly Gaussian with
    Cov(S, O) = tau^2 A^T and Cov(O) = tau^2 A A^T + noise_std^2 I, and conditioning on O
    (the formula ``exact_posterior`` applies per component) gives

        E[S | O] = S_hat + tau^2 A^T (tau^2 A A^T + noise_std^2 I)^{-1} (O - A S_hat).

    For noise_std = 0 and orthonormal rows (A A^T = I) this is S_hat + A^T (O - A S_hat),
    the projection onto {S : A S = O} whatever tau: the noiseless consistency layer. For
    noise_std > 0 the correction along the context directions is shrunk by
    tau^2 / (tau^2 + noise_std^2), so a sample may (and should) miss a noisy context
    observation by about the noise: forcing A S = O exactly would be wrong there.

    Args:
        signal: S_hat, shape (B, d).
        params: A, shape (B, k, d) (any full-row-rank matrix).
        observation: O, shape (B, k).
        noise_std: standard deviation of the observation noise, >= 0.
        prior_var: tau^2 > 0, a scalar (float or 0-dim tensor, e.g. a learned parameter).

    Returns:
        shape (B, d), in ``signal``'s dtype.
    """
    k = params.shape[-2]
    residual = observation - (params @ signal[..., None]).squeeze(-1)  # O - A S_hat, (B, k)
    eye = torch.eye(k, dtype=signal.dtype, device=signal.device)
    gram = params @ params.transpose(-1, -2)  # A A^T, (B, k, k)
    covariance = prior_var * gram + noise_std**2 * eye  # Cov(O), (B, k, k)
    gain_input = torch.linalg.solve(covariance, residual[..., None])  # (B, k, 1)
    return signal + prior_var * (params.transpose(-1, -2) @ gain_input).squeeze(-1)


def _mlp(in_features: int, hidden: int, depth: int, out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_features, hidden), nn.SiLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.SiLU()]
    layers.append(nn.Linear(hidden, out_features))
    return nn.Sequential(*layers)


class ProjectionPredictor(nn.Module):
    """Signal predictor for the projection problem: an MLP over observations and geometry.

    ``(context: Context, noisy_target (B, k), t (B,), target_params (B, k, d)) -> S (B, d)``.

    With ``context_consistent`` the MLP output is corrected by the context's observation
    (``context_correction``): the Gaussian posterior-mean update given the known forward
    model and noise level ``noise_std``. Noiseless, it is the projection onto the signals
    that reproduce the context exactly, S <- S + A_c^T (O_c - A_c S) (A_c has orthonormal
    rows), where the true posterior lives, so the network only has to learn the
    distribution within that set. With noise the update is soft, with a learned prior
    variance. It needs the context, so train without context dropout.

    Views enter as basis-free features (``_context_features``): projectors A^T A and
    back-projections A^T O. With a ``schedule`` the network is preconditioned
    (``_precondition``) and sees sqrt(abar_t) x_t instead of x_t; ``fourier_features``
    lifts the context and target-view features through ``FourierFeatures``. Without these
    three, this MLP learned the posterior's mode weights so slowly that DFM stayed at 16x
    the noise floor after 6k steps on the d=2 problem (2.8x with them; docs/benchmarks.md).
    """

    def __init__(
        self,
        signal_dim: int,
        observation_dim: int,
        num_timesteps: int,
        hidden: int = 256,
        depth: int = 4,
        context_consistent: bool = False,
        noise_std: float = 0.0,
        schedule: NoiseSchedule | None = None,
        data_std: float = 1.0,
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
        fourier_target: bool = False,
    ) -> None:
        super().__init__()
        d = signal_dim
        self.signal_dim, self.observation_dim = signal_dim, observation_dim
        self.fourier_target = fourier_target
        self.num_timesteps = num_timesteps
        self.context_consistent = context_consistent
        _check_noise_std(noise_std)
        self.noise_std = float(noise_std)
        if context_consistent and noise_std > 0:
            # log tau^2 of ``context_correction``, learned: how far to trust the network's
            # signal against a noisy context observation. Starts at tau^2 = data_std^2.
            self.log_consistency_var = nn.Parameter(
                torch.full((), 2 * math.log(data_std), dtype=torch.float32)
            )
        self.data_std = data_std
        if schedule is not None and schedule.num_timesteps != num_timesteps:
            raise ValueError(
                f"schedule: expected {num_timesteps} timesteps, got {schedule.num_timesteps}"
            )
        self.schedule = schedule  # enables the preconditioning, see _precondition
        lifted = 2 * d * d + d + (d if fourier_target else 0)
        self.fourier = FourierFeatures(lifted, fourier_features, fourier_scale)
        self.mlp = _mlp(self.fourier.out_features + 2 * d + 32, hidden, depth, d)

    def forward(
        self, context: Context, noisy_target: Tensor, t: Tensor, target_params: Tensor
    ) -> Tensor:
        d = self.signal_dim
        if noisy_target.shape[1:] != (self.observation_dim,) or target_params.shape[1:] != (
            self.observation_dim,
            d,
        ):
            raise ValueError(
                f"ProjectionPredictor: expected noisy_target (B, {self.observation_dim}) and "
                f"target_params (B, {self.observation_dim}, {d}), got "
                f"{tuple(noisy_target.shape)} and {tuple(target_params.shape)}"
            )
        target_input = noisy_target
        alpha_bar = None
        if self.schedule is not None:
            alpha_bar = self.schedule.alpha_bar(t).to(noisy_target)[:, None]  # (B, 1)
            # c_in = sqrt(abar): the informative part of x_t, which fades as noise grows,
            # so the network need not learn to gate out pure noise by itself.
            target_input = noisy_target * alpha_bar.sqrt()
        context_projector = _projector(context.params)
        target_projector = _projector(target_params)
        back_context = _back_project(context.params, context.observation)
        back_target = _back_project(target_params, target_input)
        # What the context and the choice of target view say: the posterior's mode
        # weights are sharp functions of it, hence the Fourier lift. The noisy target
        # enters raw; its influence is smooth at the noise levels where it matters.
        lift = [_context_features(context_projector, back_context), target_projector.flatten(1)]
        if self.fourier_target:
            # Where context and target leave S ambiguous (2k < d), E[S | O_c, O_t] switches
            # between mixture components as O_t moves: a sharp function of O_t too.
            lift.append(back_target)
        known = torch.cat(lift, dim=-1)
        # Ridge least squares of [A_c; A_t] S = [O_c; O_t]: no prior involved.
        gram = context_projector + target_projector
        gram = gram + 1e-2 * torch.eye(d, device=gram.device, dtype=gram.dtype)
        least_squares = torch.linalg.solve(gram, (back_context + back_target)[..., None])
        features = torch.cat(
            [
                self.fourier(known),
                back_target,
                least_squares.squeeze(-1),
                _timestep_features(t, self.num_timesteps),
            ],
            dim=-1,
        )
        signal = self.mlp(features)
        if alpha_bar is not None:
            signal = self._precondition(signal, noisy_target, alpha_bar, target_params)
        if self.context_consistent:
            prior_var = (
                self.log_consistency_var.exp() if self.noise_std > 0 else signal.new_ones(())
            )
            signal = context_correction(
                signal, context.params, context.observation, self.noise_std, prior_var
            )
        return signal

    def _precondition(
        self, raw: Tensor, noisy_target: Tensor, alpha_bar: Tensor, target_params: Tensor
    ) -> Tensor:
        """Preconditioning (after Karras et al. 2022, eq. 7) seen through the forward model.

        With x = x_t / sqrt(abar) and sigma^2 = (1 - abar) / abar, the target view of the
        returned signal is ``c_skip x + c_out (A_t raw)`` (A_t has orthonormal rows):
        near-identity at low noise, where the network output is scaled down by sigma, so
        its errors cannot swamp the fine structure the last sampling steps resolve. The
        input side (c_in) is in ``forward``.

        Only the target view is preconditioned: the components of S the target does not
        observe, (I - A_t^T A_t) S, are the network's output unscaled. Scaling them by
        c_out too (dfm-core 0.2) pinned them near 0 at low noise, where they must be
        E[S | O_c, O_t] -- harmless only when context and target together observe all of
        S and the context layer overrides the rest (2k = d, complement views, no noise).

        Args:
            raw: network output (B, d); noisy_target: x_t (B, k); alpha_bar: (B, 1).
        """
        sigma_sq = (1 - alpha_bar) / alpha_bar
        data_var = self.data_std**2
        c_skip = data_var / (sigma_sq + data_var)
        c_out = (sigma_sq * data_var / (sigma_sq + data_var)).sqrt()
        skip = target_params.transpose(-1, -2) @ (noisy_target / alpha_bar.sqrt())[..., None]
        in_view = (_projector(target_params) @ raw[..., None]).squeeze(-1)  # A_t^T A_t raw
        return c_out * in_view + c_skip * skip.squeeze(-1) + (raw - in_view)


class RegressionBaseline(nn.Module):
    """The deterministic baseline: one signal per context, trained on the same losses.

    Minimising E || A (S_hat - S) ||^2 over uniformly random subspaces A gives the
    posterior mean E[S | O^ctxt]: the best single answer, and a visibly averaged one.
    Follows the trainer contract: ``forward(batch, generator=...) -> {"loss": ...}``.
    """

    def __init__(
        self,
        signal_dim: int,
        observation_dim: int,
        hidden: int = 256,
        depth: int = 4,
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
    ) -> None:
        super().__init__()
        d = signal_dim
        self.fourier = FourierFeatures(d * d + d, fourier_features, fourier_scale)
        self.mlp = _mlp(self.fourier.out_features, hidden, depth, d)
        self.forward_model = SubspaceProjection()

    def predict(self, context: Context) -> Tensor:
        """S_hat (B, d) from a context with observation (B, k), params (B, k, d)."""
        features = _context_features(
            _projector(context.params), _back_project(context.params, context.observation)
        )
        return self.mlp(self.fourier(features))

    def forward(
        self, batch: DFMBatch, *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        signal = self.predict(batch.context)
        target = (self.forward_model(signal, batch.target_params) - batch.target).square().mean()
        novel = (self.forward_model(signal, batch.novel_params) - batch.novel).square().mean()
        return {"loss": target + novel, "target": target, "novel": novel}


@dataclass(frozen=True)
class PosteriorScores:
    """Energy distances to exact posterior samples, averaged over contexts.

    Two summaries of each source: the *mean* ratio (mean energy distance over contexts
    divided by the mean noise floor; a few hard contexts dominate it) and the *median
    per-context* ratio (median over contexts of distance / that context's floor).

    Attributes:
        dfm: DFM samples vs exact samples.
        baseline: deterministic-baseline samples (one per context, repeated) vs exact.
        noise_floor: exact vs independent exact samples, same sample counts.
        exact_dfm: DFM sampling with the exact denoiser (``exact_denoiser``), same sampler,
            steps, target views and noise: what the method itself reaches, the reference
            for a trained model (below the floor is impossible; above it when 2k < d).
        dfm_median_ratio, baseline_median_ratio, exact_dfm_median_ratio: median
            per-context ratios to the noise floor.
    """

    dfm: float
    baseline: float
    noise_floor: float
    exact_dfm: float = math.nan
    dfm_median_ratio: float = math.nan
    baseline_median_ratio: float = math.nan
    exact_dfm_median_ratio: float = math.nan

    @property
    def dfm_ratio(self) -> float:
        return self.dfm / self.noise_floor

    @property
    def baseline_ratio(self) -> float:
        return self.baseline / self.noise_floor

    @property
    def exact_dfm_ratio(self) -> float:
        return self.exact_dfm / self.noise_floor

    @property
    def relative_ratio(self) -> float:
        """Trained / exact-denoiser mean ratio: 1 means the network is as good as allowed."""
        return self.dfm / self.exact_dfm

    @property
    def relative_median_ratio(self) -> float:
        """Trained / exact-denoiser median per-context ratio."""
        return self.dfm_median_ratio / self.exact_dfm_median_ratio


def _sample_signals(
    denoiser: Callable[[Tensor, Tensor], Denoised],
    schedule: NoiseSchedule,
    shape: tuple[int, int],
    *,
    sampler: str,
    steps: int,
    seed: int,
    device: torch.device | str,
    sampler_options: dict[str, Any],
) -> Tensor:
    result = sample(
        sampler,
        denoiser,
        schedule,
        shape,
        steps=steps,
        generator=torch.Generator(device).manual_seed(seed),
        device=device,
        **sampler_options,
    )
    return result.signal.double().cpu()


@torch.no_grad()
def posterior_samples(
    problem: ProjectionProblem,
    diffusion: ForwardDiffusion | None,
    baseline: RegressionBaseline | None,
    *,
    num_contexts: int,
    num_samples: int,
    steps: int = 50,
    seed: int = 1234,
    sampler: str = "ddim",
    guidance_scale: float = 1.0,
    exact_dfm: bool = False,
    schedule: NoiseSchedule | None = None,
    sampler_options: dict[str, Any] | None = None,
) -> dict[str, Tensor]:
    """Samples of S for ``num_contexts`` held-out contexts from every source.

    Args:
        problem: the problem.
        diffusion, baseline: the trained models, or None to skip them.
        num_contexts: held-out contexts M.
        num_samples: samples n per context from every source.
        steps, sampler, sampler_options: how DFM samples (``dfm_core.sampling.sample``).
        seed: seeds contexts, exact samples, target views and sampler noise.
        guidance_scale: classifier-free guidance of the trained model.
        exact_dfm: also sample DFM with the exact denoiser (same sampler, steps, target
            views and initial noise as the trained model).
        schedule: the noise schedule of ``exact_dfm``; defaults to ``diffusion``'s.

    Returns:
        ``{"context_obs": (M, k), "context_params": (M, k, d), "signal": (M, d),
        "exact": (M, n, d), "exact_repeat": (M, n, d), "dfm": (M, n, d), "baseline": (M, n, d),
        "exact_dfm": (M, n, d)}`` (the last three only when asked for). Float64.
    """
    d, k = problem.signal_dim, problem.observation_dim
    options = dict(sampler_options or {})
    if exact_dfm and schedule is None:
        if diffusion is None:
            raise ValueError("schedule: needed for exact_dfm=True when no diffusion is given")
        schedule = diffusion.schedule
    generator = torch.Generator().manual_seed(seed)
    signal = problem.prior.sample(num_contexts, generator)
    context_params = random_projections(num_contexts, k, d, generator)
    context_obs = problem.observe(signal, context_params, generator)
    posterior = exact_posterior(problem.prior, context_obs, context_params, problem.noise_std)
    out = {
        "context_obs": context_obs.double(),
        "context_params": context_params.double(),
        "signal": signal,
        "exact": posterior.sample(num_samples, generator),
        "exact_repeat": posterior.sample(num_samples, generator),
    }
    repeated = Context(
        observation=context_obs.repeat_interleave(num_samples, 0),
        params=context_params.repeat_interleave(num_samples, 0),
    )
    # A fresh target view per sample: the learned distribution over signals must not
    # depend on it (remark on 3D consistency in the supplementary).
    target_params = problem.target_params(repeated.params, generator)
    shape = (num_contexts * num_samples, k)
    if diffusion is not None:
        device = next(diffusion.parameters()).device
        repeated_device = tree_to(repeated, device)
        target_device = target_params.to(device)
        condition = diffusion.condition(repeated_device, target_device)
        if guidance_scale == 1.0:
            denoiser = diffusion.denoiser(condition)
        else:
            null = diffusion.condition(repeated_device, target_device, drop=True)
            denoiser = classifier_free_guidance(diffusion.denoise, condition, null, guidance_scale)
        out["dfm"] = _sample_signals(
            denoiser,
            diffusion.schedule,
            shape,
            sampler=sampler,
            steps=steps,
            seed=seed + 1,
            device=device,
            sampler_options=options,
        ).reshape(num_contexts, num_samples, d)
    if exact_dfm:
        assert schedule is not None
        repeated_posterior = GaussianMixture(
            posterior.weights.repeat_interleave(num_samples, 0),
            posterior.means.repeat_interleave(num_samples, 0),
            posterior.covariances.repeat_interleave(num_samples, 0),
        )
        oracle = exact_denoiser(repeated_posterior, target_params, schedule, problem.noise_std)
        out["exact_dfm"] = _sample_signals(
            oracle,
            schedule,
            shape,
            sampler=sampler,
            steps=steps,
            seed=seed + 1,
            device="cpu",
            sampler_options={"dtype": torch.float64, **options},
        ).reshape(num_contexts, num_samples, d)
    if baseline is not None:
        device = next(baseline.parameters()).device
        prediction = (
            baseline.predict(tree_to(Context(context_obs, context_params), device)).double().cpu()
        )
        out["baseline"] = prediction[:, None, :].expand(num_contexts, num_samples, d)
    return out


def score_samples(samples: dict[str, Tensor]) -> PosteriorScores:
    """Energy distances to the exact samples, mean and median per-context ratios
    (see ``posterior_samples`` and ``PosteriorScores``)."""
    exact = samples["exact"]
    floor = energy_distance(samples["exact_repeat"], exact)  # (M,)

    def summary(name: str) -> tuple[float, float]:
        if name not in samples:
            return math.nan, math.nan
        distance = energy_distance(samples[name], exact)
        return distance.mean().item(), (distance / floor).median().item()

    dfm, dfm_median = summary("dfm")
    baseline, baseline_median = summary("baseline")
    exact_dfm, exact_dfm_median = summary("exact_dfm")
    return PosteriorScores(
        dfm=dfm,
        baseline=baseline,
        noise_floor=floor.mean().item(),
        exact_dfm=exact_dfm,
        dfm_median_ratio=dfm_median,
        baseline_median_ratio=baseline_median,
        exact_dfm_median_ratio=exact_dfm_median,
    )


@dataclass
class ProjectionModelConfig:
    """The DFM model and the regression baseline for a ``ProjectionProblem``.

    The defaults are the ones the posterior-fidelity check (docs/benchmarks.md) uses.
    """

    hidden: int = 128
    """Width of the MLPs (DFM predictor and regression baseline)."""
    depth: int = 4
    """Number of hidden layers of the MLPs."""
    fourier_features: int = 64
    """Random Fourier features of the context inputs (``FourierFeatures``); 0 = none."""
    fourier_scale: float = 1.0
    """Standard deviation of the Fourier frequencies."""
    fourier_target: bool = False
    """Also lift the (input-scaled) noisy target through the Fourier features."""
    preconditioned: bool = True
    """Skip connection and input scaling in the predictor (``ProjectionPredictor``)."""
    context_consistent: bool = True
    """Correct predicted signals by the context observation (``context_correction``):
    the projection onto the signals that reproduce it exactly when noiseless, the
    Gaussian posterior-mean update with the problem's noise level otherwise."""
    context_dropout: float = 0.0
    """Probability of dropping a sample's context in training (classifier-free
    guidance); must be 0 with ``context_consistent``, which needs the context."""
    loss_type: str = "l2"
    """``l2`` (the paper) or ``l1`` distance of rendered and true observations."""
    novel_weight: float = 1.0
    """Weight of the novel-view loss (eq. 9)."""

    def __post_init__(self) -> None:
        if self.loss_type not in ("l2", "l1"):
            raise ValueError(f"model.loss_type: expected 'l2' or 'l1', got {self.loss_type!r}")
        if self.context_consistent and self.context_dropout > 0:
            raise ValueError(
                "model.context_consistent needs the context in every training example; "
                f"set model.context_dropout=0 (got {self.context_dropout}) or "
                "model.context_consistent=false"
            )

    def check_noise(self, noise_std: float) -> None:
        """Raise ValueError if the model cannot serve a problem with this observation noise."""
        # Every noise level is served since ``context_correction`` is noise-aware
        # (dfm-core 0.3); only the value itself is checked.
        _check_noise_std(noise_std)

    def build(
        self, problem: ProjectionProblem, schedule: NoiseSchedule, seed: int = 0
    ) -> tuple[ForwardDiffusion, RegressionBaseline]:
        """Both models, with initial weights drawn from ``seed`` (global RNG untouched).

        Raises:
            ValueError: an invalid ``problem.noise_std``.
        """
        self.check_noise(problem.noise_std)
        d, k = problem.signal_dim, problem.observation_dim
        fourier: dict[str, Any] = dict(
            fourier_features=self.fourier_features, fourier_scale=self.fourier_scale
        )
        predictor_options: dict[str, Any] = {"fourier_target": True} if self.fourier_target else {}
        # The trainer seeds the global RNGs only once the model exists, so seed here:
        # the initial weights are part of the experiment.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, _INIT_DFM))
            predictor = ProjectionPredictor(
                d,
                k,
                schedule.num_timesteps,
                hidden=self.hidden,
                depth=self.depth,
                context_consistent=self.context_consistent,
                noise_std=problem.noise_std,
                schedule=schedule if self.preconditioned else None,
                **fourier,
                **predictor_options,
            )
            torch.manual_seed(derive_seed(seed, _INIT_BASELINE))
            baseline = RegressionBaseline(d, k, hidden=self.hidden, depth=self.depth, **fourier)
        diffusion = ForwardDiffusion(
            predictor,
            SubspaceProjection(),
            schedule,
            loss_type=self.loss_type,  # type: ignore[arg-type]
            novel_weight=self.novel_weight,
            context_dropout=self.context_dropout,
        )
        return diffusion, baseline


@dataclass
class ProjectionFitConfig:
    """How to fit DFM and the deterministic baseline to a ``ProjectionProblem``."""

    model: ProjectionModelConfig = field(default_factory=ProjectionModelConfig)
    """The two models."""
    steps: int = 20_000
    """Optimiser steps for the DFM model."""
    baseline_steps: int = 3_000
    """Optimiser steps for the regression baseline (it converges much faster)."""
    batch_size: int = 256
    """Training examples per step."""
    lr: float = 1e-3
    """Peak learning rate (cosine decay to 1% after a short warm-up)."""
    schedule: str = "cosine"
    """Noise schedule by name (``dfm_core.schedules.SCHEDULES``)."""
    num_timesteps: int = 1000
    """Diffusion steps T of the schedule."""
    ema_decay: float = 0.999
    """Decay of the weights' exponential moving average (the models returned)."""
    ema_warmup: bool = True
    """Ramp the EMA decay up over the first updates (``dfm_core.ema``)."""
    seed: int = 0
    """Seed of the model initialisation, the training data and the trainer."""

    def trainer_config(self, *, device: str | None = "cpu", progress: bool = True) -> TrainerConfig:
        """The ``TrainerConfig`` of the DFM model (the baseline's differs in ``max_steps``)."""
        return TrainerConfig(
            max_steps=self.steps,
            batch_size=1,  # each dataset item is already a batch of ``batch_size`` signals
            optimizer=OptimizerConfig(
                name="adam",
                lr=self.lr,
                warmup_steps=min(200, self.steps),
                schedule="cosine",
                min_lr_ratio=0.01,
            ),
            ema_decay=self.ema_decay,
            ema_warmup=self.ema_warmup,
            seed=self.seed,
            num_workers=0,
            log_every=max(1, min(100, self.steps)),
            checkpoint_every=max(1, self.steps // 4),
            keep_last=1,
            progress=progress,
            device=device,
        )


@dataclass
class FittedModels:
    """The EMA models after training, in eval mode, and the steps they were trained for."""

    diffusion: ForwardDiffusion
    baseline: RegressionBaseline
    dfm_step: int
    baseline_step: int
    resumed_from: int | None
    """The DFM step training resumed from (None for a fresh run)."""


def train_projection_models(
    diffusion: ForwardDiffusion,
    baseline: RegressionBaseline,
    dataset: Dataset,
    trainer_config: TrainerConfig,
    *,
    baseline_steps: int,
    run_dir: str | os.PathLike[str],
    baseline_dir: str | os.PathLike[str],
    run_config: Any = None,
    frozen_config_keys: tuple[str, ...] = (),
) -> FittedModels:
    """The one training path of the projection models (``fit_projection_models`` and the
    ``dfm`` apps both use it): DFM, then the regression baseline, with the ``Trainer``.

    Each resumes from the newest checkpoint of its directory; a finished run is not
    trained further. The baseline uses ``trainer_config`` with ``max_steps =
    baseline_steps``. Call on every rank.

    Args:
        diffusion, baseline: the freshly built models (``ProjectionModelConfig.build``).
        dataset: training items (``ProjectionDataset``), shared by both models.
        trainer_config: the DFM model's training loop.
        baseline_steps: optimiser steps of the baseline.
        run_dir, baseline_dir: the two run directories (checkpoints/, metrics.jsonl).
        run_config: saved into every checkpoint of both runs.
        frozen_config_keys: keys of ``run_config`` a resumed run must not change
            (``Trainer``; a mismatch raises ``CheckpointMismatchError`` naming them).
    """
    trained, trainers = [], []
    for model, directory, config in (
        (diffusion, run_dir, trainer_config),
        (baseline, baseline_dir, dataclasses.replace(trainer_config, max_steps=baseline_steps)),
    ):
        trainer = Trainer(
            model,
            dataset,
            config,
            run_dir=directory,
            collate_fn=collate_projection,
            run_config=run_config,
            frozen_config_keys=frozen_config_keys,
        )
        resumed = trainer.resume()
        if trainer.step < config.max_steps:
            trainer.train()
        trained.append((trainer.ema_model().eval(), trainer.step, resumed))
        trainers.append(trainer)
    # Only now: the first trainer owns the process group, and closing it between the two
    # phases would make the second set it up again on the same port (a hang under DDP).
    for trainer in trainers:
        trainer.close()
    (dfm, dfm_step, resumed_from), (base, base_step, _) = trained
    return FittedModels(dfm, base, dfm_step, base_step, resumed_from)  # type: ignore[arg-type]


def problem_record(problem: ProjectionProblem) -> dict[str, Any]:
    """What identifies a problem in a run directory: its dimensions, noise, target views,
    and a SHA-256 digest of its prior's float64 parameters (two problems of the same
    shape but another prior differ in ``prior_sha256``)."""
    digest = hashlib.sha256()
    for tensor in (problem.prior.weights, problem.prior.means, problem.prior.covariances):
        digest.update(tensor.detach().double().cpu().contiguous().numpy().tobytes())
    return {
        "signal_dim": problem.signal_dim,
        "observation_dim": problem.observation_dim,
        "num_components": int(problem.prior.weights.shape[-1]),
        "noise_std": float(problem.noise_std),
        "target_views": problem.target_views,
        "prior_sha256": digest.hexdigest(),
    }


def fit_projection_models(
    problem: ProjectionProblem,
    config: ProjectionFitConfig,
    run_dir: str | os.PathLike[str],
    *,
    device: str | None = "cpu",
    progress: bool = True,
) -> tuple[ForwardDiffusion, RegressionBaseline]:
    """Train DFM and the regression baseline (``train_projection_models``).

    Resumable: rerunning with the same ``run_dir`` continues from the last checkpoints.
    The run directory's saved config is the check: the problem (``problem_record``) and
    the whole ``config`` are stored in every checkpoint, and a rerun with any of them
    changed (another prior of the same shape, another d, another ``steps``...) raises
    ``CheckpointMismatchError`` naming the differing fields instead of returning the old
    weights or resuming under another learning-rate schedule.

    Args:
        problem: the problem to fit.
        config: models and training.
        run_dir: holds ``dfm/`` and ``baseline/`` run directories.
        device: training device (``None``: CUDA when available); not part of the check.
        progress: progress bars.

    Returns:
        The EMA weights of both models, in eval mode, on ``device``.
    """
    run_dir = Path(run_dir)
    schedule = NoiseSchedule.from_name(config.schedule, config.num_timesteps)
    diffusion, baseline = config.model.build(problem, schedule, config.seed)
    trainer_config = config.trainer_config(device=device, progress=progress)
    dataset = ProjectionDataset(
        problem,
        config.batch_size,
        length=max(config.steps, config.baseline_steps, 1),
        seed=config.seed,
    )
    fitted = train_projection_models(
        diffusion,
        baseline,
        dataset,
        trainer_config,
        baseline_steps=config.baseline_steps,
        run_dir=run_dir / "dfm",
        baseline_dir=run_dir / "baseline",
        run_config={"problem": problem_record(problem), "fit": dataclasses.asdict(config)},
        frozen_config_keys=("problem", "fit"),
    )
    return fitted.diffusion, fitted.baseline
