"""Scoring sampled motions against a known discrete set of velocities.

The synthetic motion world (dfm-data) moves every sprite with a velocity drawn uniformly from
a known set (directions x speeds). Given frame 1 only, a correct stochastic model's samples
should land on members of the set (not between them), cover several members per sprite, and
be uniform over the set when pooled; a deterministic regressor averages the directions.

Everything here takes plain tensors and the world's ground-truth dict (JSON), so dfm-flow
does not depend on dfm-data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dfm_flow.motion import sample_motion

__all__ = [
    "MotionScores",
    "chi2_uniform",
    "regressed_sprite_velocities",
    "sampled_sprite_velocities",
    "score_motions",
    "sprite_masks",
    "sprite_velocities",
]


def sprite_masks(clip: dict, height: int, width: int, margin: float = 1.0) -> Tensor:
    """Interior pixels of each sprite in frame 1 where that sprite is on top.

    Args:
        clip: one clip of the motion world's ground truth (``sprites`` with ``shape``,
            ``radius``, ``centre_im1``; later sprites are drawn on top).
        height, width: frame size.
        margin: pixels shaved off the sprite's outline (antialiased edges, splat borders).

    Returns:
        (S, H, W) bool.
    """
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) + 0.5,
        torch.arange(width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    masks = []
    for sprite in clip["sprites"]:
        cx, cy = sprite["centre_im1"]
        r = sprite["radius"]
        if sprite["shape"] == "disc":
            full = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
            inner = (x - cx) ** 2 + (y - cy) ** 2 <= max(r - margin, 0.0) ** 2
        else:
            full = ((x - cx).abs() <= r) & ((y - cy).abs() <= r)
            inner = ((x - cx).abs() <= r - margin) & ((y - cy).abs() <= r - margin)
        masks.append((full, inner))
    out = []
    for s, (_, inner) in enumerate(masks):
        visible = inner.clone()
        for full_above, _ in masks[s + 1 :]:
            visible &= ~full_above
        out.append(visible)
    return torch.stack(out) if out else torch.zeros(0, height, width, dtype=torch.bool)


def sprite_velocities(flow: Tensor, masks: Tensor) -> Tensor:
    """Per-sprite motion of sampled flows: the median flow over each sprite's mask.

    Args:
        flow: (K, 2, H, W).
        masks: (S, H, W) bool.

    Returns:
        (S, K, 2); NaN for a sprite with an empty mask.
    """
    k = flow.shape[0]
    out = torch.full((masks.shape[0], k, 2), float("nan"), dtype=flow.dtype, device=flow.device)
    for s, mask in enumerate(masks):
        if mask.any():
            values = flow[:, :, mask.to(flow.device)]  # (K, 2, P)
            out[s] = values.median(dim=-1).values
    return out


def chi2_uniform(counts: Tensor) -> tuple[float, float]:
    """Pearson's chi-squared test of counts against a uniform distribution.

    Returns:
        (statistic, p-value), p = Q((M - 1) / 2, statistic / 2), the regularised upper
        incomplete gamma function (the chi-squared survival function with M - 1 dof).
    """
    counts = counts.to(torch.float64)
    expected = counts.sum() / counts.numel()
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = torch.tensor((counts.numel() - 1) / 2.0, dtype=torch.float64)
    p = torch.special.gammaincc(dof, statistic / 2)
    return float(statistic), float(p)


@dataclass(frozen=True)
class MotionScores:
    """Figures of section 4 of issue 9, over N sprites and K samples each.

    Attributes:
        fraction_on_set: fraction of the N * K sampled motions within half the set's spacing
            of some member (not a blend).
        mean_distinct: mean over sprites of the number of distinct members hit (on-set samples).
        counts: (M,) pooled counts of on-set samples per member.
        chi2, chi2_p: Pearson's test of ``counts`` against uniform.
        best_of_k_epe: mean over sprites of min over samples of |v_sample - v_true| (pixels).
        mean_epe: mean over sprites and samples of |v_sample - v_true| (pixels).
        num_sprites, num_samples: N and K.
    """

    fraction_on_set: float
    mean_distinct: float
    counts: tuple[int, ...]
    chi2: float
    chi2_p: float
    best_of_k_epe: float
    mean_epe: float
    num_sprites: int
    num_samples: int


def score_motions(estimates: Tensor, truth: Tensor, velocity_set: Tensor) -> MotionScores:
    """Score sampled per-sprite motions against the known set.

    Args:
        estimates: (N, K, 2) sampled velocities in pixels per frame (N sprites, K samples);
            sprites with NaN estimates are ignored.
        truth: (N, 2) true velocities.
        velocity_set: (M, 2) the set every velocity was drawn from (M >= 2).

    Returns:
        ``MotionScores``.
    """
    if estimates.ndim != 3 or estimates.shape[-1] != 2:
        raise ValueError(f"estimates: expected (N, K, 2), got {tuple(estimates.shape)}")
    if truth.shape != (estimates.shape[0], 2):
        raise ValueError(f"truth: expected ({estimates.shape[0]}, 2), got {tuple(truth.shape)}")
    if velocity_set.ndim != 2 or velocity_set.shape[1] != 2 or velocity_set.shape[0] < 2:
        raise ValueError(f"velocity_set: expected (M >= 2, 2), got {tuple(velocity_set.shape)}")
    estimates, truth, members = (t.to(torch.float64) for t in (estimates, truth, velocity_set))
    keep = ~torch.isnan(estimates).any(dim=(1, 2))
    estimates, truth = estimates[keep], truth[keep]
    pairwise = torch.cdist(members, members)
    spacing = pairwise[~torch.eye(len(members), dtype=torch.bool)].min()
    distance = torch.cdist(estimates.reshape(-1, 2), members)  # (N K, M)
    nearest_distance, nearest = distance.min(dim=1)
    on_set = (nearest_distance < spacing / 2).view(estimates.shape[:2])  # (N, K)
    nearest = nearest.view(estimates.shape[:2])
    distinct = [len(set(nearest[n][on_set[n]].tolist())) for n in range(estimates.shape[0])]
    counts = torch.bincount(nearest[on_set], minlength=len(members))
    chi2, p = chi2_uniform(counts) if counts.sum() > 0 else (float("nan"), float("nan"))
    epe = (estimates - truth[:, None]).norm(dim=-1)  # (N, K)
    return MotionScores(
        fraction_on_set=float(on_set.to(torch.float64).mean()),
        mean_distinct=float(sum(distinct) / max(len(distinct), 1)),
        counts=tuple(int(c) for c in counts),
        chi2=chi2,
        chi2_p=p,
        best_of_k_epe=float(epe.min(dim=1).values.mean()),
        mean_epe=float(epe.mean()),
        num_sprites=int(estimates.shape[0]),
        num_samples=int(estimates.shape[1]),
    )


def _truth(clips: list[dict], height: int, width: int) -> tuple[list[Tensor], Tensor]:
    masks = [sprite_masks(clip, height, width) for clip in clips]
    truth = torch.tensor(
        [sprite["velocity_px"] for clip in clips for sprite in clip["sprites"]], dtype=torch.float64
    )
    return masks, truth


@torch.no_grad()
def sampled_sprite_velocities(
    diffusion: nn.Module,
    images: Tensor,
    clips: list[dict],
    *,
    num_samples: int = 16,
    steps: int = 20,
    seed: int = 0,
    batch_size: int = 16,
    **sample_kwargs: object,
) -> tuple[Tensor, Tensor]:
    """Sample K motions per clip from frame 1 and read off every sprite's velocity.

    Args:
        diffusion: a motion DFM (``ForwardDiffusion``).
        images: (N, 3, H, W) first frames in [-1, 1].
        clips: the N clips' ground truth (motion world JSON).
        num_samples: K.
        steps: sampler steps.
        seed: sample k of clip n uses the seed ``seed * 10**6 + n * K + k`` (independent of
            how clips are batched).
        batch_size: clips per sampler call.
        **sample_kwargs: passed to ``sample_motion``.

    Returns:
        estimates (S, K, 2) and truth (S, 2) over all sprites S of all clips.
    """
    height, width = images.shape[-2:]
    masks, truth = _truth(clips, height, width)
    k = num_samples
    estimates = []
    for start in range(0, len(clips), batch_size):
        chunk = images[start : start + batch_size]
        generators = [
            torch.Generator().manual_seed(seed * 10**6 + (start + i) * k + j)
            for i in range(chunk.shape[0])
            for j in range(k)
        ]
        out = sample_motion(
            diffusion, chunk, num_samples=k, steps=steps, generator=generators, **sample_kwargs
        )
        for i in range(chunk.shape[0]):
            estimates.append(sprite_velocities(out.flow[i].double(), masks[start + i]))
    return torch.cat(estimates), truth


@torch.no_grad()
def regressed_sprite_velocities(
    regressor: nn.Module, images: Tensor, clips: list[dict]
) -> tuple[Tensor, Tensor]:
    """The deterministic baseline's per-sprite velocities: estimates (S, 1, 2), truth (S, 2)."""
    height, width = images.shape[-2:]
    masks, truth = _truth(clips, height, width)
    flow = regressor.predict(images).flow.double()  # (N, 2, H, W)
    estimates = [sprite_velocities(flow[i : i + 1], masks[i]) for i in range(len(clips))]
    return torch.cat(estimates), truth
