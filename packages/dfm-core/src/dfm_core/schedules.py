"""Noise schedules and conversions between the x0 / epsilon / v parameterisations.

A schedule is a function returning the betas of a discrete-time variance-preserving
process as a float64 tensor of shape (T,). ``NoiseSchedule`` derives everything a
sampler needs from those betas. Notation (Ho et al. 2020, eq. 4):

    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps,     abar_t = prod_{s<=t} (1 - beta_s)

Timesteps are integers 0..T-1 for training; samplers may evaluate the network at
fractional timesteps (the EDM sampler does), for which ``NoiseSchedule`` interpolates
log-sigma linearly between neighbouring integers. The special timestep -1 means
"clean" (abar = 1): it is where every sampler ends.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SCHEDULES",
    "NoiseSchedule",
    "ScheduleConfig",
    "eps_from_v",
    "eps_from_x0",
    "schedule_cosine",
    "schedule_linear",
    "schedule_sigmoid",
    "v_from_x0",
    "x0_from_eps",
    "x0_from_v",
]


def schedule_linear(
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 2e-2,
    max_beta: float = 0.999,
) -> Tensor:
    """Linear betas of Ho et al. (2020), **scaled by 1000 / T** (the improved-DDPM
    convention of Nichol & Dhariwal 2021), clipped at ``max_beta`` for very small T.

        beta_t = clamp(linspace(beta_start * 1000/T, beta_end * 1000/T, T), max=max_beta)

    The scaling keeps abar_T (the noise range) about the same for every T. Other
    libraries do not scale: diffusers' ``beta_schedule="linear"`` is
    ``linspace(beta_start, beta_end, T)``. Both agree only at T = 1000; to reproduce
    theirs at another T, pass ``beta_start * T / 1000`` and ``beta_end * T / 1000``.

    Args:
        num_timesteps: T (an int or numpy int).
        beta_start, beta_end: the betas at T = 1000, before the 1000 / T scaling.
        max_beta: upper clip.

    Returns:
        betas, shape (T,), float64.
    """
    num_timesteps = _check_num_timesteps(num_timesteps)
    scale = 1000.0 / num_timesteps
    return torch.linspace(
        beta_start * scale, beta_end * scale, num_timesteps, dtype=torch.float64
    ).clamp(max=max_beta)


def schedule_cosine(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021, eq. 17), betas clipped at ``max_beta``.

    abar(t) = f(t) / f(0),  f(t) = cos(((t / T) + s) / (1 + s) * pi / 2) ** 2

    Returns:
        betas, shape (T,), float64.
    """
    num_timesteps = _check_num_timesteps(num_timesteps)
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0, max_beta)


def schedule_sigmoid(
    num_timesteps: int = 1000,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    max_beta: float = 0.999,
) -> Tensor:
    """Sigmoid schedule (Jabri et al. 2022; Chen 2023, "On the importance of noise scheduling").

    abar(t) = (sigmoid(end / tau) - sigmoid((t/T (end - start) + start) / tau))
              / (sigmoid(end / tau) - sigmoid(start / tau))

    Returns:
        betas, shape (T,), float64.
    """
    num_timesteps = _check_num_timesteps(num_timesteps)
    if not start < end:
        raise ValueError(f"schedule_sigmoid: expected start < end, got start={start}, end={end}")
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    alphas_cumprod = (v_end - torch.sigmoid((steps * (end - start) + start) / tau)) / (
        v_end - v_start
    )
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0, max_beta)


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": schedule_linear,
    "cosine": schedule_cosine,
    "sigmoid": schedule_sigmoid,
}


def _check_num_timesteps(num_timesteps: int) -> int:
    """``num_timesteps`` as an int; numpy integers are accepted, bools and floats refused."""
    if (
        isinstance(num_timesteps, bool)
        or not isinstance(num_timesteps, numbers.Integral)
        or num_timesteps < 1
    ):
        raise ValueError(f"num_timesteps: expected a positive int, got {num_timesteps!r}")
    return int(num_timesteps)


