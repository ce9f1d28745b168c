"""Exponential moving average (EMA) of a model's weights.

Sampling uses the EMA weights, not the raw training weights (Ho et al. 2020, §4; the
original DFM trained with an EMA of decay 0.995 updated every 10 steps). The average
starts as an exact copy of the model and every ``every``-th optimiser step applies

    ema <- d_n * ema + (1 - d_n) * param,      n = number of updates applied before,

with ``d_n = decay`` by default, so after ``n`` updates with parameter snapshots
``p_1 .. p_n`` (``p_0`` = initial weights)

    ema_n = decay**n * p_0 + (1 - decay) * sum_{j=1..n} decay**(n - j) * p_j,

a closed form the tests check against a float64 recursion. That average still carries
``decay**n`` of the random initial weights (5 % after 3k updates at 0.999). With
``warmup=True`` the decay ramps up as in the usual warm-up (e.g. ``ema-pytorch``'s
``inv_gamma=1, power=1`` with 10 in place of its 1):

    d_n = min(decay, (1 + n) / (10 + n)),

so the first update keeps only 10 % of the initial weights and their share after ``n``
updates is at most ``prod_j (1 + j) / (10 + j)`` = 9! n! / (n + 9)! (< 1e-20 by n = 3k).
Floating-point buffers (e.g. normalisation statistics) are copied, not averaged; integer
buffers are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """An EMA copy of ``model``, updated in place by :meth:`update`.

    Args:
        model: the module being trained (unwrapped, not a DDP wrapper). Its current
            weights become the initial average.
        decay: weight of the old average per update, in ``[0, 1)``; ``0`` makes the
            average a copy of the latest weights.
        every: apply one update every ``every`` optimiser steps (``>= 1``).
        warmup: ramp the decay up as ``min(decay, (1 + n) / (10 + n))`` over the first
            updates (``n`` = updates applied so far), so early averages forget the
            initial weights.
    """

    def __init__(
        self, model: nn.Module, *, decay: float, every: int = 1, warmup: bool = False
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must lie in [0, 1), got {decay!r}")
        if every < 1:
            raise ValueError(f"EMA: every must be >= 1, got {every!r}")
        self.decay = float(decay)
        self.every = int(every)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> bool:
        """Fold ``model``'s weights into the average if ``step`` is a multiple of ``every``.

        Args:
            model: the trained module, with the same parameter names as at construction.
            step: number of optimiser steps completed so far (``>= 1``).

        Returns:
            Whether an update was applied.
        """
        if step % self.every != 0:
            return False
        ema_params: list[torch.Tensor] = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError(
                f"EMA.update: model has {len(params)} parameters, the average {len(ema_params)}"
            )
        decay = self.current_decay()
        if ema_params:
            # lerp(ema, p, 1 - d) = ema + (1 - d) (p - ema) = d ema + (1 - d) p
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)
        self.num_updates += 1
        return True

    def current_decay(self) -> float:
        """The decay the next update applies (``decay``, or its warm-up value)."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged module's weights (a plain tensor ``state_dict``)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        """Restore the average saved by :meth:`state_dict` and its update count."""
        self.module.load_state_dict(state)
        self.num_updates = int(num_updates)
