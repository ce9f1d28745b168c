"""Vimeo-90K loader: triplet (``tri_*list.txt``) and septuplet (``sep_*list.txt``) layouts.

An item is one clip: a context frame, a target frame and optional novel frames (1-based ``imK.png``
numbers), with the same random crop and horizontal flip applied to all of them (train split), then an
optional antialiased resize. Returns :class:`~dfm_data.batch.FrameBatch` with ``B = 1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from dfm_data.batch import FrameBatch, load_item
from dfm_data.errors import (
    BadAnnotationError,
    EmptySubsetError,
    MissingFileError,
    OnError,
    SkipCounter,
)
from dfm_data.images import load_rgb, to_model_image
from dfm_data.seeding import item_rng

__all__ = ["Vimeo90KConfig", "Vimeo90KDataset", "list_file", "parse_clip_list"]

_CLIP = re.compile(r"^[0-9A-Za-z_]+/[0-9A-Za-z_]+$")
_N_FRAMES = {"triplet": 3, "septuplet": 7}


def list_file(root: str | Path, layout: str, split: str) -> Path:
    """Path of the official list: ``tri_trainlist.txt``, ``sep_testlist.txt``, ..."""
    prefix = {"triplet": "tri", "septuplet": "sep"}[layout]
    return Path(root) / f"{prefix}_{split}list.txt"


def parse_clip_list(
    text: str,
    *,
    source: str | Path,
    on_error: OnError = "raise",
    skipped: SkipCounter | None = None,
) -> list[str]:
    """Parses a Vimeo list: one ``00001/0001``-style clip per line; blank lines are skipped.

    With ``on_error="skip"`` a malformed line is counted in ``skipped`` and left out.

    Raises:
        BadAnnotationError: a line that is not ``<folder>/<clip>``, naming its line number.
    """
    skipped = skipped if skipped is not None else SkipCounter()
    clips = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if not _CLIP.match(line):
            skipped.handle(
                BadAnnotationError(
                    f"expected '<folder>/<clip>', got {line[:40]!r}",
                    path=source,
                    field=f"line {n}",
                ),
                on_error,
            )
            continue
        clips.append(line)
    return clips


@dataclass(frozen=True)
class Vimeo90KConfig:
    """Options of :class:`Vimeo90KDataset`."""

    root: str
    """Folder holding ``sequences/`` and the list files."""
    layout: Literal["triplet", "septuplet"] = "triplet"
    """Which Vimeo-90K set (3 or 7 frames per clip)."""
    split: Literal["train", "test"] = "train"
    """Which list to read."""
    context_frame: int = 1
    """1-based frame number of the context (observed) frame."""
    target_frame: int = 2
    """1-based frame number of the target frame."""
    novel_frames: tuple[int, ...] = (3,)
    """1-based frame numbers of extra frames (empty for none)."""
    expected_size_hw: tuple[int, int] | None = (256, 448)
    """Size every frame must have; ``None`` accepts any (all frames of a clip must still agree)."""
    crop_size_hw: tuple[int, int] | None = None
    """Crop size: random position in train, centred in test; ``None`` keeps the full frame."""
    resize_hw: tuple[int, int] | None = None
    """Output size after the crop (antialiased bilinear); ``None`` keeps the crop size."""
    hflip_probability: float = 0.5
    """Train only: probability of a horizontal flip of the whole clip."""
    time_reverse_probability: float = 0.0
    """Train only: probability of swapping the context and target frames."""
    on_error: OnError = "raise"
    """``"raise"`` a typed error on bad input, or ``"skip"`` bad clips and count them."""
    seed: int = 0
    """Base seed of the per-item randomness."""

    def build(self) -> Vimeo90KDataset:
        """The dataset."""
        return Vimeo90KDataset(self)


class Vimeo90KDataset(Dataset):
    """Vimeo-90K clips as :class:`FrameBatch` items (``B = 1``)."""

    def __init__(self, config: Vimeo90KConfig) -> None:
        self.config = config
        self.root = Path(config.root)
        self.skipped = SkipCounter()
        self.skipped.share_with_workers()  # workers report skips back to this process
        self.epoch = 0
        n = _N_FRAMES[config.layout]
        for k in (config.context_frame, config.target_frame, *config.novel_frames):
            if not 1 <= k <= n:
                raise ValueError(f"frame number {k} outside 1..{n} for the {config.layout} layout")
        if not self.root.is_dir():
            raise MissingFileError("dataset root does not exist", path=self.root)
        path = list_file(self.root, config.layout, config.split)
        if not path.is_file():
            raise MissingFileError("clip list does not exist", path=path)
        self.clips = parse_clip_list(
            path.read_text(encoding="utf8", errors="replace"),
            source=path,
            on_error=config.on_error,
            skipped=self.skipped,
        )
        if not self.clips:
            first = self.skipped.first
            cause = f"; first problem: {first}" if first is not None else ""
            raise EmptySubsetError(f"the clip list has no usable clip{cause}", path=path)
        if not (self.root / "sequences").is_dir():
            raise MissingFileError("no sequences/ folder", path=self.root / "sequences")

    def set_epoch(self, epoch: int) -> None:
        """Changes the per-item randomness for a new epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def _item(self, index: int) -> FrameBatch:
        cfg = self.config
        clip = self.clips[index]
        rng = item_rng(cfg.seed, self.epoch, index)
        train = cfg.split == "train"
        ctx, tgt = cfg.context_frame, cfg.target_frame
        if train and rng.random() < cfg.time_reverse_probability:
            ctx, tgt = tgt, ctx
        numbers = [ctx, tgt, *cfg.novel_frames]
        folder = self.root / "sequences" / clip
        frames = []
        size = cfg.expected_size_hw
        for k in numbers:
            img = load_rgb(folder / f"im{k}.png", expected_hw=size, field=f"im{k}")
            size = img.shape[:2]
            frames.append(img)
        h, w = size
        top, left, ch, cw = 0, 0, h, w
        if cfg.crop_size_hw is not None:
            ch, cw = cfg.crop_size_hw
            if ch > h or cw > w:
                raise ValueError(f"crop {cfg.crop_size_hw} larger than the frames ({h}, {w})")
            top = int(rng.integers(0, h - ch + 1)) if train else (h - ch) // 2
            left = int(rng.integers(0, w - cw + 1)) if train else (w - cw) // 2
        flip = train and rng.random() < cfg.hflip_probability
        x = torch.stack(
            [
                to_model_image(
                    f[top : top + ch, left : left + cw][:, ::-1]
                    if flip
                    else f[top : top + ch, left : left + cw],
                    cfg.resize_hw,
                )
                for f in frames
            ]
        )  # (2 + Nn, 3, H', W')
        return FrameBatch(
            context=x[:1],
            target=x[1:2],
            novel=x[2:].unsqueeze(0),
            frame_index=torch.tensor([numbers], dtype=torch.int64),
            index=torch.tensor([index], dtype=torch.int64),
        )

    def __getitem__(self, index: int) -> FrameBatch:
        """Item ``index`` (deterministic given seed, epoch and index); see ``on_error``."""
        return load_item(
            index,
            len(self),
            self._item,
            on_error=self.config.on_error,
            skipped=self.skipped,
            root=self.root,
        )