class NoiseSchedule:
    """A discrete variance-preserving noise process, held in float64.

    Args:
        betas: shape (T,), each in (0, 1].
    """

    def __init__(self, betas: Tensor) -> None:
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(
                f"betas: expected a 1-D tensor with T >= 1 entries, got shape {tuple(betas.shape)}"
            )
        betas = betas.detach().to(torch.float64, copy=True)
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas: every entry must lie in (0, 1]")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        # log sigma of the equivalent variance-exploding process, sigma^2 = (1 - abar) / abar;
        # used to map fractional timesteps and EDM sigmas to and from the discrete grid.
        self.log_sigmas = 0.5 * torch.log((1 - self.alphas_cumprod) / self.alphas_cumprod)

    @classmethod
    def from_name(cls, name: str, num_timesteps: int = 1000, **kwargs: float) -> NoiseSchedule:
        """Build a schedule by name: one of ``SCHEDULES`` (linear, cosine, sigmoid)."""
        if name not in SCHEDULES:
            raise ValueError(
                f"schedule: unknown name {name!r}; expected one of {sorted(SCHEDULES)}"
            )
        return cls(SCHEDULES[name](num_timesteps, **kwargs))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.numel())

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def alpha_bar(self, t: Tensor) -> Tensor:
        """abar at (possibly fractional) timesteps; t = -1 gives exactly 1 (clean).

        Args:
            t: any shape, values in [-1, T-1].

        Returns:
            abar, same shape as ``t``, float64, on ``t``'s device.
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        if bool(((t < -1) | (t > self.num_timesteps - 1)).any()):
            raise ValueError(
                f"t: timesteps must lie in [-1, {self.num_timesteps - 1}], "
                f"got range [{float(t.min())}, {float(t.max())}]"
            )
        sigma = self.sigma(t.clamp(min=0))
        return torch.where(t < 0, torch.ones_like(t), 1 / (1 + sigma**2))

    def sigma(self, t: Tensor) -> Tensor:
        """VE noise level sqrt((1 - abar) / abar) at fractional timesteps t in [0, T-1]."""
        t = torch.as_tensor(t, dtype=torch.float64)
        log_sigmas = self.log_sigmas.to(t.device)
        low = t.floor().long().clamp(0, self.num_timesteps - 1)
        high = (low + 1).clamp(max=self.num_timesteps - 1)
        frac = t - low
        return torch.exp((1 - frac) * log_sigmas[low] + frac * log_sigmas[high])

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of ``sigma``: the fractional timestep whose noise level is ``sigma``.

        Args:
            sigma: any shape, in [sigma_min, sigma_max].
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.log().clamp(log_sigmas[0], log_sigmas[-1])
        # log_sigmas is strictly increasing for betas > 0, so a sorted search is valid.
        high = torch.searchsorted(log_sigmas, log_sigma.reshape(-1).contiguous()).reshape(
            sigma.shape
        )
        high = high.clamp(1, self.num_timesteps - 1) if self.num_timesteps > 1 else high.clamp(0, 0)
        low = (high - 1).clamp(min=0)
        span = (log_sigmas[high] - log_sigmas[low]).clamp(min=1e-300)
        frac = ((log_sigma - log_sigmas[low]) / span).clamp(0, 1)
        return low + frac

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)  (Ho et al. 2020, eq. 4).

        Args:
            x0: clean observations, shape (B, ...).
            t: timesteps, shape (B,).
            noise: standard normal, same shape as ``x0``.

        Returns:
            x_t, shape and dtype of ``x0``.
        """
        alpha_bar = _expand(self.alpha_bar(t.to(x0.device)), x0)
        return (alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise).to(x0.dtype)


@dataclass
class ScheduleConfig:
    """Configuration of the noise process."""

    name: str = "cosine"
    """One of ``linear``, ``cosine`` (Nichol & Dhariwal), ``sigmoid``."""
    num_timesteps: int = 1000
    """Number T of discrete diffusion steps used in training."""

    def build(self) -> NoiseSchedule:
        return NoiseSchedule.from_name(self.name, self.num_timesteps)


def _expand(alpha_bar: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample (B,) coefficients to broadcast against ``like`` (B, ...)."""
    return alpha_bar.reshape(-1, *([1] * (like.ndim - 1))).to(like.device)


# Conversions between what a network can predict. All take abar of shape (B,) and
# tensors of shape (B, ...); arithmetic happens in the dtype of the inputs.
def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> Tensor:
    """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    alpha_bar = _expand(alpha_bar, x_t).to(x_t.dtype)
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    alpha_bar = _expand(alpha_bar, x_t).to(x_t.dtype)
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def v_from_x0(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> Tensor:
    """v = sqrt(abar) eps - sqrt(1 - abar) x0  (Salimans & Ho 2022, section 4)."""
    eps = eps_from_x0(x_t, x0, alpha_bar)
    alpha_bar = _expand(alpha_bar, x_t).to(x_t.dtype)
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0


def x0_from_v(x_t: Tensor, v: Tensor, alpha_bar: Tensor) -> Tensor:
    """x0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
    alpha_bar = _expand(alpha_bar, x_t).to(x_t.dtype)
    return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v


def eps_from_v(x_t: Tensor, v: Tensor, alpha_bar: Tensor) -> Tensor:
    """eps = sqrt(1 - abar) x_t + sqrt(abar) v."""
    alpha_bar = _expand(alpha_bar, x_t).to(x_t.dtype)
    return (1 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * v
