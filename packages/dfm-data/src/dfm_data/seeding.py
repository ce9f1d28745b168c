"""Deterministic randomness for datasets and DataLoaders.

Two layers:

- **Per item.** Loaders draw an item's random choices (frames, crops, flips, scale augmentation) from
  :func:`item_rng` ``(seed, epoch, index)``, so an item depends only on its index and the epoch — not
  on which worker or rank produced it, nor on batch position.
- **Per worker / rank / epoch.** :func:`make_dataloader` seeds the shuffling generator from
  ``(seed, rank, epoch)``; PyTorch then gives every worker ``base_seed + worker_id``, and
  :func:`worker_init_fn` forwards that seed to ``numpy`` and ``random``, so any stray global RNG use
  in user transforms is distinct per worker, epoch and rank too.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

from dfm_data.batch import collate

__all__ = ["derive_seed", "item_rng", "make_dataloader", "worker_init_fn"]


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (e.g. ``(seed, rank, epoch, worker)``)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2)
    return int((int(state[0]) << 32 | int(state[1])) & 0x7FFFFFFFFFFFFFFF)


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one item: a pure function of ``(seed, epoch, index)``."""
    return np.random.default_rng(derive_seed(seed, epoch, index))


def worker_init_fn(worker_id: int) -> None:
    """Seeds ``numpy`` and ``random`` in a DataLoader worker from its torch seed (distinct per worker)."""
    seed = torch.initial_seed()
    np.random.seed(derive_seed(seed, worker_id) % 2**32)  # noqa: NPY002 -- seeding the legacy global RNG is the point
    random.seed(seed)


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader with the package's collate and seeding.

    Calls ``dataset.set_epoch(epoch)`` when the dataset has it. With ``world_size > 1`` each rank reads
    its own shard through ``DistributedSampler`` (seeded by ``seed``, epoch set).

    Args:
        dataset: any dfm-data dataset.
        batch_size: items per batch.
        seed: base seed.
        epoch: epoch number (changes shuffling and per-item randomness).
        rank, world_size: distributed position.
        shuffle: shuffle the order.
        num_workers: worker processes.
        drop_last: drop the last partial batch.
        **kwargs: passed on to ``DataLoader``.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(derive_seed(seed, rank, epoch))
    sampler: Any
    if world_size > 1:
        sampler = DistributedSampler(
            dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        sampler.set_epoch(epoch)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init_fn,
        generator=generator,
        drop_last=drop_last,
        **kwargs,
    )
