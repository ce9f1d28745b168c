"""The ``dfm`` command.

::

    dfm demo   [--run-dir DIR] [--dry-run] [KEY=VALUE ...]
    dfm train  PRESET [--run-dir DIR] [--resume] [--dry-run] [KEY=VALUE ...]
    dfm sample RUN_DIR [--seed N] [--out DIR] [evaluation.KEY=VALUE ...]
    dfm launch PRESET --slurm-partition P --gpus N --nodes N [--time MIN] [--local] [KEY=VALUE ...]
    dfm data   ...      (forwarded to dfm-data's command line)
    dfm presets

``KEY=VALUE`` overrides are OmegaConf dot-lists checked against the preset's
structured config (``trainer.max_steps=100``, ``evaluation.sampler=edm``).
"""

from __future__ import annotations

import argparse
import importlib
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from dfm_apps import __version__
from dfm_apps.presets import preset_names, preset_summary

__all__ = ["build_parser", "main"]

_OVERRIDES_HELP = "config overrides as KEY=VALUE dot-lists, e.g. trainer.max_steps=100"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfm",
        description="Diffusion with forward models: demos, training presets, sampling, SLURM launcher.",
    )
    parser.add_argument("--version", action="version", version=f"dfm-apps {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    presets = ", ".join(preset_names())

    demo = sub.add_parser(
        "demo",
        help="train DFM + baseline on the 2-D projection problem and write a report (CPU, minutes)",
        description="Train DFM and a regression baseline on the 2-D projection problem, score "
        "both against the exact posterior, write samples.png, scores.json and report.html. "
        "Rerunning with the same --run-dir resumes.",
    )
    demo.add_argument("--run-dir", type=Path, help="run directory (default: runs/demo-<timestamp>)")
    demo.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)

    train = sub.add_parser(
        "train", help="train a preset", description=f"Train a preset ({presets})."
    )
    train.add_argument("preset", help=f"one of: {presets}")
    train.add_argument(
        "--run-dir", type=Path, help="run directory (default: runs/<preset>-<timestamp>)"
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)

    sample = sub.add_parser(
        "sample",
        help="draw new samples from a trained run (EMA weights) and picture them",
        description="Load a run's EMA weights (safetensors) and write samples.png, denoising.png "
        "and scores.json for fresh held-out contexts into RUN_DIR/samples/seed-<seed>/.",
    )
    sample.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    sample.add_argument(
        "--seed", type=int, help="seed of contexts and samples (default: random, printed)"
    )
    sample.add_argument(
        "--out", type=Path, help="output folder (default: RUN_DIR/samples/seed-<seed>)"
    )
    sample.add_argument(
        "overrides",
        nargs="*",
        metavar="evaluation.KEY=VALUE",
        help="evaluation overrides, e.g. evaluation.steps=20",
    )

    launch = sub.add_parser(
        "launch",
        help="submit training to SLURM with submitit (or run it locally)",
        description="Submit `dfm train PRESET` as one SLURM job with one task per GPU. Preempted "
        "or timed-out jobs requeue themselves and resume from the newest checkpoint.",
    )
    launch.add_argument("preset", help=f"one of: {presets}")
    launch.add_argument("--slurm-partition", dest="partition", help="SLURM partition")
    launch.add_argument(
        "--gpus", type=int, default=1, help="GPUs per node, one task each (default 1)"
    )
    launch.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    launch.add_argument(
        "--time", type=int, default=60, dest="time_min", help="time limit in minutes (default 60)"
    )
    launch.add_argument("--cpus-per-task", type=int, help="CPU cores per task")
    launch.add_argument(
        "--run-dir", type=Path, help="run directory (default: runs/<preset>-<timestamp>)"
    )
    launch.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    launch.add_argument(
        "--local", action="store_true", help="run here with submitit's local executor"
    )
    launch.add_argument("--cluster", choices=("slurm", "local", "debug"), help=argparse.SUPPRESS)
    launch.add_argument(
        "--wait", action="store_true", help="wait for a SLURM job and print its scores"
    )
    launch.add_argument(
        "--dry-run", action="store_true", help="print config and job parameters, submit nothing"
    )
    launch.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)

    sub.add_parser(
        "data", help="dataset tools (forwards to dfm-data: synth, validate)", add_help=False
    )
    sub.add_parser("presets", help="list the presets")
    return parser


