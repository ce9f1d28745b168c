"""The ``dfm`` command.

::

    dfm demo   [--run-dir DIR] [--only APP ...] [--seed N]
    dfm train  PRESET [--run-dir DIR] [--resume] [--dry-run] [KEY=VALUE ...]
    dfm sample RUN_DIR [--seed N] [--out DIR] [evaluation.KEY=VALUE ...]
    dfm eval   RUN_DIR [--protocol NAME] [--seed N] [--out DIR] [evaluation.KEY=VALUE ...]
    dfm export stylegan2 PKL OUT | dfm export scene RUN_DIR OUT
    dfm submit PRESET --slurm-partition P --gpus N --nodes N [--time MIN] [--local] [KEY=VALUE ...]
               (``dfm launch`` is the same command)
    dfm data   ...      (forwarded to dfm-data's command line)
    dfm presets

``KEY=VALUE`` overrides are OmegaConf dot-lists checked against the preset's
structured config (``trainer.max_steps=100``, ``evaluation.sampler=edm``).

Errors a user can cause end in one line naming the file, key or argument and a
non-zero exit status (2: bad command line or config; 1: the run failed; 128 + N: stopped
by signal N after saving a checkpoint); ``--debug`` (or ``DFM_DEBUG=1``) shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show Python tracebacks instead of one-line errors (also: DFM_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    presets = ", ".join(preset_names())

    demo = sub.add_parser(
        "demo",
        help="every application on its shipped weights: pictures, videos, scores, report.html",
        description="Run every application on the weights shipped with the packages (no "
        "training; CPU, a few minutes): the exact-posterior figure of the 2-D projection "
        "problem, one image -> K sampled 3D scenes with turntable and depth videos, one image "
        "-> K motions, one masked patch -> K GAN completions. Writes DIR/report.html and one "
        "folder per application, and prints a summary table. An application whose weights "
        "are not installed is listed as such. To train instead: dfm train PRESET.",
    )
    demo.add_argument("--run-dir", type=Path, help="output folder (default: runs/demo-<timestamp>)")
    demo.add_argument(
        "--only",
        nargs="+",
        metavar="APP",
        help="run only these applications (projection, scenes, motion, gan)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of inputs and samples (default 0)")

    train = sub.add_parser(
        "train", help="train a preset", description=f"Train a preset ({presets})."
    )
    train.add_argument("preset", help=f"one of: {presets}")
    train.add_argument(
        "--run-dir", type=Path, help="run directory (default: runs/<preset>-<timestamp>)"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="require --run-dir to hold a run to continue (an existing run resumes anyway)",
    )
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

    evaluate = sub.add_parser(
        "eval",
        help="score a trained run with its application's evaluation protocol (metrics.json/.md)",
        description="Load a run's EMA weights and run an evaluation protocol of its "
        "application (3D: fixed context/target pairs, full-image and masked PSNR/SSIM/LPIPS/"
        "FID, best-of-K PSNR, diversity, coverage). Writes metrics.json and metrics.md into "
        "RUN_DIR/eval/<protocol>-seed<seed>/. Applications without named protocols run their "
        "standard evaluation.",
    )
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument(
        "--protocol", help="protocol name (default: the one matching the run's data)"
    )
    evaluate.add_argument("--seed", type=int, help="sampler seed (default: the run's)")
    evaluate.add_argument("--out", type=Path, help="output folder")
    evaluate.add_argument(
        "overrides",
        nargs="*",
        metavar="evaluation.KEY=VALUE",
        help="evaluation overrides, e.g. evaluation.num_samples=8",
    )

    launch = sub.add_parser(
        "submit",
        aliases=["launch"],
        help="submit training to SLURM with submitit (or run it locally)",
        description="Submit `dfm train PRESET` as one SLURM job with one task per GPU (one CPU "
        "task per node with --gpus 0) across --nodes nodes; the tasks meet through "
        "torch.distributed (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from the job). "
        "Preempted or timed-out jobs requeue themselves and resume from the newest checkpoint.",
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
    launch.add_argument(
        "--resume",
        action="store_true",
        help="require --run-dir to hold a run to continue (an existing run resumes anyway)",
    )
    launch.add_argument(
        "--local", action="store_true", help="run here with submitit's local executor"
    )
    launch.add_argument("--cluster", choices=("slurm", "local", "debug"), help=argparse.SUPPRESS)
    launch.add_argument(
        "--wait", action="store_true", help="wait for a SLURM job and print its scores"
    )
    launch.add_argument(
        "--wait-timeout",
        type=float,
        metavar="SECONDS",
        help="with --wait: give up after this many seconds (default: no limit)",
    )
    launch.add_argument(
        "--dry-run", action="store_true", help="print config and job parameters, submit nothing"
    )
    launch.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)

    export = sub.add_parser(
        "export",
        help="export a sampled 3D scene (point cloud + mesh), or convert a StyleGAN2 pickle",
        description="`dfm export scene RUN_DIR OUT`: sample one 3D scene from a trained 3D "
        "run's first held-out input and write it to the folder OUT as a coloured point cloud "
        "(.ply, fused from rendered depth around the object) and a mesh (.ply and .obj with "
        "vertex colours, marching cubes on the density field). "
        "`dfm export stylegan2 PKL OUT`: read an official StyleGAN2-ADA network pickle WITHOUT "
        "executing code from it (restricted unpickler; any unexpected global is refused by "
        "name), and write its G_ema as OUT.safetensors plus OUT.json.",
    )
    export.add_argument("kind", choices=("scene", "stylegan2"), help="what to export")
    export.add_argument(
        "source", type=Path, metavar="SOURCE", help="a 3D run directory, or the official .pkl"
    )
    export.add_argument("out", type=Path, metavar="OUT", help="output folder / path")
    export.add_argument("--seed", type=int, default=0, help="scene: sampler seed (default 0)")
    export.add_argument("--network", default="G_ema", help="network in the pickle (default G_ema)")
    sub.add_parser(
        "data", help="dataset tools (forwards to dfm-data: synth, validate)", add_help=False
    )
    sub.add_parser("presets", help="list the presets")
    return parser


def _error(message: str, status: int = 2) -> int:
    print(f"dfm: error: {_one_line(message)}", file=sys.stderr)
    return status


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _debug_requested(args_list: list[str]) -> tuple[bool, list[str]]:
    """Strip ``--debug`` from anywhere on the line; ``DFM_DEBUG=1`` also asks for it."""
    env = os.environ.get("DFM_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    return env or "--debug" in args_list, [arg for arg in args_list if arg != "--debug"]


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` replacement: one ``dfm: warning:`` line, no source line."""
    print(f"dfm: warning: {_one_line(str(message))}", file=sys.stderr)


