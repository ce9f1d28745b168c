"""One contract suite run against every sampler, with analytic oracle denoisers.

For Gaussian data N(mu, s^2 I) the optimal x0-denoiser is known in closed form:
    E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + 1 - a^2) * (x_t - a mu),   a = sqrt(abar_t)
so a correct sampler driven by it must reproduce N(mu, s^2 I).
"""

import math
import warnings
from itertools import pairwise

import numpy as np
import pytest
import torch

from dfm_core.sampling import (
    SAMPLERS,
    Denoised,
    StepInfo,
    ddim_timesteps,
    dynamic_threshold,
    karras_sigmas,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_edm,
)
from dfm_core.schedules import NoiseSchedule, schedule_cosine, schedule_linear

SCHEDULE = NoiseSchedule.from_name("cosine", 1000)

# Each sampler with the options that make it stochastic, and its deterministic variant.
# Step counts where each is within ~5% of the exact std on a narrow Gaussian (ancestral
# sampling with the posterior variance under-disperses at few steps; Heun converges fastest).
STOCHASTIC = {
    "ddim": {"eta": 1.0, "steps": 250},
    "ddpm": {"steps": 250},
    "edm": {"churn": 40.0, "steps": 40},
}
DETERMINISTIC = {
    "ddim": {"eta": 0.0, "steps": 100},
    "dpmpp_2m": {"steps": 20},
    "edm": {"steps": 20},
}


def gaussian_oracle(mu: torch.Tensor, std: float, schedule: NoiseSchedule = SCHEDULE):
    """The exact denoiser of N(mu, std^2 I); its signal is 2 * x0 (a linear 'forward model')."""

    def denoiser(x_t, t):
        a = schedule.alpha_bar(t.double()).sqrt().to(x_t.dtype)[:, None]
        x0 = mu + a * std**2 / (a**2 * std**2 + 1 - a**2) * (x_t - a * mu)
        return Denoised(x0=x0, signal=2 * x0)

    return denoiser


