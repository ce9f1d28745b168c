"""The field's FiLM blocks: folded gain (``field._film_linear``) against the broadcast form.

Each residual block of the field computes ``fc_0(relu(x)) * (1 + scale) + shift`` with one
(scale, shift) per view of each batch element. Written as a broadcast product, its backward
materialises a full (..., P, W) product and reduces it over the P points to get the scale's
gradient; ``_film_linear`` folds the gain into a per-group copy of fc_0's weight instead (one
batched matmul, the same values). This script times both forms in one process, alternating,
on random weights and inputs (forward + backward, no optimizer):

* ``block``: one block at the shapes of an objects-demo training step (8 samples x 8192
  points, width 64, per-view and pooled time), and at a paper-width field (512);
* ``step``: a whole objects-demo DFM and baseline training step (batch 8, 32^2) on a
  synthetic batch, the blocks switched between the two forms.

Usage::

    uv run python packages/dfm-render/benchmarks/bench_film.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from dfm_render import field
from dfm_render.field import ResnetBlockFC


def broadcast_forward(self: ResnetBlockFC, x: torch.Tensor, time_embedding: torch.Tensor):
    """The block as a broadcast product (the form before the fold)."""
    scale, shift = self.film(time_embedding).chunk(2, dim=-1)
    h = self.fc_0(F.relu(x)) * (1 + scale) + shift
    return x + self.fc_1(F.relu(h))


FOLDED_FORWARD = ResnetBlockFC.forward


def _median_pair(run: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Median seconds of ``run`` with the broadcast and the folded block, interleaved."""
    times: dict[str, list[float]] = {"broadcast": [], "folded": []}
    forms = {"broadcast": broadcast_forward, "folded": FOLDED_FORWARD}
    for repeat in range(repeats + 1):
        for name in ("broadcast", "folded") if repeat % 2 else ("folded", "broadcast"):
            ResnetBlockFC.forward = forms[name]
            start = time.perf_counter()
            run()
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    ResnetBlockFC.forward = FOLDED_FORWARD
    return statistics.median(times["broadcast"]), statistics.median(times["folded"])


def block_case(width: int, groups: tuple[int, ...], points: int) -> Callable[[], None]:
    """Forward + backward of one block on (*groups, points, width) inputs."""
    torch.manual_seed(0)
    block = ResnetBlockFC(width, 128)
    torch.nn.init.normal_(block.fc_1.weight, std=0.05)
    x = torch.randn(*groups, points, width, requires_grad=True)
    time_embedding = torch.randn(*groups, 1, 128)

    def run() -> None:
        block(x, time_embedding).square().mean().backward()

    return run


def step_case(kind: str) -> Callable[[], None]:
    """Forward + backward of an objects-demo training step on a synthetic posed batch."""
    from dfm_render import make_scene_batch, scene_config

    config = scene_config("objects-demo")
    torch.manual_seed(0)
    model = config.build() if kind == "dfm" else config.build_baseline()
    for p in model.parameters():  # zero-initialised heads would make parts of it trivial
        torch.nn.init.normal_(p, std=0.02) if p.ndim > 1 else None
    batch, size = 8, config.image_size
    angles = torch.rand(batch, 3) * 2 * math.pi
    c2w = torch.eye(4).repeat(batch, 3, 1, 1)
    c2w[..., 0, 0], c2w[..., 0, 2] = angles.cos(), angles.sin()
    c2w[..., 2, 0], c2w[..., 2, 2] = -angles.sin(), angles.cos()
    c2w[..., :3, 3] = -10 * c2w[..., :3, 2]  # on a circle of radius 10, looking at the origin
    c2w = torch.linalg.inv(c2w[:, :1]) @ c2w  # relative to context view 0
    k = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]).repeat(batch, 3, 1, 1)
    images = torch.rand(batch, 3, 3, size, size) * 2 - 1
    scene = make_scene_batch(
        context_images=images[:, :1],
        context_c2w=c2w[:, :1],
        context_intrinsics=k[:, :1],
        target_image=images[:, 1],
        target_c2w=c2w[:, 1],
        target_intrinsics=k[:, 1],
        novel_images=images[:, 2:],
        novel_c2w=c2w[:, 2:],
        novel_intrinsics=k[:, 2:],
        near=torch.full((batch,), config.near),
        far=torch.full((batch,), config.far),
        patch_size=config.patch_size,
        generator=torch.Generator().manual_seed(0),
    )

    def run() -> None:
        model.zero_grad(set_to_none=True)
        out = model(scene)
        (out.loss if hasattr(out, "loss") else out["loss"]).backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = {
        "block, width 64, per view (8, 1, 8192, 64)": block_case(64, (8, 1), 8192),
        "block, width 64, pooled (8, 8192, 64)": block_case(64, (8,), 8192),
        "block, width 512, per view (1, 2, 8192, 512)": block_case(512, (1, 2), 8192),
        "objects-demo DFM training step": step_case("dfm"),
        "objects-demo baseline training step": step_case("baseline"),
    }
    print(f"{args.threads} thread(s), median of {args.repeats}, forward + backward\n")
    print("| case | broadcast (ms) | folded (ms) | speed-up |\n|---|---:|---:|---:|")
    for name, run in cases.items():
        broadcast, folded = _median_pair(run, args.repeats)
        print(
            f"| {name} | {1e3 * broadcast:.1f} | {1e3 * folded:.1f} | {broadcast / folded:.2f}x |"
        )
    assert field.ResnetBlockFC.forward is FOLDED_FORWARD


if __name__ == "__main__":
    main()
