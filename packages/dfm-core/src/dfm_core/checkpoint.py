"""Atomic, pickle-free training checkpoints.

Layout of a run's ``checkpoints/`` directory::

    checkpoints/
      step_000123/
        model.safetensors   model weights; the run config (JSON) in the metadata
        ema.safetensors     EMA weights (what sampling uses); same metadata
        config.json         the same config, readable
        state.pt            optimiser, step, data position, RNG states (plain tensors/dicts)
        manifest.json       written last: the byte size of each file above
      step_000246/ ...
      latest                text file naming the newest checkpoint, written last

Guarantees:

* **Atomic.** A checkpoint is written into a hidden temp dir in the same parent, every
  file and the dir are fsynced, then the dir is renamed to ``step_XXXXXX``. A directory
  with that name and a manifest whose sizes match is *complete*; anything else (a
  ``.tmp-*`` dir left by a killed run, a truncated file) is ignored when resuming and
  removed at the next save.
* **Old checkpoints are deleted only after** the new one is complete and ``latest`` names it.
* **No pickled code.** Weights are safetensors; ``state.pt`` holds only tensors, numbers,
  strings, lists, tuples and dicts and is read with ``torch.load(weights_only=True)``,
  which refuses anything else (:class:`CheckpointError`).

The newest complete checkpoint (highest step) is what ``Trainer.resume`` uses; ``latest``
is a convenience for people and tools (``load_weights(run_dir)`` follows it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

__all__ = [
    "CheckpointError",
    "checkpoint_name",
    "is_complete_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_train_state",
    "load_weights",
    "save_checkpoint",
]

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest"
FORMAT_VERSION = 1

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMP_PREFIXES = (".tmp-", ".trash-")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or holds something other than plain data."""


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` optimiser steps."""
    return f"step_{step:06d}"


def _to_json(config: Any) -> str:
    def default(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        if isinstance(obj, (set, frozenset)):
            return sorted(obj)
        raise TypeError(
            f"config value {obj!r} of type {type(obj).__name__} is not JSON-serialisable"
        )

    return json.dumps(config, default=default, sort_keys=True)


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes a rename durable on POSIX; some platforms refuse it.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _plain_state_dict(state: Mapping[str, Any], what: str) -> dict[str, Tensor]:
    """Contiguous CPU-independent tensors, with storage shared between keys broken up.

    safetensors refuses tensors that share memory (tied weights); cloning the second and
    later aliases keeps every key, so ``load_state_dict(strict=True)`` works on load.
    """
    out: dict[str, Tensor] = {}
    seen: set[tuple[str, int]] = set()
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{what}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                "safetensors checkpoints hold tensors only"
            )
        tensor = value.detach()
        storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
        if tensor.numel() > 0 and storage in seen:
            tensor = tensor.clone()
        elif tensor.numel() > 0:
            seen.add(storage)
        out[key] = tensor.contiguous()
    return out


def is_complete_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a finished checkpoint dir (manifest present, every size matching)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        files = manifest["files"]
        return all((path / name).stat().st_size == size for name, size in files.items()) and all(
            name in files for name in (MODEL_FILE, EMA_FILE, CONFIG_FILE, STATE_FILE)
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def list_checkpoints(checkpoints_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``checkpoints_dir`` as ``(step, path)``, oldest first."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir() and is_complete_checkpoint(entry):
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint with the highest step, or ``None`` if there is none."""
    found = list_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".tmp-latest-{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST_FILE)
    _fsync_dir(root)


def _prune(root: Path, keep_last: int | None, newest: Path) -> None:
    """Remove leftovers of interrupted saves, then all but the ``keep_last`` newest."""
    for entry in root.iterdir():
        stale_temp = entry.name.startswith(_TEMP_PREFIXES)
        partial = _STEP_DIR.match(entry.name) and not is_complete_checkpoint(entry)
        if (stale_temp or partial) and entry != newest:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    if keep_last is None:
        return
    complete = [path for _, path in list_checkpoints(root) if path != newest]
    for path in complete[: max(0, len(complete) - (keep_last - 1))]:
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(
    checkpoints_dir: str | os.PathLike[str],
    step: int,
    *,
    model_state: Mapping[str, Tensor],
    ema_state: Mapping[str, Tensor],
    train_state: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write ``checkpoints_dir/step_XXXXXX`` atomically, point ``latest`` at it, prune.

    Args:
        checkpoints_dir: the run's checkpoint directory (created if missing).
        step: optimiser steps completed; names the directory.
        model_state: model ``state_dict`` (tensors only).
        ema_state: EMA model ``state_dict`` (tensors only).
        train_state: everything else needed to resume, as plain data (tensors, numbers,
            strings, ``None``, lists, tuples, dicts); written with ``torch.save``.
        config: JSON-serialisable run config (dataclasses allowed), stored in
            ``config.json`` and in the metadata of both safetensors files.
        keep_last: keep this many newest complete checkpoints (``None`` keeps all).

    Returns:
        The path of the new checkpoint directory.
    """
    if step < 0:
        raise ValueError(f"save_checkpoint: step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"save_checkpoint: keep_last must be >= 1 or None, got {keep_last}")
    root = Path(checkpoints_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = root / name
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        config_json = _to_json(config if config is not None else {})
        metadata = {"format": "dfm", "format_version": str(FORMAT_VERSION), "step": str(step)}
        metadata["config"] = config_json
        save_file(_plain_state_dict(model_state, "model"), tmp / MODEL_FILE, metadata=metadata)
        save_file(_plain_state_dict(ema_state, "ema"), tmp / EMA_FILE, metadata=metadata)
        (tmp / CONFIG_FILE).write_text(json.dumps(json.loads(config_json), indent=2) + "\n")
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(dict(train_state), f)
        for file in (MODEL_FILE, EMA_FILE, CONFIG_FILE, STATE_FILE):
            _fsync_file(tmp / file)
        sizes = {
            file: (tmp / file).stat().st_size
            for file in (MODEL_FILE, EMA_FILE, CONFIG_FILE, STATE_FILE)
        }
        manifest = {"format_version": FORMAT_VERSION, "step": step, "files": sizes}
        with open(tmp / MANIFEST_FILE, "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():
            # Same step written before (e.g. a save retried after a crash): swap it out
            # first, since rename cannot replace a non-empty directory.
            trash = root / f".trash-{name}-{uuid.uuid4().hex}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_latest(root, name)
    _prune(root, keep_last, final)
    return final


def _resolve_checkpoint_dir(path: Path) -> Path:
    """A checkpoint dir from a checkpoint dir, a ``checkpoints/`` dir or a run dir."""
    if (path / MANIFEST_FILE).exists():
        return path
    for root in (path, path / "checkpoints"):
        pointer = root / LATEST_FILE
        if pointer.is_file():
            candidate = root / pointer.read_text().strip()
            if is_complete_checkpoint(candidate):
                return candidate
        newest = latest_checkpoint(root)
        if newest is not None:
            return newest
    raise CheckpointError(f"{path}: no complete checkpoint found")


def load_weights(
    path: str | os.PathLike[str], *, ema: bool = False, device: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load weights and their config for inference or fine-tuning (no pickle involved).

    Args:
        path: a ``.safetensors`` file, a checkpoint dir, a ``checkpoints/`` dir or a run
            dir (the last two follow ``latest``, falling back to the highest complete step).
        ema: for directories, read ``ema.safetensors`` (the weights to sample with)
            instead of ``model.safetensors``.
        device: where to put the tensors.

    Returns:
        ``(state_dict, config)``: the tensors by name and the JSON config dict embedded
        in the file's metadata (``{}`` if it has none).
    """
    path = Path(path)
    if path.is_dir():
        path = _resolve_checkpoint_dir(path) / (EMA_FILE if ema else MODEL_FILE)
    if not path.is_file():
        raise CheckpointError(f"load_weights: {path} does not exist")
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        metadata = f.metadata() or {}
        state = {key: f.get_tensor(key) for key in f.keys()}
    config = json.loads(metadata["config"]) if "config" in metadata else {}
    return state, config


def load_train_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``state.pt`` from a checkpoint dir (or the file itself), refusing pickled code.

    Raises:
        CheckpointError: the file is missing or holds anything but plain data.
    """
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"load_train_state: {path} does not exist") from error
    except Exception as error:  # UnpicklingError and friends: the file is not plain data
        raise CheckpointError(
            f"load_train_state: {path} is not a plain-data checkpoint and was refused "
            f"(torch.load weights_only=True): {error}"
        ) from error
