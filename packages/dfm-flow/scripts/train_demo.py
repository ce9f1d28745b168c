"""Train the ``motion-demo`` preset (or its deterministic baseline) on the synthetic motion world.

A development script, not part of the library: it reads the data with dfm-data's Vimeo-90K
loader (dfm-flow itself does not depend on dfm-data) and trains with dfm-core's Trainer for
a wall-clock budget, then writes the EMA weights of the network as safetensors (float16,
with the model config in the metadata).

    python -m dfm_data synth motion DATA --n-sequences 3000 --size 64x64 --seed 0
    python packages/dfm-flow/scripts/train_demo.py DATA RUN --kind dfm --minutes 30
    python packages/dfm-flow/scripts/train_demo.py DATA RUN_BASE --kind regressor --minutes 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dfm_core.trainer import OptimizerConfig, Trainer, TrainerConfig
from dfm_data import Vimeo90KConfig
from dfm_flow.motion import frames_to_batch, motion_preset
from dfm_flow.pretrained import load_motion_demo, save_weights


class CachedFrames(torch.utils.data.Dataset):
    """Every clip of a Vimeo-90K root read once (through dfm-data's loader), kept as uint8."""

    def __init__(self, root: str, split: str, size_hw: tuple[int, int]) -> None:
        dataset = Vimeo90KConfig(
            root=root,
            split=split,
            expected_size_hw=size_hw,
            hflip_probability=0.0,
            novel_frames=(3,),
        ).build()
        frames = []
        for i in range(len(dataset)):
            item = dataset[i]
            clip = torch.cat([item.context[:, None], item.target[:, None], item.novel], dim=1)[0]
            frames.append(((clip + 1) * 127.5).round().to(torch.uint8))  # (3 frames, 3, H, W)
        self.frames = torch.stack(frames)

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.frames[index]


def collate(items: list[torch.Tensor]):
    clips = torch.stack(items).float() / 127.5 - 1.0  # (B, 3 frames, 3, H, W) in [-1, 1]
    return frames_to_batch(clips[:, 0], clips[:, 1], clips[:, 2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("run_dir")
    parser.add_argument("--kind", choices=["dfm", "regressor"], default="dfm")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=100, help="steps between wall-clock checks")
    parser.add_argument(
        "--init-from",
        default=None,
        help="start from these weights (a file this script wrote) instead of a fresh network; "
        "the optimiser starts fresh (warm-up again)",
    )
    parser.add_argument("--lr", type=float, default=None, help="override the preset's rate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()

    preset = motion_preset("motion-demo")
    config = preset.model
    model = config.build() if args.kind == "dfm" else config.build_regressor()
    if args.init_from is not None:
        model = load_motion_demo(args.kind, path=args.init_from).train()
    learning_rate = args.lr if args.lr is not None else preset.learning_rate
    data = CachedFrames(args.data, "train", config.image_size_hw)
    print(f"{len(data)} training clips read in {time.time() - start:.0f} s", flush=True)
    trainer = Trainer(
        model,
        data,
        TrainerConfig(
            max_steps=10**7,
            batch_size=preset.batch_size,
            optimizer=OptimizerConfig(lr=learning_rate, warmup_steps=200),
            grad_clip=1.0,
            ema_decay=0.999,
            ema_warmup=True,
            seed=args.seed,
            num_workers=0,
            log_every=100,
            checkpoint_every=2000,
            keep_last=1,
            progress=False,
            device="cpu",
        ),
        run_dir=args.run_dir,
        collate_fn=collate,
    )
    step = trainer.resume() or 0
    budget = args.minutes * 60
    train_start = time.time()
    while time.time() - start < budget:
        step += args.chunk
        trainer.train(until_step=step)
        print(f"step {step}, {time.time() - train_start:.0f} s", flush=True)
    trainer.save_checkpoint()
    wall = time.time() - train_start
    ema = trainer.ema_model()
    out = Path(args.run_dir) / f"motion_demo_{args.kind}.safetensors"
    save_weights(
        ema.predictor,
        config,
        out,
        kind=args.kind,
        preset="motion-demo",
        steps=str(step),
        train_seconds=f"{wall:.0f}",
        batch_size=str(preset.batch_size),
        learning_rate=str(learning_rate),
        init_from=str(args.init_from),
        data=f"{args.data} (train list, {len(data)} clips)",
        torch=torch.__version__,
    )
    trainer.close()
    print(
        json.dumps({"weights": str(out), "steps": step, "train_seconds": round(wall)}), flush=True
    )


if __name__ == "__main__":
    main()
