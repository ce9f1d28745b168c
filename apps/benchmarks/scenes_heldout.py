"""Issue 8 §4 on many held-out objects, split over processes (the slow test's evaluation).

``dfm_apps.scene_demo.evaluate_heldout`` on the shipped objects-demo weights: front view only,
K = 16 samples per object, DPM-Solver++(2M) 15 steps, world seed 1000. One object costs about
110 s on one CPU thread, so 64 objects run in several processes of one thread each, pooled
(``scene_heldout.pool_scores``: the unsplit result):

    uv run python apps/benchmarks/scenes_heldout.py --objects 64 --processes 2 --out OUT

(``--weights DIR``: another run's weights, written by ``ship_weights.py RUN --out DIR``), or
as shards started separately (e.g. on several machines sharing a folder), merged by
``--pool``:

    for i in 0 1; do
      uv run python apps/benchmarks/scenes_heldout.py --objects 64 --shard $i/2 --out OUT/$i \
          --world OUT/world &
    done; wait
    uv run python apps/benchmarks/scenes_heldout.py --pool OUT/0 OUT/1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from dfm_apps import scene_heldout
from dfm_apps.scene_demo import evaluate_heldout

ROWS = (
    ("visible PSNR (dB)", "dfm_visible_psnr", "baseline_visible_psnr", "{:.2f}"),
    ("visible SSIM", "dfm_visible_ssim", "baseline_visible_ssim", "{:.3f}"),
    ("visible depth error", "dfm_visible_depth_error", "baseline_visible_depth_error", "{:.3f}"),
    ("backs whose colour is a palette colour", "real_colour", "baseline_real_colour", "{:.3f}"),
    ("backs whose every pixel is (stricter)", "real_colour_pixels", None, "{:.3f}"),
    ("distinct colours among K", "distinct", None, "{:.2f}"),
    ("distinct nearest colours among K, counted or not", "distinct_nearest", None, "{:.2f}"),
    ("chi-squared p (pooled counts)", "palette_p", None, "{:.3g}"),
)


def table(scores: dict) -> str:
    """The scores as the Markdown table of docs/benchmarks.md."""
    lines = ["| | DFM | baseline |", "|---|---:|---:|"]
    for label, dfm, base, fmt in ROWS:
        # Shards scored before the per-pixel figure was added lack it.
        value = fmt.format(scores[dfm]) if scores.get(dfm, math.nan) == scores.get(dfm) else "n/a"
        lines.append(f"| {label} | {value} | {fmt.format(scores[base]) if base else '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=4, help="64 for the issue's figures")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--shard", default="0/1", help="i/n: this process's share of objects")
    parser.add_argument("--out", type=Path, help="output folder of this shard (default: temporary)")
    parser.add_argument("--world", type=Path, help="where the held-out world is written")
    parser.add_argument("--threads", type=int, default=1, help="per process")
    parser.add_argument("--processes", type=int, default=1, help="processes sharing the objects")
    parser.add_argument("--pool", type=Path, nargs="+", help="shard folders to merge instead")
    parser.add_argument(
        "--weights",
        type=Path,
        help="a folder of objects_demo_{dfm,baseline}.safetensors (default: the shipped ones; "
        "packages/dfm-render/scripts/ship_weights.py RUN --out DIR writes a run's)",
    )
    args = parser.parse_args()
    if args.pool:
        shards = [json.loads((folder / "scores.json").read_text()) for folder in args.pool]
        scores = scene_heldout.pool_scores(shards)
        print(json.dumps(scores, indent=1))
        print(f"\n{int(scores['num_objects'])} objects, K = {int(scores['num_samples'])}")
        print(table(scores))
        return
    try:
        shard, num_shards = (int(part) for part in args.shard.split("/"))
    except ValueError:
        parser.error(f"--shard: expected i/n, e.g. 0/2, got {args.shard!r}")
    if num_shards > 1 and args.world is None:
        parser.error("--world is needed with several shards (they share one held-out world)")
    # Shard 0 writes the held-out world; the others wait for it as torchrun ranks would
    # (scenes.ensure_world), instead of writing the same files at once.
    os.environ["RANK"] = str(shard)
    torch.set_num_threads(args.threads * args.processes)  # each process takes its share
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dfm-heldout-") as work:
        scores = evaluate_heldout(
            args.world or Path(work) / "world",
            args.out or Path(work) / "out",
            num_objects=args.objects,
            num_samples=args.samples,
            steps=args.steps,
            shard=shard,
            num_shards=num_shards,
            processes=args.processes,
            weights_dir=args.weights,
        )
    print(json.dumps(scores, indent=1))
    print(f"{time.perf_counter() - start:.0f} s for {int(scores['num_objects'])} objects")


if __name__ == "__main__":
    main()
