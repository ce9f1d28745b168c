"""Score the motion-demo weights on held-out clips of the motion world (issue 9, section 4).

    python -m dfm_data synth motion HELDOUT --n-sequences 80 --size 64x64 --seed 1
    python packages/dfm-flow/scripts/evaluate_demo.py HELDOUT [--dfm W.safetensors] [--regressor W2.safetensors]

Prints one JSON object with the scores of the DFM (K samples per clip) and of the
deterministic regressor baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from dfm_flow.evaluation import (
    regressed_sprite_velocities,
    sampled_sprite_velocities,
    score_motions,
)
from dfm_flow.pretrained import load_motion_demo


def load_heldout(root: str, split: str = "train", limit: int | None = None):
    """First frames (N, 3, H, W) in [-1, 1], their ground-truth clips, and the velocity set (M, 2)."""
    from dfm_data import Vimeo90KConfig  # dev dependency of this script only

    dataset = Vimeo90KConfig(
        root=root, split=split, expected_size_hw=None, hflip_probability=0.0
    ).build()
    with open(f"{root}/motion_ground_truth.json") as f:
        truth = json.load(f)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    images = torch.cat([dataset[i].context for i in range(n)])
    clips = [truth["clips"][dataset.clips[i]] for i in range(n)]
    velocity_set = torch.tensor(
        [
            [
                speed * torch.cos(torch.tensor(d).deg2rad()).item(),
                speed * torch.sin(torch.tensor(d).deg2rad()).item(),
            ]
            for d in truth["directions_deg"]
            for speed in truth["speeds_px"]
        ],
        dtype=torch.float64,
    )
    return images, clips, velocity_set


def evaluate(
    root: str,
    dfm_path=None,
    regressor_path=None,
    *,
    num_samples=16,
    steps=20,
    limit=None,
    seed=0,
    guidance_scale=1.0,
    eta=0.0,
):
    images, clips, velocity_set = load_heldout(root, limit=limit)
    start = time.time()
    dfm = load_motion_demo("dfm", path=dfm_path)
    estimates, truth = sampled_sprite_velocities(
        dfm,
        images,
        clips,
        num_samples=num_samples,
        steps=steps,
        seed=seed,
        guidance_scale=guidance_scale,
        eta=eta,
    )
    dfm_scores = score_motions(estimates, truth, velocity_set)
    dfm_seconds = time.time() - start
    regressor = load_motion_demo("regressor", path=regressor_path)
    base_estimates, _ = regressed_sprite_velocities(regressor, images, clips)
    # The baseline is deterministic: its K "samples" are K copies of one prediction.
    base_scores = score_motions(base_estimates.expand(-1, num_samples, -1), truth, velocity_set)
    return {
        "clips": len(clips),
        "num_samples": num_samples,
        "sampler": f"ddim, {steps} steps, eta {eta:g}, guidance {guidance_scale:g}",
        "dfm": dataclasses.asdict(dfm_scores),
        "regressor": dataclasses.asdict(base_scores),
        "dfm_sampling_seconds": round(dfm_seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--dfm", default=None)
    parser.add_argument("--regressor", default=None)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--guidance", type=float, default=1.0, help="CFG scale (1: none)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = evaluate(
        args.root,
        args.dfm,
        args.regressor,
        num_samples=args.samples,
        steps=args.steps,
        limit=args.limit,
        seed=args.seed,
        guidance_scale=args.guidance,
        eta=args.eta,
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
