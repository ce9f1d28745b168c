"""Choosing context / target / novel frames within one sequence (CO3D, RealEstate10k, worlds).

The scheme follows DFM's (reference §1.7) with its rough edges removed:

1. ``span ~ U{min_gap·Nc, ..., max_gap·Nc}`` frames, clipped to the sequence (``n - 1``), so short
   sequences still give items instead of being silently swapped for another one.
2. ``start ~ U{0, ..., n - 1 - span}``, ``end = start + span``; with ``flip_probability`` the two are
   swapped (time reversal).
3. Context 0 is ``start``; target 0 is ``end`` (the far view the model denoises). Extra context views
   lie in the half of the segment next to ``start``; extra targets and the novel views (for the
   novel-view loss) lie anywhere between ``start`` and ``end``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FrameSamplingConfig", "sample_view_indices"]


@dataclass(frozen=True)
class FrameSamplingConfig:
    """How frames are picked from a sequence for one item."""

    num_context: int = 1
    """Number of context (observed) views ``Nc``."""
    num_target: int = 1
    """Number of target views ``Nt``; target 0 is the far end of the segment."""
    num_novel: int = 1
    """Number of extra views for the novel-view loss ``Nn`` (0 to disable)."""
    min_gap: int = 20
    """Minimum frames between context 0 and target 0, per context view (DFM CO3D: 20; RE10k: 100)."""
    max_gap: int = 40
    """Maximum frames between context 0 and target 0, per context view (DFM CO3D: 40; RE10k: 180)."""
    flip_probability: float = 0.5
    """Probability of reversing time (swapping the segment's start and end)."""

    def __post_init__(self) -> None:
        if self.num_context < 1 or self.num_target < 1 or self.num_novel < 0:
            raise ValueError("need num_context >= 1, num_target >= 1, num_novel >= 0")
        if not 0 <= self.min_gap <= self.max_gap:
            raise ValueError(f"need 0 <= min_gap <= max_gap, got {self.min_gap}, {self.max_gap}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError("flip_probability must lie in [0, 1]")


def _between(rng: np.random.Generator, a: int, b: int, k: int) -> list[int]:
    """``k`` indices drawn uniformly (with replacement) from the closed range between a and b."""
    lo, hi = min(a, b), max(a, b)
    return [int(v) for v in rng.integers(lo, hi + 1, size=k)]


def sample_view_indices(
    num_frames: int, config: FrameSamplingConfig, rng: np.random.Generator
) -> tuple[list[int], list[int], list[int]]:
    """Draws frame positions for one item.

    Args:
        num_frames: frames in the sequence, ``>= 1``.
        config: the sampling rules.
        rng: source of randomness (one per item, so items are deterministic by seed).

    Returns:
        ``(context, target, novel)`` lists of positions in ``[0, num_frames)`` with lengths
        ``Nc``, ``Nt``, ``Nn``; ``context[0]`` and ``target[0]`` are the segment ends.
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    nc = config.num_context
    span = int(rng.integers(config.min_gap * nc, config.max_gap * nc + 1))
    span = min(span, num_frames - 1)
    start = int(rng.integers(0, num_frames - span))
    end = start + span
    if rng.random() < config.flip_probability:
        start, end = end, start
    half = start + (end - start) // 2
    extra_ctx = sorted(_between(rng, start, half, nc - 1), key=lambda i: abs(i - start))
    extra_tgt = _between(rng, start, end, config.num_target - 1)
    novel = _between(rng, start, end, config.num_novel)
    return [start, *extra_ctx], [end, *extra_tgt], novel


def check_frame_positions(positions: Sequence[int], num_frames: int, where: str) -> None:
    """Refuse a chosen frame position outside ``[0, num_frames)`` (``views_at`` of the loaders).

    Args:
        positions: positions in a sequence's frame order.
        num_frames: the sequence's length.
        where: the sequence, for the message (e.g. ``"clip abc"``).

    Raises:
        IndexError: naming the first position outside.
    """
    for i in positions:
        if not 0 <= i < num_frames:
            raise IndexError(f"frame position {i} outside {where} ({num_frames} frames)")
