"""EMA of weights: plain decay and the warm-up, against float64 recursions."""

from itertools import pairwise

import pytest
import torch
from torch import nn

from dfm_core.ema import EMA


def _snapshots(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(3, generator=generator, dtype=torch.float64) for _ in range(count)]


def _module(value: torch.Tensor) -> nn.Module:
    module = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(value[None])
    return module


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_follows_the_documented_recursion(warmup):
    decay, every = 0.9, 2
    snapshots = _snapshots(12)
    model = _module(snapshots[0])
    ema = EMA(model, decay=decay, every=every, warmup=warmup)
    expected = snapshots[0].clone()
    n = 0
    for step, value in enumerate(snapshots[1:], start=1):
        with torch.no_grad():
            model.weight.copy_(value[None])
        applied = ema.update(model, step)
        assert applied == (step % every == 0)
        if applied:
            d = min(decay, (1 + n) / (10 + n)) if warmup else decay
            expected = d * expected + (1 - d) * value
            n += 1
    assert ema.num_updates == n
    assert torch.allclose(ema.module.weight[0], expected, atol=1e-14)


def test_warmup_forgets_the_initial_weights():
    # Share of p_0 after n updates: decay**n without warm-up, prod_j d_j with it.
    decay, n = 0.999, 3000
    model = _module(torch.zeros(3, dtype=torch.float64))
    plain, warm = EMA(model, decay=decay), EMA(model, decay=decay, warmup=True)
    with torch.no_grad():
        model.weight.fill_(1.0)  # every later snapshot is 1, so ema = 1 - share(p_0)
    for step in range(1, n + 1):
        plain.update(model, step)
        warm.update(model, step)
    share_plain = 1 - plain.module.weight[0, 0].item()
    share_warm = 1 - warm.module.weight[0, 0].item()
    assert share_plain == pytest.approx(decay**n, rel=1e-9)  # ~5 %
    assert share_warm < 1e-12


def test_warmup_decay_schedule_and_cap():
    ema = EMA(nn.Linear(1, 1), decay=0.95, warmup=True)
    decays = []
    for step in range(1, 400):
        decays.append(ema.current_decay())
        ema.update(nn.Linear(1, 1), step)
    assert decays[0] == pytest.approx(0.1)
    assert decays[1] == pytest.approx(2 / 11)
    assert all(b >= a for a, b in pairwise(decays))
    assert max(decays) == 0.95
