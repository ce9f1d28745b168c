"""Distances between sample sets, for scoring a sampler against a known distribution."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["energy_distance", "sliced_wasserstein"]


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """Squared energy distance (Szekely & Rizzo) between two sample sets, V-statistic.

        E(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|

    The V-statistic (diagonal pairs included) is non-negative and, for two independent
    sets of n samples from one distribution, has a positive expectation of order 1/n:
    the *noise floor* a perfect sampler is compared with.

    Args:
        x: shape (..., n, d); leading dimensions are batched (e.g. one set per context).
        y: shape (..., m, d).

    Returns:
        shape (...), float64.
    """
    if x.shape[:-2] != y.shape[:-2] or x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"energy_distance: incompatible shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x, y = x.double(), y.double()
    xy = torch.cdist(x, y).mean(dim=(-2, -1))
    xx = torch.cdist(x, x).mean(dim=(-2, -1))
    yy = torch.cdist(y, y).mean(dim=(-2, -1))
    return 2 * xy - xx - yy


def sliced_wasserstein(
    x: Tensor, y: Tensor, num_projections: int = 128, generator: torch.Generator | None = None
) -> Tensor:
    """Sliced 2-Wasserstein distance between equal-size sample sets.

    Args:
        x: shape (..., n, d).
        y: shape (..., n, d).
        num_projections: random directions on the unit sphere.

    Returns:
        shape (...), float64.
    """
    if x.shape != y.shape:
        raise ValueError(
            f"sliced_wasserstein: expected equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x, y = x.double(), y.double()
    directions = torch.randn(x.shape[-1], num_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    px = (x @ directions.to(x.device)).sort(dim=-2).values
    py = (y @ directions.to(y.device)).sort(dim=-2).values
    return (px - py).square().mean(dim=(-2, -1)).sqrt()
