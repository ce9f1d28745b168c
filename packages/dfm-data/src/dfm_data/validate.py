"""Validating a real dataset root: counts, the first bad file, camera sanity.

Each ``validate_*`` reads every annotation and (unless ``check_images=False``) decodes every image,
counting problems instead of stopping, and returns a :class:`ValidationReport`. A validator
rejects what the matching loader rejects (frame sizes, set lists, sequence records, empty
lists), so a root that validates is one the loader reads without a typed error.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dfm_data.errors import (
    BadAnnotationError,
    DatasetError,
    EmptySubsetError,
    ImageSizeError,
    MissingFileError,
    SkipCounter,
)

__all__ = ["ValidationReport", "validate_co3d", "validate_re10k", "validate_vimeo"]


@dataclass
class ValidationReport:
    """What a validation found.

    Attributes:
        dataset: which format was checked.
        root: the root checked.
        counts: named counts (sequences, frames, images checked, ...).
        problems: skip counter of every typed error found (``problems.first`` is the first bad file).
        cameras: camera sanity figures (focal range, field of view range, ...).
    """

    dataset: str
    root: str
    counts: Counter = field(default_factory=Counter)
    problems: SkipCounter = field(default_factory=SkipCounter)
    cameras: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing bad was found and something was counted."""
        return self.problems.total == 0 and sum(self.counts.values()) > 0

    def format(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"{self.dataset} at {self.root}: {'OK' if self.ok else 'PROBLEMS FOUND'}"]
        lines += [f"  {k}: {v}" for k, v in sorted(self.counts.items())]
        lines += [f"  camera {k}: {v:.4g}" for k, v in sorted(self.cameras.items())]
        if self.problems.total:
            lines.append(f"  problems: {self.problems.total} ({dict(self.problems.counts)})")
            lines.append(f"  first bad: {self.problems.first}")
        return "\n".join(lines)


def _quiet(report: ValidationReport, error: DatasetError) -> None:
    report.problems.counts[type(error).__name__] += 1
    if report.problems.first is None:
        report.problems.first = error


def _fov_stats(report: ValidationReport, fx_norm: list[float]) -> None:
    if fx_norm:
        fov = [math.degrees(2 * math.atan(0.5 / f)) for f in fx_norm]
        report.cameras.update({"fov_x_deg_min": min(fov), "fov_x_deg_max": max(fov)})


def _check_set_list(
    report: ValidationReport, path: Path, lists: object, subset: str, split: str
) -> None:
    """The checks ``CO3DDataset`` makes of a set list, counted instead of raised.

    Splits other than ``split`` (the one the loader reads) may be empty (small subsets
    have no val frames); ``split`` itself may not, nor may it be missing.
    """
    if not isinstance(lists, dict):
        _quiet(report, BadAnnotationError("expected an object with train/val/test", path=path))
        return
    if split not in lists:
        _quiet(
            report,
            EmptySubsetError(
                f"set list has no {split!r} split; has {sorted(lists)}", path=path, field=split
            ),
        )
    for part, entries in lists.items():
        if not isinstance(entries, list):
            _quiet(
                report,
                BadAnnotationError(
                    f"expected a list, got {type(entries).__name__}", path=path, field=str(part)
                ),
            )
            continue
        if not entries:
            report.counts[f"set_list {subset}/{part}"] += 0
            if part == split:
                _quiet(report, EmptySubsetError("split lists no frame", path=path, field=split))
            continue
        good = 0
        for i, e in enumerate(entries):
            if isinstance(e, list) and len(e) == 3 and isinstance(e[2], str):
                good += 1
            else:
                _quiet(
                    report,
                    BadAnnotationError(
                        "expected [sequence_name, frame_number, image_path]",
                        path=path,
                        field=f"{part}[{i}]",
                    ),
                )
        report.counts[f"set_list {subset}/{part}"] += good


