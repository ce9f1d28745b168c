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
  ``scores_dict()`` and ``files``: sample, score, write pictures, videos and report.html.

Adding an application means adding its module here and its YAML presets in ``configs/``.
Modules are imported on first use (``dfm --help`` stays fast).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

__all__ = ["APPLICATIONS", "application", "newest_checkpoint"]

APPLICATIONS: dict[str, str] = {
    "projection": "dfm_apps.projection",
    "scenes": "dfm_apps.scenes",
}
"""Application name (a config's ``app`` key) -> the module implementing it."""


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
