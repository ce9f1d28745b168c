"""Shipped weights of the ``objects-demo`` preset (see ``weights/MODEL_CARD.md``).

Two safetensors files, written by ``scripts/ship_weights.py`` from a finished
``dfm train objects-demo`` run (its EMA weights):

* ``objects_demo_dfm.safetensors``: the DFM model (``SceneModelConfig.build()``);
* ``objects_demo_baseline.safetensors``: the deterministic pixelNeRF baseline
  (``SceneModelConfig.build_baseline()``).

Each holds the networks' trainable parameters in float16 (half the size; the demo's renders
do not change visibly) and, in the file's string metadata, the ``SceneModelConfig`` as JSON
(``model_config``), the model ``kind`` and free-form provenance (steps, run, date). Buffers
(the positional encoding's frequencies) are not stored: the config rebuilds them exactly.
Loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dfm_render.presets import SceneModelConfig

__all__ = [
    "KINDS",
    "SHIP_COMMAND",
    "WEIGHTS_DIR",
    "config_from_dict",
    "load_objects_demo",
    "read_scene_config",
    "read_weights_metadata",
    "save_scene_weights",
    "weights_path",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
"""Folder of the shipped weight files (packaged in the wheel)."""

KINDS: Mapping[str, str] = types.MappingProxyType(
    {"dfm": "objects_demo_dfm.safetensors", "baseline": "objects_demo_baseline.safetensors"}
)
"""Model kind -> its shipped file name in ``WEIGHTS_DIR``."""

SHIP_COMMAND = "uv run python packages/dfm-render/scripts/ship_weights.py RUN_DIR"
"""The command that writes the shipped files from a finished ``dfm train objects-demo`` run."""


def weights_path(kind: str = "dfm", weights_dir: str | Path | None = None) -> Path:
    """Where the weights of ``kind`` live (``weights_dir`` or the shipped folder).

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    return Path(weights_dir if weights_dir is not None else WEIGHTS_DIR) / KINDS[kind]


def config_from_dict(cls: type, data: Mapping[str, Any], *, where: str = "config") -> Any:
    """Rebuild a (nested) config dataclass from ``dataclasses.asdict`` output.

    Fields whose annotation is a dataclass are rebuilt recursively; JSON lists become tuples
    where the annotation is a tuple. Missing keys keep their defaults (a file written before
    a field existed still loads).

    Args:
        cls: the dataclass type, e.g. ``SceneModelConfig``.
        data: its fields as plain JSON values.
        where: name of ``data`` in error messages.

    Raises:
        ValueError: ``data`` is not a mapping, or has keys ``cls`` does not know (a file
            from a newer version); the message names them.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: {cls.__name__} has no field(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            value = config_from_dict(hint, value, where=f"{where}.{name}")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def read_weights_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (``model_config``, ``kind``, provenance)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"objects-demo weights: no file at {path}; write it from a finished "
            f"`dfm train objects-demo --run-dir RUN_DIR` run with `{SHIP_COMMAND}`"
        )


def read_scene_config(path: str | Path) -> SceneModelConfig:
    """The ``SceneModelConfig`` stored in a weights file's metadata.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says how to make it).
        ValueError: the file carries no (or an unreadable) ``model_config``.
    """
    path = Path(path)
    _check_file(path)
    metadata = read_weights_metadata(path)
    if "model_config" not in metadata:
        raise ValueError(f"{path}: no 'model_config' in the safetensors metadata")
    try:
        data = json.loads(metadata["model_config"])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: model_config is not valid JSON ({error})") from error
    return config_from_dict(SceneModelConfig, data, where=f"{path}: model_config")


def save_scene_weights(
    model: nn.Module,
    path: str | Path,
    *,
    config: SceneModelConfig,
    kind: str,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a model's parameters as safetensors with its config in the metadata.

    Args:
        model: a ``ForwardDiffusion`` built by ``config.build()`` (``kind="dfm"``) or a
            ``PixelNeRFBaseline`` built by ``config.build_baseline()`` (``kind="baseline"``).
        path: output file (written to a temporary name, then renamed).
        config: the config that built ``model``.
        kind: ``"dfm"`` or ``"baseline"``.
        metadata: extra string metadata (steps, source run, date...).
        dtype: storage dtype of the parameters (float16 keeps the shipped files small).

    Returns:
        The path written.

    Raises:
        ValueError: unknown ``kind``, or a metadata key that collides with ours.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    extra = dict(metadata or {})
    reserved = {"model_config", "kind", "dtype"} & set(extra)
    if reserved:
        raise ValueError(f"metadata: keys {sorted(reserved)} are reserved")
    path = Path(path)
    state = {
        name: param.detach().to("cpu", dtype).contiguous()
        for name, param in model.named_parameters()
    }
    meta = {
        "model_config": json.dumps(dataclasses.asdict(config)),
        "kind": kind,
        "dtype": str(dtype).removeprefix("torch."),
        **{key: str(value) for key, value in extra.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.chmod(0o644)  # safetensors creates files private; weights are shipped to every user
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_objects_demo(
    kind: str = "dfm",
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build the objects-demo model from its stored config and load its weights.

    Args:
        kind: ``"dfm"`` (a dfm-core ``ForwardDiffusion``) or ``"baseline"`` (a
            ``PixelNeRFBaseline``).
        path: a weights file written by ``save_scene_weights``; None uses the shipped one.
        device: where to put the model.

    Returns:
        The model in eval mode, float32.

    Raises:
        ValueError: unknown ``kind``, or the file holds another kind of model or tensors that
            do not fit the config (the message names the file).
        FileNotFoundError: no weights file (the message names it and the command that makes it).
    """
    path = Path(path) if path is not None else weights_path(kind)
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    config = read_scene_config(path)
    stored_kind = read_weights_metadata(path).get("kind")
    if stored_kind != kind:
        raise ValueError(f"{path}: holds a {stored_kind!r} model, asked for {kind!r}")
    model = config.build() if kind == "dfm" else config.build_baseline()
    state = {name: value.to(torch.float32) for name, value in load_file(str(path)).items()}
    expected = {name for name, _ in model.named_parameters()}
    missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unknown:
        raise ValueError(
            f"{path}: tensors do not match the {kind} model of its config "
            f"(missing {missing[:4]}, unexpected {unknown[:4]})"
        )
    # strict=False: buffers are rebuilt from the config, not stored; the parameters were
    # checked above, so a shape mismatch is the only error left (load_state_dict names it).
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()
