"""Quality of GAN inversion: patch fidelity, diversity, latent error; a deterministic baseline.

Protocol (issue §5): held-out generator samples (seeds disjoint from training), a visible
patch covering at most 25 % of the image, K completions per context.

* **PSNR in the patch**: completions vs the true image, on the observed pixels only, images
  mapped to [0, 1] (``10 log10(1 / MSE)``).
* **Diversity outside the patch**: mean over pairs ``k != l`` of the RMS difference between
  completions ``k`` and ``l`` on the unobserved pixels ([0, 1] scale). A model that averages
  the possible completions has low diversity; a deterministic one has exactly zero.
* **Error outside the patch**: RMS difference between each completion and the truth there.
* **Latent distance**: RMS over dimensions of ``w_sample - w_true``, reported next to the
  RMS distance between two independent latents of the same distribution (the chance level).

:class:`LatentRegressor` is the deterministic baseline: the same DiT trunk and head, fed
the context only (no noisy target, fixed ``t``), trained with the same target + novel losses
through the same frozen generator. It predicts one latent per context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dfm_core.diffusion import Context, DFMBatch, ForwardDiffusion
from dfm_gan.inversion import GanView, GeneratorForwardModel, downsample, sample_inversions
from dfm_gan.networks import Generator

__all__ = [
    "InversionQuality",
    "LatentRegressor",
    "evaluate_inversion",
    "generator_fidelity",
    "held_out_contexts",
    "score_inversions",
]


class LatentRegressor(nn.Module):
    """Deterministic baseline: ``context -> w`` with an inversion model's predictor architecture.

    Args:
        model: an inversion ``ForwardDiffusion``; its predictor is deep-copied (fresh
            weights are not needed: the copy is trained as a regressor).
    """

    def __init__(self, model: ForwardDiffusion) -> None:
        super().__init__()
        import copy

        self.predictor = copy.deepcopy(model.predictor)
        self.forward_model = model.forward_model

    def predict(self, context: Context) -> Tensor:
        """``context.observation (B, 4, r, r)`` -> latents ``(B, num_ws, w_dim)``."""
        obs = context.observation
        zeros = obs.new_zeros(obs.shape[0], 3, *obs.shape[2:])
        t = obs.new_zeros(obs.shape[0])
        return self.predictor(context, zeros, t, GanView(obs.shape[-1]))

    def forward(self, batch: DFMBatch) -> dict[str, Tensor]:
        """Regression losses: the same target (+ novel) terms as the DFM objective."""
        w = self.predict(batch.context)
        target = (self.forward_model(w, batch.target_params) - batch.target).square().mean()
        terms = {"target": target, "loss": target}
        if batch.novel is not None:
            terms["novel"] = (
                (self.forward_model(w, batch.novel_params) - batch.novel).square().mean()
            )
            terms["loss"] = target + terms["novel"]
        return terms


@dataclass(frozen=True)
class InversionQuality:
    """Metrics of one model on one evaluation set (see the module notes)."""

    psnr_patch_db: float
    diversity_outside: float
    error_outside: float
    latent_rms: float
    latent_rms_chance: float
    num_contexts: int
    num_samples: int

    def as_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@torch.no_grad()
def held_out_contexts(
    generator: Generator,
    *,
    num: int,
    resolution: int,
    psi: float = 0.5,
    patch_fraction: float = 0.5,
    seed: int = 10_000_019,
) -> tuple[Tensor, Tensor, Tensor]:
    """Held-out images, square patch masks of side ``patch_fraction`` (area its square), latents.

    Returns:
        ``image (N, 3, r, r)``, ``mask (N, 1, r, r)``, ``w (N, w_dim)``.
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num, generator.z_dim, generator=g)
    w = generator.mapping(z, truncation_psi=psi)
    image = downsample(generator.synthesis(w).clamp(-1, 1), resolution)
    side = max(1, round(patch_fraction * resolution))
    mask = torch.zeros(num, 1, resolution, resolution)
    for i in range(num):
        top, left = (
            int(torch.randint(0, resolution - side + 1, (1,), generator=g)) for _ in range(2)
        )
        mask[i, :, top : top + side, left : left + side] = 1
    return image, mask, w[:, 0]


def _scores(
    completions: Tensor, latents: Tensor, image: Tensor, mask: Tensor, w: Tensor
) -> tuple[float, ...]:
    """completions (N, K, 3, r, r) in [-1, 1]; latents (N, K, w_dim)."""
    x = (completions.double() + 1) / 2
    truth = ((image.double() + 1) / 2)[:, None]
    m = mask.double()[:, None]  # (N, 1, 1, r, r)
    inside = m.expand_as(x)
    mse_in = ((x - truth).square() * inside).sum(dim=(2, 3, 4)) / inside.sum(
        dim=(2, 3, 4)
    )  # (N, K)
    psnr = (10 * torch.log10(1 / mse_in.clamp_min(1e-12))).mean()
    outside = (1 - m).expand_as(x)
    n_out = outside.sum(dim=(2, 3, 4))  # (N, K)
    err_out = (((x - truth).square() * outside).sum(dim=(2, 3, 4)) / n_out).sqrt().mean()
    k = x.shape[1]
    pair = []
    for a in range(k):
        for b in range(a + 1, k):
            d = ((x[:, a] - x[:, b]).square() * outside[:, a]).sum(dim=(1, 2, 3)) / n_out[:, a]
            pair.append(d.sqrt())
    diversity = torch.stack(pair).mean() if pair else torch.zeros((), dtype=torch.float64)
    latent_rms = (latents.double() - w.double()[:, None]).square().mean(dim=-1).sqrt().mean()
    return float(psnr), float(diversity), float(err_out), float(latent_rms)


