"""Samplers: plain loops over a schedule, written as free functions over a denoiser.

Every sampler takes a *denoiser* ``denoiser(x_t, t) -> Denoised(x0, signal)``: for DFM,
``x0 = forward(signal, phi^trgt)`` (``ForwardDiffusion.denoiser``). They share one
keyword tail:

    generator    torch.Generator, or one per sample: a sample then depends on its own
                 seed only, not on where it sits in the batch.
    temperature  scales the initial noise x_T (values < 1 trade diversity for quality).
    threshold    dynamic-thresholding percentile in (0, 1] applied to x0 (Saharia et al.
                 2022); None disables it.
    callback     called after every step with a ``StepInfo``.

Each returns ``SampleOutput(observation, signal)``. The last step always lands on the
clean level, where the new state equals the last x0 estimate, so without thresholding
``observation == forward(signal, phi^trgt)`` exactly. Arithmetic on the state (and on
noise levels and timesteps) runs in float64; the denoiser sees ``dtype`` (its inputs
x_t and t are cast to it), and the returned observation is cast to ``dtype`` too.

Step counts accept any integral number (Python or numpy ints), not bools.

Timestep spacings of the discrete samplers (``ddim_timesteps``), and how they map to the
``timestep_spacing`` option of the widely used ``diffusers`` schedulers:

    ours        visits (S evaluations, T timesteps)               diffusers
    "linspace"  round(linspace(0, T-1, S)), reversed: T-1 ... 0     "linspace" (identical)
    "dfm"       int(linspace(-1, T-1, S+1)), reversed, without -1  "trailing" only when S
                (the original DFM code; last evaluation T/S - 1)   divides T (it rounds
                                                                   T - j T/S, we truncate)

The names ``"trailing"`` (= ``"linspace"``) and ``"original"`` (= ``"dfm"``) of dfm-core
0.2 still work but warn: ``"trailing"`` means a different spacing in diffusers.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from dfm_core.schedules import NoiseSchedule

__all__ = [
    "SAMPLERS",
    "Denoised",
    "Denoiser",
    "SampleOutput",
    "StepInfo",
    "ddim_timesteps",
    "dynamic_threshold",
    "karras_sigmas",
    "randn",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_edm",
]


@dataclass(frozen=True)
class Denoised:
    """What a denoiser returns.

    Attributes:
        x0: estimate of the clean target observation, shape (B, *obs_shape).
        signal: the predicted signal that ``x0`` was rendered from (opaque).
    """

    x0: Tensor
    signal: Any


class Denoiser(Protocol):
    """``denoiser(x_t (B, *obs_shape), t (B,) float timesteps) -> Denoised``."""

    def __call__(self, x_t: Tensor, t: Tensor, /) -> Denoised: ...


@dataclass(frozen=True)
class StepInfo:
    """Passed to ``callback`` after each step.

    Attributes:
        step: 0-based index of the step just taken.
        num_steps: total number of steps.
        t: timestep (fractional for EDM) the denoiser was evaluated at.
        x: the new state, shape (B, *obs_shape), float64.
        x0: the denoiser's clean estimate at this step, float64.
        signal: the denoiser's signal at this step.
    """

    step: int
    num_steps: int
    t: float
    x: Tensor
    x0: Tensor
    signal: Any


@dataclass(frozen=True)
class SampleOutput:
    """What a sampler returns.

    Attributes:
        observation: the final state, shape (B, *obs_shape), cast to the sampler's
            ``dtype`` argument (the state itself is float64 while sampling).
        signal: the denoiser's signal at the last evaluation, as the denoiser returned it.
    """

    observation: Tensor
    signal: Any


Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[StepInfo], None]


def randn(
    shape: Sequence[int],
    generator: Generator,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Standard normal noise; with one generator per sample, row i comes from generator i.

    Args:
        shape: (B, ...).
        generator: None, one generator, or a sequence of B generators.
    """
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(
            device
        )
    if len(generator) != shape[0]:
        raise ValueError(
            f"generator: got {len(generator)} generators for a batch of {shape[0]} samples"
        )
    rows = [
        torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype).to(device)
        for g in generator
    ]
    return torch.stack(rows)