def validate_co3d(
    root: str | Path,
    categories: list[str] | None = None,
    *,
    subset_name: str | None = None,
    split: str = "train",
    check_images: bool = True,
    progress: bool = True,
) -> ValidationReport:
    """Checks a CO3D v2 root (annotations, set lists, cameras, and every image/mask/depth file).

    Args:
        root: the dataset root (one folder per category).
        categories: categories to check (default: every one found).
        subset_name: a set list every category must have (e.g. ``fewview_dev``, what
            ``CO3DConfig`` reads by default); ``None`` requires at least one set list.
        split: the split the loader will read (``CO3DConfig.split``); it must exist and
            list frames in every set list.
        check_images: also decode every image, mask and depth map.
        progress: show a progress bar.
    """
    from dfm_data.co3d import (
        _load_json,
        list_categories,
        list_subsets,
        load_jgz,
        parse_frame_annotation,
        parse_sequence_annotation,
    )
    from dfm_data.images import load_depth_png, load_mask_png, load_rgb

    root = Path(root)
    report = ValidationReport("co3d", str(root))
    try:
        cats = categories or list_categories(root)
    except DatasetError as e:
        _quiet(report, e)
        return report
    fx, centres = [], []
    for cat in cats:
        report.counts["categories"] += 1
        ann = root / cat / "frame_annotations.jgz"
        seq_path = root / cat / "sequence_annotations.jgz"
        try:
            records = load_jgz(ann)
            sequence_records = load_jgz(seq_path)
        except DatasetError as e:
            _quiet(report, e)
            continue
        for i, rec in enumerate(sequence_records):
            try:
                parse_sequence_annotation(rec, source=seq_path, index=i)
                report.counts["sequence annotations"] += 1
            except DatasetError as e:
                _quiet(report, e)
        frames = []
        for i, rec in enumerate(records):
            try:
                frames.append(parse_frame_annotation(rec, source=ann, index=i))
            except DatasetError as e:
                _quiet(report, e)
        report.counts["frames"] += len(frames)
        report.counts["sequences"] += len({f.sequence_name for f in frames})
        subsets = list_subsets(root, cat)
        set_lists_dir = root / cat / "set_lists"
        if subset_name is not None and subset_name not in subsets:
            _quiet(
                report,
                MissingFileError(
                    f"set list {subset_name!r} does not exist; found {subsets}",
                    path=set_lists_dir / f"set_lists_{subset_name}.json",
                ),
            )
        elif not subsets:
            _quiet(report, MissingFileError("no set_lists_*.json", path=set_lists_dir))
        for subset in subsets:
            path = set_lists_dir / f"set_lists_{subset}.json"
            try:
                lists = _load_json(path)
            except DatasetError as e:
                _quiet(report, e)
                continue
            _check_set_list(report, path, lists, subset, split)
        for f in frames:
            fx.append(f.intrinsics[0, 0])
            centres.append(f.c2w[:3, 3])
        if check_images:
            for f in tqdm(frames, desc=f"checking {cat}", unit="frame", disable=not progress):
                try:
                    load_rgb(root / f.image_path, expected_hw=f.image_hw, field="image.path")
                    # Depth maps and masks may differ in size from their image (real CO3D
                    # v2 does): the loaders resize them, so only decoding is checked.
                    if f.mask_path:
                        load_mask_png(root / f.mask_path)
                    if f.depth_path:
                        load_depth_png(root / f.depth_path)
                    report.counts["images checked"] += 1
                except DatasetError as e:
                    _quiet(report, e)
    _fov_stats(report, fx)
    if centres:
        c = np.asarray(centres)
        report.cameras["centre_distance_from_mean_max"] = float(
            np.linalg.norm(c - c.mean(0), axis=1).max()
        )
    return report


