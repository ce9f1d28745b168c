"""Typed batches every loader returns (DESIGN.md §2).

Conventions, once for the whole package:

- Images are float32 in ``[-1, 1]``, channels first.
- Poses are OpenCV camera-to-world 4×4 (x right, y down, z forward), expressed **relative to the
  first context camera** (so ``context.c2w[:, 0]`` is the identity). The absolute pose of that first
  context camera is kept in :attr:`ViewBatch.world_from_context` for models that want it.
- Intrinsics are normalised by image size: ``[[fx/W, 0, cx/W], [0, fy/H, cy/H], [0, 0, 1]]``, with the
  pixel-centre convention of :mod:`dfm_data.cameras` (pixel ``(i, j)`` covers ``[j, j+1] × [i, i+1]``).

A dataset item is already a batch with ``B = 1``; :func:`collate` concatenates items along dim 0,
so ``DataLoader(ds, collate_fn=collate)`` yields the same types with a larger ``B``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from dfm_data.errors import DatasetError, EmptySubsetError, OnError, SkipCounter

__all__ = [
    "FrameBatch",
    "MaskedPatchBatch",
    "ViewBatch",
    "Views",
    "collate",
    "load_item",
    "make_view_batch",
]


@dataclass(frozen=True)
class Views:
    """A set of posed views of one scene per batch element.

    Attributes:
        images: ``(B, N, 3, H, W)`` float in ``[-1, 1]``.
        c2w: ``(B, N, 4, 4)`` OpenCV camera-to-world, relative to the batch's first context camera.
        intrinsics: ``(B, N, 3, 3)`` normalised intrinsics (one per view; they may differ).
        frame_index: ``(B, N)`` int64 position of each view in its sequence (for videos/reports).
    """

    images: Tensor
    c2w: Tensor
    intrinsics: Tensor
    frame_index: Tensor

    @property
    def num_views(self) -> int:
        """``N``, the number of views per batch element."""
        return self.images.shape[1]


@dataclass(frozen=True)
class ViewBatch:
    """Posed multi-view batch (CO3D, RealEstate10k, the objects and rooms worlds).

    Attributes:
        context: the observed views, ``N = Nc >= 1``; ``context.c2w[:, 0]`` is the identity.
        target: the view(s) to denoise, ``N = Nt >= 1``; target 0 is the far one.
        novel: extra views for the novel-view loss, ``N = Nn >= 0`` (``N = 0`` tensors when unused).
        world_from_context: ``(B, 4, 4)`` absolute (scale-normalised) c2w of context view 0, so the
            absolute pose of any view is ``world_from_context @ view.c2w``.
        near: ``(B,)`` near plane in scene units.
        far: ``(B,)`` far plane in scene units.
        index: ``(B,)`` int64 dataset index of each element.
    """

    context: Views
    target: Views
    novel: Views
    world_from_context: Tensor
    near: Tensor
    far: Tensor
    index: Tensor

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.index.shape[0]


@dataclass(frozen=True)
class FrameBatch:
    """2D motion batch (Vimeo-90K, the motion world): frames of one clip, no cameras.

    Attributes:
        context: ``(B, 3, H, W)`` in ``[-1, 1]``, the observed frame.
        target: ``(B, 3, H, W)`` in ``[-1, 1]``, the frame to predict (denoised target).
        novel: ``(B, Nn, 3, H, W)`` in ``[-1, 1]``, further frames (``Nn = 0`` when unused).
        frame_index: ``(B, 2 + Nn)`` int64 1-based frame numbers (``imK.png``) of context, target, novel.
        index: ``(B,)`` int64 dataset index.
    """

    context: Tensor
    target: Tensor
    novel: Tensor
    frame_index: Tensor
    index: Tensor

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.index.shape[0]


@dataclass(frozen=True)
class MaskedPatchBatch:
    """GAN-inversion batch: a generated image, its latent, and a masked-patch context.

    Attributes:
        context: ``(B, 3, H, W)`` in ``[-1, 1]``: ``target * mask`` (zero outside the patch).
        mask: ``(B, 1, H, W)`` float, 1 inside the visible patch and 0 elsewhere.
        target: ``(B, 3, H, W)`` in ``[-1, 1]``, the full generated image at training resolution.
        w: ``(B, num_ws, w_dim)`` or ``(B, w_dim)``: the truncated latent that produced ``target``.
        index: ``(B,)`` int64 dataset index.
    """

    context: Tensor
    mask: Tensor
    target: Tensor
    w: Tensor
    index: Tensor

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.index.shape[0]


B = TypeVar("B")


def _cat(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, Tensor):
        return torch.cat(values, dim=0)
    if dataclasses.is_dataclass(first):
        return type(first)(
            **{
                f.name: _cat([getattr(v, f.name) for v in values])
                for f in dataclasses.fields(first)
            }
        )
    raise TypeError(f"cannot collate field of type {type(first).__name__}")


def collate(items: list[B]) -> B:
    """Concatenates batches of one type along dim 0 (the ``collate_fn`` for every loader here).

    Args:
        items: batches of the same dataclass type (typically dataset items with ``B = 1``).

    Returns:
        One batch of that type whose ``B`` is the sum of the items' ``B``.
    """
    if not items:
        raise ValueError("collate: empty list of items")
    kinds = {type(i) for i in items}
    if len(kinds) != 1:
        raise TypeError(f"collate: mixed batch types {sorted(k.__name__ for k in kinds)}")
    return _cat(list(items))


def _rigid_inverse(c2w: np.ndarray) -> np.ndarray:
    """Exact inverse of a rigid ``(4, 4)`` transform (no LAPACK call in the data workers)."""
    inv = np.eye(4)
    inv[:3, :3] = c2w[:3, :3].T
    inv[:3, 3] = -c2w[:3, :3].T @ c2w[:3, 3]
    return inv


def make_view_batch(
    views: dict[str, list[tuple[Tensor, np.ndarray, np.ndarray, int]]],
    *,
    image_size_hw: tuple[int, int],
    near: float,
    far: float,
    index: int,
) -> ViewBatch:
    """Builds a ``B = 1`` :class:`ViewBatch` from absolute cameras, re-expressed relative to context 0.

    Args:
        views: ``"context"``, ``"target"``, ``"novel"`` -> list of views, each ``(image (3, H, W) in
            [-1, 1], c2w (4, 4) absolute rigid, intrinsics (3, 3) normalised, frame position)``.
            ``"context"`` must be non-empty; the others may be empty.
        image_size_hw: ``(H, W)`` of the images (shapes empty view sets).
        near, far: planes in scene units.
        index: dataset index.
    """
    world_from_context = np.asarray(views["context"][0][1], dtype=np.float64)
    context_from_world = _rigid_inverse(world_from_context)
    h, w = image_size_hw

    def build(items: list[tuple[Tensor, np.ndarray, np.ndarray, int]]) -> Views:
        n = len(items)
        if n == 0:
            return Views(
                images=torch.zeros(1, 0, 3, h, w),
                c2w=torch.zeros(1, 0, 4, 4),
                intrinsics=torch.zeros(1, 0, 3, 3),
                frame_index=torch.zeros(1, 0, dtype=torch.int64),
            )
        rel = np.stack(
            [context_from_world @ np.asarray(c2w, dtype=np.float64) for _, c2w, _, _ in items]
        )
        return Views(
            images=torch.stack([im for im, _, _, _ in items]).float().unsqueeze(0),
            c2w=torch.from_numpy(rel.astype(np.float32)).unsqueeze(0),
            intrinsics=torch.from_numpy(
                np.stack([K for _, _, K, _ in items]).astype(np.float32)
            ).unsqueeze(0),
            frame_index=torch.tensor([[f for _, _, _, f in items]], dtype=torch.int64),
        )

    return ViewBatch(
        context=build(views["context"]),
        target=build(views["target"]),
        novel=build(views["novel"]),
        world_from_context=torch.from_numpy(world_from_context.astype(np.float32)).unsqueeze(0),
        near=torch.tensor([near], dtype=torch.float32),
        far=torch.tensor([far], dtype=torch.float32),
        index=torch.tensor([index], dtype=torch.int64),
    )


def load_item(
    index: int,
    length: int,
    load: Callable[[int], B],
    *,
    on_error: OnError,
    skipped: SkipCounter,
    root: object,
) -> B:
    """Loads item ``index``; under ``on_error="skip"`` a bad item is counted and the next one tried.

    The replacement keeps ``index`` as its dataset index, so batches stay deterministic.

    Raises:
        IndexError: ``index`` out of range.
        DatasetError: the item's error (``on_error="raise"``), or :class:`EmptySubsetError` when
            every item is bad.
    """
    if not 0 <= index < length:
        raise IndexError(index)
    for attempt in range(length):
        i = (index + attempt) % length
        try:
            item = load(i)
        except DatasetError as e:
            skipped.handle(e, on_error)
            continue
        if i != index:
            item = dataclasses.replace(item, index=torch.tensor([index], dtype=torch.int64))
        return item
    first = skipped.first
    cause = f"; first problem: {first}" if first is not None else ""
    raise EmptySubsetError(f"every item has a bad file{cause}", path=str(root))
