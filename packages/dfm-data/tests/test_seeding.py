"""Seeding: distinct per worker, epoch and rank; items depend only on (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from dfm_data.batch import FrameBatch, collate
from dfm_data.seeding import derive_seed, item_rng, make_dataloader


class _Probe(Dataset):
    """Returns the worker's numpy global draw and the per-item draw."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 8

    def __getitem__(self, i):
        glob = float(np.random.random())  # noqa: NPY002 -- probing the global RNG the workers seed
        own = float(item_rng(0, self.epoch, i).random())
        t = torch.tensor([[glob, own]])
        return FrameBatch(
            context=t, target=t, novel=t, frame_index=torch.tensor([[i]]), index=torch.tensor([i])
        )


def _draws(**kw):
    loader = make_dataloader(_Probe(), batch_size=2, num_workers=2, shuffle=False, **kw)
    out = {}
    for b in loader:
        for i, row in zip(b.index.tolist(), b.context.tolist(), strict=True):
            out[i] = row
    return out


def test_worker_epoch_and_rank_seeds_differ():
    a = _draws(seed=0, epoch=0)
    globals_a = [v[0] for v in a.values()]
    assert len(set(globals_a)) == len(globals_a)  # two workers never repeat each other's stream
    b = _draws(seed=0, epoch=1)
    assert all(a[i][0] != b[i][0] for i in a)
    c = _draws(seed=0, epoch=0, rank=1)
    assert all(a[i][0] != c[i][0] for i in a)
    # Per-item randomness does not depend on workers or ranks, only on (seed, epoch, index).
    assert all(a[i][1] == c[i][1] for i in a) and all(a[i][1] != b[i][1] for i in a)


def test_distributed_shards_are_disjoint():
    seen = []
    for rank in range(2):
        loader = make_dataloader(_Probe(), batch_size=4, rank=rank, world_size=2, seed=3)
        seen.append({i for b in loader for i in b.index.tolist()})
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(8))


def test_derive_seed_mixes():
    assert derive_seed(1, 2) != derive_seed(2, 1)
    assert derive_seed(0, 0, 1) == derive_seed(0, 0, 1)


def test_collate_rejects_mixed_and_empty():
    t = torch.zeros(1, 1)
    fb = FrameBatch(context=t, target=t, novel=t, frame_index=t, index=torch.tensor([0]))
    with pytest.raises(ValueError):
        collate([])
    with pytest.raises(TypeError):
        collate([fb, object()])