def validate_re10k(
    root: str | Path,
    layout: str = "mat",
    split: str = "train",
    *,
    check_images: bool = True,
    progress: bool = True,
    cameras_root: str | None = None,
    expected_size_hw: tuple[int, int] | None = (360, 640),
) -> ValidationReport:
    """Checks a RealEstate10k root in one of its layouts (``txt``, ``mat``, ``torch``).

    ``expected_size_hw`` is the frame size the loader will demand (its default, 360x640);
    ``None`` accepts any size.
    """
    from dfm_data.realestate10k import RealEstate10kConfig

    report = ValidationReport(f"re10k ({layout}, {split})", str(root))
    try:
        ds = RealEstate10kConfig(
            root=str(root),
            layout=layout,
            split=split,
            expected_size_hw=expected_size_hw,
            on_error="skip",
            max_fov_deg=None,
            cameras_root=cameras_root,
        ).build()  # type: ignore[arg-type]
    except DatasetError as e:
        _quiet(report, e)
        return report
    report.problems.counts.update(ds.skipped.counts)
    report.problems.first = ds.skipped.first
    report.counts["clips"] = len(ds)
    fx = []
    for clip in tqdm(ds.clips, desc="checking clips", unit="clip", disable=not progress):
        frames = ds._frames[clip]
        report.counts["frames"] += len(frames)
        fx.append(frames[0].K[0, 0])
        if check_images:
            for f in frames:
                try:
                    ds._image(f)
                    report.counts["images checked"] += 1
                except DatasetError as e:
                    _quiet(report, e)
    _fov_stats(report, fx)
    return report


def validate_vimeo(
    root: str | Path,
    layout: str = "triplet",
    *,
    check_images: bool = True,
    progress: bool = True,
    expected_size_hw: tuple[int, int] | None = (256, 448),
) -> ValidationReport:
    """Checks a Vimeo-90K root: both lists, every listed frame present and decodable.

    ``expected_size_hw`` is the frame size the loader demands (its default, 256x448);
    with ``None`` any size is accepted but the frames of one clip must agree.
    """
    from dfm_data.images import load_rgb
    from dfm_data.vimeo90k import _N_FRAMES, list_file, parse_clip_list

    root = Path(root)
    report = ValidationReport(f"vimeo ({layout})", str(root))
    sizes: Counter = Counter()
    for split in ("train", "test"):
        path = list_file(root, layout, split)
        try:
            if not path.is_file():
                raise MissingFileError("clip list does not exist", path=path)
            lines = SkipCounter()
            clips = parse_clip_list(
                path.read_text(encoding="utf8", errors="replace"),
                source=path,
                on_error="skip",
                skipped=lines,
            )
            for name, n in lines.counts.items():
                report.problems.counts[name] += n
            if report.problems.first is None:
                report.problems.first = lines.first
            if not clips:
                raise EmptySubsetError("the clip list has no clip", path=path)
        except DatasetError as e:
            _quiet(report, e)
            continue
        report.counts[f"clips {split}"] = len(clips)
        for clip in tqdm(
            clips, desc=f"checking {split}", unit="clip", disable=not progress or not check_images
        ):
            clip_size = expected_size_hw
            for k in range(1, _N_FRAMES[layout] + 1):
                p = root / "sequences" / clip / f"im{k}.png"
                try:
                    if check_images:
                        shape = load_rgb(p, field=f"im{k}").shape[:2]
                        if clip_size is not None and shape != tuple(clip_size):
                            raise ImageSizeError(
                                f"image is {shape[0]}x{shape[1]} (HxW), expected "
                                f"{clip_size[0]}x{clip_size[1]}",
                                path=p,
                                field=f"im{k}",
                            )
                        clip_size = shape
                        sizes[shape] += 1
                        report.counts["images checked"] += 1
                    elif not p.is_file():
                        raise MissingFileError("file does not exist", path=p)
                except DatasetError as e:
                    _quiet(report, e)
    for (h, w), n in sizes.items():
        report.counts[f"frames of {w}x{h}"] = n
    return report
