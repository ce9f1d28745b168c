"""One family of typed errors for bad dataset input, plus the skip-and-count policy.

Every error raised at a loader's public boundary is a :class:`DatasetError`. Each names the
offending file (``path``) and, where it applies, the record field (``field``), so a message like::

    BadCameraError: car/frame_annotations.jgz [frames[12].viewpoint.R]: rotation has a NaN

points at the exact place to look. Loaders take ``on_error="raise"`` (default) or ``"skip"``;
with ``"skip"`` bad frames/sequences are dropped, counted in a :class:`SkipCounter` and logged.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
from collections import Counter
from multiprocessing.context import get_spawning_popen  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, Literal

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


class SkipCounter:
    """Counts bad items dropped under ``on_error="skip"``, by error class, and logs each one.

    Each distinct problem (same error class, file, field and reason) is counted once,
    however often it is met: a bad frame found lazily is one skip, not one per epoch.
    Problems met inside DataLoader worker processes are sent to the process that
    created the counter (through a pipe inherited by the workers) and merged into its
    counts when they are read, so ``dataset.skipped.total`` is the same for 0 or N workers.

    Attributes:
        counts: error class name -> number of distinct items skipped.
        first: the first error skipped (for reports), or ``None``.
    """

    def __init__(self, counts: Counter[str] | None = None, first: DatasetError | None = None):
        self._counts: Counter[str] = Counter(counts or {})
        self._first = first
        self._seen: set[str] = set()
        self._owner = os.getpid()
        self._channel: Any = None  # created lazily: a SimpleQueue from workers to the owner

    # -- cross-process plumbing ----------------------------------------------------------------
    def share_with_workers(self) -> None:
        """Create the channel workers report through; call before DataLoader workers start.

        Datasets call this in ``__init__``; it is cheap (one pipe) and idempotent.
        """
        if self._channel is None and os.getpid() == self._owner:
            self._channel = multiprocessing.get_context().SimpleQueue()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # A queue can only travel to a process being started (a DataLoader worker under
        # spawn); a plain pickle (e.g. saving a dataset) drops it and counts locally.
        if get_spawning_popen() is None:
            state["_channel"] = None
        return state

    def _drain(self) -> None:
        channel = self._channel
        if channel is None or os.getpid() != self._owner:
            return
        while not channel.empty():
            key, name, error = channel.get()
            self._add(key, name, error)

    def _add(self, key: str, name: str, error: DatasetError | None) -> bool:
        if key in self._seen:
            return False
        self._seen.add(key)
        self._counts[name] += 1
        if self._first is None:
            self._first = error
        return True

    # -- public --------------------------------------------------------------------------------
    @property
    def counts(self) -> Counter[str]:
        self._drain()
        return self._counts

    @property
    def first(self) -> DatasetError | None:
        self._drain()
        return self._first

    @first.setter
    def first(self, error: DatasetError | None) -> None:
        self._first = error

    def record(self, error: DatasetError) -> None:
        """Counts ``error`` (once per distinct problem) and logs it at WARNING level."""
        key = f"{type(error).__name__}|{error}"
        if os.getpid() != self._owner and self._channel is not None:
            # In a worker: tell the owner; remember locally to send each problem once.
            if key not in self._seen:
                self._seen.add(key)
                self._channel.put((key, type(error).__name__, _portable(error)))
                logger.warning("skipping bad item: %s", error)
            return
        if self._add(key, type(error).__name__, error):
            logger.warning("skipping bad item: %s", error)

    @property
    def total(self) -> int:
        """Number of distinct items skipped so far (in this process and its workers)."""
        return sum(self.counts.values())

    def handle(self, error: DatasetError, on_error: OnError) -> None:
        """Re-raises ``error`` when ``on_error == "raise"``, else records it."""
        if on_error == "raise":
            raise error
        self.record(error)


def _portable(error: DatasetError) -> DatasetError | None:
    """``error`` if it survives pickling (to cross a pipe), else ``None``."""
    try:
        pickle.dumps(error)
    except Exception:  # an exception holding something unpicklable: send the count only
        return None
    return error
