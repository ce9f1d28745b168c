"""Completing held-out patches with the GAN-inversion models, scoring and drawing them.

The evaluation half of ``dfm_apps.gan``: ``complete_held_out`` draws held-out generator
samples (an RNG stream of their own), shows each model one patch of each and collects K DFM
completions and the regressor's one answer (``Completions``); ``completion_scores`` turns
them into the app's scores (``dfm_gan.quality`` plus best of K); ``write_completions_png``
and ``write_denoising_video`` draw them. Shared by ``gan.evaluate`` (a trained run) and
``gan.demo`` (the shipped weights).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from dfm_core.diffusion import Context, ForwardDiffusion
from dfm_core.sampling import StepInfo
from dfm_gan.inversion import GanView, GeneratorForwardModel, InversionSamples, sample_inversions
from dfm_gan.networks import Generator
from dfm_gan.quality import InversionQuality, LatentRegressor, held_out_contexts, score_inversions

if TYPE_CHECKING:
    from dfm_apps.gan import GanEvaluationConfig

__all__ = [
    "Completions",
    "complete_held_out",
    "completion_scores",
    "describe_evaluation",
    "score_table",
    "write_completions_png",
    "write_denoising_video",
]


# ----------------------------------------------------------------------------- completing


@dataclass
class Completions:
    """Held-out images, their patches, and both models' completions.

    Attributes:
        image: ``(N, 3, r, r)`` true images at the diffusion resolution, in [-1, 1].
        mask: ``(N, 1, r, r)``, 1 on the visible patch.
        w: ``(N, w_dim)`` true latents.
        truth: ``(N, 3, R, R)`` true images at the generator's resolution.
        dfm: K samples per image (latents, ``observations`` at r, ``images`` at R).
        baseline_latents: ``(N, num_ws, w_dim)`` the regressor's answers.
        baseline_observations: ``(N, 3, r, r)``.
        baseline_images: ``(N, 3, R, R)``.
        trajectory: per sampler step, ``(t, latents (K, num_ws, w_dim))`` of image 0.
    """

    image: Tensor
    mask: Tensor
    w: Tensor
    truth: Tensor
    dfm: InversionSamples
    baseline_latents: Tensor
    baseline_observations: Tensor
    baseline_images: Tensor
    trajectory: list[tuple[float, Tensor]]

    def best_of_k_error_outside(self) -> tuple[float, float]:
        """Mean over images of the smallest RMS error outside the patch among the K samples,
        for DFM and for the regressor (whose K answers are one): how close the nearest
        completion comes to the truth where nothing was seen ([0, 1] pixels)."""
        outside = 1 - self.mask.double()  # (N, 1, r, r)
        count = 3 * outside.sum(dim=(1, 2, 3))  # (N,) unobserved values per image
        truth = (self.image.double() + 1) / 2

        def rms(images: Tensor) -> Tensor:  # (N, K, 3, r, r) in [-1, 1] -> (N, K)
            err = ((images.double() + 1) / 2 - truth[:, None]).square() * outside[:, None]
            return (err.sum(dim=(2, 3, 4)) / count[:, None]).sqrt()

        dfm = rms(self.dfm.observations).min(dim=1).values.mean()
        base = rms(self.baseline_observations[:, None]).min(dim=1).values.mean()
        return float(dfm), float(base)

    def quality(self) -> tuple[InversionQuality, InversionQuality]:
        """``dfm_gan.quality`` scores of DFM and of the regressor (its K answers identical)."""
        k = self.dfm.latents.shape[1]
        dfm = score_inversions(
            self.dfm.observations, self.dfm.latents, self.image, self.mask, self.w
        )
        base = score_inversions(
            self.baseline_observations[:, None].expand(-1, k, -1, -1, -1),
            self.baseline_latents[:, None].expand(-1, k, -1, -1),
            self.image,
            self.mask,
            self.w,
        )
        return dfm, base


@torch.no_grad()
def complete_held_out(
    diffusion: ForwardDiffusion,
    regressor: LatentRegressor,
    evaluation: GanEvaluationConfig,
    *,
    resolution: int,
    psi: float,
    progress: bool = True,
) -> Completions:
    """Held-out generator samples seen through one patch each, completed by both models.

    Sampling runs on the models' device; the held-out set and every returned tensor are on
    the CPU.

    Args:
        diffusion: the DFM inversion model (eval mode).
        regressor: the baseline, on the same generator.
        evaluation: how many images, samples and steps, and the seeds.
        resolution: the diffusion (training) resolution r.
        psi: truncation of the held-out latents (the training one).
        progress: show a progress bar over the sampler steps.
    """
    forward_model = diffusion.forward_model
    assert isinstance(forward_model, GeneratorForwardModel)
    generator = forward_model.generator
    device = generator.w_avg.device
    # The held-out set is drawn on the CPU: the same images whatever device samples them.
    cpu_generator = generator if device.type == "cpu" else copy.deepcopy(generator).cpu()
    ev = evaluation
    image, mask, w = held_out_contexts(
        cpu_generator,
        num=ev.num_contexts,
        resolution=resolution,
        psi=psi,
        patch_fraction=ev.patch_fraction,
        seed=ev.heldout_seed,
    )
    ws = w[:, None].expand(-1, generator.num_ws, -1)
    truth = cpu_generator.synthesis(ws, noise_mode="const").clamp(-1, 1)
    k = ev.num_samples
    trajectory: list[tuple[float, Tensor]] = []

    bar: Any = None

    def record(info: StepInfo) -> None:
        nonlocal bar
        if progress and bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=info.num_steps, desc="sampling completions", leave=False, disable=None)
        if bar is not None:
            bar.update(1)
        if ev.video:
            trajectory.append((float(info.t), info.signal[:k].detach().float().cpu().clone()))

    samples = sample_inversions(
        diffusion.eval(),
        image.to(device),
        mask.to(device),
        num_samples=k,
        steps=ev.steps,
        guidance_scale=ev.guidance_scale,
        reconstruction_weight=ev.reconstruction_weight,
        seed=ev.seed,
        sampler=ev.sampler,
        callback=record,
    )
    if bar is not None:
        bar.close()
    regressor.eval()
    context = Context(observation=torch.cat([image * mask, mask], dim=1).to(device))
    latents = regressor.predict(context)
    return Completions(
        image=image,
        mask=mask,
        w=w,
        truth=truth,
        dfm=InversionSamples(
            latents=samples.latents.cpu(),
            observations=samples.observations.cpu(),
            images=samples.images.cpu(),
        ),
        baseline_latents=latents.cpu(),
        baseline_observations=forward_model(latents, GanView(resolution)).cpu(),
        baseline_images=forward_model.render_full(latents).cpu(),
        trajectory=trajectory,
    )


# ----------------------------------------------------------------------------- pictures


def _tiles(images: Tensor, size: int) -> np.ndarray:
    """``(N, 3, h, w)`` in [-1, 1] -> ``(N, size, size, 3)`` uint8, nearest-neighbour scaled."""
    x = torch.nn.functional.interpolate(images.float().clamp(-1, 1), size=size, mode="nearest")
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _tile_size(resolution: int) -> int:
    # Tiny demo images are scaled up so the captions under them fit.
    return resolution * max(1, math.ceil(96 / resolution))


def write_completions_png(result: Completions, path: Path, *, rows: int) -> Path:
    """One row per held-out image: masked input, truth, regressor, the K samples."""
    from PIL import Image

    from dfm_apps import media

    n, k = min(rows, result.image.shape[0]), result.dfm.images.shape[1]
    size = _tile_size(result.truth.shape[-1])
    tiles, captions = [], []
    for i in range(n):
        masked = _tiles((result.image[i] * result.mask[i])[None], size)  # at r, scaled up
        row = torch.cat(
            [result.truth[i][None], result.baseline_images[i][None], result.dfm.images[i]]
        )
        tiles += [masked, _tiles(row, size)]
        captions += ["masked input", "truth", "regressor", *[f"sample {j}" for j in range(k)]]
    grid = media.image_grid(np.concatenate(tiles), ncols=3 + k, captions=captions)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


@torch.no_grad()
def write_denoising_video(
    result: Completions, generator: Generator, out_dir: Path, *, max_frames: int = 25
) -> dict[str, Path]:
    """The first image's K latent estimates rendered at every (or every few) sampler step.

    Returns:
        ``{"denoising.mp4": path, "denoising.gif": path}`` (empty without a trajectory).
    """
    from dfm_apps import media

    steps = result.trajectory
    if not steps:
        return {}
    chosen = sorted(
        {round(i * (len(steps) - 1) / max(1, max_frames - 1)) for i in range(max_frames)}
    )
    size = _tile_size(result.truth.shape[-1])
    reference = np.concatenate(
        [_tiles((result.image[0] * result.mask[0])[None], size), _tiles(result.truth[:1], size)]
    )
    frames = []
    for index in chosen:
        _, latents = steps[index]
        device = generator.w_avg.device
        rendered = generator.synthesis(latents.to(device), noise_mode="const").cpu()  # (K, 3, R, R)
        tiles = np.concatenate([reference, _tiles(rendered, size)])
        captions = ["masked input", "truth", f"step {index + 1}/{len(steps)}"]
        captions += [""] * (len(tiles) - len(captions))
        frames.append(media.image_grid(tiles, captions=captions))
    frames += [frames[-1]] * 8  # hold the final samples
    video = np.stack(frames)
    return {
        name: media.write_video(out_dir / name, video, fps=8)
        for name in ("denoising.mp4", "denoising.gif")
    }


def score_table(scores: dict[str, float]) -> tuple[str, list[str], list[list[str]]]:
    def f(key: str, digits: int = 3) -> str:
        value = scores.get(key, float("nan"))
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"

    rows = [
        ["PSNR inside the patch (dB)", f("dfm_psnr_patch_db", 2), f("baseline_psnr_patch_db", 2)],
        [
            "diversity outside the patch",
            f("dfm_diversity_outside"),
            f("baseline_diversity_outside"),
        ],
        ["RMS error outside the patch", f("dfm_error_outside"), f("baseline_error_outside")],
        [
            "best of K: RMS error outside the patch",
            f("dfm_best_of_k_error_outside"),
            f("baseline_best_of_k_error_outside"),
        ],
        [
            f"latent RMS to the truth (chance {f('latent_rms_chance')})",
            f("dfm_latent_rms"),
            f("baseline_latent_rms"),
        ],
    ]
    return ("scores (pixels on [0, 1])", ["", "DFM", "regressor"], rows)


def completion_scores(result: Completions) -> dict[str, float]:
    dfm, base = result.quality()
    scores = {
        f"{who}_{key}": float(getattr(q, name))
        for who, q in (("dfm", dfm), ("baseline", base))
        for key, name in (
            ("psnr_patch_db", "psnr_patch_db"),
            ("diversity_outside", "diversity_outside"),
            ("error_outside", "error_outside"),
            ("latent_rms", "latent_rms"),
        )
    }
    scores["latent_rms_chance"] = float(dfm.latent_rms_chance)
    scores["dfm_best_of_k_error_outside"], scores["baseline_best_of_k_error_outside"] = (
        result.best_of_k_error_outside()
    )
    return scores


def describe_evaluation(ev: GanEvaluationConfig, r: int, full: int) -> str:
    return (
        f"{ev.num_contexts} held-out generator samples (seed {ev.heldout_seed}, never used in "
        f"training), each seen through one square patch covering {ev.patch_fraction**2:.0%} of "
        f"the {r}x{r} image; {ev.num_samples} completions each ({ev.sampler}, {ev.steps} "
        f"steps, guidance {ev.guidance_scale:g}, reconstruction guidance "
        f"{ev.reconstruction_weight:g}), rendered at the generator's {full}x{full}. "
        "Scores on the [0, 1] pixels of the completions at the diffusion resolution: PSNR "
        "inside the patch, mean pairwise RMS difference outside it (diversity; 0 for the "
        "deterministic regressor), RMS error outside it (and its smallest value among the K samples: best of K), and the RMS distance of the sampled "
        "latent to the true one next to chance (two unrelated held-out latents)."
    )
