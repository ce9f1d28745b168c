"""Benchmark: StyleGAN2 generator forward, one inversion training step, one DDIM step.

    python packages/dfm-gan/benchmarks/bench_generator.py [--threads 2] [--reps 3] [--device cpu]

* Generator forward (``z -> image``, no grad, ``noise_mode="const"``): the paper256
  architecture (channel_base 16384, 8 mapping layers) at 64x64 and 256x256, batch 1 and 8.
  Time = median of ``--reps`` runs after one warm-up. Peak memory: on CUDA
  ``torch.cuda.max_memory_allocated``; on CPU the growth of the process's peak RSS during
  the first forward pass (each case runs in a fresh subprocess, so peaks do not mix).
* Inversion training step at the ``gan-demo`` preset (demo32 generator, randomly
  initialised: same cost as the trained one), batch 4 (the paper's batch size): forward +
  backward + Adam step.
* One DDIM step of that model for K = 8 samples of one context (one denoiser call).

Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, reps: int) -> tuple[float, float]:
    """(first-call peak memory in MB, median seconds over reps after that call)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _peak_rss_mb()
    fn()  # warm-up, also the memory measurement
    _sync(device)
    if device.startswith("cuda"):
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _peak_rss_mb() - base
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return peak, statistics.median(times)


def run_case(case: str, resolution: int, batch: int, device: str, reps: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from dfm_gan.inversion import (
        GanView,
        inversion_config,
        make_inversion_batch,
        random_patch_masks,
    )
    from dfm_gan.networks import generator_config

    torch.manual_seed(0)
    if case == "generator":
        g = generator_config("paper256", img_resolution=resolution).build().eval().to(device)
        z = torch.randn(batch, g.z_dim, device=device)

        def fn():
            with torch.no_grad():
                g(z)

        peak, seconds = _timed(fn, device, reps)
        return {
            "case": "generator_forward",
            "config": "paper256",
            "resolution": resolution,
            "batch": batch,
            "num_ws": g.num_ws,
            "params_M": round(sum(p.numel() for p in g.parameters()) / 1e6, 2),
            "seconds": round(seconds, 4),
            "images_per_s": round(batch / seconds, 2),
            "peak_mem_MB": round(peak, 1),
        }
    cfg = inversion_config("gan-demo", random_generator=True, latent_stats_samples=256)
    model = cfg.build().to(device)
    g = model.forward_model.generator
    res = cfg.train_resolution
    gen = torch.Generator().manual_seed(0)
    w = g.mapping(torch.randn(batch, g.z_dim, generator=gen).to(device), truncation_psi=0.5)
    full = g.synthesis(w)
    target = torch.nn.functional.avg_pool2d(full, g.img_resolution // res)
    mask = random_patch_masks(batch, res, min_fraction=0.15, max_fraction=0.5, generator=gen).to(
        device
    )
    if case == "train_step":
        data = make_inversion_batch(target, mask, full=full)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-5)
        model.train()

        def fn():
            loss = model(data, generator=gen)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        peak, seconds = _timed(fn, device, reps)
        return {
            "case": "inversion_train_step",
            "preset": "gan-demo",
            "batch": batch,
            "train_resolution": res,
            "trainable_params_M": round(sum(p.numel() for p in params) / 1e6, 2),
            "seconds": round(seconds, 4),
            "peak_mem_MB": round(peak, 1),
        }
    # One DDIM step = one denoiser call on K samples of one context.
    model.eval()
    from dfm_core.diffusion import Context

    k = batch
    context = Context(
        observation=torch.cat([target[:1] * mask[:1], mask[:1]], 1).repeat(k, 1, 1, 1)
    )
    denoiser = model.denoiser(model.condition(context, GanView(res)))
    x = torch.randn(k, 3, res, res, device=device)
    t = torch.full((k,), 500.0, device=device)

    def fn():
        with torch.no_grad():
            denoiser(x, t)

    peak, seconds = _timed(fn, device, reps)
    return {
        "case": "ddim_step",
        "preset": "gan-demo",
        "samples_K": k,
        "train_resolution": res,
        "seconds": round(seconds, 4),
        "peak_mem_MB": round(peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--case", nargs=4, metavar=("CASE", "RES", "BATCH", "DEVICE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.case:  # child process: one case
        case, res, batch, device = args.case
        print(json.dumps(run_case(case, int(res), int(batch), device, args.reps, args.threads)))
        return
    cases = [("generator", r, b) for r in (64, 256) for b in (1, 8)]
    cases += [("train_step", 0, 4), ("ddim_step", 0, 8)]
    for case, res, batch in cases:
        cmd = [
            sys.executable,
            __file__,
            "--threads",
            str(args.threads),
            "--reps",
            str(args.reps),
            "--case",
            case,
            str(res),
            str(batch),
            args.device,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(
                json.dumps(
                    {"case": case, "resolution": res, "batch": batch, "error": out.stderr[-500:]}
                )
            )
            continue
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