def _report(error: BaseException) -> int:
    """One line on stderr for an error that ended a command; returns the exit status."""
    from dfm_apps.config import ConfigError
    from dfm_apps.runs import RunError
    from dfm_core.checkpoint import CheckpointError
    from dfm_core.trainer import NonFiniteLossError, TrainingInterrupted

    if isinstance(error, TrainingInterrupted):
        print(f"dfm: {_one_line(str(error))}", file=sys.stderr)
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        print("dfm: interrupted", file=sys.stderr)
        return 130
    if isinstance(error, (ConfigError, RunError)):
        return _error(str(error))
    if isinstance(error, OSError) and not isinstance(error, CheckpointError):
        where = f"{error.filename}: " if error.filename else ""
        return _error(f"{where}{error.strerror or error}", 1)
    if isinstance(error, (CheckpointError, NonFiniteLossError, ValueError)):
        return _error(str(error), 1)
    return _error(f"{type(error).__name__}: {error} (run with --debug for the traceback)", 1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 usage/config error)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "data":
        return _data(args_list[1:])
    debug, args_list = _debug_requested(args_list)
    parser = build_parser()
    # parse_known_args + collecting KEY=VALUE leftovers lets overrides sit anywhere, even
    # between options after a positional (argparse alone matches `nargs="*"` only once).
    args, extra = parser.parse_known_args(args_list)
    args.debug = debug
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
    if debug:
        return _dispatch(args)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return _dispatch(args)
        except SystemExit:
            raise
        except BaseException as error:  # every error ends in one line (--debug: traceback)
            return _report(error)