def evaluate_inversion(
    model: ForwardDiffusion | LatentRegressor,
    generator: Generator,
    *,
    resolution: int,
    num_contexts: int = 16,
    num_samples: int = 8,
    steps: int = 50,
    psi: float = 0.5,
    patch_fraction: float = 0.5,
    guidance_scale: float = 1.0,
    reconstruction_weight: float = 0.0,
    seed: int = 0,
    contexts_seed: int = 10_000_019,
) -> InversionQuality:
    """Score a DFM inversion model (K samples) or the regressor baseline on held-out contexts.

    Args:
        model: the DFM model or a :class:`LatentRegressor`.
        generator: the frozen generator both use.
        resolution: the model's training (diffusion) resolution.
        num_contexts: held-out images.
        num_samples: K completions per image (the regressor's K are identical).
        steps: DDIM steps.
        psi: truncation of the held-out latents (as in training).
        patch_fraction: patch side / image side (0.5 -> 25 % of the area).
        guidance_scale: CFG scale for the DFM model.
        reconstruction_weight: reconstruction guidance towards the patch (DFM model only; see
            :func:`~dfm_gan.inversion.sample_inversions`).
        seed: sampling seed.
        contexts_seed: seed of the held-out images and patches (disjoint from training's).
    """
    fm = model.forward_model
    assert isinstance(fm, GeneratorForwardModel)
    r = resolution
    image, mask, w = held_out_contexts(
        generator,
        num=num_contexts,
        resolution=r,
        psi=psi,
        patch_fraction=patch_fraction,
        seed=contexts_seed,
    )
    if isinstance(model, LatentRegressor):
        model.eval()
        with torch.no_grad():
            latents = model.predict(Context(observation=torch.cat([image * mask, mask], 1)))
            completions = fm(latents, GanView(r))
        latents = latents[:, None].expand(-1, num_samples, -1, -1)
        completions = completions[:, None].expand(-1, num_samples, -1, -1, -1)
    else:
        model.eval()
        out = sample_inversions(
            model,
            image,
            mask,
            num_samples=num_samples,
            steps=steps,
            guidance_scale=guidance_scale,
            reconstruction_weight=reconstruction_weight,
            seed=seed,
        )
        latents, completions = out.latents, out.observations
    return score_inversions(completions, latents, image, mask, w)


def score_inversions(
    completions: Tensor, latents: Tensor, image: Tensor, mask: Tensor, w: Tensor
) -> InversionQuality:
    """The metrics of :func:`evaluate_inversion` for completions sampled elsewhere.

    Args:
        completions: ``(N, K, 3, r, r)`` in [-1, 1], at the resolution of ``image``.
        latents: ``(N, K, num_ws, w_dim)`` sampled latents (the first layer's code is
            compared: every layer's is the same for ``latent="w"``).
        image: ``(N, 3, r, r)`` the true images in [-1, 1].
        mask: ``(N, 1, r, r)``, 1 on the visible patch.
        w: ``(N, w_dim)`` the true latents.
    """
    # Chance level: RMS distance between held-out latents and a shuffled copy of them.
    chance = (w - w.roll(1, dims=0)).square().mean(dim=-1).sqrt().mean()
    psnr, diversity, err_out, latent_rms = _scores(completions, latents[:, :, 0], image, mask, w)
    return InversionQuality(
        psnr_patch_db=psnr,
        diversity_outside=diversity,
        error_outside=err_out,
        latent_rms=latent_rms,
        latent_rms_chance=float(chance) if math.isfinite(float(chance)) else float("nan"),
        num_contexts=completions.shape[0],
        num_samples=completions.shape[1],
    )


@torch.no_grad()
def generator_fidelity(generator: Generator, *, num: int = 1000, seed: int = 0) -> dict[str, float]:
    """How close a generator trained on ``procedural_faces`` is to that data (no Inception net offline).

    Sliced Wasserstein distance (``dfm_core.metrics``, 128 directions) and energy distance
    between ``num`` generated images (psi = 1) and ``num`` fresh procedural images, on pixels
    of the full image and of 4x-down-sampled images (coarse structure), each next to the same
    figure for two independent sets of real images (the noise floor).

    Returns:
        ``{"swd", "swd_floor", "swd_coarse", "swd_coarse_floor", "energy", "energy_floor"}``.
    """
    from dfm_core.metrics import energy_distance, sliced_wasserstein
    from dfm_gan.training import procedural_faces

    r = generator.img_resolution
    z = torch.randn(num, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    fake = torch.cat([generator(z[i : i + 100]) for i in range(0, num, 100)]).clamp(-1, 1)
    real = procedural_faces(num, r, generator=torch.Generator().manual_seed(seed + 1))
    real2 = procedural_faces(num, r, generator=torch.Generator().manual_seed(seed + 2))
    out: dict[str, float] = {}
    for name, f in (("", lambda x: x), ("_coarse", lambda x: downsample(x, max(4, r // 4)))):
        a, b, c = (f(x).flatten(1) for x in (fake, real, real2))
        g = torch.Generator().manual_seed(seed)
        out["swd" + name] = float(sliced_wasserstein(a, b, generator=g))
        g = torch.Generator().manual_seed(seed)
        out["swd" + name + "_floor"] = float(sliced_wasserstein(c, b, generator=g))
    fake_flat, real_flat, real2_flat = fake.flatten(1), real.flatten(1), real2.flatten(1)
    out["energy"] = float(energy_distance(fake_flat, real_flat))
    out["energy_floor"] = float(energy_distance(real2_flat, real_flat))
    return out
