"""Held-out motion clips: both models' predictions, their scores, and their pictures.

The evaluation half of the motion application (``dfm_apps.motion``, whose docstring states
the scores): ``sample_heldout`` draws K motions per input from DFM and the regressor's one
answer; ``frame_scores`` and ``motion_scores`` score them; ``write_media`` draws the picture
grid, the flow colour key and one video per input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dfm_core.diffusion import ForwardDiffusion
from dfm_flow import MotionParams, MotionSignal, flow_to_rgb, sample_motion
from dfm_flow.evaluation import score_motions, sprite_masks, sprite_velocities
from dfm_flow.motion import MotionRegressor

__all__ = [
    "HeldOut",
    "MotionOutputs",
    "flow_key",
    "frame_scores",
    "motion_scores",
    "read_heldout",
    "sample_heldout",
    "score_all",
    "score_tables",
    "velocity_set",
    "write_media",
]


# ----------------------------------------------------------------------------- held-out clips


@dataclass
class HeldOut:
    """Held-out clips: the input frames and what the model should predict from them.

    Attributes:
        names: N clip names (``00001/0001``).
        images: (N, 3, H, W) input frames in [-1, 1].
        frames: (N, T, 3, H, W) the true target and novel frames in [-1, 1].
        times: (T,) their times (1 = the target frame).
        clips: the N clips' motion-world ground truth, or None (real data).
        velocity_set: (M, 2) the world's velocities in pixels per frame, or None.
    """

    names: list[str]
    images: Tensor
    frames: Tensor
    times: Tensor
    clips: list[dict] | None = None
    velocity_set: Tensor | None = None


def velocity_set(truth: dict) -> Tensor:
    """The (M, 2) float64 velocity set of a motion world (``motion_ground_truth.json``):
    every direction (0 deg = +x, 90 deg = +y, image axes) times every speed (pixels/frame)."""
    return torch.tensor(
        [
            [speed * math.cos(math.radians(d)), speed * math.sin(math.radians(d))]
            for d in truth["directions_deg"]
            for speed in truth["speeds_px"]
        ],
        dtype=torch.float64,
    )


def read_heldout(dataset: Any, limit: int, truth: dict | None = None) -> HeldOut:
    """The first ``limit`` clips of a Vimeo-90K dataset (with the world's ground truth)."""
    count = min(limit, len(dataset))
    items = [dataset[i] for i in range(count)]
    first = items[0].frame_index[0].to(torch.float64)
    times = (first[1:] - first[0]) / (first[1] - first[0])  # constant velocity (frames_to_batch)
    names = [dataset.clips[i] for i in range(count)]
    frames = torch.cat([torch.cat([it.target[:, None], it.novel], dim=1) for it in items])
    return HeldOut(
        names=names,
        images=torch.cat([it.context for it in items]),
        frames=frames,
        times=times.float(),
        clips=[truth["clips"][name] for name in names] if truth is not None else None,
        velocity_set=velocity_set(truth) if truth is not None else None,
    )


# ----------------------------------------------------------------------------- sampling


@dataclass
class MotionOutputs:
    """What the two models predict for N held-out inputs.

    Attributes:
        flow: (N, K, 2, H, W) sampled flows in pixels (to time 1).
        metric: (N, K, 1, H, W) their importance Z, or None.
        frames: (N, K, T, 3, H, W) the input splatted at the held-out frames' times.
        baseline_flow: (N, 2, H, W) the regressor's flow.
        baseline_metric: (N, 1, H, W) or None.
        baseline_frames: (N, T, 3, H, W).
    """

    flow: Tensor
    metric: Tensor | None
    frames: Tensor
    baseline_flow: Tensor
    baseline_metric: Tensor | None
    baseline_frames: Tensor


@torch.no_grad()
def sample_heldout(
    diffusion: ForwardDiffusion,
    regressor: MotionRegressor,
    images: Tensor,
    times: Tensor,
    *,
    num_samples: int,
    steps: int,
    sampler: str = "ddim",
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
) -> MotionOutputs:
    """K motions per input from DFM and the regressor's one answer, rendered at ``times``.

    Args:
        images: (N, 3, H, W) input frames in [-1, 1].
        times: (T,) frame times to render (1 = the next frame).
        seed: sample k of input n uses ``seed * 10**6 + n * K + k`` (as
            ``dfm_flow.evaluation.sampled_sprite_velocities``), so a sample depends on its
            seed, not on how inputs are batched.
    """
    k = num_samples
    flows, metrics, frames = [], [], []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size]
        generators = [
            torch.Generator().manual_seed(seed * 10**6 + (start + i) * k + j)
            for i in range(chunk.shape[0])
            for j in range(k)
        ]
        out = sample_motion(
            diffusion, chunk, num_samples=k, steps=steps, sampler=sampler,
            guidance_scale=guidance_scale, generator=generators, times=times.tolist(),
        )  # fmt: skip
        flows.append(out.flow)
        metrics.append(out.metric)
        frames.append(out.frames)
    signal = regressor.predict(images)
    params = MotionParams(images, times.to(images.dtype).expand(images.shape[0], -1))
    return MotionOutputs(
        flow=torch.cat(flows),
        metric=None if metrics[0] is None else torch.cat(metrics),  # type: ignore[arg-type]
        frames=torch.cat(frames),
        baseline_flow=signal.flow,
        baseline_metric=signal.metric,
        baseline_frames=regressor.forward_model(signal, params),
    )


