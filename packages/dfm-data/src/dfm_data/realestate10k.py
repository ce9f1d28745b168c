"""RealEstate10k loader for its three layouts (reference formats §2).

- ``"txt"``: the official camera files ``<cameras_root>/<split>/<clip>.txt`` (URL line, then 19 columns
  per frame) with frames ``<root>/<split>/<clip>/<timestamp>.jpg`` matched by timestamp.
- ``"mat"``: DFM's layout: ``<root>/<split>/<clip>/<timestamp>.jpg`` and ``<root>/<split>.mat`` holding,
  per clip, an ``(N, 19)`` array of the txt rows (timestamp first); rows matched by timestamp.
- ``"torch"``: pixelSplat chunks ``<root>/<split>/*.torch`` + ``index.json`` (JPEG bytes decoded here).

Every frame is centre-cropped to a square with the normalised intrinsics corrected for the crop (DFM's
``fx *= 640/360`` is this correction for 640×360 frames), resized with antialiasing to ``image_size``,
and served as :class:`~dfm_data.batch.ViewBatch` items (one item = one clip). Poses are used in the
dataset's SfM scale (no normalisation, as in DFM).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from dfm_data.batch import ViewBatch, load_item, make_view_batch
from dfm_data.cameras import centre_square_crop, check_c2w, check_intrinsics, crop_intrinsics
from dfm_data.errors import (
    BadAnnotationError,
    BadCameraError,
    DatasetError,
    EmptySubsetError,
    MissingFileError,
    OnError,
    SkipCounter,
)
from dfm_data.images import decode_rgb_bytes, load_rgb, to_model_image
from dfm_data.sampling import FrameSamplingConfig, check_frame_positions, sample_view_indices
from dfm_data.seeding import item_rng

__all__ = [
    "RealEstate10kConfig",
    "RealEstate10kDataset",
    "parse_camera_row",
    "parse_camera_txt",
]


def parse_camera_row(
    values: Any, *, source: str | Path, field: str
) -> tuple[np.ndarray, np.ndarray]:
    """One camera without its timestamp: ``fx fy cx cy 0 0`` + row-major 3×4 world-to-camera.

    Args:
        values: 18 numbers.
        source, field: named in errors.

    Returns:
        ``(c2w (4, 4), K (3, 3))`` float64: OpenCV camera-to-world and normalised intrinsics.

    Raises:
        BadAnnotationError: not 18 numbers.
        BadCameraError: non-finite, non-positive focal, or the 3×3 part not a rotation.
    """
    try:
        row = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise BadAnnotationError(f"camera is not numeric ({e})", path=source, field=field) from e
    if row.shape != (18,):
        raise BadAnnotationError(
            f"camera needs 18 numbers, got {row.size}", path=source, field=field
        )
    if not np.isfinite(row).all():
        raise BadCameraError("non-finite camera value", path=source, field=field)
    fx, fy, cx, cy = row[:4]
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    check_intrinsics(K, path=source, field=field)
    w2c = np.eye(4)
    w2c[:3] = row[6:].reshape(3, 4)
    with np.errstate(all="ignore"):
        check_c2w(w2c, path=source, field=field)  # rigid iff its inverse is
        c2w = np.eye(4)
        c2w[:3, :3] = w2c[:3, :3].T
        c2w[:3, 3] = -w2c[:3, :3].T @ w2c[:3, 3]
    if not np.isfinite(c2w).all():
        raise BadCameraError("pose inverse is not finite", path=source, field=field)
    return c2w, K


def parse_camera_txt(
    text: str,
    *,
    source: str | Path,
    on_error: OnError = "raise",
    skipped: SkipCounter | None = None,
) -> tuple[str, list[tuple[int, np.ndarray]]]:
    """Parses an official RealEstate10k camera file.

    With ``on_error="skip"`` a bad row is counted in ``skipped`` and left out.

    Returns:
        ``(url, [(timestamp_us, row (18,)), ...])`` in file order.

    Raises:
        BadAnnotationError: empty file, a URL line with no camera row, a row without 19
            numbers, a non-integer timestamp (line named).
    """
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise BadAnnotationError(
            "empty camera file (expected a URL line)", path=source, field="line 1"
        )
    skipped = skipped if skipped is not None else SkipCounter()
    if not any(line.strip() for line in lines[1:]):
        raise BadAnnotationError(
            "camera file has a URL line but no camera rows", path=source, field="line 2"
        )
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 19:
                raise BadAnnotationError(
                    f"expected 19 columns, got {len(parts)}", path=source, field=f"line {n}"
                )
            try:
                ts = int(parts[0])
                vals = np.array([float(p) for p in parts[1:]])
            except ValueError as e:
                raise BadAnnotationError(
                    f"not a number ({e})", path=source, field=f"line {n}"
                ) from e
        except BadAnnotationError as e:
            skipped.handle(e, on_error)
            continue
        rows.append((ts, vals))
    return lines[0].strip(), rows


@dataclass
class _Frame:
    timestamp: int
    camera: np.ndarray  # (18,) the txt row without its timestamp
    source: Any  # Path of a jpg, or (chunk path, clip position, frame position)
    c2w: np.ndarray | None = None  # (4, 4), set once the camera is parsed
    K: np.ndarray | None = None  # (3, 3) normalised, full frame


@dataclass(frozen=True)
class RealEstate10kConfig:
    """Options of :class:`RealEstate10kDataset`."""

    root: str
    """Frames root (``txt``/``mat``: holds ``<split>/<clip>/<ts>.jpg``; ``torch``: holds ``<split>/*.torch``)."""
    layout: Literal["txt", "mat", "torch"] = "mat"
    """Which on-disk layout to read (see module docstring)."""
    split: Literal["train", "test"] = "train"
    """Which split folder to read."""
    cameras_root: str | None = None
    """``txt`` layout: folder holding ``<split>/<clip>.txt``; ``None``: ``<root>/../RealEstate10K``."""
    pose_file: str | None = None
    """``mat`` layout: the ``.mat`` file; ``None``: ``<root>/<split>.mat``."""
    image_size: int = 64
    """Side of the square output images."""
    sampling: FrameSamplingConfig = field(
        default_factory=lambda: FrameSamplingConfig(min_gap=100, max_gap=180)
    )
    """Context/target/novel frame choice (DFM RE10k: 100-180 frames apart)."""
    expected_size_hw: tuple[int, int] | None = (360, 640)
    """Size every frame must have (RealEstate10k: 360×640); ``None`` accepts any."""
    max_fov_deg: float | None = 100.0
    """Drop clips whose horizontal field of view exceeds this (pixelSplat's filter); ``None``: keep all."""
    max_clips: int | None = None
    """Keep only the first N clips (sorted by id)."""
    near: float = 0.7
    """Near plane (SfM units)."""
    far: float = 10.0
    """Far plane (SfM units)."""
    on_error: OnError = "raise"
    """``"raise"`` a typed error on bad input, or ``"skip"`` bad frames/clips and count them."""
    seed: int = 0
    """Base seed of the per-item randomness."""

    def build(self) -> RealEstate10kDataset:
        """The dataset."""
        return RealEstate10kDataset(self)


class RealEstate10kDataset(Dataset):
    """RealEstate10k clips as :class:`ViewBatch` items (``B = 1``).

    Attributes:
        clips: clip ids, one per index.
        urls: clip id -> YouTube URL (``txt`` and ``torch`` layouts).
        skipped: counts of bad items skipped (``on_error="skip"``).
    """

    def __init__(self, config: RealEstate10kConfig) -> None:
        self.config = config
        self.root = Path(config.root)
        self.skipped = SkipCounter()
        self.skipped.share_with_workers()  # workers report skips back to this process
        self.epoch = 0
        self.urls: dict[str, str] = {}
        self._frames: dict[str, list[_Frame]] = {}
        self._chunk_cache: OrderedDict[Path, list] = OrderedDict()
        if not self.root.is_dir():
            raise MissingFileError("dataset root does not exist", path=self.root)
        {"txt": self._index_txt, "mat": self._index_mat, "torch": self._index_torch}[
            config.layout
        ]()
        self._filter()
        self.clips = sorted(self._frames)
        if config.max_clips is not None:
            self.clips = self.clips[: config.max_clips]
        if not self.clips:
            first = self.skipped.first
            cause = f"; first problem: {first}" if first is not None else ""
            raise EmptySubsetError(
                f"no usable clip in split {config.split!r}{cause}", path=self.root / config.split
            )

    # -- indexing ------------------------------------------------------------------------------
    def _handle(self, e: DatasetError) -> None:
        self.skipped.handle(e, self.config.on_error)

    def _jpgs(self, clip_dir: Path) -> dict[int, Path]:
        out = {}
        for p in clip_dir.glob("*.jpg"):
            if p.stem.isdigit():
                out[int(p.stem)] = p
        return out

    def _attach_frames(self, clip: str, rows: list[tuple[int, np.ndarray]], source: Path) -> None:
        clip_dir = self.root / self.config.split / clip
        if not clip_dir.is_dir():
            self._handle(MissingFileError("no frame folder for this clip", path=clip_dir))
            return
        jpgs = self._jpgs(clip_dir)
        frames = []
        for ts, row in rows:
            if ts not in jpgs:
                self._handle(
                    MissingFileError(f"no frame for timestamp {ts}", path=clip_dir / f"{ts}.jpg")
                )
                continue
            frames.append(_Frame(ts, row, jpgs[ts]))
        if frames:
            self._frames[clip] = sorted(frames, key=lambda f: f.timestamp)

    def _split_dir(self, base: Path) -> Path:
        d = base / self.config.split
        if not d.is_dir():
            raise MissingFileError("split folder does not exist", path=d)
        return d

    def _index_txt(self) -> None:
        cams = (
            Path(self.config.cameras_root)
            if self.config.cameras_root
            else self.root.parent / "RealEstate10K"
        )
        for path in sorted(self._split_dir(cams).glob("*.txt")):
            try:
                url, rows = parse_camera_txt(
                    path.read_text(encoding="utf8", errors="replace"),
                    source=path,
                    on_error=self.config.on_error,
                    skipped=self.skipped,
                )
            except DatasetError as e:
                self._handle(e)
                continue
            self.urls[path.stem] = url
            self._attach_frames(path.stem, rows, path)

    def _index_mat(self) -> None:
        from scipy.io import loadmat

        path = (
            Path(self.config.pose_file)
            if self.config.pose_file
            else self.root / f"{self.config.split}.mat"
        )
        if not path.is_file():
            raise MissingFileError("pose file does not exist", path=path)
        try:
            mat = loadmat(path)
        except Exception as e:  # scipy raises many types for corrupt files
            raise BadAnnotationError(
                f"cannot read .mat file ({type(e).__name__}: {e})", path=path
            ) from e
        for clip, table in sorted(mat.items()):
            if clip.startswith("__"):
                continue
            arr = np.asarray(table)
            if arr.ndim != 2 or arr.shape[1] != 19 or not np.issubdtype(arr.dtype, np.number):
                self._handle(
                    BadAnnotationError(
                        f"expected an (N, 19) array, got {arr.shape}", path=path, field=clip
                    )
                )
                continue
            if arr.shape[0] == 0:
                self._handle(BadAnnotationError("no camera rows", path=path, field=clip))
                continue
            ts = arr[:, 0]
            if not (np.isfinite(ts).all() and (ts == np.round(ts)).all()):
                self._handle(
                    BadAnnotationError(
                        "timestamps must be integers", path=path, field=f"{clip}[:, 0]"
                    )
                )
                continue
            self._attach_frames(clip, [(int(r[0]), r[1:].astype(np.float64)) for r in arr], path)

    def _index_torch(self) -> None:
        split_dir = self._split_dir(self.root)
        index_path = split_dir / "index.json"
        if not index_path.is_file():
            raise MissingFileError("index.json does not exist", path=index_path)
        try:
            index = json.loads(index_path.read_text(encoding="utf8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadAnnotationError(f"not valid JSON ({e})", path=index_path) from e
        if not isinstance(index, dict):
            raise BadAnnotationError("expected an object clip -> chunk", path=index_path)
        for chunk_name in sorted(set(index.values())):
            chunk_path = split_dir / str(chunk_name)
            try:
                chunk = self._load_chunk(chunk_path)
            except DatasetError as e:
                self._handle(e)
                continue
            for ci, ex in enumerate(chunk):
                fld = f"[{ci}]"
                try:
                    if not isinstance(ex, dict) or not {
                        "key",
                        "timestamps",
                        "cameras",
                        "images",
                    } <= set(ex):
                        raise BadAnnotationError(
                            "expected a dict with key/timestamps/cameras/images",
                            path=chunk_path,
                            field=fld,
                        )
                    cams = np.asarray(ex["cameras"], dtype=np.float64)
                    ts = np.asarray(ex["timestamps"]).reshape(-1)
                    n = len(ex["images"])
                    if n == 0:
                        raise BadAnnotationError(
                            "clip has no frames", path=chunk_path, field=f"{fld}.images"
                        )
                    if (
                        cams.ndim != 2
                        or cams.shape[1] != 18
                        or len(ts) != cams.shape[0]
                        or n != len(ts)
                    ):
                        raise BadAnnotationError(
                            f"inconsistent sizes: cameras {cams.shape}, timestamps {ts.shape}, {n} images",
                            path=chunk_path,
                            field=f"{fld}.cameras",
                        )
                except DatasetError as e:
                    self._handle(e)
                    continue
                key = str(ex["key"])
                self.urls[key] = str(ex.get("url", ""))
                frames = [_Frame(int(ts[i]), cams[i], (chunk_path, ci, i)) for i in range(len(ts))]
                self._frames[key] = sorted(frames, key=lambda f: f.timestamp)

    def _load_chunk(self, path: Path) -> list:
        if path in self._chunk_cache:
            self._chunk_cache.move_to_end(path)
            return self._chunk_cache[path]
        if not path.is_file():
            raise MissingFileError("chunk file does not exist", path=path)
        try:
            chunk = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:  # torch raises many types for truncated/corrupt pickles
            raise BadAnnotationError(
                f"cannot load chunk ({type(e).__name__}: {e})", path=path
            ) from e
        if not isinstance(chunk, list):
            raise BadAnnotationError("expected a list of examples", path=path)
        self._chunk_cache[path] = chunk
        while len(self._chunk_cache) > 2:
            self._chunk_cache.popitem(last=False)
        return chunk

    def _filter(self) -> None:
        """Parses cameras once; drops bad frames (skip mode) and too-wide clips."""
        for clip in list(self._frames):
            good = []
            for f in self._frames[clip]:
                try:
                    f.c2w, f.K = parse_camera_row(
                        f.camera,
                        source=self._camera_source(clip, f),
                        field=f"timestamp {f.timestamp}",
                    )
                except DatasetError as e:
                    self._handle(e)
                    continue
                good.append(f)
            if good and self.config.max_fov_deg is not None:
                fx = good[0].K[0, 0]
                fov = math.degrees(2 * math.atan(0.5 / fx))
                if fov > self.config.max_fov_deg:
                    good = []
            if good:
                self._frames[clip] = good
            else:
                del self._frames[clip]

    def _camera_source(self, clip: str, f: _Frame) -> str:
        layout = self.config.layout
        if layout == "txt":
            cams = (
                Path(self.config.cameras_root)
                if self.config.cameras_root
                else self.root.parent / "RealEstate10K"
            )
            return str(cams / self.config.split / f"{clip}.txt")
        if layout == "mat":
            return str(
                Path(self.config.pose_file)
                if self.config.pose_file
                else self.root / f"{self.config.split}.mat"
            )
        return str(f.source[0])

    # -- items ---------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Changes the per-item randomness for a new epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def _image(self, f: _Frame) -> np.ndarray:
        size = self.config.expected_size_hw
        if isinstance(f.source, Path):
            return load_rgb(f.source, expected_hw=size)
        chunk_path, ci, i = f.source
        data = self._load_chunk(chunk_path)[ci]["images"][i]
        raw = data.numpy().tobytes() if isinstance(data, torch.Tensor) else bytes(data)
        return decode_rgb_bytes(
            raw, source=str(chunk_path), expected_hw=size, field=f"[{ci}].images[{i}]"
        )

    def _view(self, f: _Frame) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        rgb = self._image(f)
        h, w = rgb.shape[:2]
        top, left, side = centre_square_crop(h, w)
        image = to_model_image(
            rgb[top : top + side, left : left + side], (self.config.image_size,) * 2
        )
        return image, f.c2w, crop_intrinsics(f.K, (h, w), (top, left, side, side))

    def _item(self, index: int) -> ViewBatch:
        cfg = self.config
        frames = self._frames[self.clips[index]]
        rng = item_rng(cfg.seed, self.epoch, index)
        return self.views_at(index, *sample_view_indices(len(frames), cfg.sampling, rng))

    def views_at(
        self,
        index: int,
        context: list[int],
        target: list[int],
        novel: list[int] = (),  # type: ignore[assignment]
    ) -> ViewBatch:
        """Clip ``index`` at chosen frame positions (evaluation pairs, videos), ``B = 1``.

        Args:
            index: clip index.
            context, target, novel: positions in the clip's frame order (``context`` non-empty).

        Raises:
            IndexError: a position outside the clip.
        """
        cfg = self.config
        name = self.clips[index]
        frames = self._frames[name]
        check_frame_positions((*context, *target, *novel), len(frames), f"clip {name}")
        views = {
            key: [(*self._view(frames[i]), i) for i in positions]
            for key, positions in (("context", context), ("target", target), ("novel", novel))
        }
        s = cfg.image_size
        return make_view_batch(views, image_size_hw=(s, s), near=cfg.near, far=cfg.far, index=index)

    def __getitem__(self, index: int) -> ViewBatch:
        """Item ``index`` (deterministic given seed, epoch and index); see ``on_error``."""
        return load_item(
            index,
            len(self),
            self._item,
            on_error=self.config.on_error,
            skipped=self.skipped,
            root=self.root,
        )
