"""Shipped weights of the ``motion-demo`` preset (see ``weights/MODEL_CARD.md``).

Weights are safetensors (float16) of the network alone, with the ``MotionModelConfig`` as
JSON in the file's metadata, so loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dfm_flow.motion import MotionModelConfig

__all__ = ["WEIGHTS_DIR", "load_motion_demo", "read_metadata", "save_weights"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
"""Folder of the shipped weight files."""

_FILES = {"dfm": "motion_demo_dfm.safetensors", "regressor": "motion_demo_regressor.safetensors"}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_motion_demo(
    kind: str = "dfm", *, path: str | Path | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Build the demo model from its config and load the shipped (or given) weights.

    Args:
        kind: ``"dfm"`` (a ``ForwardDiffusion``) or ``"regressor"`` (the deterministic
            baseline, a ``MotionRegressor``).
        path: a weights file written by ``scripts/train_demo.py``; None uses the shipped one.
        device: where to put the model.

    Returns:
        The model in eval mode, float32.

    Raises:
        ValueError: unknown ``kind``; FileNotFoundError: missing weights file.
    """
    if kind not in _FILES:
        raise ValueError(f"kind: expected one of {sorted(_FILES)}, got {kind!r}")
    path = Path(path) if path is not None else WEIGHTS_DIR / _FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"path: no weights file at {path}")
    metadata = read_metadata(path)
    config = MotionModelConfig(**json.loads(metadata["model_config"]))
    model = config.build() if kind == "dfm" else config.build_regressor()
    state = {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
    model.predictor.load_state_dict(state)
    return model.to(device).eval()


def save_weights(
    predictor: nn.Module,
    config: MotionModelConfig,
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float16,
    **metadata: str,
) -> Path:
    """Write a network's weights as safetensors with its config in the metadata.

    Args:
        predictor: the ``MotionPredictor`` (of a ``ForwardDiffusion`` or ``MotionRegressor``).
        config: the config that built it.
        path: output file.
        dtype: storage dtype (float16 keeps the demo file small).
        **metadata: extra string metadata (steps, wall time, data...).
    """
    path = Path(path)
    state = {k: v.detach().to(dtype).contiguous() for k, v in predictor.state_dict().items()}
    meta = {"model_config": json.dumps(dataclasses.asdict(config)), **metadata}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic
    return path
