"""Shared fixtures: a tiny projection run that trains in well under a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfm_apps.cli import main

# Small enough for CPU tests: 4 DFM steps (checkpoints at 2 and 4), 3 baseline steps,
# 4 contexts x 8 samples, 3 sampler steps, a 16-wide MLP, 16-signal batches.
TINY = [
    "trainer.max_steps=4",
    "trainer.checkpoint_every=2",
    "trainer.log_every=1",
    "trainer.optimizer.warmup_steps=1",
    "trainer.progress=false",
    "baseline_steps=3",
    "model.hidden=16",
    "model.depth=2",
    "data.batch_size=16",
    "data.length=64",
    "schedule.num_timesteps=50",
    "evaluation.num_contexts=4",
    "evaluation.num_samples=8",
    "evaluation.steps=3",
]


@pytest.fixture
def tiny() -> list[str]:
    """The TINY overrides (a fixture, so test modules need not import this conftest)."""
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny demo run (shared: tests that need one only read from it)."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "projection", "--run-dir", str(run_dir), *TINY]) == 0
    return run_dir