# ----------------------------------------------------------------------------- scores


def frame_scores(
    outputs: MotionOutputs,
    held: HeldOut,
    *,
    lpips: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """PSNR/SSIM (and LPIPS) of the warped input against the true target frame (time 1; see
    ``dfm_apps.motion``): DFM mean over samples and best of K, and the regressor.

    Args:
        lpips: ``(pred (B, 3, H, W), target (B, 3, H, W)) in [0, 1] -> (B,)`` distances (an
            ``image_metrics.LPIPSMetric``), or None to skip LPIPS.
    """
    from dfm_apps.image_metrics import best_of_k_psnr, psnr, ssim

    def unit(x: Tensor) -> Tensor:
        return (x.to(torch.float64).clamp(-1, 1) + 1) / 2

    truth = unit(held.frames[:, 0])  # (N, 3, H, W)
    samples = unit(outputs.frames[:, :, 0])  # (N, K, 3, H, W)
    flat_truth = truth[:, None].expand_as(samples).flatten(0, 1)
    base = unit(outputs.baseline_frames[:, 0])
    scores = {
        "dfm_psnr": float(psnr(samples.flatten(0, 1), flat_truth).mean()),
        "dfm_best_psnr": float(best_of_k_psnr(samples, truth).mean()),
        "dfm_ssim": float(ssim(samples.flatten(0, 1), flat_truth).mean()),
        "baseline_psnr": float(psnr(base, truth).mean()),
        "baseline_ssim": float(ssim(base, truth).mean()),
    }
    if lpips is not None:
        distances = lpips(samples.flatten(0, 1), flat_truth).double().view(samples.shape[:2])
        scores |= {
            "dfm_lpips": float(distances.mean()),
            "dfm_best_lpips": float(distances.min(dim=1).values.mean()),
            "baseline_lpips": float(lpips(base, truth).double().mean()),
        }
    return scores


def motion_scores(outputs: MotionOutputs, held: HeldOut) -> tuple[dict[str, float], dict]:
    """dfm-flow's velocity-set figures for DFM and the regressor (synthetic world only).

    Returns:
        Scores (``dfm_on_set``, ``dfm_distinct``, ``dfm_chi2_p``, ``dfm_best_epe``,
        ``dfm_mean_epe`` and the ``baseline_*`` counterparts, plus ``num_sprites``) and the
        pooled counts per member (``{"dfm": [...], "baseline": [...]}``).
    """
    assert held.clips is not None and held.velocity_set is not None
    h, w = held.images.shape[-2:]
    k = outputs.flow.shape[1]
    estimates, base_estimates = [], []
    for n, clip in enumerate(held.clips):
        masks = sprite_masks(clip, h, w)  # (S, H, W)
        estimates.append(sprite_velocities(outputs.flow[n].double(), masks))  # (S, K, 2)
        base = sprite_velocities(outputs.baseline_flow[n : n + 1].double(), masks)  # (S, 1, 2)
        base_estimates.append(base.expand(-1, k, -1))
    truth = torch.tensor(
        [s["velocity_px"] for clip in held.clips for s in clip["sprites"]], dtype=torch.float64
    )
    scores: dict[str, float] = {}
    counts: dict[str, list[int]] = {}
    for label, values in (("dfm", estimates), ("baseline", base_estimates)):
        s = score_motions(torch.cat(values), truth, held.velocity_set)
        scores |= {
            f"{label}_on_set": s.fraction_on_set,
            f"{label}_distinct": s.mean_distinct,
            f"{label}_chi2_p": s.chi2_p,
            f"{label}_best_epe": s.best_of_k_epe,
            f"{label}_mean_epe": s.mean_epe,
        }
        counts[label] = list(s.counts)
        scores["num_sprites"] = float(s.num_sprites)
    return scores, counts


def score_tables(scores: dict[str, float], k: int) -> list[tuple[str, list[str], list[list[str]]]]:
    def f(key: str, digits: int = 2) -> str:
        value = scores.get(key, float("nan"))
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"

    tables = [
        (
            "next frame (time 1): the input warped by the predicted flow vs the true frame",
            ["", f"DFM (mean of {k})", f"DFM (best of {k})", "regressor"],
            [
                ["PSNR (dB)", f("dfm_psnr"), f("dfm_best_psnr"), f("baseline_psnr")],
                ["SSIM (Gaussian 11x11)", f("dfm_ssim", 3), "", f("baseline_ssim", 3)],
            ],
        )
    ]
    if "dfm_lpips" in scores:
        row = ["LPIPS", f("dfm_lpips", 3), f("dfm_best_lpips", 3), f("baseline_lpips", 3)]
        tables[0][2].append(row)
    if "dfm_on_set" in scores:
        rows = [
            ["samples on the velocity set (within half its spacing)", f("dfm_on_set"),
             f("baseline_on_set")],
            ["distinct members per sprite", f("dfm_distinct"), f("baseline_distinct")],
            ["chi-squared p of pooled members vs uniform", f("dfm_chi2_p", 3),
             f("baseline_chi2_p", 3)],
            [f"best-of-{k} end-point error (px)", f("dfm_best_epe"), f("baseline_best_epe")],
            ["mean end-point error (px)", f("dfm_mean_epe"), f("baseline_mean_epe")],
        ]  # fmt: skip
        tables.append(("sprite motions vs the known velocity set", ["", "DFM", "regressor"], rows))
    return tables


# ----------------------------------------------------------------------------- pictures


def _upscale(images: Tensor, factor: int) -> Tensor:
    """(..., C, H, W) -> (..., C, H*f, W*f), nearest (pixels stay visible)."""
    if factor == 1:
        return images
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def _hwc(images: Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def flow_key(size: int, max_magnitude: float) -> Tensor:
    """(3, size, size) picture of the colour wheel: the flow at each pixel is its offset from
    the centre, scaled so the inscribed circle has speed ``max_magnitude``."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2) / (size / 2)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    flow = torch.stack([x, y]) * max_magnitude
    picture = flow_to_rgb(flow, max_magnitude=max_magnitude)
    outside = (x * x + y * y) > 1
    return picture.masked_fill(outside[None], 1.0)


def write_media(
    out_dir: Path,
    held: HeldOut,
    outputs: MotionOutputs,
    forward_model: Any,
    *,
    count: int,
    max_time: float,
    video_frames: int,
    videos: bool = True,
    gif: bool = True,
) -> tuple[dict[str, Path], dict[str, Path]]:
    """The picture grid, the flow key and per-input videos.

    Returns:
        (images: caption -> PNG, videos: caption -> mp4), paths under ``out_dir``.
    """
    from PIL import Image

    from dfm_apps import media

    out_dir.mkdir(parents=True, exist_ok=True)
    count = min(count, held.images.shape[0])
    n_k = outputs.flow.shape[1]
    h, w = held.images.shape[-2:]
    factor = max(1, 128 // max(h, w))
    # One colour scale for every flow of the figure: the largest true speed when known,
    # else the 99th percentile of the predicted speeds.
    if held.velocity_set is not None:
        top = float(held.velocity_set.norm(dim=1).max())
    else:
        top = float(torch.quantile(outputs.flow[:count].norm(dim=2).flatten()[:1_000_000], 0.99))
    top = top if top > 0 else 1.0

    def unit(x: Tensor) -> Tensor:
        return (x.clamp(-1, 1) + 1) / 2

    tiles, captions = [], []
    for n in range(count):
        flows = torch.cat([outputs.baseline_flow[n : n + 1], outputs.flow[n]])  # (1 + K, 2, H, W)
        warped = torch.cat([outputs.baseline_frames[n : n + 1, 0], outputs.frames[n, :, 0]])
        row1 = torch.cat([unit(held.images[n : n + 1]), flow_to_rgb(flows, max_magnitude=top)])
        row2 = torch.cat([unit(held.frames[n : n + 1, 0]), unit(warped)])
        tiles += [row1, row2]
        captions += ["input", "regressor flow", *[f"flow {j}" for j in range(n_k)]]
        captions += ["true next", "regressor", *[f"sample {j}" for j in range(n_k)]]
    grid = media.image_grid(
        _hwc(_upscale(torch.cat(tiles), factor)), ncols=2 + n_k, captions=captions
    )
    images = {"motions.png": out_dir / "motions.png", "flow-key.png": out_dir / "flow-key.png"}
    Image.fromarray(grid).save(images["motions.png"])
    Image.fromarray(_hwc(flow_key(96, top)[None])[0]).save(images["flow-key.png"])
    image_captions = {
        f"per input (rows of 2): the input and the true next frame; the regressor's flow and "
        f"warped frame; {n_k} sampled flows and warped frames": images["motions.png"],
        f"flow colours: hue = direction (right = red), saturation = speed (full at {top:.2f} "
        "px/frame), white = still": images["flow-key.png"],
    }
    clips: dict[str, Path] = {}
    if not videos:
        return image_captions, clips
    times = torch.linspace(0.0, max_time, video_frames)
    for n in range(count):
        flows = torch.cat([outputs.baseline_flow[n : n + 1], outputs.flow[n]])  # (1 + K, ...)
        metric = None
        if outputs.metric is not None and outputs.baseline_metric is not None:
            metric = torch.cat([outputs.baseline_metric[n : n + 1], outputs.metric[n]])
        source = held.images[n : n + 1].expand(flows.shape[0], -1, -1, -1)
        with torch.no_grad():
            frames = forward_model(
                MotionSignal(flows, metric),
                MotionParams(source, times.expand(flows.shape[0], -1)),
            )  # (1 + K, F, 3, H, W)
        tiles_f = _hwc(_upscale(unit(frames), factor).flatten(0, 1))  # (F (1 + K), H', W', 3)
        labels = ["regressor", *[f"sample {j}" for j in range(n_k)]]
        per_frame = tiles_f.reshape(flows.shape[0], video_frames, *tiles_f.shape[1:])
        video = np.stack(
            [
                media.image_grid(per_frame[:, f], captions=labels)  # one labelled row per frame
                for f in range(video_frames)
            ]
        )
        name = held.names[n].replace("/", "-")
        caption = f"{held.names[n]}: time 0 -> {max_time:g}, regressor then {n_k} samples (mp4)"
        clips[caption] = media.write_video(out_dir / "motions" / f"{name}.mp4", video, fps=12)
        if gif:
            media.write_video(out_dir / "motions" / f"{name}.gif", video, fps=12)
    return image_captions, clips


def score_all(
    outputs: MotionOutputs,
    held: HeldOut,
    *,
    lpips: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[dict[str, float], dict[str, list[int]]]:
    """``frame_scores`` (+ ``motion_scores`` on the synthetic world) and the counts."""
    scores = frame_scores(outputs, held, lpips=lpips)
    counts: dict[str, list[int]] = {}
    if held.clips is not None:
        sprite, counts = motion_scores(outputs, held)
        scores |= sprite
    scores["num_inputs"] = float(held.images.shape[0])
    scores["num_samples"] = float(outputs.flow.shape[1])
    return scores, counts
