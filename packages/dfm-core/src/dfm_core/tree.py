"""Structural maps over batch-like containers.

Batches, contexts and forward-model parameters are small frozen dataclasses, tuples,
dicts or plain tensors. The core treats them as opaque *trees* whose tensor leaves
share a leading batch dimension; these helpers move, slice and concatenate such trees
without knowing what they contain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")

__all__ = ["tree_cat", "tree_index", "tree_map", "tree_to"]


def tree_map(fn: Callable[[Tensor], Any], tree: T) -> T:
    """Apply ``fn`` to every tensor leaf of ``tree``; other leaves are returned unchanged.

    Handles tensors, dataclass instances (rebuilt with ``dataclasses.replace``), tuples
    (including named tuples), lists and dicts.
    """
    if isinstance(tree, Tensor):
        return fn(tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {
            f.name: tree_map(fn, getattr(tree, f.name)) for f in dataclasses.fields(tree) if f.init
        }
        return dataclasses.replace(tree, **changes)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(tree_map(fn, leaf) for leaf in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, leaf) for leaf in tree)
    if isinstance(tree, dict):
        return {key: tree_map(fn, value) for key, value in tree.items()}  # type: ignore[return-value]
    return tree


def tree_to(tree: T, device: torch.device | str, non_blocking: bool = False) -> T:
    """Move every tensor leaf of ``tree`` to ``device``."""
    return tree_map(lambda x: x.to(device, non_blocking=non_blocking), tree)


def tree_index(tree: T, index: Tensor | slice | Sequence[int]) -> T:
    """Select along the leading (batch) dimension of every tensor leaf."""
    return tree_map(lambda x: x[index], tree)


def tree_cat(trees: Sequence[T]) -> T:
    """Concatenate trees of identical structure along the leading (batch) dimension.

    Non-tensor leaves must be equal across the trees (they are batch-independent
    settings such as a near/far plane); a mismatch raises ``ValueError``.
    """
    if not trees:
        raise ValueError("tree_cat: expected at least one tree, got none")
    first = trees[0]
    if isinstance(first, Tensor):
        return torch.cat(list(trees), dim=0)  # type: ignore[arg-type,return-value]
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        changes = {
            f.name: tree_cat([getattr(tree, f.name) for tree in trees])
            for f in dataclasses.fields(first)
            if f.init
        }
        return dataclasses.replace(first, **changes)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(tree_cat(list(leaves)) for leaves in zip(*trees, strict=True)))
    if isinstance(first, (tuple, list)):
        return type(first)(tree_cat(list(leaves)) for leaves in zip(*trees, strict=True))
    if isinstance(first, dict):
        return {key: tree_cat([tree[key] for tree in trees]) for key in first}  # type: ignore[index,return-value]
    if any(tree != first for tree in trees[1:]):
        raise ValueError(
            f"tree_cat: non-tensor leaves differ across trees ({first!r} vs others); "
            "only tensor leaves can be concatenated along the batch"
        )
    return first
