"""Command line: ``python -m dfm_data {synth,validate} ...`` (wrapped by the apps as ``dfm data``).

Examples::

    python -m dfm_data synth objects data/objects --n-sequences 8 --seed 0
    python -m dfm_data synth rooms data/rooms --n-clips 10
    python -m dfm_data synth motion data/vimeo --n-sequences 64
    python -m dfm_data validate co3d data/objects
    python -m dfm_data validate re10k data/rooms/dfm --layout mat
    python -m dfm_data validate vimeo data/vimeo
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


EXIT_OK, EXIT_PROBLEMS, EXIT_CRASHED = 0, 1, 3
"""``validate`` exit statuses: the root is fine / problems were found / the validator itself failed."""


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    try:
        size = int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 360x640, got {text!r}") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return size


def _size_or_any(text: str) -> tuple[int, int] | None:
    return None if text == "any" else _size(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed so the apps can embed it)."""
    p = argparse.ArgumentParser(
        prog="dfm data",
        description="Synthesize worlds in real dataset formats; validate dataset roots.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write a synthetic world in a real on-disk format")
    worlds = synth.add_subparsers(dest="world", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("out", help="output folder")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--size", type=_size, default=None, help="HxW of the frames, e.g. 96x128")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    o = worlds.add_parser("objects", parents=[common], help="objects world -> CO3D v2")
    o.add_argument("--n-sequences", type=int, default=8)
    o.add_argument("--n-frames", type=int, default=48)
    o.add_argument("--categories", nargs="+", default=["orb"])
    r = worlds.add_parser(
        "rooms", parents=[common], help="rooms world -> RealEstate10k (txt, mat+jpg, pixelSplat)"
    )
    r.add_argument("--n-clips", type=int, default=10)
    r.add_argument("--n-frames", type=int, default=48)
    m = worlds.add_parser("motion", parents=[common], help="motion world -> Vimeo-90K")
    m.add_argument("--n-sequences", type=int, default=32)
    m.add_argument("--layout", choices=["triplet", "septuplet"], default="triplet")

    val = sub.add_parser(
        "validate", help="check a dataset root: counts, first bad file, camera sanity"
    )
    kinds = val.add_subparsers(dest="dataset", required=True)
    vcommon = argparse.ArgumentParser(add_help=False)
    vcommon.add_argument("root")
    vcommon.add_argument(
        "--no-images", action="store_true", help="annotations only, do not decode images"
    )
    vcommon.add_argument("--quiet", action="store_true", help="no progress bar")
    c = kinds.add_parser("co3d", parents=[vcommon])
    c.add_argument("--categories", nargs="+", default=None)
    c.add_argument(
        "--subset",
        default=None,
        help="a set list every category must have, e.g. fewview_dev (default: any one)",
    )
    c.add_argument(
        "--split",
        choices=["train", "val", "test"],
        default="train",
        help="the split the loader will read; it must list frames (default train)",
    )
    e = kinds.add_parser("re10k", parents=[vcommon])
    e.add_argument("--layout", choices=["txt", "mat", "torch"], default="mat")
    e.add_argument("--split", choices=["train", "test"], default="train")
    e.add_argument(
        "--cameras-root", default=None, help="txt layout: folder with <split>/<clip>.txt"
    )
    e.add_argument(
        "--expected-size",
        type=_size_or_any,
        default=(360, 640),
        help="HxW every frame must have, as the loader demands (default 360x640; 'any')",
    )
    v = kinds.add_parser("vimeo", parents=[vcommon])
    v.add_argument("--layout", choices=["triplet", "septuplet"], default="triplet")
    v.add_argument(
        "--expected-size",
        type=_size_or_any,
        default=(256, 448),
        help="HxW every frame must have, as the loader demands (default 256x448; 'any')",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status.

    ``validate`` exits 0 when the root is fine, 1 when it found problems (the report says
    which) and 3 when the validator itself failed (one line on stderr; a bug to report).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.quiet
    if args.command == "synth":
        extra = {} if args.size is None else {"image_size_hw": args.size}
        if args.world == "objects":
            from dfm_data.worlds.objects import ObjectsWorldConfig, synthesize_objects

            cfg = ObjectsWorldConfig(
                n_sequences=args.n_sequences,
                n_frames=args.n_frames,
                categories=tuple(args.categories),
                seed=args.seed,
                **extra,
            )
            synthesize_objects(args.out, cfg, progress=progress)
        elif args.world == "rooms":
            from dfm_data.worlds.rooms import RoomsWorldConfig, synthesize_rooms

            synthesize_rooms(
                args.out,
                RoomsWorldConfig(
                    n_clips=args.n_clips, n_frames=args.n_frames, seed=args.seed, **extra
                ),
                progress=progress,
            )
        else:
            from dfm_data.worlds.motion import MotionWorldConfig, synthesize_motion

            synthesize_motion(
                args.out,
                MotionWorldConfig(
                    n_sequences=args.n_sequences, layout=args.layout, seed=args.seed, **extra
                ),
                progress=progress,
            )
        print(f"wrote {args.world} world to {args.out}")
        return 0
    try:
        report = _validate(args, check_images=not args.no_images, progress=progress)
    except Exception as e:  # a validator must report problems, not crash: say so distinctly
        print(
            f"dfm data validate: validator crashed on {args.root}: {type(e).__name__}: {e}",
            file=sys.stderr,
        )
        return EXIT_CRASHED
    print(report.format())
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _validate(args: argparse.Namespace, *, check_images: bool, progress: bool) -> object:
    from dfm_data import validate

    if args.dataset == "co3d":
        return validate.validate_co3d(
            args.root,
            args.categories,
            subset_name=args.subset,
            split=args.split,
            check_images=check_images,
            progress=progress,
        )
    if args.dataset == "re10k":
        return validate.validate_re10k(
            args.root,
            args.layout,
            args.split,
            check_images=check_images,
            progress=progress,
            cameras_root=args.cameras_root,
            expected_size_hw=args.expected_size,
        )
    return validate.validate_vimeo(
        args.root,
        args.layout,
        check_images=check_images,
        progress=progress,
        expected_size_hw=args.expected_size,
    )


def console_main() -> None:
    """Entry point of the ``dfm-data`` console script."""
    sys.exit(main())