def point_oracle(point: torch.Tensor):
    return lambda x_t, t: Denoised(
        x0=point.expand_as(x_t).clone(), signal=point.expand_as(x_t).clone()
    )


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_point_mass_returns_the_point(name):
    point = torch.tensor([0.25, -0.5, 1.0])
    out = sample(
        name,
        point_oracle(point),
        SCHEDULE,
        (4, 3),
        steps=5,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(out.observation, point.expand(4, 3), atol=1e-6)
    assert torch.allclose(out.signal, point.expand(4, 3))


@pytest.mark.parametrize(
    "name,options", [*STOCHASTIC.items(), *[(f"{k}", v) for k, v in DETERMINISTIC.items()]]
)
def test_gaussian_oracle_reproduces_the_data_distribution(name, options):
    mu, std, n = torch.tensor([0.5, -1.0]), 0.3, 4000
    out = sample(
        name,
        gaussian_oracle(mu, std),
        SCHEDULE,
        (n, 2),
        generator=torch.Generator().manual_seed(1),
        **options,
    )
    x = out.observation.double()
    # Mean within 5 standard errors; std within 6%.
    assert torch.allclose(x.mean(0), mu.double(), atol=5 * std / math.sqrt(n))
    assert torch.allclose(x.std(0), torch.tensor([std, std], dtype=torch.float64), rtol=0.06)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_final_observation_is_the_final_denoised_estimate(name):
    seen: list[StepInfo] = []
    out = sample(
        name,
        gaussian_oracle(torch.zeros(2), 0.5),
        SCHEDULE,
        (3, 2),
        steps=4,
        generator=torch.Generator().manual_seed(0),
        callback=seen.append,
    )
    assert [info.step for info in seen] == list(range(len(seen))) and len(seen) == 4
    assert torch.equal(out.observation, seen[-1].x0.float())
    # The signal returned is the one rendered into that observation (here signal = 2 x0).
    assert torch.allclose(out.signal, 2 * out.observation)


@pytest.mark.parametrize("name,options", [*STOCHASTIC.items(), *DETERMINISTIC.items()])
def test_per_sample_seeding_is_independent_of_batch_position(name, options):
    denoiser = gaussian_oracle(torch.tensor([0.1, 0.2]), 0.4)
    alone = sample(
        name, denoiser, SCHEDULE, (1, 2), generator=[torch.Generator().manual_seed(7)], **options
    )
    seeds = [3, 5, 7]
    batch = sample(
        name,
        denoiser,
        SCHEDULE,
        (3, 2),
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        **options,
    )
    assert torch.allclose(batch.observation[2], alone.observation[0], atol=1e-6)
    assert not torch.allclose(batch.observation[0], batch.observation[2])


@pytest.mark.parametrize("name,options", sorted(DETERMINISTIC.items()))
def test_deterministic_samplers_draw_only_the_initial_noise(name, options):
    generator = torch.Generator().manual_seed(11)
    first = sample(
        name, gaussian_oracle(torch.zeros(2), 0.4), SCHEDULE, (5, 2), generator=generator, **options
    )
    state_after = generator.get_state()
    reference = torch.Generator().manual_seed(11)
    torch.randn((5, 2), generator=reference, dtype=torch.float64)
    assert torch.equal(state_after, reference.get_state())
    again = sample(
        name,
        gaussian_oracle(torch.zeros(2), 0.4),
        SCHEDULE,
        (5, 2),
        generator=torch.Generator().manual_seed(11),
        **options,
    )
    assert torch.equal(first.observation, again.observation)


@pytest.mark.parametrize("name,options", sorted(DETERMINISTIC.items()))
def test_temperature_scales_a_deterministic_gaussian_map(name, options):
    # For zero-mean Gaussian data the probability-flow map is linear: x_T -> std * x_T (to ODE
    # error), so scaling the initial noise by tau scales every sample by tau.
    denoiser = gaussian_oracle(torch.zeros(2), 0.5)
    base = sample(
        name, denoiser, SCHEDULE, (6, 2), generator=torch.Generator().manual_seed(2), **options
    )
    cold = sample(
        name,
        denoiser,
        SCHEDULE,
        (6, 2),
        generator=torch.Generator().manual_seed(2),
        temperature=0.5,
        **options,
    )
    assert torch.allclose(cold.observation, 0.5 * base.observation, atol=1e-5)


def test_ddim_with_eta_one_is_ancestral_ddpm():
    denoiser = gaussian_oracle(torch.tensor([0.3, 0.0]), 0.6)
    ddim = sample_ddim(
        denoiser, SCHEDULE, (8, 2), steps=25, eta=1.0, generator=torch.Generator().manual_seed(4)
    )
    ddpm = sample_ddpm(
        denoiser, SCHEDULE, (8, 2), steps=25, generator=torch.Generator().manual_seed(4)
    )
    assert torch.allclose(ddim.observation, ddpm.observation, atol=1e-5)


def test_dfm_spacing_reproduces_the_dfm_code():
    assert ddim_timesteps(1000, 50, "dfm")[:3] == [999, 979, 959]
    assert ddim_timesteps(1000, 50, "dfm")[-3:] == [39, 19, -1]
    assert ddim_timesteps(1000, 10, "dfm") == [
        999,
        899,
        799,
        699,
        599,
        499,
        399,
        299,
        199,
        99,
        -1,
    ]
    assert ddim_timesteps(1000, 1000, "linspace") == [*range(999, -1, -1), -1]


def diffusers_linspace(num_timesteps, steps):
    """diffusers' timestep_spacing="linspace" (DDIMScheduler.set_timesteps), restated."""
    return np.linspace(0, num_timesteps - 1, steps).round()[::-1].copy().astype(np.int64)


def diffusers_trailing(num_timesteps, steps):
    """diffusers' timestep_spacing="trailing", restated: round(arange(T, 0, -T/S)) - 1."""
    return np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)).astype(np.int64) - 1


