"""Strict parsing helpers shared by the annotation/pose parsers (typed errors, never crashes)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dfm_data.errors import BadAnnotationError, BadCameraError

__all__ = ["get_field", "numbers"]

_MISSING = object()


def get_field(
    record: Any,
    key: str,
    kind: type | tuple[type, ...],
    *,
    source: str | Path,
    field: str,
    default: Any = _MISSING,
) -> Any:
    """``record[key]`` checked to be a ``kind`` (bools never count as numbers).

    Raises:
        BadAnnotationError: ``record`` is not a dict, the key is missing (and no default), or the
            value has the wrong type.
    """
    if not isinstance(record, dict):
        raise BadAnnotationError(
            f"expected an object, got {type(record).__name__}", path=source, field=field
        )
    name = f"{field}.{key}" if field else key
    if key not in record or record[key] is None:
        if default is not _MISSING:
            return default
        raise BadAnnotationError("missing key", path=source, field=name)
    value = record[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise BadAnnotationError("expected a number, got a bool", path=source, field=name)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kinds):
        want = "/".join(k.__name__ for k in kinds)
        raise BadAnnotationError(
            f"expected {want}, got {type(value).__name__}", path=source, field=name
        )
    return value


def _flatten(value: Any, shape: tuple[int, ...], source: str | Path, field: str) -> list[float]:
    if not shape:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadAnnotationError(
                f"expected a number, got {type(value).__name__}", path=source, field=field
            )
        return [float(value)]
    if not isinstance(value, (list, tuple)) or len(value) != shape[0]:
        raise BadAnnotationError(f"expected a list of length {shape[0]}", path=source, field=field)
    out: list[float] = []
    for v in value:
        out.extend(_flatten(v, shape[1:], source, field))
    return out


def numbers(
    value: Any, shape: tuple[int, ...], *, source: str | Path, field: str, finite: bool = True
) -> np.ndarray:
    """A nested list of numbers of exact ``shape`` as float64.

    Raises:
        BadAnnotationError: wrong nesting/length or a non-number.
        BadCameraError: a non-finite number when ``finite`` (camera fields).
    """
    flat = _flatten(value, shape, source, field)
    if finite and not all(math.isfinite(v) for v in flat):
        raise BadCameraError("non-finite value", path=source, field=field)
    return np.asarray(flat, dtype=np.float64).reshape(shape)
