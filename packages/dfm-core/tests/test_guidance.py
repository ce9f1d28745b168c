"""Guidance wrappers against their formulas."""

import pytest
import torch

from dfm_core.guidance import classifier_free_guidance, reconstruction_guidance
from dfm_core.sampling import Denoised
from dfm_core.schedules import NoiseSchedule


def conditional(calls):
    """x0 = 0.5 x_t + c (c the condition per sample); signal = 3 * x0."""

    def denoise(x_t, t, condition):
        calls.append(x_t.shape[0])
        x0 = 0.5 * x_t + condition["c"][:, None]
        return Denoised(x0=x0, signal=3 * x0)

    return denoise


def test_cfg_matches_its_formula_in_one_batched_call():
    calls: list[int] = []
    denoise = conditional(calls)
    cond, null = {"c": torch.tensor([1.0, 2.0])}, {"c": torch.zeros(2)}
    x, t = torch.randn(2, 3), torch.full((2,), 10.0)
    for scale in (0.0, 1.0, 2.5):
        calls.clear()
        out = classifier_free_guidance(denoise, cond, null, scale)(x, t)
        assert calls == [4]  # conditional and unconditional together
        x0_c, x0_u = denoise(x, t, cond).x0, denoise(x, t, null).x0
        assert torch.allclose(out.x0, x0_u + scale * (x0_c - x0_u))
        assert torch.allclose(out.signal, 3 * out.x0)
    assert torch.equal(
        classifier_free_guidance(denoise, cond, null, 1.0)(x, t).x0, denoise(x, t, cond).x0
    )


def test_cfg_returns_the_conditional_signal_when_it_is_not_a_tensor():
    def denoise(x_t, t, condition):
        return Denoised(x0=x_t * 0 + condition[:, None], signal={"field": condition * 10})

    out = classifier_free_guidance(denoise, torch.tensor([1.0]), torch.tensor([0.0]), 2.0)(
        torch.zeros(1, 2), torch.ones(1)
    )
    assert torch.equal(out.signal["field"], torch.tensor([10.0]))
    assert torch.equal(out.x0, torch.full((1, 2), 2.0))


def test_reconstruction_guidance_is_the_gradient_of_context_error():
    schedule = NoiseSchedule.from_name("cosine", 100)
    m = torch.tensor([[0.5, 0.1], [0.0, 0.8]])
    a = torch.tensor([[1.0, -1.0]])
    observed = torch.tensor([[0.7]])

    def denoiser(x_t, t):
        x0 = x_t @ m.T
        return Denoised(x0=x0, signal=x0)

    guided = reconstruction_guidance(
        denoiser,
        schedule,
        forward_model=lambda s, p: s @ p.T,
        context_observation=observed,
        context_params=a,
        weight=0.3,
    )
    x, t = torch.tensor([[0.2, -0.4]]), torch.tensor([40.0])
    with torch.no_grad():
        out = guided(x, t)
    # error = |A M x - o|^2  =>  grad_x = 2 M^T A^T (A M x - o)
    grad = 2 * (m.T @ a.T @ (a @ m @ x.T - observed)).T
    abar = schedule.alphas_cumprod[40].float()
    assert torch.allclose(out.x0, x @ m.T - 0.3 * abar.sqrt() / 2 * grad, atol=1e-6)
    with pytest.raises(ValueError, match="weight"):
        reconstruction_guidance(
            denoiser,
            schedule,
            forward_model=None,
            context_observation=observed,
            context_params=a,
            weight=-1,
        )
