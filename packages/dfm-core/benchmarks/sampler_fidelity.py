"""Posterior fidelity against denoiser evaluations, for every sampler, with the exact denoiser.

The exact DFM denoiser (``exact_denoiser``) of the projection problem removes training
from the picture: what is left is the sampler's discretisation error. For each sampler
and step count this prints the energy distance of DFM samples to exact posterior
samples as a ratio to the noise floor (mean over contexts, and median of per-context
ratios), against the number of denoiser evaluations (NFE).

    uv run python packages/dfm-core/benchmarks/sampler_fidelity.py [--contexts 256]

Figures: docs/benchmarks.md ("dfm-core: sampler fidelity against evaluations").
"""

from __future__ import annotations

import argparse
import time

import torch

from dfm_core.projection_fit import posterior_samples, score_samples
from dfm_core.projection_problem import ProjectionProblem
from dfm_core.schedules import NoiseSchedule

PROBLEMS = {
    "d2-k1": dict(signal_dim=2, observation_dim=1, num_components=5, seed=0),
    "d6-k3": dict(signal_dim=6, observation_dim=3, num_components=4, seed=0),
}

# (label, sampler name, options, step counts, NFE as a function of steps)
RUNS = [
    ("ddim", "ddim", {}, (5, 8, 10, 15, 20, 30, 50, 100), lambda n: n),
    ("ddpm", "ddpm", {}, (10, 15, 20, 30, 50, 100), lambda n: n),
    ("edm-euler", "edm", {"solver": "euler"}, (5, 8, 10, 15, 20, 30, 50), lambda n: n),
    ("edm-heun", "edm", {"solver": "heun"}, (3, 5, 6, 8, 10, 15, 25), lambda n: 2 * n - 1),
    ("dpmpp_2m", "dpmpp_2m", {}, (5, 6, 8, 10, 12, 15, 20, 30, 50), lambda n: n),
    (
        "dpmpp_2m-s20-rho10",
        "dpmpp_2m",
        {"sigma_max": 20.0, "rho": 10.0},
        (5, 8, 10, 12, 15, 20),
        lambda n: n,
    ),
    (
        "dpmpp_2m-linspace",
        "dpmpp_2m",
        {"spacing": "linspace"},
        (5, 8, 10, 15, 20, 30, 50),
        lambda n: n,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--contexts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--only", default=None, help="run only labels containing this text")
    args = parser.parse_args()
    torch.set_num_threads(1)
    schedule = NoiseSchedule.from_name("cosine", 1000)
    print(f"torch {torch.__version__}, {args.contexts} contexts x {args.samples} samples")
    for name, kwargs in PROBLEMS.items():
        problem = ProjectionProblem.build(**kwargs)
        print(f"\n[{name}] ratio to the noise floor: mean (median per context)")
        print("| sampler | steps | NFE | mean ratio | median ratio |")
        print("|---|---:|---:|---:|---:|")
        for label, sampler, options, step_counts, nfe in RUNS:
            if args.only and args.only not in label:
                continue
            for steps in step_counts:
                start = time.perf_counter()
                samples = posterior_samples(
                    problem,
                    None,
                    None,
                    num_contexts=args.contexts,
                    num_samples=args.samples,
                    steps=steps,
                    seed=args.seed,
                    sampler=sampler,
                    exact_dfm=True,
                    schedule=schedule,
                    sampler_options=options,
                )
                scores = score_samples(samples)
                print(
                    f"| {label} | {steps} | {nfe(steps)} | {scores.exact_dfm_ratio:.3f} | "
                    f"{scores.exact_dfm_median_ratio:.3f} |  "
                    f"<!-- {time.perf_counter() - start:.1f} s -->",
                    flush=True,
                )


if __name__ == "__main__":
    main()
