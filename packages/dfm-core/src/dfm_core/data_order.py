"""Data order and seeding for the trainer: which items each rank sees, and with what randomness.

A map-style ``torch.utils.data.Dataset`` (plus an optional ``collate_fn``). The trainer
builds its own ``DataLoader`` around a :class:`ShardedBatchSampler`: each epoch is a
permutation drawn from ``(seed, epoch)``; every optimiser step consumes the next
``batch_size * world_size * grad_accum_steps`` positions, rank ``r`` taking a contiguous
``batch_size`` slice of each micro-batch, so a DDP run sees exactly the global batches of
a single-process run with ``batch_size * world_size``. Items left over at the end of an
epoch that cannot fill a whole optimiser step are skipped. Resuming starts mid-epoch at
the saved batch offset without loading the skipped items.

Data randomness (augmentation, frame sampling) is resumable as well: before each
``dataset[i]`` the global ``random``/``numpy``/``torch`` RNGs are seeded from
``(seed, epoch, i)``, so an item's randomness depends on neither the rank, the batch
size nor ``num_workers`` (in the main process the previous RNG states are restored
afterwards). Datasets that draw from their own per-item generator instead (dfm-data's
``item_rng(seed, epoch, index)``) get ``dataset.set_epoch(epoch)`` called, if they define
it, before each epoch's workers start. ``worker_init_fn`` seeds each worker from
``(seed, rank, epoch, worker)`` for whatever runs outside ``__getitem__`` (e.g.
``collate_fn``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler, get_worker_info

__all__ = ["ShardedBatchSampler", "derive_seed", "worker_seed"]

# Domain tags keep the seed streams of different consumers apart.
SEED_GLOBAL, SEED_GENERATOR, SEED_PERMUTATION, SEED_ITEM, SEED_WORKER, SEED_LOADER = range(6)


def derive_seed(*keys: int) -> int:
    """A 64-bit seed mixed from non-negative integer ``keys`` (numpy ``SeedSequence``).

    Distinct key tuples give statistically independent seeds, unlike ``seed + rank``
    schemes whose streams collide across (rank, worker) pairs.
    """
    if any(key < 0 for key in keys):
        raise ValueError(f"derive_seed: keys must be non-negative, got {keys}")
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0])


def worker_seed(seed: int, rank: int, epoch: int, worker_id: int) -> int:
    """Seed of DataLoader worker ``worker_id`` on ``rank`` in ``epoch`` (distinct for each)."""
    return derive_seed(seed, SEED_WORKER, rank, epoch, worker_id)


def seed_globals(seed: int) -> None:
    """Seed Python's, numpy's and torch's CPU global RNG (not CUDA's) from one 64-bit seed.

    The legacy numpy global RNG is seeded on purpose: it is what datasets commonly draw
    augmentation randomness from.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.default_generator.manual_seed(seed)


def init_worker(seed: int, rank: int, epoch: int, worker_id: int) -> None:
    seed_globals(worker_seed(seed, rank, epoch, worker_id))


class SeededItems(Dataset):
    """Wraps a dataset so that ``dataset[i]`` runs with global RNGs seeded from (seed, epoch, i)."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        item_seed = derive_seed(self.seed, SEED_ITEM, self.epoch, index)
        if get_worker_info() is not None:  # a worker process: its RNGs are ours to set
            seed_globals(item_seed)
            return self.dataset[index]
        saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())  # noqa: NPY002
        try:
            seed_globals(item_seed)
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])  # noqa: NPY002
            torch.set_rng_state(saved[2])


# ----------------------------------------------------------------------------- sampler


class ShardedBatchSampler(Sampler[list[int]]):
    """Seeded, rank-sharded, resumable batch sampler over ``range(num_items)``.

    Epoch ``e`` uses the permutation drawn from ``(seed, e)`` (identity if not
    ``shuffle``). Micro-batch ``b`` covers permutation positions
    ``[b * B * W, (b + 1) * B * W)``; rank ``r`` gets the slice starting at
    ``b * B * W + r * B``. Trailing items that do not fill a whole optimiser step
    (``B * W * grad_accum_steps`` items) are dropped, so all ranks yield the same number
    of batches and accumulating ``A`` micro-batches of ``B`` sees exactly the items of
    one batch of ``A * B``, epoch boundaries included.

    Args:
        num_items: dataset length.
        batch_size: per-rank batch size ``B``.
        world_size: number of ranks ``W``.
        rank: this rank, in ``[0, W)``.
        seed: base seed of the permutations.
        epoch: which epoch's permutation to use.
        start_batch: skip the first ``start_batch`` batches (resume mid-epoch); the
            skipped items are never loaded.
        shuffle: permute (``True``) or keep dataset order.
        grad_accum_steps: micro-batches per optimiser step ``A`` (sets the drop unit).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        shuffle: bool = True,
        grad_accum_steps: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"ShardedBatchSampler: batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"ShardedBatchSampler: need 0 <= rank < world_size, got rank={rank}, "
                f"world_size={world_size}"
            )
        if start_batch < 0:
            raise ValueError(f"ShardedBatchSampler: start_batch must be >= 0, got {start_batch}")
        if grad_accum_steps < 1:
            raise ValueError(
                f"ShardedBatchSampler: grad_accum_steps must be >= 1, got {grad_accum_steps}"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.shuffle = shuffle
        self.grad_accum_steps = grad_accum_steps

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches per epoch and rank (the same on every rank)."""
        per_step = self.batch_size * self.world_size * self.grad_accum_steps
        return self.num_items // per_step * self.grad_accum_steps

    def permutation(self) -> Tensor:
        """This epoch's order of the dataset indices, shape ``(num_items,)``."""
        if not self.shuffle:
            return torch.arange(self.num_items)
        generator = torch.Generator().manual_seed(
            derive_seed(self.seed, SEED_PERMUTATION, self.epoch)
        )
        return torch.randperm(self.num_items, generator=generator)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.permutation()
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()


# ----------------------------------------------------------------------------- RNG states


def numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    return {
        "name": name,
        "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def set_numpy_state(state: Mapping[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002
        (state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])
    )


def python_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    return {
        "version": version,
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss_next": gauss_next,
    }


def set_python_state(state: Mapping[str, Any]) -> None:
    internal = tuple(int(x) for x in state["internal"].tolist())
    random.setstate((state["version"], internal, state["gauss_next"]))
