"""The applications behind the `dfm` command, one module each.

A config's ``app`` key names its application. Each application module provides the same
small interface, so the command line dispatches on the config, never on hand-written
per-application branches:

* ``CONFIG``: its structured config (a dataclass; the schema of its YAML presets);
* ``FROZEN``: the config sections that fix the weights (a resumed run or ``dfm sample``
  may not change them);
* ``BASELINE_DIR``: where its deterministic baseline's run lives inside the run directory;
* ``train(config, run_dir, *, run_config) -> trained``: train or resume, on every rank;
* ``load_models(config, run_dir) -> trained``: the EMA weights of a finished run;
* ``evaluate(config, trained, out_dir, *, run_dir, config_yaml) -> evaluation`` with
  ``scores_dict()`` and ``files``: sample, score, write pictures, videos and report.html;
* ``demo(out_dir, *, seed) -> DemoSection``: the application on its *shipped* weights (no
  training; ``dfm demo`` runs every application's in turn, CPU, well under a minute each):
  sample, picture, score, and return what the combined report shows. Raises
  ``MissingWeights`` (naming the file and how to make it) when the weights are not shipped;
* optional ``PROTOCOLS`` (name -> one-line description) and ``run_protocol(config, trained,
  out_dir, *, protocol, run_dir) -> evaluation``: the evaluation protocols ``dfm eval`` runs
  (metrics.json + metrics.md); without them ``dfm eval`` runs ``evaluate``.

Adding an application means adding its module here and its YAML presets in ``configs/``.
Modules are imported on first use (``dfm --help`` stays fast).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

__all__ = ["APPLICATIONS", "DemoSection", "MissingWeights", "application", "newest_checkpoint"]

APPLICATIONS: dict[str, str] = {
    "projection": "dfm_apps.projection",
    "scenes": "dfm_apps.scenes",
    "motion": "dfm_apps.motion",
    "gan": "dfm_apps.gan",
}
"""Application name (a config's ``app`` key) -> the module implementing it (``dfm demo``
runs them in this order)."""


class MissingWeights(FileNotFoundError):
    """An application's shipped weights are not installed (the message says how to get them)."""


@dataclass
class DemoSection:
    """What one application's demo shows in the combined report and summary table.

    Files are paths under the demo's output folder; images are embedded in the report,
    videos linked relative to it.
    """

    title: str
    """Heading, e.g. "Inverse graphics: one image -> K 3D scenes"."""
    summary: str
    """One paragraph: what was run, on which weights, and how it is scored."""
    scores: dict[str, float]
    """Headline figures, printed in the summary table (name -> value)."""
    command: str
    """The shell command that reproduces this section (``dfm demo --only NAME`` or a script)."""
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    """(caption, header cells, rows of cells) for the report."""
    images: dict[str, Path] = field(default_factory=dict)
    """Caption -> PNG file."""
    videos: dict[str, Path] = field(default_factory=dict)
    """Caption -> mp4 file."""
    seconds: float = 0.0
    """Wall time of the demo (filled in by ``dfm demo``)."""


def application(name: str) -> ModuleType:
    """The module of application ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in APPLICATIONS:
        raise KeyError(f"unknown application {name!r}; known: {', '.join(sorted(APPLICATIONS))}")
    return importlib.import_module(APPLICATIONS[name])


def newest_checkpoint(run_dir: Path) -> tuple[int, Path]:
    """Step and path of the newest complete checkpoint of a run (for ``load_models``).

    Raises:
        CheckpointError: the run has none yet.
    """
    from dfm_core.checkpoint import CheckpointError, list_checkpoints

    found = list_checkpoints(run_dir / "checkpoints")
    if not found:
        raise CheckpointError(f"{run_dir}: no complete checkpoint under {run_dir / 'checkpoints'}")
    return found[-1]
