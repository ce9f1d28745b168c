from dataclasses import dataclass

import pytest
import torch

from dfm_core.tree import tree_cat, tree_index, tree_map


@dataclass(frozen=True)
class Item:
    x: torch.Tensor
    meta: dict
    near: float = 0.5


def test_cat_index_and_map_round_trip_structures():
    a = Item(torch.zeros(2, 3), {"p": (torch.ones(2), None)})
    b = Item(torch.ones(1, 3), {"p": (torch.zeros(1), None)})
    both = tree_cat([a, b])
    assert both.x.shape == (3, 3) and both.meta["p"][0].tolist() == [1, 1, 0] and both.near == 0.5
    assert torch.equal(tree_index(both, slice(2, 3)).x, b.x)
    doubled = tree_map(lambda t: 2 * t, both)
    assert isinstance(doubled, Item) and torch.equal(
        doubled.meta["p"][0], torch.tensor([2.0, 2.0, 0.0])
    )
    with pytest.raises(ValueError, match="non-tensor leaves differ"):
        tree_cat([a, Item(torch.ones(1, 3), {"p": (torch.zeros(1), None)}, near=1.0)])
