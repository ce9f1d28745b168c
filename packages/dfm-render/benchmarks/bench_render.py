"""Speed and memory of the inverse-graphics model at the configs the original was measured at.

Issue 7 §7 lists the original code's figures on this machine kind (CPU, 2 threads, random
weights, torch 2.11; median of 3 after a warm-up, each case in a fresh process). This script
measures ours the same way: every case runs in a fresh ``python`` process (``--case NAME``),
which builds the model, runs one untimed warm-up and ``--repeats`` timed repetitions, and
reports the median time and its own peak resident memory (``ru_maxrss``, which includes the
model's weights, as the original's figures do). Optimizer state is excluded from training
steps (plain ``backward``, no optimizer).

Cases:
    paper-ddim-1ctx, paper-ddim-1ctx-cfg, paper-ddim-3ctx   one DDIM step, full 64^2 render
    paper-encode-1ctx                                      once per sample: context + O_det
    paper-train-1ctx, paper-train-3ctx                     training step, 24^2 patches, 2 targets
    reduced-train-3ctx, reduced-train-3ctx-b2              32^2, DiT 4x256/2, 512-wide field
    reduced-ddim-1ctx, reduced-ddim-1ctx-cfg               one DDIM step, full 32^2 render

Usage::

    python packages/dfm-render/benchmarks/bench_render.py            # every case
    python packages/dfm-render/benchmarks/bench_render.py --cases reduced-ddim-1ctx --repeats 3
    python packages/dfm-render/benchmarks/bench_render.py --cases reduced-ddim-1ctx --dtype bf16

``--dtype bf16`` sets ``RendererConfig.field_dtype = "bfloat16"`` (the field's matmuls under
autocast, compositing in float32); the default is float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ORIGINAL = {  # issue 7 §7: the original code on this machine kind (seconds, GB)
    "paper-ddim-1ctx": (82.0, 7.2),
    "paper-ddim-1ctx-cfg": (174.0, None),
    "paper-ddim-3ctx": (155.0, 10.4),
    "paper-encode-1ctx": (22.0, None),
    "paper-train-1ctx": (None, 29.0),  # out of memory at 24 GB; ~29 GB extrapolated
    "paper-train-3ctx": (480.0, 50.0),  # extrapolated: ~50 GB, ~8 min
    "reduced-train-3ctx": (15.9, 6.1),
    "reduced-train-3ctx-b2": (31.7, 9.9),
    "reduced-ddim-1ctx": (5.4, 2.1),
    "reduced-ddim-1ctx-cfg": (10.5, None),
}


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # --dtype -> RendererConfig.field_dtype


def _config(paper: bool, dtype: str = "fp32"):
    from dfm_render import scene_config
    from dfm_render.encoder import EncoderConfig
    from dfm_render.losses import LossWeights

    # LPIPS needs VGG weights that cannot be downloaded here; its cost on 24^2 patches is small.
    config = dataclasses.replace(scene_config("co3d-hydrant"), losses=LossWeights(det=1.0))
    config = dataclasses.replace(
        config, renderer=dataclasses.replace(config.renderer, field_dtype=DTYPES[dtype])
    )
    if paper:
        return config
    encoder = EncoderConfig(
        hidden_size=256, depth=4, num_heads=4, patch_size=2, absolute_pose=True,
        gradient_checkpointing=False,
    )  # fmt: skip
    renderer = dataclasses.replace(config.renderer, num_coarse=16, num_fine=16)
    return dataclasses.replace(
        config, image_size=32, encoder=encoder, renderer=renderer, patch_size=16, det_samples=16
    )


def _batch(config, batch: int, contexts: int, seed: int = 0):
    import math

    import torch

    from dfm_render import make_scene_batch

    g = torch.Generator().manual_seed(seed)
    size = config.image_size
    views = contexts + 2

    def pose(angle: float) -> torch.Tensor:
        c2w = torch.eye(4)
        c, s = math.cos(angle), math.sin(angle)
        c2w[:3, :3] = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        c2w[:3, 3] = torch.tensor([10 * s, 0.0, 10 * (1 - c)])
        return c2w

    c2w = torch.stack([torch.stack([pose(0.4 * v) for v in range(views)])] * batch)
    k = torch.tensor([[1.2, 0.0, 0.5], [0.0, 1.2, 0.5], [0.0, 0.0, 1.0]]).expand(batch, views, 3, 3)
    images = torch.rand(batch, views, 3, size, size, generator=g) * 2 - 1
    near = torch.full((batch,), config.near)
    far = torch.full((batch,), config.far)
    return make_scene_batch(
        context_images=images[:, :contexts],
        context_c2w=c2w[:, :contexts],
        context_intrinsics=k[:, :contexts],
        target_image=images[:, contexts],
        target_c2w=c2w[:, contexts],
        target_intrinsics=k[:, contexts],
        novel_images=images[:, contexts + 1 :],
        novel_c2w=c2w[:, contexts + 1 :],
        novel_intrinsics=k[:, contexts + 1 :],
        near=near,
        far=far,
        patch_size=config.patch_size,
        context_absolute_c2w=c2w[:, :contexts],
        target_absolute_c2w=c2w[:, contexts],
        generator=g,
    )


def run_case(name: str, repeats: int, dtype: str = "fp32") -> dict:
    """Measure one case in this process (call in a fresh process)."""
    import torch

    from dfm_core.guidance import classifier_free_guidance

    torch.manual_seed(0)
    paper = name.startswith("paper")
    contexts = 3 if "3ctx" in name else 1
    batch_size = 2 if name.endswith("-b2") else 1
    config = _config(paper, dtype)
    model = config.build()
    batch = _batch(config, batch_size, contexts)

    if "train" in name:
        model.train()

        def work() -> None:
            terms = model(batch, generator=torch.Generator().manual_seed(1))
            terms["loss"].backward()
            model.zero_grad(set_to_none=True)

    else:
        model.eval()
        torch.set_grad_enabled(False)
        shape = batch.target.shape
        if "encode" in name:

            def work() -> None:
                model.condition(batch.context, batch.target_params)

        else:
            condition = model.condition(batch.context, batch.target_params)
            if "cfg" in name:
                null = model.condition(batch.context, batch.target_params, drop=True)
                denoiser = classifier_free_guidance(model.denoise, condition, null, 2.0)
            else:
                denoiser = model.denoiser(condition)
            x = torch.randn(shape)
            t = torch.full((shape[0],), 500.0)

            def work() -> None:
                denoiser(x, t)

    start = time.perf_counter()
    work()  # warm-up (with --repeats 0 the only run: its time is reported)
    first = time.perf_counter() - start
    times = [] if repeats else [first]
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB -> GB
    return {
        "case": name,
        "dtype": dtype,
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_gb": peak_gb,
        "threads": torch.get_num_threads(),
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", help="run one case in this process and print JSON")
    parser.add_argument("--cases", nargs="*", default=list(ORIGINAL), help="cases to run")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs after the warm-up (0: time the warm-up)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="precision of the field's matmuls"
    )
    args = parser.parse_args(argv)
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(args.case, args.repeats, args.dtype)))
        return 0
    print(f"# machine load before: {os.getloadavg()}; field dtype {args.dtype}")
    print("| case | ours median s | ours peak GB | original s | original GB | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.cases:
        cmd = [sys.executable, __file__, "--case", name, "--repeats", str(args.repeats)]
        cmd += ["--threads", str(args.threads), "--dtype", args.dtype]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"| {name} | failed: {last} | | | | |")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        original_s, original_gb = ORIGINAL[name]
        speedup = f"{original_s / result['median_s']:.2f}x" if original_s else "-"
        print(
            f"| {name} | {result['median_s']:.2f} | {result['peak_gb']:.2f} | "
            f"{original_s if original_s else '-'} | {original_gb if original_gb else '-'} | {speedup} |",
            flush=True,
        )
    print(f"# machine load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
