"""Optimiser and learning-rate schedule of the trainer: Adam/AdamW, linear warm-up, then
constant or cosine decay to ``min_lr_ratio`` of the peak."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["OptimizerConfig", "learning_rate_at"]

_OPTIMIZERS = ("adam", "adamw")
_SCHEDULES = ("constant", "cosine")


@dataclass
class OptimizerConfig:
    """Optimiser and learning-rate schedule."""

    name: str = "adamw"
    """``"adam"`` (L2 weight decay) or ``"adamw"`` (decoupled weight decay)."""
    lr: float = 1e-4
    """Peak learning rate, reached at the end of warm-up."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam moment decay rates; the original DFM used ``(0.9, 0.99)``."""
    eps: float = 1e-8
    """Adam denominator epsilon."""
    weight_decay: float = 0.0
    """Weight decay applied to every trainable parameter."""
    warmup_steps: int = 1000
    """Linear warm-up length in optimiser steps: update ``s`` (0-based) uses ``lr * (s + 1) / warmup_steps``."""
    schedule: str = "constant"
    """After warm-up: ``"constant"`` or ``"cosine"`` decay to ``min_lr_ratio * lr`` at ``max_steps``."""
    min_lr_ratio: float = 0.0
    """Final learning rate of the cosine schedule, as a fraction of ``lr``."""

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if self.name not in _OPTIMIZERS:
            raise ValueError(
                f"OptimizerConfig.name must be one of {_OPTIMIZERS}, got {self.name!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"OptimizerConfig.lr must be > 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(
                f"OptimizerConfig.betas must be two values in [0, 1), got {self.betas!r}"
            )
        if not self.eps > 0:
            raise ValueError(f"OptimizerConfig.eps must be > 0, got {self.eps!r}")
        if not self.weight_decay >= 0:
            raise ValueError(
                f"OptimizerConfig.weight_decay must be >= 0, got {self.weight_decay!r}"
            )
        if self.warmup_steps < 0:
            raise ValueError(
                f"OptimizerConfig.warmup_steps must be >= 0, got {self.warmup_steps!r}"
            )
        if self.schedule not in _SCHEDULES:
            raise ValueError(
                f"OptimizerConfig.schedule must be one of {_SCHEDULES}, got {self.schedule!r}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(
                f"OptimizerConfig.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}"
            )

    def build(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimiser over ``params`` (learning rate set per step by the trainer)."""
        cls = torch.optim.AdamW if self.name == "adamw" else torch.optim.Adam
        return cls(
            params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
        )


def learning_rate_at(config: OptimizerConfig, step: int, total_steps: int) -> float:
    """Learning rate of optimiser update ``step`` (0-based) in a run of ``total_steps``.

    ``lr * (step + 1) / warmup_steps`` during warm-up (so the first update is not
    wasted at zero), then ``lr`` (constant) or the cosine
    ``min + (lr - min) * (1 + cos(pi * p)) / 2`` with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to ``[0, 1]``.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    low = config.lr * config.min_lr_ratio
    return low + (config.lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
