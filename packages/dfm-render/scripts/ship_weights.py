"""Write the shipped objects-demo weights from a finished ``dfm train objects-demo`` run.

Usage::

    uv run python packages/dfm-render/scripts/ship_weights.py RUN_DIR [--out DIR]

Reads the run's resolved ``config.yaml`` and the EMA weights of its newest complete DFM and
baseline checkpoints (``dfm_apps.scenes.load_models``: the weights ``dfm sample`` uses), and
writes ``objects_demo_dfm.safetensors`` and ``objects_demo_baseline.safetensors`` (float16,
the ``SceneModelConfig`` in the metadata; ``dfm_render.pretrained``) into ``--out``, by
default the package's ``weights/`` folder. A development script: it imports ``dfm_apps``,
which the ``dfm-render`` library itself never does.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

from dfm_render.pretrained import WEIGHTS_DIR, load_objects_demo, save_scene_weights, weights_path


def ship(run_dir: Path, out: Path) -> dict[str, Path]:
    """Write both weight files from ``run_dir`` into ``out``; returns kind -> path.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.yaml``.
        ValueError: the run is not of the ``scenes`` application.
        dfm_core.checkpoint.CheckpointError: the run (or its baseline) has no checkpoint yet.
    """
    from dfm_apps import scenes
    from dfm_apps.config import load_run_config, validate

    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    config = validate(load_run_config(config_file))
    if getattr(config, "app", None) != "scenes":
        raise ValueError(f"{config_file}: app is {config.app!r}, expected 'scenes'")
    trained = scenes.load_models(config, run_dir)
    common = {
        "preset": config.name,
        "source_run": run_dir.resolve().name,
        "world_seed": str(config.data.world.seed),
        "world_sequences": str(config.data.world.n_sequences),
        "torch": torch.__version__,
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    written = {}
    for kind, model, step in (
        ("dfm", trained.diffusion, trained.dfm_step),
        ("baseline", trained.baseline, trained.baseline_step),
    ):
        path = save_scene_weights(
            model,
            weights_path(kind, out),
            config=config.model,
            kind=kind,
            metadata={**common, "steps": str(step)},
        )
        load_objects_demo(kind, path)  # refuse to ship a file that does not load back
        written[kind] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished `dfm train objects-demo` run")
    parser.add_argument(
        "--out", type=Path, default=WEIGHTS_DIR, help=f"output folder (default: {WEIGHTS_DIR})"
    )
    args = parser.parse_args(argv)
    try:
        written = ship(args.run_dir, args.out)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"ship_weights: error: {error}", file=sys.stderr)
        return 2
    for kind, path in written.items():
        print(f"{kind:<9} {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
