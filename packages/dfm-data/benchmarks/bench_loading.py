"""Loading + decoding throughput of every dfm-data loader (frames/s), on synthetic worlds.

Usage::

    uv run python packages/dfm-data/benchmarks/bench_loading.py [--workers 0] [--items 128]

Synthesizes each world once into a temp folder (not timed), then times iterating a DataLoader
(batch 8, one untimed warm-up batch) over CO3D (objects world, 128×96 frames -> 64²), RealEstate10k in its three layouts (rooms
world at 640×360 -> 64²), Vimeo-90K (motion world, 448×256, full frames) and GAN samples (a tiny fake
generator, 256² -> 64²). Frames/s counts every decoded image (context + target + novel views).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from dfm_data.co3d import CO3DConfig
from dfm_data.gan_samples import GanSamplesConfig
from dfm_data.realestate10k import RealEstate10kConfig
from dfm_data.sampling import FrameSamplingConfig
from dfm_data.seeding import make_dataloader
from dfm_data.vimeo90k import Vimeo90KConfig
from dfm_data.worlds.motion import MotionWorldConfig, synthesize_motion
from dfm_data.worlds.objects import ObjectsWorldConfig, synthesize_objects
from dfm_data.worlds.rooms import RoomsWorldConfig, synthesize_rooms


class _FakeGAN:
    z_dim = 64
    w_avg = torch.zeros(64)

    def __init__(self):
        self.basis = torch.randn(64, 3, 256, 256, generator=torch.Generator().manual_seed(0)) / 8

    def mapping(self, z):
        return z

    def synthesis(self, w):
        return torch.tanh(torch.einsum("bk,kchw->bchw", w, self.basis))


def _frames_in(batch) -> int:
    if hasattr(batch, "context") and hasattr(batch.context, "images"):
        return sum(
            v.images.shape[0] * v.images.shape[1]
            for v in (batch.context, batch.target, batch.novel)
        )
    if hasattr(batch, "mask"):
        return batch.target.shape[0]
    return batch.context.shape[0] * (2 + batch.novel.shape[1])


def _time(name, dataset, items, workers) -> tuple[str, float, int]:
    """Frames/s over ``items`` items after one warm-up batch (worker start-up is not timed)."""
    loader = make_dataloader(
        dataset,
        batch_size=8,
        num_workers=workers,
        shuffle=True,
        seed=0,
        persistent_workers=workers > 0,
    )
    frames, done, start = 0, 0, None
    while done < items:
        for batch in loader:
            if start is None:
                start = time.perf_counter()
                continue
            frames += _frames_in(batch)
            done += batch.batch_size
            if done >= items:
                break
    dt = time.perf_counter() - start
    return name, frames / dt, frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--items", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sampling = FrameSamplingConfig(num_context=1, num_target=1, num_novel=1, min_gap=5, max_gap=10)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        synthesize_objects(
            tmp / "objects", ObjectsWorldConfig(n_sequences=8, n_frames=24), progress=False
        )
        synthesize_rooms(
            tmp / "rooms",
            RoomsWorldConfig(n_clips=5, n_frames=24, test_fraction=0.0),
            progress=False,
        )
        synthesize_motion(
            tmp / "motion", MotionWorldConfig(n_sequences=40, test_fraction=0.0), progress=False
        )
        print(f"synthesis (untimed below): {time.perf_counter() - t:.1f} s")
        rows = [
            _time(
                "co3d (objects world)",
                CO3DConfig(
                    root=str(tmp / "objects"),
                    categories=("orb",),
                    sampling=sampling,
                    progress=False,
                ).build(),
                args.items,
                args.workers,
            ),
        ]
        for layout, sub in (("txt", "dfm"), ("mat", "dfm"), ("torch", "pixelsplat")):
            ds = RealEstate10kConfig(
                root=str(tmp / "rooms" / sub), layout=layout, sampling=sampling
            ).build()
            rows.append(_time(f"re10k {layout} (640x360 jpg)", ds, args.items, args.workers))
        rows.append(
            _time(
                "vimeo90k triplet (448x256 png)",
                Vimeo90KConfig(root=str(tmp / "motion")).build(),
                args.items,
                args.workers,
            )
        )
        rows.append(
            _time(
                "gan samples (256->64, fake G)",
                GanSamplesConfig(num_samples=10_000).build(_FakeGAN()),
                args.items,
                args.workers,
            )
        )
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, workers={args.workers}"
    )
    print(f"{'loader':34s} {'frames/s':>10s} {'frames':>8s}")
    for name, fps, n in rows:
        print(f"{name:34s} {fps:10.1f} {n:8d}")


if __name__ == "__main__":
    main()
