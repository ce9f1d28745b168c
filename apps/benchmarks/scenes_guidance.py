"""Guidance on the shipped objects-demo model: its effect on both sides (issue 8 §1).

Samples K scenes per held-out object (front view only, world seed 1000) with DPM-Solver++
(or ``--sampler``) at ``--steps`` steps, once per guidance weight, same seeds, and prints the
visible-side PSNR/SSIM and depth error and the hidden-side palette figures of ``dfm_apps.scenes.evaluate`` for each
weight (0 = no guidance) and classifier-free guidance scale (1 = none). Reconstruction guidance
(Ho et al. 2022, eq. 7) pulls every x0 estimate towards scenes that re-render the input view:
it should help the visible side and may reduce the diversity of the hidden one. Classifier-free
guidance (Ho & Salimans 2022; the model drops the context for 10 % of training samples)
extrapolates from the context-free estimate towards the conditional one, ``x0_u + s (x0_c -
x0_u)``: it strengthens whatever the input view implies, such as an object behind it.

    uv run python apps/benchmarks/scenes_guidance.py --objects 6 --samples 4 --weights 0 1 4
    uv run python apps/benchmarks/scenes_guidance.py --objects 8 --samples 4 --weights 0 \
        --scales 1 2 4 --world-seed 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from dfm_apps import scenes
from dfm_apps.config import load_preset, validate
from dfm_apps.scene_demo import load_demo_models

KEYS = (
    "dfm_visible_psnr",
    "dfm_visible_ssim",
    "dfm_visible_depth_error",
    "real_colour",
    "real_colour_pixels",
    "distinct",
    "dfm_back_rmse_best",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument(
        "--sampler", default="dpmpp_2m", help="dfm_core.sampling.SAMPLERS name (e.g. ddpm)"
    )
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 4.0])
    parser.add_argument(
        "--scales", type=float, nargs="+", default=[1.0], help="classifier-free guidance scales"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--world-seed",
        type=int,
        default=1000,
        help="objects world of the scored objects (choose settings on another seed than "
        "the held-out figures' 1000)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    diffusion, baseline, model_config, metadata = load_demo_models()
    trained = scenes.Trained(diffusion, baseline, int(metadata.get("steps", 0)), 0, None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dfm-guidance-") as work:
        base = validate(load_preset("objects-demo", [f"data.root={work}/world"]))
        for weight, scale in ((w, s) for w in args.weights for s in args.scales):
            config = dataclasses.replace(
                base,
                model=model_config,
                evaluation=dataclasses.replace(
                    base.evaluation,
                    num_scenes=args.objects,
                    num_samples=args.samples,
                    sampler=args.sampler,
                    steps=args.steps,
                    videos=False,
                    export=False,
                    reconstruction_weight=weight,
                    guidance_scale=scale,
                    world_seed=args.world_seed,
                ),
            )
            start = time.perf_counter()
            out = Path(work) / f"w{weight}-s{scale}"
            scores = scenes.evaluate(config, trained, out).scores_dict()
            rows.append(
                {"weight": weight, "scale": scale, "seconds": time.perf_counter() - start}
                | {key: scores[key] for key in KEYS}
            )
            print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| reconstruction weight | CFG scale | visible PSNR (dB) | visible SSIM | depth error "
        "| real colour | every pixel too | distinct | back RMS to a palette truth | s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['weight']:g} | {r['scale']:g} | {r['dfm_visible_psnr']:.2f} | "
            f"{r['dfm_visible_ssim']:.3f} | {r['dfm_visible_depth_error']:.3f} | "
            f"{r['real_colour']:.2f} | {r['real_colour_pixels']:.2f} | {r['distinct']:.2f} | "
            f"{r['dfm_back_rmse_best']:.3f} | "
            f"{r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
