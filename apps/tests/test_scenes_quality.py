"""Issue 8 §4: the shipped objects-demo weights on held-out objects (slow, CPU).

Given only the front view of each object of a world never used in training (world seed
``evaluation.world_seed`` = 1000; training used seed 0), ``scenes.evaluate`` scores:

* visible side: PSNR/SSIM of renders within +-30 degrees of the front against the exact
  frames, and the samples' depth against the exact depth (relative error on the object);
* hidden side: K = 16 samples from behind, each back classified as the nearest palette
  colour when it is one (``evaluation.palette_margin``), the distinct colours per object, and a
  chi-squared test of the pooled counts against uniform.

Targets (the issue's): DFM visible PSNR >= 20 dB; >= 80 % of backs a real palette colour;
>= 3 of 4 distinct colours among 16 on average; chi-squared not rejected at p = 0.01. The
baseline is scored the same way (expected: blends, at most one colour).

DFM_SCENES_OBJECTS sets the number of held-out objects (default 64, as the issue asks; about
110 s per object on one CPU thread with DPM-Solver++ at 15 steps, K = 16), and
DFM_SCENES_PROCESSES how many processes of one thread share them (default: up to 2, one per
core; the pooled scores equal a single process's): ~1 h for 64 objects on 2 cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dfm_apps.scene_demo import evaluate_heldout


def _evaluate(tmp_path: Path) -> dict:
    torch.set_num_threads(1)
    objects = int(os.environ.get("DFM_SCENES_OBJECTS", "64"))
    processes = int(os.environ.get("DFM_SCENES_PROCESSES", str(min(2, os.cpu_count() or 1))))
    scores = evaluate_heldout(
        tmp_path / "world", tmp_path / "eval", num_objects=objects, processes=processes
    )
    print("\n" + json.dumps(scores, indent=2))
    return scores


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 8 §4 targets not met by the shipped CPU-trained weights (figures in "
    "docs/benchmarks.md and dfm-render's weights/MODEL_CARD.md)",
)
def test_shipped_objects_demo_samples_real_colours_on_the_hidden_side(tmp_path: Path) -> None:
    scores = _evaluate(tmp_path)
    assert scores["dfm_visible_psnr"] >= 20.0
    assert scores["real_colour"] >= 0.8
    assert scores["distinct"] >= 3.0
    assert scores["palette_p"] > 0.01
