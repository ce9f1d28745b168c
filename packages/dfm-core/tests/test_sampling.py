"""One contract suite run against every sampler, with analytic oracle denoisers.

For Gaussian data N(mu, s^2 I) the optimal x0-denoiser is known in closed form:
    E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + 1 - a^2) * (x_t - a mu),   a = sqrt(abar_t)
so a correct sampler driven by it must reproduce N(mu, s^2 I).
"""

import math

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
)
from dfm_core.schedules import NoiseSchedule

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


@pytest.mark.parametrize("name,options", sorted(STOCHASTIC.items()))
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


def test_original_spacing_reproduces_the_dfm_code():
    assert ddim_timesteps(1000, 50, "original")[:3] == [999, 979, 959]
    assert ddim_timesteps(1000, 50, "original")[-3:] == [39, 19, -1]
    assert ddim_timesteps(1000, 10, "original") == [
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
    trailing = ddim_timesteps(1000, 1000, "trailing")
    assert trailing == [*range(999, -1, -1), -1]


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
