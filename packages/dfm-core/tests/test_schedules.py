"""Schedules against their closed forms; prediction conversions round-trip."""

import math

import pytest
import torch

from dfm_core.schedules import (
    NoiseSchedule,
    ScheduleConfig,
    eps_from_v,
    eps_from_x0,
    schedule_cosine,
    schedule_linear,
    schedule_sigmoid,
    v_from_x0,
    x0_from_eps,
    x0_from_v,
)


def test_cosine_matches_nichol_dhariwal_closed_form():
    T, s = 1000, 0.008
    schedule = NoiseSchedule(schedule_cosine(T, s=s))
    f = [math.cos(((t / T) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = [f[t + 1] / f[0] for t in range(T)]
    # The closed form holds exactly until the 0.999 clip bites, near t = T.
    betas = schedule_cosine(T, s=s)
    unclipped = int((betas < 0.999).sum())
    assert unclipped > 990
    got = schedule.alphas_cumprod[:unclipped]
    assert torch.allclose(
        got, torch.tensor(expected[:unclipped], dtype=torch.float64), rtol=1e-12, atol=1e-15
    )
    assert betas.max().item() == pytest.approx(0.999)


def test_linear_betas_and_cumulative_product():
    betas = schedule_linear(1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(2e-2)
    schedule = NoiseSchedule(betas)
    product = 1.0
    for t in range(1000):
        product *= 1 - (1e-4 + (2e-2 - 1e-4) * t / 999)
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(product, rel=1e-10)


def test_sigmoid_matches_closed_form():
    T, start, end, tau = 100, -3.0, 3.0, 1.0
    schedule = NoiseSchedule(schedule_sigmoid(T, start, end, tau))

    def sig(x):
        return 1 / (1 + math.exp(-x))

    def abar(t):
        return (sig(end / tau) - sig((t / T * (end - start) + start) / tau)) / (
            sig(end / tau) - sig(start / tau)
        )

    for t in [0, 10, 50, 90]:
        assert schedule.alphas_cumprod[t].item() == pytest.approx(abar(t + 1) / abar(0), rel=1e-10)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_alpha_bar_interpolation_is_exact_on_integers_and_monotone(name):
    schedule = NoiseSchedule.from_name(name, 50)
    t = torch.arange(50, dtype=torch.float64)
    assert torch.allclose(schedule.alpha_bar(t), schedule.alphas_cumprod, rtol=1e-12)
    assert schedule.alpha_bar(torch.tensor(-1.0)).item() == 1.0
    fine = torch.linspace(0, 49, 500, dtype=torch.float64)
    assert bool((schedule.alpha_bar(fine).diff() < 0).all())
    # sigma <-> t round-trip at fractional timesteps (used by the EDM sampler).
    assert torch.allclose(schedule.t_from_sigma(schedule.sigma(fine)), fine, atol=1e-9)


def test_add_noise_is_the_forward_process():
    schedule = NoiseSchedule.from_name("cosine", 100)
    x0, noise = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 99])
    abar = schedule.alphas_cumprod[t][:, None]
    assert torch.allclose(
        schedule.add_noise(x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    )


def test_prediction_conversions_round_trip():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 2, 3, generator=generator, dtype=torch.float64)
    eps = torch.randn(5, 2, 3, generator=generator, dtype=torch.float64)
    abar = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.001], dtype=torch.float64)
    a = abar[:, None, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert torch.allclose(eps_from_x0(x_t, x0, abar), eps)
    assert torch.allclose(x0_from_eps(x_t, eps, abar), x0)
    v = v_from_x0(x_t, x0, abar)
    assert torch.allclose(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    assert torch.allclose(x0_from_v(x_t, v, abar), x0)
    assert torch.allclose(eps_from_v(x_t, v, abar), eps)


def test_config_builds_and_bad_input_is_named():
    assert ScheduleConfig("linear", 10).build().num_timesteps == 10
    with pytest.raises(ValueError, match="schedule: unknown name 'quadratic'"):
        NoiseSchedule.from_name("quadratic")
    with pytest.raises(ValueError, match="num_timesteps"):
        schedule_cosine(0)
    with pytest.raises(ValueError, match=r"t: timesteps must lie in \[-1, 9\]"):
        NoiseSchedule.from_name("cosine", 10).alpha_bar(torch.tensor([10.0]))
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule(torch.tensor([0.1, 1.5]))
