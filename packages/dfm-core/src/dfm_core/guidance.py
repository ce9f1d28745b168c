"""Guidance: wrappers that take a conditional denoiser and return a new denoiser.

A *conditional denoiser* is ``denoise(x_t, t, condition) -> Denoised`` (for DFM,
``ForwardDiffusion.denoise``). The wrappers bind conditions and return the plain
``denoiser(x_t, t)`` that every sampler takes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dfm_core.diffusion import observation_of
from dfm_core.sampling import Denoised, Denoiser
from dfm_core.schedules import NoiseSchedule
from dfm_core.tree import tree_cat, tree_index, tree_map

__all__ = ["ConditionalDenoiser", "classifier_free_guidance", "reconstruction_guidance"]

ConditionalDenoiser = Callable[[Tensor, Tensor, Any], Denoised]


def classifier_free_guidance(
    denoise: ConditionalDenoiser, condition: Any, null_condition: Any, scale: float
) -> Denoiser:
    """Classifier-free guidance in x0 space (Ho & Salimans 2021; DFM supplementary 2.4).

        x0 = x0_uncond + scale * (x0_cond - x0_uncond)

    The conditional and unconditional branches run in one batched call of size 2B (the
    two conditions are concatenated once, here, not at every step). A tensor signal is
    extrapolated the same way (exact when the forward model is linear); any other
    signal (e.g. a radiance field) is returned from the conditional branch.

    Args:
        denoise: conditional denoiser.
        condition: condition of batch size B.
        null_condition: the same with the context dropped, batch size B.
        scale: guidance scale w; 1 gives the conditional denoiser, 0 the unconditional.
    """
    both = tree_cat([condition, null_condition])

    def guided(x_t: Tensor, t: Tensor) -> Denoised:
        batch = x_t.shape[0]
        out = denoise(torch.cat([x_t, x_t]), torch.cat([t, t]), both)
        x0_cond, x0_uncond = out.x0[:batch], out.x0[batch:]
        x0 = x0_uncond + scale * (x0_cond - x0_uncond)
        if isinstance(out.signal, Tensor):
            signal_cond, signal_uncond = out.signal[:batch], out.signal[batch:]
            signal = signal_uncond + scale * (signal_cond - signal_uncond)
        else:
            signal = tree_index(out.signal, slice(0, batch))
        return Denoised(x0=x0, signal=signal)

    return guided


def reconstruction_guidance(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    *,
    forward_model: Callable[[Any, Any], Tensor],
    context_observation: Tensor,
    context_params: Any,
    weight: float,
) -> Denoiser:
    """Reconstruction guidance (Ho et al. 2022, "Video diffusion models", eq. 7).

    Pulls each estimate towards signals that reproduce the context observation:

        x0 <- x0 - (weight * sqrt(abar_t) / 2) * grad_{x_t} || O^ctxt - forward(S_hat(x_t), phi^ctxt) ||^2

    Gradients are enabled locally, so this works inside a ``torch.no_grad`` sampler.

    Args:
        denoiser: any denoiser, e.g. from ``ForwardDiffusion.denoiser`` or CFG.
        schedule: noise process, for abar_t.
        forward_model: ``forward(signal, params) -> observation`` (or an object with an
            ``observation`` attribute, see ``observation_of``).
        context_observation: O^ctxt, shape (B, ...).
        context_params: phi^ctxt.
        weight: w_r >= 0.
    """
    if weight < 0:
        raise ValueError(f"weight: expected >= 0, got {weight}")

    def guided(x_t: Tensor, t: Tensor) -> Denoised:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            out = denoiser(x, t)
            rendered = observation_of(forward_model(out.signal, context_params))
            if rendered.shape != context_observation.shape:
                raise ValueError(
                    f"context_observation: shape {tuple(context_observation.shape)} does not match the "
                    f"forward model's output {tuple(rendered.shape)}"
                )
            error = (rendered - context_observation).square().sum()
            (grad,) = torch.autograd.grad(error, x)
        alpha_bar = schedule.alpha_bar(t.detach().double()).to(x_t.device, x_t.dtype)
        step = (weight * alpha_bar.sqrt() / 2).reshape(-1, *([1] * (x_t.ndim - 1)))
        return Denoised(x0=out.x0.detach() - step * grad, signal=_detach(out.signal))

    return guided


def _detach(signal: Any) -> Any:
    return tree_map(lambda x: x.detach(), signal)
