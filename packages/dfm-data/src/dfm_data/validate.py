"""Validating a real dataset root: counts, the first bad file, camera sanity.

Each ``validate_*`` reads every annotation and (unless ``check_images=False``) decodes every image,
counting problems instead of stopping, and returns a :class:`ValidationReport`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dfm_data.errors import DatasetError, SkipCounter

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


def validate_co3d(
    root: str | Path,
    categories: list[str] | None = None,
    *,
    check_images: bool = True,
    progress: bool = True,
) -> ValidationReport:
    """Checks a CO3D v2 root (annotations, set lists, cameras, and every image/mask/depth file)."""
    from dfm_data.co3d import (
        _load_json,
        list_categories,
        list_subsets,
        load_jgz,
        parse_frame_annotation,
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
        try:
            records = load_jgz(ann)
            load_jgz(root / cat / "sequence_annotations.jgz")
        except DatasetError as e:
            _quiet(report, e)
            continue
        frames = []
        for i, rec in enumerate(records):
            try:
                frames.append(parse_frame_annotation(rec, source=ann, index=i))
            except DatasetError as e:
                _quiet(report, e)
        report.counts["frames"] += len(frames)
        report.counts["sequences"] += len({f.sequence_name for f in frames})
        paths = {f.image_path for f in frames}
        for subset in list_subsets(root, cat):
            try:
                lists = _load_json(root / cat / "set_lists" / f"set_lists_{subset}.json")
            except DatasetError as e:
                _quiet(report, e)
                continue
            for part, entries in lists.items() if isinstance(lists, dict) else []:
                n = sum(1 for e in entries if isinstance(e, list) and len(e) == 3 and e[2] in paths)
                report.counts[f"set_list {subset}/{part}"] += n
        for f in frames:
            fx.append(f.intrinsics[0, 0])
            centres.append(f.c2w[:3, 3])
        if check_images:
            for f in tqdm(frames, desc=f"checking {cat}", unit="frame", disable=not progress):
                try:
                    load_rgb(root / f.image_path, expected_hw=f.image_hw, field="image.path")
                    if f.mask_path:
                        load_mask_png(root / f.mask_path, expected_hw=f.image_hw)
                    if f.depth_path:
                        load_depth_png(root / f.depth_path, expected_hw=f.image_hw)
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
) -> ValidationReport:
    """Checks a RealEstate10k root in one of its layouts (``txt``, ``mat``, ``torch``)."""
    from dfm_data.realestate10k import RealEstate10kConfig

    report = ValidationReport(f"re10k ({layout}, {split})", str(root))
    try:
        ds = RealEstate10kConfig(
            root=str(root),
            layout=layout,
            split=split,
            expected_size_hw=None,
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
    root: str | Path, layout: str = "triplet", *, check_images: bool = True, progress: bool = True
) -> ValidationReport:
    """Checks a Vimeo-90K root: both lists, every listed frame present and decodable at one size."""
    from dfm_data.images import load_rgb
    from dfm_data.vimeo90k import _N_FRAMES, list_file, parse_clip_list

    root = Path(root)
    report = ValidationReport(f"vimeo ({layout})", str(root))
    sizes: Counter = Counter()
    for split in ("train", "test"):
        path = list_file(root, layout, split)
        try:
            if not path.is_file():
                from dfm_data.errors import MissingFileError

                raise MissingFileError("clip list does not exist", path=path)
            clips = parse_clip_list(path.read_text(encoding="utf8", errors="replace"), source=path)
        except DatasetError as e:
            _quiet(report, e)
            continue
        report.counts[f"clips {split}"] = len(clips)
        for clip in tqdm(
            clips, desc=f"checking {split}", unit="clip", disable=not progress or not check_images
        ):
            for k in range(1, _N_FRAMES[layout] + 1):
                p = root / "sequences" / clip / f"im{k}.png"
                try:
                    if check_images:
                        sizes[load_rgb(p).shape[:2]] += 1
                        report.counts["images checked"] += 1
                    elif not p.is_file():
                        from dfm_data.errors import MissingFileError

                        raise MissingFileError("file does not exist", path=p)
                except DatasetError as e:
                    _quiet(report, e)
    for (h, w), n in sizes.items():
        report.counts[f"frames of {w}x{h}"] = n
    return report