def _error(message: str) -> int:
    print(f"dfm: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 usage/config error)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "data":
        return _data(args_list[1:])
    parser = build_parser()
    # parse_known_args + collecting KEY=VALUE leftovers lets overrides sit anywhere, even
    # between options after a positional (argparse alone matches `nargs="*"` only once).
    args, extra = parser.parse_known_args(args_list)
    stray = [
        arg
        for arg in extra
        if arg.startswith("-") or "=" not in arg or not hasattr(args, "overrides")
    ]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command == "presets":
        for name in preset_names():
            print(f"{name:<16} {preset_summary(name)}")
        return 0
    # Imported here, not at the top: `dfm --help`, `dfm presets` and `dfm data` do not
    # need torch and the core, which take seconds to import.
    from dfm_apps.config import ConfigError
    from dfm_apps.runs import RunError

    try:
        if args.command == "demo":
            return _train("demo", args.overrides, args.run_dir, resume=True, dry_run=args.dry_run)
        if args.command == "train":
            return _train(
                args.preset, args.overrides, args.run_dir, resume=args.resume, dry_run=args.dry_run
            )
        if args.command == "sample":
            return _sample(args)
        if args.command == "launch":
            return _launch(args)
    except (ConfigError, RunError) as error:
        return _error(str(error))
    raise AssertionError(f"unhandled command {args.command!r}")


def _data(argv: Sequence[str]) -> int:
    try:
        data_cli = importlib.import_module("dfm_data.cli")
    except ModuleNotFoundError as error:
        if error.name not in ("dfm_data", "dfm_data.cli"):
            raise
        return _error(
            "`dfm data` needs the dfm-data package, which is not installed (pip install dfm-data)"
        )
    status = data_cli.main(list(argv))
    return int(status or 0)


def _run_dir(preset: str, run_dir: Path | None, *, resume: bool) -> Path:
    from dfm_apps.runs import RunError, default_run_dir

    if run_dir is None:
        if resume and preset != "demo":
            raise RunError("--resume needs --run-dir (the run to continue)")
        return default_run_dir(preset)
    return run_dir


def _train(
    preset: str, overrides: Sequence[str], run_dir: Path | None, *, resume: bool, dry_run: bool
) -> int:
    from dfm_apps.config import to_yaml
    from dfm_apps.runs import execute, format_summary, resolve_config

    chosen = _run_dir(preset, run_dir, resume=resume)
    config = resolve_config(preset, overrides, run_dir, resume=resume)
    if dry_run:
        print(to_yaml(config), end="")
        return 0
    print(f"dfm: {preset} -> {chosen}", file=sys.stderr)
    result = execute(config, chosen)
    if result is not None:
        print(format_summary(result, name=preset))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from dfm_apps import projection
    from dfm_apps.config import (
        ConfigError,
        frozen_differences,
        load_run_config,
        merge_overrides,
        to_yaml,
        validate,
    )
    from dfm_apps.report import format_scores
    from dfm_apps.runs import CONFIG_FILE, RunError
    from dfm_core.checkpoint import CheckpointError

    run_dir: Path = args.run_dir
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    stored = load_run_config(run_dir / CONFIG_FILE)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    config = merge_overrides(stored, [*args.overrides, f"evaluation.seed={seed}"])
    sampling_keys = ("evaluation", "num_threads")
    changed = frozen_differences(stored, config, [str(k) for k in stored if k not in sampling_keys])
    if changed:
        raise ConfigError(
            "dfm sample: only evaluation.* (and num_threads) may be overridden, got "
            + ", ".join(changed)
        )
    settings = validate(config)
    out = args.out if args.out is not None else run_dir / "samples" / f"seed-{seed}"
    try:
        trained = projection.load_models(settings, run_dir)
    except CheckpointError as error:
        raise RunError(
            f"{error} (train it first: dfm train {settings.name} --run-dir {run_dir})"
        ) from error
    evaluation = projection.evaluate(
        settings, trained, out, run_dir=run_dir, config_yaml=to_yaml(config)
    )
    print(
        f"{settings.name}: DFM step {trained.dfm_step}, baseline step {trained.baseline_step}, seed {seed}"
    )
    print(format_scores(evaluation.scores_dict()))
    for label, path in evaluation.files.items():
        print(f"  {label:<10} {path}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    from dfm_apps.config import to_container, to_yaml
    from dfm_apps.launch import LaunchError, LaunchOptions, describe, submit
    from dfm_apps.runs import format_summary, resolve_config

    cluster = args.cluster or ("local" if args.local else "slurm")
    try:
        options = LaunchOptions(
            cluster=cluster,
            partition=args.partition,
            gpus=args.gpus,
            nodes=args.nodes,
            time_min=args.time_min,
            cpus_per_task=args.cpus_per_task,
            name=f"dfm-{args.preset}",
        )
    except ValueError as error:
        return _error(str(error))
    run_dir = _run_dir(args.preset, args.run_dir, resume=args.resume)
    config = resolve_config(args.preset, args.overrides, args.run_dir, resume=args.resume)
    if args.dry_run:
        print(to_yaml(config), end="")
        print(f"# run_dir: {run_dir}\n# launch: {describe(options)}")
        return 0
    try:
        job = submit(to_container(config), run_dir, options)
    except LaunchError as error:
        return _error(str(error))
    print(
        f"dfm: submitted job {job.job_id} ({cluster}, {options.nodes} node(s) x {options.tasks_per_node} task(s))"
    )
    print(f"  run directory: {run_dir}")
    print(f"  logs:          {job.paths.stdout.parent}")
    if cluster == "slurm" and not args.wait:
        return 0
    result = next((r for r in job.results() if r is not None), None)  # rank 0's
    if result is not None:
        print(format_summary(result, name=args.preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
