"""Where the motion model's time goes: one training step and one DDIM step, split by stage.

Stages of a training step: network forward (DiT), forward model (softmax splatting of the
target and novel frames), backward of the splatting (the hand-written kernel), the rest of
the backward (mostly the DiT), optimiser step. A DDIM step: network, splatting, sampler
arithmetic. Timers wrap the stages (wall clock, medians of ``--repeats`` after a warm-up).

    python packages/dfm-flow/benchmarks/bench_motion_step.py [--preset motion-demo] [--batch 16]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections import defaultdict

import torch

from dfm_core.sampling import sample_ddim
from dfm_flow.motion import MotionParams, frames_to_batch, motion_preset

TIMES: dict[str, float] = defaultdict(float)
# The module (the package re-exports the function under the same name).
softsplat_module = importlib.import_module("dfm_flow.softsplat")


def timed(name, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - start

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="motion-demo")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    preset = motion_preset(args.preset)
    config = preset.model
    diffusion = config.build()
    height, width = config.image_size_hw
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(args.batch, 3, 3, height, width, generator=gen) * 2 - 1
    batch = frames_to_batch(frames[:, 0], frames[:, 1], frames[:, 2:])
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-5)

    # Wrap the stages.
    predictor_forward = diffusion.predictor.forward
    diffusion.predictor.forward = timed("network forward", predictor_forward)
    diffusion.forward_model = timed("splatting forward", diffusion.forward_model)
    splat_backward = softsplat_module._SumSplat.backward
    softsplat_module._SumSplat.backward = staticmethod(timed("splatting backward", splat_backward))

    def train_step() -> dict[str, float]:
        TIMES.clear()
        start = time.perf_counter()
        terms = diffusion(batch, generator=torch.Generator().manual_seed(1))
        t_forward = time.perf_counter()
        terms["loss"].backward()
        t_backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        out = dict(TIMES)
        out["loss, regulariser, rest of forward"] = (
            t_forward - start - out["network forward"] - out["splatting forward"]
        )
        out["backward: network and the rest"] = t_backward - t_forward - out["splatting backward"]
        out["optimiser step"] = end - t_backward
        out["total"] = end - start
        return out

    def ddim_step() -> dict[str, float]:
        params = MotionParams(batch.context.observation, torch.ones(args.batch))
        condition = diffusion.condition(batch.context, params)
        denoiser = diffusion.denoiser(condition)
        TIMES.clear()
        start = time.perf_counter()
        with torch.no_grad():
            sample_ddim(
                denoiser,
                diffusion.schedule,
                (args.batch, 3, height, width),
                steps=1,
                generator=torch.Generator().manual_seed(0),
            )
        end = time.perf_counter()
        out = dict(TIMES)
        out["sampler arithmetic and rest"] = (
            end - start - out["network forward"] - out["splatting forward"]
        )
        out["total"] = end - start
        return out

    for name, step in (("training step", train_step), ("DDIM step", ddim_step)):
        step()  # warm-up
        runs = [step() for _ in range(args.repeats)]
        keys = list(runs[0])
        medians = {k: statistics.median(r[k] for r in runs) for k in keys}
        total = medians["total"]
        print(
            f"# {args.preset}, batch {args.batch}, {height}x{width}, {args.threads} threads, "
            f"torch {torch.__version__}: one {name}, median of {args.repeats}"
        )
        print("| stage | ms | share |")
        print("|---|---|---|")
        for key in keys:
            if key != "total":
                print(f"| {key} | {medians[key] * 1e3:.1f} | {medians[key] / total:.0%} |")
        print(f"| total | {total * 1e3:.1f} | 100% |")


if __name__ == "__main__":
    main()