def _dispatch(args: argparse.Namespace) -> int:
    # Errors propagate to `main`, which turns them into one line (or, with --debug,
    # lets the traceback through).
    if args.command == "demo":
        return _demo(args)
    if args.command == "train":
        return _train(
            args.preset,
            args.overrides,
            args.run_dir,
            resume=args.resume,
            dry_run=args.dry_run,
            command="train",
        )
    if args.command == "sample":
        return _sample(args)
    if args.command == "eval":
        return _eval(args)
    if args.command in ("submit", "launch"):
        return _launch(args)
    if args.command == "export":
        return _export(args)
    raise AssertionError(f"unhandled command {args.command!r}")


def _export(args: argparse.Namespace) -> int:
    if args.kind == "scene":
        return _export_scene(args)
    from dfm_gan import convert_official_pickle

    if not args.source.is_file():
        return _error(f"{args.source}: no such file (an official StyleGAN2-ADA .pkl)")
    written = convert_official_pickle(args.source, args.out, key=args.network)
    print(f"dfm: wrote {written} and {written.with_suffix('.json')}")
    return 0


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


def _run_dir(preset: str, run_dir: Path | None, *, resume: bool, command: str) -> Path:
    from dfm_apps.runs import RunError, default_run_dir

    if run_dir is None:
        # An explicit --resume without a run to continue would silently start a new run.
        if resume:
            raise RunError(f"dfm {command} --resume needs --run-dir (the run to continue)")
        return default_run_dir(preset)
    return run_dir


def _resumes(run_dir: Path | None, *, resume: bool) -> bool:
    """Whether a command continues a run: asked to, or ``run_dir`` already holds one.

    Resuming is automatic (a rerun after a crash or a pre-emption is the same command); the
    saved config decides, and changing the settings that fix the weights stays an error.

    Raises:
        RunError: ``--resume`` without a run to continue.
    """
    from dfm_apps.runs import CONFIG_FILE, RunError

    exists = run_dir is not None and (run_dir / CONFIG_FILE).is_file()
    if resume and not exists:
        raise RunError(f"--resume: {run_dir} holds no run to continue (no {CONFIG_FILE})")
    if exists and not resume:
        print(f"dfm: {run_dir} holds a run: resuming it", file=sys.stderr)
    return resume or exists


def _train(
    preset: str,
    overrides: Sequence[str],
    run_dir: Path | None,
    *,
    resume: bool,
    dry_run: bool,
    command: str,
) -> int:
    from dfm_apps.config import to_yaml
    from dfm_apps.runs import execute, format_summary, resolve_config

    chosen = _run_dir(preset, run_dir, resume=resume, command=command)
    resume = _resumes(run_dir, resume=resume)
    config = resolve_config(preset, overrides, run_dir, resume=resume)
    if dry_run:
        print(to_yaml(config), end="")
        return 0
    from dfm_core.trainer import graceful_stop

    print(f"dfm: {preset} -> {chosen}", file=sys.stderr)
    # SIGTERM/SIGINT/SIGUSR1/SIGUSR2: finish the step, save, exit with one line.
    with graceful_stop():
        result = execute(config, chosen)
    if result is not None:
        print(format_summary(result, name=preset))
    return 0


def _load_run(
    run_dir: Path, overrides: Sequence[str], seed: int | None, command: str
) -> tuple[Any, Any, Any, Any, int]:
    """A trained run, for sampling: (settings, merged config, application, trained, seed).

    Only ``evaluation.*`` (and ``num_threads``) may be overridden: the rest fixed the weights.
    """
    from dfm_apps.applications import application
    from dfm_apps.config import (
        ConfigError,
        frozen_differences,
        load_run_config,
        merge_overrides,
        validate,
    )
    from dfm_apps.runs import CONFIG_FILE, RunError, check_checkpoint_config
    from dfm_core.checkpoint import CheckpointCorruptError, CheckpointError

    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    stored = load_run_config(run_dir / CONFIG_FILE)
    extra = [] if seed is None else [f"evaluation.seed={seed}"]
    config = merge_overrides(stored, [*overrides, *extra])
    sampling_keys = ("evaluation", "num_threads")
    changed = frozen_differences(stored, config, [str(k) for k in stored if k not in sampling_keys])
    # Keys inside the frozen sections that change how the fixed weights are evaluated, not
    # the weights (e.g. the 3D field's precision).
    allowed = getattr(_application_of(stored), "SAMPLING_KEYS", ())
    changed = [c for c in changed if c.split(" (")[0] not in allowed]
    if changed:
        also = f", {', '.join(allowed)}" if allowed else ""
        raise ConfigError(
            f"dfm {command}: only evaluation.* (and num_threads{also}) may be overridden, got "
            + ", ".join(changed)
        )
    settings = validate(config)
    try:
        check_checkpoint_config(run_dir, stored)
        app = application(settings.app)
        trained = app.load_models(settings, run_dir)
    except CheckpointCorruptError:
        raise
    except CheckpointError as error:
        raise RunError(
            f"{error} (train it first: dfm train {settings.name} --run-dir {run_dir})"
        ) from error
    return settings, config, app, trained, int(settings.evaluation.seed)


