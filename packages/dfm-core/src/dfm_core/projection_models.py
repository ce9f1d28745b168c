"""The learned models of the projection problem (``dfm_core.projection_problem``).

``ProjectionPredictor`` is DFM's denoiser: it sees the context and the noisy target
observation and predicts the signal S (never the observation), which the problem's forward
model projects back; ``RegressionBaseline`` is the deterministic baseline, fed the context
only and trained with the same observation losses. Both work on basis-free descriptions of
a context (projector and back-projection, ``_context_features``), optionally lifted by
random Fourier features. ``ProjectionModelConfig`` builds the pair for a problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dfm_core.data_order import derive_seed
from dfm_core.diffusion import Context, DFMBatch, ForwardDiffusion
from dfm_core.projection_problem import ProjectionProblem, SubspaceProjection, check_noise_std
from dfm_core.schedules import NoiseSchedule

__all__ = [
    "FourierFeatures",
    "ProjectionModelConfig",
    "ProjectionPredictor",
    "RegressionBaseline",
    "context_correction",
]

_INIT_DFM, _INIT_BASELINE = 1000, 1001  # seed-stream tags of the initial weights


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
        check_noise_std(noise_std)
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
        check_noise_std(noise_std)

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
