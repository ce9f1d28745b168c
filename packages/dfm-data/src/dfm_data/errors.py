"""One family of typed errors for bad dataset input, plus the skip-and-count policy.

Every error raised at a loader's public boundary is a :class:`DatasetError`. Each names the
offending file (``path``) and, where it applies, the record field (``field``), so a message like::

    BadCameraError: car/frame_annotations.jgz [frames[12].viewpoint.R]: rotation has a NaN

points at the exact place to look. Loaders take ``on_error="raise"`` (default) or ``"skip"``;
with ``"skip"`` bad frames/sequences are dropped, counted in a :class:`SkipCounter` and logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "BadAnnotationError",
    "BadCameraError",
    "CorruptImageError",
    "DatasetError",
    "EmptySubsetError",
    "ImageSizeError",
    "MissingFileError",
    "OnError",
    "SkipCounter",
    "UnknownCategoryError",
]

logger = logging.getLogger("dfm_data")

OnError = Literal["raise", "skip"]


class DatasetError(Exception):
    """Base of every data error: names the file and the field that is wrong.

    Attributes:
        path: the file or folder at fault (``None`` when not file-specific).
        field: the record field at fault, e.g. ``"viewpoint.focal_length"`` (``None`` when whole file).
        reason: what is wrong, in words.
    """

    def __init__(
        self, reason: str, *, path: str | Path | None = None, field: str | None = None
    ) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        self.field = field
        where = self.path or "<no file>"
        if field:
            where += f" [{field}]"
        super().__init__(f"{where}: {reason}")


class MissingFileError(DatasetError, FileNotFoundError):
    """A file or folder the format requires does not exist."""


class CorruptImageError(DatasetError):
    """An image (or depth/mask PNG) cannot be decoded: truncated, not an image, wrong mode."""


class ImageSizeError(DatasetError):
    """An image decodes but its size disagrees with the annotation or the format."""


class BadCameraError(DatasetError):
    """A camera is non-finite or degenerate (non-rotation, zero/negative focal, singular pose)."""


class BadAnnotationError(DatasetError):
    """An annotation/list file is malformed: bad JSON, wrong type, missing key, bad row."""


class EmptySubsetError(DatasetError):
    """A requested split/subset/list selects no usable item."""


class UnknownCategoryError(DatasetError):
    """A requested category (or subset name) does not exist under the dataset root."""


@dataclass
class SkipCounter:
    """Counts bad items dropped under ``on_error="skip"``, by error class, and logs each one.

    Attributes:
        counts: error class name -> number of items skipped.
        first: the first error skipped (for reports), or ``None``.
    """

    counts: Counter[str] = field(default_factory=Counter)
    first: DatasetError | None = None

    def record(self, error: DatasetError) -> None:
        """Counts ``error`` and logs it at WARNING level."""
        self.counts[type(error).__name__] += 1
        if self.first is None:
            self.first = error
        logger.warning("skipping bad item: %s", error)

    @property
    def total(self) -> int:
        """Number of items skipped so far."""
        return sum(self.counts.values())

    def handle(self, error: DatasetError, on_error: OnError) -> None:
        """Re-raises ``error`` when ``on_error == "raise"``, else records it."""
        if on_error == "raise":
            raise error
        self.record(error)