def _application_of(stored: Any) -> Any:
    """The application module of a stored run config (None if its ``app`` is unknown: the
    validation that follows names the problem)."""
    from dfm_apps.applications import APPLICATIONS, application

    name = stored.get("app", "projection")
    return application(name) if name in APPLICATIONS else None


def _sample(args: argparse.Namespace) -> int:
    from dfm_apps.config import to_yaml
    from dfm_apps.report import format_scores

    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    settings, config, app, trained, seed = _load_run(args.run_dir, args.overrides, seed, "sample")
    out = args.out if args.out is not None else args.run_dir / "samples" / f"seed-{seed}"
    evaluation = app.evaluate(
        settings, trained, out, run_dir=args.run_dir, config_yaml=to_yaml(config)
    )
    print(
        f"{settings.name}: DFM step {trained.dfm_step}, baseline step {trained.baseline_step}, seed {seed}"
    )
    print(format_scores(evaluation.scores_dict()))
    for label, path in evaluation.files.items():
        print(f"  {label:<10} {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from dfm_apps.config import ConfigError, to_yaml
    from dfm_apps.report import format_scores

    settings, config, app, trained, seed = _load_run(
        args.run_dir, args.overrides, args.seed, "eval"
    )
    protocols: dict[str, str] = dict(getattr(app, "PROTOCOLS", {}))
    if args.protocol is not None and args.protocol not in protocols:
        known = (
            ", ".join(sorted(protocols)) or "none (this application has one standard evaluation)"
        )
        raise ConfigError(
            f"--protocol {args.protocol!r}: the {settings.app} application knows: {known}"
        )
    default = getattr(app, "default_protocol", None)
    protocol = args.protocol or (
        default(settings) if callable(default) and protocols else next(iter(protocols), "standard")
    )
    out = args.out if args.out is not None else args.run_dir / "eval" / f"{protocol}-seed{seed}"
    if protocols:
        evaluation = app.run_protocol(
            settings, trained, out, protocol=protocol, run_dir=args.run_dir
        )
    else:
        evaluation = app.evaluate(
            settings, trained, out, run_dir=args.run_dir, config_yaml=to_yaml(config)
        )
    scores = evaluation.scores_dict()
    files = dict(evaluation.files)
    if not (out / "metrics.json").is_file():  # protocols write their own
        plain = {k: v for k, v in scores.items() if isinstance(v, (int, float, str))}
        (out / "metrics.json").write_text(json.dumps(plain, indent=2) + "\n")
        rows = "\n".join(f"| {key} | {_format_value(value)} |" for key, value in plain.items())
        (out / "metrics.md").write_text(f"| metric | value |\n|---|---|\n{rows}\n")
    files.setdefault("metrics", out / "metrics.json")
    print(f"{settings.name}: {protocol} protocol, DFM step {trained.dfm_step}, seed {seed}")
    print(format_scores(scores))
    for label, path in files.items():
        print(f"  {label:<10} {path}")
    return 0


def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _export_scene(args: argparse.Namespace) -> int:
    """One sampled scene of a 3D run's first held-out input, as point cloud and mesh files."""
    import shutil
    import tempfile

    from dfm_apps.config import ConfigError

    overrides = [
        "evaluation.num_scenes=1",
        "evaluation.num_samples=1",
        "evaluation.export=true",
        "evaluation.videos=false",
        "evaluation.autoregressive_views=0",
    ]
    settings, _, app, trained, _ = _load_run(args.source, overrides, args.seed, "export")
    if settings.app != "scenes":
        raise ConfigError(
            f"dfm export scene: {args.source} is a {settings.app!r} run; a 3D (scenes) run is needed"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dfm-export-") as work:
        evaluation = app.evaluate(settings, trained, Path(work))
        written = []
        for path in evaluation.files.values():
            if Path(path).suffix in (".ply", ".obj"):
                target = args.out / Path(path).name
                shutil.copyfile(path, target)
                written.append(target)
    if not written:
        raise RuntimeError(f"{args.source}: the evaluation exported no point cloud or mesh")
    for path in written:
        print(f"dfm: wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import time

    from dfm_apps.applications import APPLICATIONS, MissingWeights, application
    from dfm_apps.report import render_demo
    from dfm_apps.runs import RunError, default_run_dir

    names = list(APPLICATIONS) if not args.only else list(dict.fromkeys(args.only))
    unknown = [name for name in names if name not in APPLICATIONS]
    if unknown:
        raise RunError(
            f"--only {' '.join(unknown)}: unknown application; known: {', '.join(APPLICATIONS)}"
        )
    out: Path = args.run_dir if args.run_dir is not None else default_run_dir("demo")
    out.mkdir(parents=True, exist_ok=True)
    sections: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for name in names:
        print(f"dfm demo: {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            section = application(name).demo(out / name, seed=args.seed)
        except MissingWeights as error:
            missing[name] = f"not run: weights not installed ({_one_line(str(error))})"
            print(f"dfm: warning: {name}: {missing[name]}", file=sys.stderr)
            continue
        except Exception as error:  # one application failing must not hide the others
            if args.debug:
                raise
            missing[name] = f"failed: {type(error).__name__}: {_one_line(str(error))}"
            print(f"dfm: error: {name}: {missing[name]}", file=sys.stderr)
            continue
        section.seconds = time.perf_counter() - start
        sections[name] = section
    only = f" --only {' '.join(names)}" if args.only else ""
    command = f"dfm demo --run-dir {out} --seed {args.seed}{only}"
    page = render_demo(sections=sections, missing=missing, base=out, command=command)
    report_path = out / "report.html"
    tmp = report_path.with_name(f".tmp-report-{os.getpid()}.html")
    tmp.write_text(page)
    os.replace(tmp, report_path)
    print(_demo_table(sections, missing))
    print(f"\nreport: {report_path}")
    failed = [name for name, why in missing.items() if why.startswith("failed")]
    return 1 if failed else 0


def _demo_table(sections: dict[str, Any], missing: dict[str, str]) -> str:
    lines = [f"{'application':<12} {'seconds':>8}  headline figures"]
    for name, section in sections.items():
        figures = ", ".join(
            f"{key} {_format_value(value)}" for key, value in section.scores.items()
        )
        lines.append(f"{name:<12} {section.seconds:>8.1f}  {figures}")
    for name, why in missing.items():
        lines.append(f"{name:<12} {'-':>8}  {why}")
    return "\n".join(lines)


def _launch(args: argparse.Namespace) -> int:
    from dfm_apps.config import to_container, to_yaml
    from dfm_apps.launch import LaunchError, LaunchOptions, describe, submit, wait
    from dfm_apps.runs import format_summary, resolve_config

    cluster = args.cluster or ("local" if args.local else "slurm")
    if cluster != "slurm" and args.nodes > 1:
        return _error(
            f"--nodes {args.nodes}: --local runs on this machine, which is one node; "
            "use --nodes 1, or submit to SLURM with --slurm-partition"
        )
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
    run_dir = _run_dir(args.preset, args.run_dir, resume=args.resume, command=args.command)
    resume = _resumes(args.run_dir, resume=args.resume)
    config = resolve_config(args.preset, args.overrides, args.run_dir, resume=resume)
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
    if cluster == "slurm":  # a watchdog: without sacct, job.results() can wait forever
        try:
            results = wait(job, timeout_s=args.wait_timeout)
        except LaunchError as error:
            return _error(str(error))
    else:
        results = job.results()
    result = next((r for r in results if r is not None), None)  # rank 0's
    if result is not None:
        print(format_summary(result, name=args.preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