@pytest.mark.parametrize("num_timesteps", [1000, 999, 37, 4000])
def test_spacing_names_map_to_diffusers_as_documented(num_timesteps):
    for steps in range(1, num_timesteps + 1, max(1, num_timesteps // 97)):
        ours = ddim_timesteps(num_timesteps, steps, "linspace")
        assert ours[:-1] == diffusers_linspace(num_timesteps, steps).tolist()
        dfm = ddim_timesteps(num_timesteps, steps, "dfm")[:-1]
        if num_timesteps % steps == 0:
            assert dfm == diffusers_trailing(num_timesteps, steps).tolist()
    # Where S does not divide T the two differ (diffusers rounds, the DFM code truncates).
    assert ddim_timesteps(1000, 3, "dfm")[:-1] != diffusers_trailing(1000, 3).tolist()


def test_old_spacing_names_warn_and_alias_the_new_ones():
    for old, new in (("trailing", "linspace"), ("original", "dfm")):
        with pytest.warns(FutureWarning, match=f"use spacing='{new}'"):
            assert ddim_timesteps(1000, 7, old) == ddim_timesteps(1000, 7, new)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ddim_timesteps(1000, 7, "linspace")


def test_step_counts_accept_numpy_integers_and_name_the_argument():
    assert ddim_timesteps(np.int64(1000), np.int32(4)) == ddim_timesteps(1000, 4)
    assert torch.equal(karras_sigmas(np.int64(5), 0.01, 10.0), karras_sigmas(5, 0.01, 10.0))
    assert torch.equal(schedule_cosine(np.int64(10)), schedule_cosine(10))
    for name in sorted(SAMPLERS):
        sample(name, point_oracle(torch.zeros(2)), SCHEDULE, (1, 2), steps=np.int64(3))
    with pytest.raises(ValueError, match="num_steps: expected a positive int, got 0"):
        karras_sigmas(0, 0.01, 10.0)
    with pytest.raises(ValueError, match=r"num_steps: expected a positive int, got 2\.0"):
        karras_sigmas(2.0, 0.01, 10.0)
    with pytest.raises(ValueError, match="steps: expected a positive int, got True"):
        ddim_timesteps(1000, True)
    with pytest.raises(ValueError, match="num_timesteps: expected a positive int"):
        schedule_linear(10.0)


def test_linear_schedule_scales_betas_by_1000_over_t():
    # Documented convention: T = 1000 is Ho et al.'s linspace(1e-4, 2e-2, 1000); T = 250
    # has betas 4x larger (diffusers' "linear" would keep the unscaled range).
    assert torch.allclose(
        schedule_linear(1000), torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
    )
    assert torch.allclose(
        schedule_linear(250), 4 * torch.linspace(1e-4, 2e-2, 250, dtype=torch.float64)
    )


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_output_has_the_requested_dtype(name, dtype):
    # The denoiser answers in float64 whatever it is given; the output follows ``dtype``.
    def denoiser(x_t, t):
        assert x_t.dtype == dtype and t.dtype == dtype
        x0 = torch.zeros_like(x_t, dtype=torch.float64)
        return Denoised(x0=x0, signal=x0)

    out = sample(name, denoiser, SCHEDULE, (2, 3), steps=3, dtype=dtype)
    assert out.observation.dtype == dtype


def gaussian_ve_denoiser(mu: float, std: float):
    """D(x; sigma) = E[x0 | x0 + sigma n = x] for x0 ~ N(mu, std^2), written in sigma directly."""
    return lambda x, sigma: mu + std**2 / (std**2 + sigma**2) * (x - mu)


def karras_heun_reference(noise, sigmas, denoise):
    """Karras et al. (2022) Algorithm 2 without churn, float64, in the VE variable."""
    x = noise * sigmas[0]
    for sigma, sigma_next in pairwise(sigmas):
        d = (x - denoise(x, sigma)) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            d_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
    return x


def dpmpp_2m_reference(noise, sigmas, denoise):
    """DPM-Solver++(2M) re-derived in the VE variable with time s = -log sigma (as in
    k-diffusion's formulation), float64; the final step to sigma = 0 is first order."""
    x = noise * sigmas[0]
    previous, h_last = None, None
    for sigma, sigma_next in pairwise(sigmas):
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            blend = denoised
            if previous is not None:
                r = h_last / h
                blend = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            # Exponential integrator of dx/ds = D - x over [s, s + h]:
            x = (sigma_next / sigma) * x + (1 - math.exp(-h)) * blend
            h_last = h
        previous = denoised
    return x


def test_edm_sampler_matches_an_independent_karras_implementation_in_float64():
    mu, std, steps = 0.3, 0.5, 6
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    out = sample_edm(
        gaussian_oracle(torch.tensor(mu, dtype=torch.float64), std),
        SCHEDULE,
        (16, 2),
        steps=steps,
        sigma_min=0.01,
        sigma_max=50.0,
        generator=torch.Generator().manual_seed(3),
        dtype=torch.float64,
    )
    sigmas = karras_sigmas(steps, 0.01, 50.0).tolist()
    reference = karras_heun_reference(noise, sigmas, gaussian_ve_denoiser(mu, std))
    # A float32-rounded sigma made this ~1e-8 (dfm-core 0.2).
    assert torch.allclose(out.observation, reference, atol=1e-12, rtol=0)


@pytest.mark.parametrize("spacing", ["karras", "linspace", "dfm"])
def test_dpmpp_2m_matches_an_independent_re_derivation(spacing):
    mu, std, steps = -0.2, 0.4, 7
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = sample_dpmpp_2m(
        gaussian_oracle(torch.tensor(mu, dtype=torch.float64), std),
        SCHEDULE,
        (16, 3),
        steps=steps,
        spacing=spacing,
        sigma_min=0.01 if spacing == "karras" else None,
        sigma_max=50.0 if spacing == "karras" else None,
        generator=torch.Generator().manual_seed(5),
        dtype=torch.float64,
    )
    if spacing == "karras":
        sigmas = karras_sigmas(steps, 0.01, 50.0).tolist()
    else:
        timesteps = torch.tensor(ddim_timesteps(1000, steps, spacing)[:-1], dtype=torch.float64)
        sigmas = [*SCHEDULE.sigma(timesteps).tolist(), 0.0]
    # Our state is the VP x_t = x_ve / sqrt(1 + sigma^2); at sigma = 0 the two coincide.
    reference = dpmpp_2m_reference(noise, sigmas, gaussian_ve_denoiser(mu, std))
    assert torch.allclose(out.observation, reference, atol=1e-11, rtol=0)


def test_dpmpp_2m_converges_at_second_order_to_the_exact_flow():
    # For x0 ~ N(mu, s^2) the probability-flow ODE (VE variable) is solved by
    #   x(sigma) = mu + (x(sigma_max) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2).
    # Sampling ends at sigma_min, so compare with the exact flow to sigma_min (then to 0 the
    # last step is the denoiser's exact D).
    mu, std, sigma_min, sigma_max = 0.5, 0.3, 0.01, 20.0
    noise = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_min = mu + (noise * sigma_max - mu) * math.hypot(std, sigma_min) / math.hypot(std, sigma_max)
    exact = mu + std**2 / (std**2 + sigma_min**2) * (x_min - mu)

    def error(sampler, steps):
        out = sampler(
            gaussian_oracle(torch.tensor(mu, dtype=torch.float64), std),
            SCHEDULE,
            (64, 1),
            steps=steps,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            generator=torch.Generator().manual_seed(0),
            dtype=torch.float64,
        )
        return (out.observation - exact).abs().max().item()

    def euler(*args, **kwargs):
        return sample_edm(*args, solver="euler", **kwargs)

    dpm = [error(sample_dpmpp_2m, n) for n in (40, 80, 160)]
    first = [error(euler, n) for n in (40, 80, 160)]
    # Halving the step size divides a p-th order method's error by ~2^p.
    assert dpm[0] / dpm[1] > 3.3 and dpm[1] / dpm[2] > 3.6
    assert 1.6 < first[1] / first[2] < 2.4
    assert dpm[2] < first[2] / 10


def test_dynamic_threshold_closed_form():
    x0 = torch.tensor([[0.5, -0.2, 3.0, -4.0], [0.1, 0.2, -0.3, 0.4]])
    out = dynamic_threshold(x0, 0.5)
    s = torch.quantile(x0[0].abs(), 0.5).clamp(min=1.0)
    assert torch.allclose(out[0], x0[0].clamp(-s, s) / s)
    assert torch.equal(out[1], x0[1])  # s = max(1, quantile) = 1 leaves in-range samples alone
    out = sample_ddim(point_oracle(torch.full((4,), 3.0)), SCHEDULE, (2, 4), steps=3, threshold=0.9)
    assert out.observation.abs().max() <= 1.0 + 1e-6


def test_karras_sigmas_endpoints():
    sigmas = karras_sigmas(5, 0.01, 80.0)
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.01)
    assert sigmas[-1].item() == 0.0 and bool((sigmas.diff() < 0).all())


def test_bad_input_names_the_argument():
    denoiser = point_oracle(torch.zeros(2))
    with pytest.raises(
        ValueError, match="steps: asked for 2000 sampling steps but the schedule has only 1000"
    ):
        sample_ddim(denoiser, SCHEDULE, (1, 2), steps=2000)
    with pytest.raises(ValueError, match="sampler: unknown name 'plms'"):
        sample("plms", denoiser, SCHEDULE, (1, 2))
    with pytest.raises(ValueError, match="spacing"):
        sample_ddim(denoiser, SCHEDULE, (1, 2), spacing="leading")
    with pytest.raises(ValueError, match="generator: got 2 generators for a batch of 3"):
        sample_ddim(denoiser, SCHEDULE, (3, 2), generator=[torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="temperature"):
        sample_ddim(denoiser, SCHEDULE, (1, 2), temperature=0.0)
    with pytest.raises(
        ValueError, match=r"denoiser returned x0 of shape \(1, 3\), expected \(1, 2\)"
    ):
        sample_ddim(lambda x, t: Denoised(torch.zeros(1, 3), None), SCHEDULE, (1, 2), steps=2)
    with pytest.raises(ValueError, match="sigma_min/sigma_max"):
        sample("edm", denoiser, SCHEDULE, (1, 2), sigma_max=1e9)
