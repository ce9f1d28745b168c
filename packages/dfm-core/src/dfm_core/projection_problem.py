"""A built-in inverse problem with an exact posterior, to test DFM against the truth.

Signals S in R^d are drawn from a Gaussian mixture. The forward model projects S onto
a k-dimensional subspace chosen by the parameter phi (a k x d matrix with orthonormal
rows), optionally with Gaussian observation noise:

    O = forward(S, phi) + noise = phi @ S + noise_std * eps

One observation (k < d) leaves S ambiguous, so p(S | O^ctxt; phi^ctxt) is a genuine
distribution -- a Gaussian mixture whose weights, means and covariances have closed
forms (``exact_posterior``). The network is trained from observations only (context,
target, novel); it never sees S. Proposition 1 of the DFM supplementary says its
samples of S should then follow that posterior. The learned models are in
``dfm_core.projection_models``; fitting them and scoring their samples against this
posterior in ``dfm_core.projection_fit``.

DFM's final signal is the network's estimate given the context and the (sampled)
target observation, so it is an exact posterior *sample* only when context and target
observations together determine S (2k >= d here). With 2k < d the residual ambiguity
is averaged away; this is the same assumption as the paper's Proposition 1.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dfm_core.data_order import derive_seed
from dfm_core.diffusion import Context, DFMBatch
from dfm_core.sampling import Denoised
from dfm_core.schedules import NoiseSchedule
from dfm_core.tree import tree_cat

__all__ = [
    "GaussianMixture",
    "ProjectionDataset",
    "ProjectionProblem",
    "SubspaceProjection",
    "check_noise_std",
    "collate_projection",
    "complement_projections",
    "exact_denoiser",
    "exact_posterior",
    "random_projections",
]


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
    check_noise_std(noise_std)
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


def check_noise_std(noise_std: float) -> None:
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
    check_noise_std(noise_std)
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
        check_noise_std(self.noise_std)
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


# Names that lived here before dfm-core 0.3 (the module was split); still importable, with a
# warning naming their new home.
_MOVED = {
    "FittedModels": "projection_fit",
    "FourierFeatures": "projection_models",
    "PosteriorScores": "projection_fit",
    "ProjectionFitConfig": "projection_fit",
    "ProjectionModelConfig": "projection_models",
    "ProjectionPredictor": "projection_models",
    "RegressionBaseline": "projection_models",
    "context_correction": "projection_models",
    "fit_projection_models": "projection_fit",
    "posterior_samples": "projection_fit",
    "problem_record": "projection_fit",
    "score_samples": "projection_fit",
    "train_projection_models": "projection_fit",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib
        import warnings

        module = f"dfm_core.{_MOVED[name]}"
        warnings.warn(
            f"dfm_core.projection_problem.{name} moved to {module}.{name}",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
