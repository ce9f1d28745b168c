"""The projection preset end to end at full size: `dfm train projection` on its defaults.

Slow (about 2 minutes on one CPU thread): run with ``nox -s slow``. The preset trains for
minutes, not to convergence, so its bar is looser than dfm-core's posterior-fidelity
check (which asserts <= 1.5x): DFM within 3x the noise floor, the regression baseline
at least 5x, and every file a user is told about written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfm_apps.cli import main


@pytest.mark.slow
def test_demo_defaults_sample_the_posterior(tmp_path: Path) -> None:
    assert main(["train", "projection", "--run-dir", str(tmp_path)]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    print(
        f"\n[demo] DFM {scores['dfm_ratio']:.2f}x, baseline {scores['baseline_ratio']:.1f}x "
        f"the noise floor {scores['noise_floor']:.5f}"
    )
    assert scores["dfm_ratio"] <= 3.0
    assert scores["baseline_ratio"] >= 5.0
    for name in ("config.yaml", "samples.png", "denoising.png", "report.html"):
        assert (tmp_path / name).stat().st_size > 0, name