def dynamic_threshold(x0: Tensor, percentile: float) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, section 2.3).

    Per sample, s = max(1, quantile(|x0|, percentile)); x0 <- clamp(x0, -s, s) / s.

    Args:
        x0: shape (B, ...).
        percentile: in (0, 1].
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"threshold: expected a percentile in (0, 1], got {percentile}")
    flat = x0.reshape(x0.shape[0], -1).abs()
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def count_arg(name: str, value: Any) -> int:
    """``value`` as a Python int if it is an integral number >= 1, else a ValueError naming ``name``.

    Accepts numpy integers (``np.int64(50)``) as well as ints; refuses bools and floats.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


Spacing = Literal["linspace", "dfm"]
_SPACINGS = ("linspace", "dfm")
# dfm-core 0.2 names; "trailing" collides with diffusers' "trailing", a different spacing.
_OLD_SPACINGS = {"trailing": "linspace", "original": "dfm"}


def _spacing_name(spacing: str) -> str:
    if spacing in _OLD_SPACINGS:
        new = _OLD_SPACINGS[spacing]
        warnings.warn(
            f"spacing={spacing!r} is deprecated, use spacing={new!r} (the same timesteps); "
            "note that diffusers' 'trailing' is a different spacing",
            FutureWarning,
            stacklevel=3,
        )
        return new
    if spacing not in _SPACINGS:
        raise ValueError(f"spacing: expected one of {list(_SPACINGS)}, got {spacing!r}")
    return spacing


def ddim_timesteps(num_timesteps: int, steps: int, spacing: str = "linspace") -> list[int]:
    """The timesteps a DDIM/DDPM run visits, ending with -1 (clean).

    Args:
        num_timesteps: T of the schedule.
        steps: number of denoiser evaluations S, 1 <= S <= T.
        spacing: ``"linspace"`` spreads S steps evenly from T-1 down to 0 (rounded to the
            nearest integer, ties to even), so S = T visits every timestep; it is the
            same list as diffusers' ``timestep_spacing="linspace"``. ``"dfm"`` reproduces
            the original DFM code: ``int(linspace(-1, T-1, S+1))`` reversed, whose last
            evaluation is at t = T/S - 1 (19 for T=1000, S=50), never at 0; it equals
            diffusers' ``"trailing"`` only when S divides T. See the module docstring for
            the deprecated names ``"trailing"`` and ``"original"``.

    Returns:
        S + 1 integers, strictly decreasing, the last one -1.
    """
    num_timesteps = count_arg("num_timesteps", num_timesteps)
    steps = count_arg("steps", steps)
    spacing = _spacing_name(spacing)
    if steps > num_timesteps:
        raise ValueError(
            f"steps: asked for {steps} sampling steps but the schedule has only {num_timesteps} timesteps"
        )
    if spacing == "linspace":
        # numpy's linspace, exactly: its float rounding decides ties such as t = 499.5
        # differently from torch's, and the list must equal diffusers' to the integer.
        points = np.linspace(0, num_timesteps - 1, steps, dtype=np.float64).round()[::-1]
        return [*(int(p) for p in points), -1]
    points = torch.linspace(-1, num_timesteps - 1, steps + 1, dtype=torch.float64).long().tolist()
    return list(reversed(points))


def _initial_noise(
    shape: Sequence[int],
    generator: Generator,
    temperature: float,
    device: torch.device | str | None,
) -> Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    return randn(shape, generator, device=device) * temperature


def _evaluate(
    denoiser: Denoiser, x: Tensor, t: float, dtype: torch.dtype, threshold: float | None
) -> tuple[Tensor, Any]:
    """Call the denoiser at scalar time t for the whole batch; x0 back in float64."""
    t_batch = torch.full((x.shape[0],), t, dtype=dtype, device=x.device)
    out = denoiser(x.to(dtype), t_batch)
    if out.x0.shape != x.shape:
        raise ValueError(
            f"denoiser returned x0 of shape {tuple(out.x0.shape)}, expected {tuple(x.shape)}"
        )
    x0 = out.x0.to(torch.float64)
    if threshold is not None:
        x0 = dynamic_threshold(x0, threshold)
    return x0, out.signal


def _noise_for_step(like: Tensor, generator: Generator) -> Tensor:
    return randn(like.shape, generator, device=like.device)


def sample_ddim(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "linspace",
    generator: Generator = None,
    temperature: float = 1.0,
    threshold: float | None = None,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SampleOutput:
    """DDIM (Song et al. 2021). eta = 0 is deterministic; eta = 1 is ancestral DDPM.

    Args:
        denoiser: see ``Denoiser``.
        schedule: the training noise process.
        shape: (B, *obs_shape) of the target observation.
        steps: number of denoiser evaluations.
        eta: stochasticity, sigma_t = eta * sqrt((1-abar')/(1-abar)) sqrt(1 - abar/abar').
        spacing: see ``ddim_timesteps``.
    """
    if eta < 0:
        raise ValueError(f"eta: expected >= 0, got {eta}")
    timesteps = ddim_timesteps(schedule.num_timesteps, steps, spacing)
    x = _initial_noise(shape, generator, temperature, device)
    signal: Any = None
    for i, (t, t_next) in enumerate(pairwise(timesteps)):
        x0, signal = _evaluate(denoiser, x, t, dtype, threshold)
        alpha_bar = schedule.alpha_bar(torch.tensor(float(t))).item()
        alpha_bar_next = schedule.alpha_bar(torch.tensor(float(t_next))).item()
        # Song et al. eq. (12): x' = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps_hat + sigma z
        eps = (x - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)
        sigma = eta * math.sqrt(
            (1 - alpha_bar_next) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_next)
        )
        x = (
            math.sqrt(alpha_bar_next) * x0
            + math.sqrt(max(1 - alpha_bar_next - sigma**2, 0.0)) * eps
        )
        if sigma > 0:
            x = x + sigma * _noise_for_step(x, generator)
        if callback is not None:
            callback(StepInfo(i, len(timesteps) - 1, float(t), x, x0, signal))
    return SampleOutput(observation=x.to(dtype), signal=signal)


def sample_ddpm(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    steps: int | None = None,
    generator: Generator = None,
    temperature: float = 1.0,
    threshold: float | None = None,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SampleOutput:
    """Ancestral sampling from the true posterior q(x_{t'} | x_t, x0_hat) (Ho et al. 2020).

    With ``steps < T`` the chain is respaced (``"linspace"`` spacing) and the posterior of the
    respaced process is used: beta' = 1 - abar_t / abar_{t'}.

    Args:
        steps: number of denoiser evaluations; None uses all T timesteps.
    """
    timesteps = ddim_timesteps(
        schedule.num_timesteps, schedule.num_timesteps if steps is None else steps, "linspace"
    )
    x = _initial_noise(shape, generator, temperature, device)
    signal: Any = None
    for i, (t, t_next) in enumerate(pairwise(timesteps)):
        x0, signal = _evaluate(denoiser, x, t, dtype, threshold)
        alpha_bar = schedule.alpha_bar(torch.tensor(float(t))).item()
        alpha_bar_next = schedule.alpha_bar(torch.tensor(float(t_next))).item()
        alpha = alpha_bar / alpha_bar_next
        beta = 1 - alpha
        # Ho et al. eq. (7): posterior mean and variance of q(x_{t'} | x_t, x0).
        mean = (math.sqrt(alpha_bar_next) * beta / (1 - alpha_bar)) * x0 + (
            math.sqrt(alpha) * (1 - alpha_bar_next) / (1 - alpha_bar)
        ) * x
        variance = beta * (1 - alpha_bar_next) / (1 - alpha_bar)
        x = mean
        if variance > 0:
            x = x + math.sqrt(variance) * _noise_for_step(x, generator)
        if callback is not None:
            callback(StepInfo(i, len(timesteps) - 1, float(t), x, x0, signal))
    return SampleOutput(observation=x.to(dtype), signal=signal)


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) eq. (5) noise levels, decreasing, followed by a final 0.

    Args:
        num_steps: number N of noise levels before the final 0 (an int or numpy int).
        sigma_min, sigma_max: the ramp's ends, 0 < sigma_min < sigma_max.
        rho: the ramp's exponent (7 in EDM).

    Returns:
        shape (num_steps + 1,), float64.
    """
    num_steps = count_arg("num_steps", num_steps)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"sigma_min/sigma_max: expected 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}"
        )
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    if num_steps == 1:
        ramp = torch.zeros(1, dtype=torch.float64)
    inv_rho_max, inv_rho_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def sample_edm(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    steps: int = 50,
    solver: Literal["heun", "euler"] = "heun",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
    churn: float = 0.0,
    churn_min: float = 0.0,
    churn_max: float = float("inf"),
    churn_noise: float = 1.0,
    generator: Generator = None,
    temperature: float = 1.0,
    threshold: float | None = None,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SampleOutput:
    """Karras et al. (2022) Algorithm 2: Euler or Heun steps with optional churn.

    The discrete VP model is driven as a variance-exploding one: x_ve = x_vp / sqrt(abar),
    sigma = sqrt((1 - abar) / abar), and D(x_ve; sigma) = x0_hat(x_ve / sqrt(1 + sigma^2), t(sigma)).

    Args:
        steps: number of noise levels N (Heun uses 2N - 1 denoiser evaluations).
        sigma_min, sigma_max: range of the Karras ramp; default to EDM's 0.002 and 80,
            clipped to the schedule's range (its own sigma_max, ~2e4 for cosine T=1000,
            wastes steps at noise levels where x0_hat is just the data mean).
        churn: S_churn; 0 gives the deterministic sampler.
        churn_min, churn_max: S_tmin, S_tmax, the sigma window where churn applies.
        churn_noise: S_noise.
    """
    steps = count_arg("steps", steps)
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver: expected 'heun' or 'euler', got {solver!r}")
    if churn < 0:
        raise ValueError(f"churn: expected >= 0, got {churn}")
    sigmas = _karras_for(schedule, steps, sigma_min, sigma_max, rho)

    def denoise_ve(x_ve: Tensor, sigma: float) -> tuple[Tensor, Any, float]:
        # float64 sigma: torch.tensor(python float) would round it to float32 first.
        t = float(schedule.t_from_sigma(torch.tensor(sigma, dtype=torch.float64)))
        x0, signal = _evaluate(denoiser, x_ve / math.sqrt(1 + sigma**2), t, dtype, threshold)
        return x0, signal, t

    x = _initial_noise(shape, generator, temperature, device) * sigmas[0]
    signal: Any = None
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        # Churn (Algorithm 2, lines 4-6): raise the noise level to sigma_hat, add fresh noise.
        gamma = min(churn / steps, math.sqrt(2) - 1) if churn_min <= sigma <= churn_max else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * churn_noise * _noise_for_step(x, generator)
        # Euler step (lines 7-8): dx/dsigma = (x - D(x; sigma)) / sigma.
        x0, signal, t = denoise_ve(x, sigma_hat)
        slope = (x - x0) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * slope
        # Heun correction (lines 9-11), skipped on the final step to sigma = 0.
        if solver == "heun" and sigma_next > 0:
            x0_next, signal_next, _ = denoise_ve(x_next, sigma_next)
            slope_next = (x_next - x0_next) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (slope + slope_next)
            x0, signal = x0_next, signal_next
        x = x_next
        if callback is not None:
            callback(StepInfo(i, steps, t, x, x0, signal))
    return SampleOutput(observation=x.to(dtype), signal=signal)


def _karras_for(
    schedule: NoiseSchedule,
    steps: int,
    sigma_min: float | None,
    sigma_max: float | None,
    rho: float,
) -> list[float]:
    """Karras sigmas inside the schedule's range; defaults EDM's [0.002, 80], clipped to it."""
    sigma_lo = max(0.002, schedule.sigma_min) if sigma_min is None else sigma_min
    sigma_hi = min(80.0, schedule.sigma_max) if sigma_max is None else sigma_max
    if sigma_lo < schedule.sigma_min * (1 - 1e-9) or sigma_hi > schedule.sigma_max * (1 + 1e-9):
        raise ValueError(
            f"sigma_min/sigma_max: [{sigma_lo}, {sigma_hi}] lies outside the schedule's range "
            f"[{schedule.sigma_min}, {schedule.sigma_max}]"
        )
    return karras_sigmas(steps, sigma_lo, sigma_hi, rho).tolist()


def sample_dpmpp_2m(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    steps: int = 15,
    spacing: Literal["karras", "linspace", "dfm"] = "karras",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
    generator: Generator = None,
    temperature: float = 1.0,
    threshold: float | None = None,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SampleOutput:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a multistep
    second-order solver of the probability-flow ODE in data (x0) prediction.

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t)
    and h_i = lambda_{t_i} - lambda_{t_{i-1}}, each step is (their eq. 9 with the
    multistep estimate of the x0 derivative):

        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i
        D_i     = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2},   r_i = h_{i-1} / h_i

    The first step has no previous estimate, and the last one (to the clean level, where
    h is infinite) is first order, D_i = x0_{i-1}: it lands on the last x0 estimate, as
    every sampler here does. The first-order step is exactly DDIM (eta = 0). The
    solver is deterministic: the generator only draws the initial noise.

    Args:
        denoiser: see ``Denoiser``.
        schedule: the training noise process.
        shape: (B, *obs_shape) of the target observation.
        steps: number of denoiser evaluations S (one per step).
        spacing: the noise levels visited. ``"karras"`` (default): Karras et al.'s ramp of
            ``steps`` noise levels over [sigma_min, sigma_max], as ``sample_edm``, at
            fractional timesteps; ``"linspace"`` or ``"dfm"``: the integer timesteps of
            ``ddim_timesteps``.
        sigma_min, sigma_max, rho: the Karras ramp (``"karras"`` only); the defaults are
            those of ``sample_edm``.
    """
    steps = count_arg("steps", steps)
    if spacing == "karras":
        sigmas = _karras_for(schedule, steps, sigma_min, sigma_max, rho)[:-1]
        sigma_t = torch.tensor(sigmas, dtype=torch.float64)
        timesteps = [*schedule.t_from_sigma(sigma_t).tolist(), -1.0]
    elif spacing in ("linspace", "dfm"):
        timesteps = [float(t) for t in ddim_timesteps(schedule.num_timesteps, steps, spacing)]
    else:
        raise ValueError(f"spacing: expected 'karras', 'linspace' or 'dfm', got {spacing!r}")
    alpha_bars = schedule.alpha_bar(torch.tensor(timesteps, dtype=torch.float64)).tolist()
    alphas = [math.sqrt(a) for a in alpha_bars]
    sigmas_vp = [math.sqrt(1 - a) for a in alpha_bars]
    # lambda = log(alpha / sigma), +inf at the clean level.
    lambdas = [
        math.log(a / s) if s > 0 else math.inf for a, s in zip(alphas, sigmas_vp, strict=True)
    ]

    # x_T ~ N(0, sigma_{t_0}^2 I): the marginal at t_0 once the data's share is negligible.
    x = _initial_noise(shape, generator, temperature, device) * sigmas_vp[0]
    signal: Any = None
    x0_prev: Tensor | None = None
    h_prev = math.nan
    for i in range(steps):
        x0, signal = _evaluate(denoiser, x, timesteps[i], dtype, threshold)
        if math.isinf(lambdas[i + 1]):
            # Final step: alpha = 1, sigma = 0, e^{-h} = 0, so x = D = x0 (first order).
            x = x0
        else:
            h = lambdas[i + 1] - lambdas[i]
            if x0_prev is None:
                derivative = x0
            else:
                r = h_prev / h
                derivative = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (sigmas_vp[i + 1] / sigmas_vp[i]) * x - alphas[i + 1] * math.expm1(-h) * derivative
            h_prev = h
        x0_prev = x0
        if callback is not None:
            callback(StepInfo(i, steps, timesteps[i], x, x0, signal))
    return SampleOutput(observation=x.to(dtype), signal=signal)


SAMPLERS: dict[str, Callable[..., SampleOutput]] = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "dpmpp_2m": sample_dpmpp_2m,
    "edm": sample_edm,
}


def sample(
    name: str, denoiser: Denoiser, schedule: NoiseSchedule, shape: Sequence[int], **kwargs: Any
) -> SampleOutput:
    """Dispatch to a sampler by name (``ddim``, ``ddpm``, ``dpmpp_2m``, ``edm``)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler: unknown name {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](denoiser, schedule, shape, **kwargs)
