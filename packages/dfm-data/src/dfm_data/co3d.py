"""CO3D v2 loader (reads the official on-disk layout; see reference formats §1).

Per category it reads ``frame_annotations.jgz``, ``sequence_annotations.jgz`` and
``set_lists/set_lists_<subset>.json`` (joined by image path), converts every PyTorch3D NDC camera
(both ``ndc_isotropic`` and legacy ``ndc_norm_image_bounds``) to an OpenCV c2w + normalised K,
normalises each sequence's scale so the mean of per-frame median foreground depths becomes
``mean_depth_scale`` (computed once, cached as JSON), keeps the top-N sequences by viewpoint quality,
and serves :class:`~dfm_data.batch.ViewBatch` items: one item = one sequence, frames chosen by
:func:`~dfm_data.sampling.sample_view_indices`, centre-square crop, antialiased resize.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from dfm_data.batch import ViewBatch, load_item, make_view_batch
from dfm_data.cameras import (
    INTRINSICS_FORMATS,
    c2w_from_w2c,
    centre_square_crop,
    check_c2w,
    check_intrinsics,
    crop_intrinsics,
    normalise_intrinsics,
    pytorch3d_to_opencv,
)
from dfm_data.errors import (
    BadAnnotationError,
    BadCameraError,
    DatasetError,
    EmptySubsetError,
    MissingFileError,
    OnError,
    SkipCounter,
    UnknownCategoryError,
)
from dfm_data.images import (
    load_depth_png,
    load_mask_png,
    load_rgb,
    resize_plane,
    to_model_image,
)
from dfm_data.records import get_field, numbers
from dfm_data.sampling import FrameSamplingConfig, check_frame_positions, sample_view_indices
from dfm_data.seeding import item_rng

__all__ = [
    "CO3DConfig",
    "CO3DDataset",
    "CO3DFrame",
    "CO3DSequence",
    "dump_jgz",
    "list_categories",
    "list_subsets",
    "load_jgz",
    "parse_frame_annotation",
    "parse_sequence_annotation",
    "sequence_scale",
]

logger = logging.getLogger("dfm_data")
_SCALE_CACHE_VERSION = 1


def dump_jgz(path: str | Path, records: list[dict]) -> None:
    """Writes a CO3D ``.jgz``: gzip of a UTF-8 JSON list."""
    with gzip.open(path, "wt", encoding="utf8") as f:
        json.dump(records, f)


def load_jgz(path: str | Path) -> list:
    """Reads a CO3D ``.jgz`` (gzip JSON list).

    Raises:
        MissingFileError: no such file.
        BadAnnotationError: not gzip, not JSON, or not a list.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("annotation file does not exist", path=path)
    try:
        with gzip.open(path, "rt", encoding="utf8") as f:
            data = json.load(f)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadAnnotationError(f"not a gzip JSON file ({e})", path=path) from e
    if not isinstance(data, list):
        raise BadAnnotationError(f"expected a JSON list, got {type(data).__name__}", path=path)
    return data


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise MissingFileError("file does not exist", path=path)
    try:
        return json.loads(path.read_text(encoding="utf8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadAnnotationError(f"not valid JSON ({e})", path=path) from e


@dataclass(frozen=True)
class CO3DFrame:
    """One parsed frame annotation.

    Attributes:
        sequence_name: sequence it belongs to.
        frame_number: 0-based position in the sequence (not the number in the file name).
        image_path: ROOT-relative jpg path (the set-list join key).
        image_hw: ``(H, W)`` from the annotation.
        c2w: ``(4, 4)`` float64 OpenCV camera-to-world, in the dataset's own (SfM) units.
        intrinsics: ``(3, 3)`` float64 normalised intrinsics of the full image.
        intrinsics_format: NDC flavour the annotation used.
        depth_path: ROOT-relative depth PNG or ``None``.
        depth_scale: the depth's ``scale_adjustment``.
        mask_path: ROOT-relative mask PNG or ``None``.
    """

    sequence_name: str
    frame_number: int
    image_path: str
    image_hw: tuple[int, int]
    c2w: np.ndarray = field(repr=False)
    intrinsics: np.ndarray = field(repr=False)
    intrinsics_format: str
    depth_path: str | None
    depth_scale: float
    mask_path: str | None


@dataclass(frozen=True)
class CO3DSequence:
    """One parsed sequence annotation (``viewpoint_quality_score`` may be missing: ``None``)."""

    sequence_name: str
    category: str
    viewpoint_quality_score: float | None


def parse_frame_annotation(record: Any, *, source: str | Path, index: int) -> CO3DFrame:
    """Parses and checks one ``FrameAnnotation`` dict.

    Args:
        record: one element of ``frame_annotations.jgz``.
        source: the file it came from (named in errors).
        index: its position in the file (named in errors as ``frames[index]``).

    Raises:
        BadAnnotationError: malformed record.
        BadCameraError: non-finite or degenerate camera.
    """
    fld = f"frames[{index}]"
    name = get_field(record, "sequence_name", str, source=source, field=fld)
    number = get_field(record, "frame_number", int, source=source, field=fld)
    image = get_field(record, "image", dict, source=source, field=fld)
    path = get_field(image, "path", str, source=source, field=f"{fld}.image")
    size = numbers(
        get_field(image, "size", list, source=source, field=f"{fld}.image"),
        (2,),
        source=source,
        field=f"{fld}.image.size",
    )
    if not (size == np.round(size)).all() or (size < 1).any() or (size > 1e6).any():
        raise BadAnnotationError(
            "image size must be two positive integers", path=source, field=f"{fld}.image.size"
        )
    hw = (int(size[0]), int(size[1]))
    vfld = f"{fld}.viewpoint"
    vp = get_field(record, "viewpoint", dict, source=source, field=fld)
    R = numbers(
        get_field(vp, "R", list, source=source, field=vfld),
        (3, 3),
        source=source,
        field=f"{vfld}.R",
    )
    T = numbers(
        get_field(vp, "T", list, source=source, field=vfld), (3,), source=source, field=f"{vfld}.T"
    )
    focal = numbers(
        get_field(vp, "focal_length", list, source=source, field=vfld),
        (2,),
        source=source,
        field=f"{vfld}.focal_length",
    )
    pp = numbers(
        get_field(vp, "principal_point", list, source=source, field=vfld),
        (2,),
        source=source,
        field=f"{vfld}.principal_point",
    )
    fmt = get_field(
        vp, "intrinsics_format", str, source=source, field=vfld, default="ndc_norm_image_bounds"
    )
    if fmt not in INTRINSICS_FORMATS:
        raise BadAnnotationError(
            f"unknown intrinsics_format {fmt!r}", path=source, field=f"{vfld}.intrinsics_format"
        )
    if (focal <= 0).any():
        raise BadCameraError(
            "focal length must be positive", path=source, field=f"{vfld}.focal_length"
        )
    with np.errstate(all="ignore"):
        R_cv, t_cv, K = pytorch3d_to_opencv(R, T, focal, pp, hw, fmt)
        c2w = c2w_from_w2c(R_cv, t_cv)
        check_c2w(c2w, path=source, field=f"{vfld}.R")
        K_norm = normalise_intrinsics(K, hw)
        check_intrinsics(
            K_norm,
            path=source,
            field=f"{vfld}.focal_length",
            principal_point_field=f"{vfld}.principal_point",
        )
    depth_path, depth_scale = None, 1.0
    depth = get_field(record, "depth", dict, source=source, field=fld, default=None)
    if depth is not None:
        depth_path = get_field(depth, "path", str, source=source, field=f"{fld}.depth")
        depth_scale = get_field(
            depth, "scale_adjustment", float, source=source, field=f"{fld}.depth", default=1.0
        )
        if not np.isfinite(depth_scale):
            raise BadAnnotationError(
                "non-finite scale_adjustment", path=source, field=f"{fld}.depth.scale_adjustment"
            )
    mask = get_field(record, "mask", dict, source=source, field=fld, default=None)
    mask_path = (
        None if mask is None else get_field(mask, "path", str, source=source, field=f"{fld}.mask")
    )
    return CO3DFrame(
        sequence_name=name,
        frame_number=number,
        image_path=path,
        image_hw=hw,
        c2w=c2w,
        intrinsics=K_norm,
        intrinsics_format=fmt,
        depth_path=depth_path,
        depth_scale=depth_scale,
        mask_path=mask_path,
    )


def parse_sequence_annotation(record: Any, *, source: str | Path, index: int) -> CO3DSequence:
    """Parses one ``SequenceAnnotation`` dict (raises :class:`BadAnnotationError`)."""
    fld = f"sequences[{index}]"
    score = get_field(
        record, "viewpoint_quality_score", float, source=source, field=fld, default=None
    )
    if score is not None and not np.isfinite(score):
        raise BadAnnotationError(
            "non-finite score", path=source, field=f"{fld}.viewpoint_quality_score"
        )
    return CO3DSequence(
        sequence_name=get_field(record, "sequence_name", str, source=source, field=fld),
        category=get_field(record, "category", str, source=source, field=fld),
        viewpoint_quality_score=score,
    )


def list_categories(root: str | Path) -> list[str]:
    """Category folders under ``root`` (those holding a ``frame_annotations.jgz``)."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError("dataset root does not exist", path=root)
    return sorted(p.parent.name for p in root.glob("*/frame_annotations.jgz"))


def list_subsets(root: str | Path, category: str) -> list[str]:
    """Subset names of a category, from ``<category>/set_lists/set_lists_<name>.json``."""
    folder = Path(root) / category / "set_lists"
    return sorted(p.stem[len("set_lists_") :] for p in folder.glob("set_lists_*.json"))


def sequence_scale(
    root: str | Path,
    frames: list[CO3DFrame],
    *,
    mask_threshold: float = 0.4,
    on_error: OnError = "raise",
    skipped: SkipCounter | None = None,
) -> float | None:
    """Mean over frames of the median depth inside the foreground mask (``P(fg) > threshold``).

    Frames without depth, mask, or any foreground pixel with valid (> 0) depth are left out.

    Returns:
        The scale in dataset units, or ``None`` when no frame contributes.
    """
    root = Path(root)
    skipped = skipped if skipped is not None else SkipCounter()
    medians = []
    for fr in frames:
        if fr.depth_path is None or fr.mask_path is None:
            continue
        try:
            # Real CO3D v2 stores some depth maps/masks at another size than the image;
            # like PyTorch3D's loader, bring both to the image size.
            depth = resize_plane(
                load_depth_png(root / fr.depth_path, scale_adjustment=fr.depth_scale),
                fr.image_hw,
                nearest=True,
            )
            mask = resize_plane(load_mask_png(root / fr.mask_path), fr.image_hw, nearest=False)
        except DatasetError as e:
            skipped.handle(e, on_error)
            continue
        sel = (mask > mask_threshold) & (depth > 0)
        if sel.any():
            medians.append(float(np.median(depth[sel])))
    return float(np.mean(medians)) if medians else None


@dataclass(frozen=True)
class CO3DConfig:
    """Options of :class:`CO3DDataset`."""

    root: str
    """Dataset root holding ``<category>/frame_annotations.jgz`` etc."""
    categories: tuple[str, ...] = ("hydrant",)
    """Categories to read (DFM: ``hydrant``, or ten with ``all_class``)."""
    subset_name: str = "fewview_dev"
    """Set list to read: ``<category>/set_lists/set_lists_<subset_name>.json``."""
    split: Literal["train", "val", "test"] = "train"
    """Part of the set list."""
    image_size: int = 64
    """Side of the square output images (after the centre-square crop)."""
    sampling: FrameSamplingConfig = field(default_factory=FrameSamplingConfig)
    """Context/target/novel frame choice."""
    top_n_sequences: int | None = None
    """Keep only the N sequences with the best ``viewpoint_quality_score`` per category (DFM: 500)."""
    mean_depth_scale: float = 10.0
    """Target for the mean of per-frame median foreground depths after scale normalisation."""
    mask_threshold: float = 0.4
    """Foreground probability above which a depth pixel counts towards the scale."""
    scale_cache_dir: str | None = None
    """Folder for the per-sequence scale cache JSON; ``None``: ``<root>/dfm_cache``."""
    scale_augmentation: float = 0.0
    """Train split only: multiply the scene scale by ``U(1 - r, 1 + r)`` (DFM README: 0.2)."""
    near: float = 0.5
    """Near plane after scale normalisation."""
    far: float = 40.0
    """Far plane after scale normalisation."""
    on_error: OnError = "raise"
    """``"raise"`` a typed error on bad input, or ``"skip"`` bad frames/sequences and count them."""
    seed: int = 0
    """Base seed of the per-item randomness."""
    progress: bool = True
    """Show progress bars (scale computation)."""

    def build(self) -> CO3DDataset:
        """The dataset."""
        return CO3DDataset(self)


class CO3DDataset(Dataset):
    """CO3D v2 sequences as :class:`ViewBatch` items (``B = 1``; use :func:`dfm_data.collate`).

    Attributes:
        sequences: ``(category, sequence_name)`` per index.
        frames: sequence_name -> frames of the split ordered by ``frame_number``.
        scales: sequence_name -> scale in dataset units (``None`` if unknown, then no rescaling).
        skipped: counts of bad items skipped (``on_error="skip"``).
    """

    def __init__(self, config: CO3DConfig) -> None:
        self.config = config
        self.root = Path(config.root)
        self.skipped = SkipCounter()
        self.skipped.share_with_workers()  # workers report skips back to this process
        self.epoch = 0
        if not self.root.is_dir():
            raise MissingFileError("dataset root does not exist", path=self.root)
        self.sequences: list[tuple[str, str]] = []
        self.frames: dict[str, list[CO3DFrame]] = {}
        self._all_frames: dict[str, list[CO3DFrame]] = {}
        for category in config.categories:
            self._load_category(category)
        if not self.sequences:
            raise EmptySubsetError(
                f"no usable sequence in split {config.split!r} of subset {config.subset_name!r} "
                f"for categories {list(config.categories)}",
                path=self.root,
            )
        self.scales = self._scales()

    # -- index ---------------------------------------------------------------------------------
    def _load_category(self, category: str) -> None:
        cfg = self.config
        cat_dir = self.root / category
        if not (cat_dir / "frame_annotations.jgz").is_file():
            raise UnknownCategoryError(
                f"unknown category {category!r}; available: {list_categories(self.root)}",
                path=cat_dir,
                field="categories",
            )
        set_list_path = cat_dir / "set_lists" / f"set_lists_{cfg.subset_name}.json"
        if not set_list_path.is_file():
            raise UnknownCategoryError(
                f"unknown subset {cfg.subset_name!r}; available: {list_subsets(self.root, category)}",
                path=set_list_path,
                field="subset_name",
            )
        set_lists = _load_json(set_list_path)
        if not isinstance(set_lists, dict):
            raise BadAnnotationError("expected an object with train/val/test", path=set_list_path)
        entries = set_lists.get(cfg.split, [])
        if not isinstance(entries, list):
            raise BadAnnotationError("expected a list", path=set_list_path, field=cfg.split)
        wanted: set[str] = set()
        for i, e in enumerate(entries):
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[2], str)):
                raise BadAnnotationError(
                    "expected [sequence_name, frame_number, image_path]",
                    path=set_list_path,
                    field=f"{cfg.split}[{i}]",
                )
            wanted.add(e[2])

        ann_path = cat_dir / "frame_annotations.jgz"
        by_seq: dict[str, list[CO3DFrame]] = {}
        for i, rec in enumerate(load_jgz(ann_path)):
            try:
                fr = parse_frame_annotation(rec, source=ann_path, index=i)
            except DatasetError as e:
                self.skipped.handle(e, cfg.on_error)
                continue
            by_seq.setdefault(fr.sequence_name, []).append(fr)
        seq_path = cat_dir / "sequence_annotations.jgz"
        quality: dict[str, float | None] = {}
        for i, rec in enumerate(load_jgz(seq_path)):
            try:
                s = parse_sequence_annotation(rec, source=seq_path, index=i)
            except DatasetError as e:
                self.skipped.handle(e, cfg.on_error)
                continue
            quality[s.sequence_name] = s.viewpoint_quality_score

        names = []
        for name, frames in sorted(by_seq.items()):
            frames.sort(key=lambda f: f.frame_number)
            in_split = [f for f in frames if f.image_path in wanted]
            if in_split:
                self._all_frames[name] = frames
                self.frames[name] = in_split
                names.append(name)
        if cfg.top_n_sequences is not None:
            names.sort(key=lambda n: -(quality.get(n) if quality.get(n) is not None else -np.inf))
            names = sorted(names[: cfg.top_n_sequences])
        self.sequences.extend((category, n) for n in names)

    # -- scale ---------------------------------------------------------------------------------
    def _cache_path(self, category: str) -> Path:
        base = (
            Path(self.config.scale_cache_dir)
            if self.config.scale_cache_dir
            else self.root / "dfm_cache"
        )
        return base / f"co3d_scales_{category}.json"

    def _scales(self) -> dict[str, float | None]:
        cfg = self.config
        scales: dict[str, float | None] = {}
        for category in cfg.categories:
            path = self._cache_path(category)
            cache: dict[str, float | None] = {}
            if path.is_file():
                data = _load_json(path)
                if (
                    isinstance(data, dict)
                    and data.get("version") == _SCALE_CACHE_VERSION
                    and data.get("mask_threshold") == cfg.mask_threshold
                    and isinstance(data.get("scales"), dict)
                ):
                    cache = data["scales"]
            todo = [n for c, n in self.sequences if c == category and n not in cache]
            for name in tqdm(
                todo, desc=f"CO3D scales ({category})", disable=not cfg.progress or not todo
            ):
                cache[name] = sequence_scale(
                    self.root,
                    self._all_frames[name],
                    mask_threshold=cfg.mask_threshold,
                    on_error=cfg.on_error,
                    skipped=self.skipped,
                )
            if todo:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp")
                    payload = {
                        "version": _SCALE_CACHE_VERSION,
                        "mask_threshold": cfg.mask_threshold,
                        "scales": cache,
                    }
                    tmp.write_text(json.dumps(payload, indent=0, sort_keys=True))
                    tmp.replace(path)
                except OSError as e:
                    logger.warning("could not write scale cache %s (%s); kept in memory", path, e)
            scales.update({n: cache.get(n) for c, n in self.sequences if c == category})
        return scales

    # -- items ---------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Changes the per-item randomness (frames, augmentation) for a new epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sequences)

    def _view(self, frame: CO3DFrame, factor: float) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        h, w = frame.image_hw
        rgb = load_rgb(self.root / frame.image_path, expected_hw=(h, w), field="image.path")
        top, left, side = centre_square_crop(h, w)
        image = to_model_image(
            rgb[top : top + side, left : left + side],
            (self.config.image_size, self.config.image_size),
        )
        K = crop_intrinsics(frame.intrinsics, (h, w), (top, left, side, side))
        c2w = frame.c2w.copy()
        c2w[:3, 3] *= factor
        return image, c2w, K

    def _item(self, index: int) -> ViewBatch:
        cfg = self.config
        _, name = self.sequences[index]
        rng = item_rng(cfg.seed, self.epoch, index)
        ctx, tgt, nov = sample_view_indices(len(self.frames[name]), cfg.sampling, rng)
        factor = 1.0
        if cfg.split == "train" and cfg.scale_augmentation > 0:
            r = cfg.scale_augmentation
            factor /= float(rng.uniform(1.0 - r, 1.0 + r))
        return self.views_at(index, ctx, tgt, nov, scale_factor=factor)

    def views_at(
        self,
        index: int,
        context: list[int],
        target: list[int],
        novel: list[int] = (),  # type: ignore[assignment]
        *,
        scale_factor: float = 1.0,
    ) -> ViewBatch:
        """Sequence ``index`` at chosen frame positions (evaluation, videos), ``B = 1``.

        Args:
            index: sequence index.
            context, target, novel: positions in the sequence's frame order (``context`` non-empty).
            scale_factor: extra factor on the normalised scene scale (augmentation).

        Raises:
            IndexError: a position outside the sequence.
        """
        cfg = self.config
        _, name = self.sequences[index]
        frames = self.frames[name]
        check_frame_positions((*context, *target, *novel), len(frames), f"sequence {name}")
        scale = self.scales.get(name)
        factor = 1.0 if scale is None or scale <= 0 else cfg.mean_depth_scale / scale
        factor *= scale_factor
        views = {}
        for key, idx in (("context", context), ("target", target), ("novel", novel)):
            views[key] = [(*self._view(frames[i], factor), frames[i].frame_number) for i in idx]
        s = cfg.image_size
        return make_view_batch(views, image_size_hw=(s, s), near=cfg.near, far=cfg.far, index=index)

    def __getitem__(self, index: int) -> ViewBatch:
        """Item ``index`` (deterministic given seed, epoch and index).

        With ``on_error="skip"`` a sequence with a bad frame is counted and the next index is tried.
        """
        return load_item(
            index,
            len(self),
            self._item,
            on_error=self.config.on_error,
            skipped=self.skipped,
            root=self.root,
        )
