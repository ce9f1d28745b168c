"""Atomic, pickle-free training checkpoints.

Layout of a run's ``checkpoints/`` directory::

    checkpoints/
      step_000123/
        model.safetensors   model weights; the run config (JSON) in the metadata
        ema.safetensors     EMA weights (what sampling uses); same metadata
        config.json         the same config, readable
        state.pt            optimiser, step, data position, RNG states (plain tensors/dicts)
        manifest.json       written last: byte size and SHA-256 of each file above
      step_000246/ ...
      latest                text file naming the newest checkpoint, written last

Guarantees:

* **Atomic.** A checkpoint is written into a hidden temp dir in the same parent, every
  file and the dir are fsynced, then the dir is renamed to ``step_XXXXXX``. A directory
  with that name and a manifest whose sizes match is *complete*; anything else (a
  ``.tmp-*`` dir left by a killed run, a truncated file) is ignored when resuming and
  removed at the next save.
* **Old checkpoints are deleted only after** the new one is complete and ``latest`` names it.
* **Checksummed.** The manifest holds each file's SHA-256. :func:`verify_checkpoint` (run by
  ``Trainer.resume`` on each candidate, newest first, and by the loaders on the file they
  read) refuses a checkpoint whose bytes changed after it was written (bit rot, a partial
  copy of the right size), so resume falls back to the newest *good* checkpoint.
* **Write errors name the file.** A full disk gives ``no space left writing <file>``
  (:class:`CheckpointWriteError`), and a failed save leaves no temp file behind.
* **No pickled code.** Weights are safetensors; ``state.pt`` holds only tensors, numbers,
  strings, lists, tuples and dicts and is read with ``torch.load(weights_only=True)``,
  which refuses anything else (:class:`CheckpointError`).

The newest complete checkpoint (highest step) is what ``Trainer.resume`` uses; ``latest``
is a convenience for people and tools (``load_weights(run_dir)`` follows it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor

__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "checkpoint_name",
    "config_differences",
    "is_complete_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_train_state",
    "load_weights",
    "read_checkpoint_config",
    "save_checkpoint",
    "verify_checkpoint",
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


class CheckpointCorruptError(CheckpointError):
    """A checkpoint's bytes are damaged: checksum or size mismatch, unreadable file.

    ``Trainer.resume`` skips such a checkpoint and falls back to an older one.
    """


class CheckpointMismatchError(CheckpointError):
    """A sound checkpoint that does not fit the model or config it is loaded into."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, read-only, ...); the message names the file.

    Attributes:
        errno: the operating system's error number (``errno.ENOSPC`` for a full disk).
    """

    def __init__(self, error_number: int | None, message: str) -> None:
        RuntimeError.__init__(self, message)
        self.errno = error_number
        self.strerror = message

    def __str__(self) -> str:
        return str(self.args[0])


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


def _open_for_write(path: Path) -> io.BufferedWriter:
    """``open(path, "wb")``; a seam where tests inject write faults (e.g. ``/dev/full``)."""
    return open(path, "wb")


def _write_error(error: OSError, shown: Path) -> CheckpointWriteError:
    """One line naming the file (``shown``, the final path, not the temp one) and the cause."""
    if error.errno == errno.ENOSPC:
        return CheckpointWriteError(error.errno, f"no space left writing {shown}")
    reason = error.strerror or str(error)
    return CheckpointWriteError(error.errno, f"cannot write {shown}: {reason}")


def _write_bytes(path: Path, data: bytes, *, shown: Path) -> str:
    """Write, flush and fsync ``data``; returns its SHA-256 (hex).

    Serialising to memory first and writing here means every file of a checkpoint
    fails the same way on a full disk: an ``OSError`` (ENOSPC) naming ``shown``,
    rather than, say, a zip writer's internal assertion.
    """
    try:
        with _open_for_write(path) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise _write_error(error, shown) from error
    return hashlib.sha256(data).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    """Whether ``path`` is a finished checkpoint dir (manifest present, every size matching).

    A cheap test (no file is read); :func:`verify_checkpoint` also checks the contents.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        files = manifest["files"]
        return all((path / name).stat().st_size == size for name, size in files.items()) and all(
            name in files for name in (MODEL_FILE, EMA_FILE, CONFIG_FILE, STATE_FILE)
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError as error:
        raise CheckpointCorruptError(
            f"{path / MANIFEST_FILE}: missing (incomplete checkpoint)"
        ) from error
    except (OSError, ValueError) as error:
        raise CheckpointCorruptError(f"{path / MANIFEST_FILE}: unreadable ({error})") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointCorruptError(f"{path / MANIFEST_FILE}: no 'files' table")
    return manifest


def _verify_file(path: Path, name: str, manifest: Mapping[str, Any]) -> None:
    file = path / name
    size = manifest["files"].get(name)
    if size is None:
        raise CheckpointCorruptError(f"{file}: not listed in {MANIFEST_FILE}")
    try:
        actual_size = file.stat().st_size
        if actual_size != size:
            raise CheckpointCorruptError(
                f"{file}: {actual_size} bytes, the manifest says {size} (truncated or replaced)"
            )
        expected = (manifest.get("sha256") or {}).get(name)
        if expected is None:  # written before checksums existed: sizes are all we have
            return
        actual = _sha256(file)
    except OSError as error:
        raise CheckpointCorruptError(f"{file}: cannot read ({error.strerror or error})") from error
    if actual != expected:
        raise CheckpointCorruptError(
            f"{file}: content checksum mismatch (sha256 {actual[:12]}..., the manifest says "
            f"{expected[:12]}...): the file was damaged after it was written"
        )


def verify_checkpoint(path: str | os.PathLike[str]) -> None:
    """Check every file of a checkpoint dir against its manifest (sizes and SHA-256).

    Raises:
        CheckpointCorruptError: naming the first damaged or missing file.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    for name in (MODEL_FILE, EMA_FILE, CONFIG_FILE, STATE_FILE):
        _verify_file(path, name, manifest)


def _verify_if_in_checkpoint(file: Path) -> None:
    """Verify ``file`` against the manifest beside it, if there is one."""
    if (file.parent / MANIFEST_FILE).is_file():
        _verify_file(file.parent, file.name, _read_manifest(file.parent))


def list_checkpoints(
    checkpoints_dir: str | os.PathLike[str], *, complete_only: bool = True
) -> list[tuple[int, Path]]:
    """Checkpoints under ``checkpoints_dir`` as ``(step, path)``, oldest first.

    Args:
        checkpoints_dir: a run's ``checkpoints/`` directory.
        complete_only: list only complete ones (manifest present, sizes matching); with
            ``False`` every ``step_XXXXXX`` directory is listed (saves are atomic, so an
            incomplete one was damaged after it was written, not cut short by a kill).
    """
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir() and (not complete_only or is_complete_checkpoint(entry)):
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint with the highest step, or ``None`` if there is none."""
    found = list_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".tmp-latest-{uuid.uuid4().hex}"
    try:
        with open(tmp, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / LATEST_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
    name = checkpoint_name(step)
    final = root / name
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as error:
        raise _write_error(error, final) from error
    try:
        config_json = _to_json(config if config is not None else {})
        metadata = {"format": "dfm", "format_version": str(FORMAT_VERSION), "step": str(step)}
        metadata["config"] = config_json
        state_bytes = io.BytesIO()
        torch.save(dict(train_state), state_bytes)
        payloads = {
            MODEL_FILE: save_safetensors_bytes(
                _plain_state_dict(model_state, "model"), metadata=metadata
            ),
            EMA_FILE: save_safetensors_bytes(
                _plain_state_dict(ema_state, "ema"), metadata=metadata
            ),
            CONFIG_FILE: (json.dumps(json.loads(config_json), indent=2) + "\n").encode(),
            STATE_FILE: state_bytes.getvalue(),
        }
        del state_bytes
        sizes, digests = {}, {}
        for file, data in payloads.items():
            digests[file] = _write_bytes(tmp / file, data, shown=final / file)
            sizes[file] = len(data)
        del payloads
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "files": sizes,
            "sha256": digests,
        }
        _write_bytes(
            tmp / MANIFEST_FILE,
            json.dumps(manifest, indent=2).encode(),
            shown=final / MANIFEST_FILE,
        )
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
    try:
        _write_latest(root, name)
    except OSError as error:
        raise _write_error(error, root / LATEST_FILE) from error
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

    Raises:
        CheckpointError: nothing to load at ``path``.
        CheckpointCorruptError: the file fails its manifest checksum or cannot be parsed
            (the message names the file).
    """
    path = Path(path)
    if path.is_dir():
        path = _resolve_checkpoint_dir(path) / (EMA_FILE if ema else MODEL_FILE)
    if not path.is_file():
        raise CheckpointError(f"load_weights: {path} does not exist")
    _verify_if_in_checkpoint(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
        config = json.loads(metadata["config"]) if "config" in metadata else {}
    except Exception as error:  # SafetensorError, OSError, bad JSON: all mean "unreadable"
        raise CheckpointCorruptError(
            f"{path}: not a readable safetensors weights file ({type(error).__name__}: {error})"
        ) from error
    return state, config


def load_train_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``state.pt`` from a checkpoint dir (or the file itself), refusing pickled code.

    Raises:
        CheckpointError: the file is missing or holds anything but plain data.
        CheckpointCorruptError: the file fails its manifest checksum or cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"load_train_state: {path} does not exist")
    _verify_if_in_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise CheckpointCorruptError(
            f"load_train_state: cannot read {path} ({error.strerror or error})"
        ) from error
    except Exception as error:  # UnpicklingError and friends: the file is not plain data
        raise CheckpointError(
            f"load_train_state: {path} is not a plain-data checkpoint and was refused "
            f"(torch.load weights_only=True): {error}"
        ) from error


def read_checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The config saved with a checkpoint (its ``config.json``), without loading weights.

    Args:
        path: a checkpoint dir, a ``checkpoints/`` dir or a run dir (as :func:`load_weights`).

    Raises:
        CheckpointError: no checkpoint there, or its config file is damaged.
    """
    directory = _resolve_checkpoint_dir(Path(path))
    _verify_if_in_checkpoint(directory / CONFIG_FILE)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointCorruptError(f"{directory / CONFIG_FILE}: unreadable ({error})") from error
    return config if isinstance(config, dict) else {}


def config_differences(
    saved: Any, current: Any, sections: Sequence[str] | None = None, *, limit: int = 8
) -> list[str]:
    """Dotted keys whose values differ between two configs, as ``"key (saved -> current)"``.

    Both configs are compared as JSON (dataclasses and tuples normalised), so a config
    read back from a checkpoint compares equal to the one it was written from.

    Args:
        saved: the config stored with a checkpoint.
        current: the config in use now.
        sections: only compare these dotted keys (``None``: everything).
        limit: list at most this many (a last entry says how many more differ).
    """
    old, new = json.loads(_to_json(saved)), json.loads(_to_json(current))
    found: list[str] = []

    def select(tree: Any, dotted: str) -> Any:
        for part in dotted.split(".") if dotted else []:
            tree = tree.get(part) if isinstance(tree, dict) else None
        return tree

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        elif a != b:
            found.append(f"{prefix or '<root>'} ({a!r} -> {b!r})")

    for section in [""] if sections is None else sections:
        walk(select(old, section), select(new, section), section)
    if len(found) > limit:
        found = [*found[:limit], f"... and {len(found) - limit} more"]
    return found
