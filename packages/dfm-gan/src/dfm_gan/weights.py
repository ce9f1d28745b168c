"""Generator weights on disk: safetensors + JSON config, and conversion of official pickles.

Our format for a generator is a directory (or a file pair) holding

* ``<name>.safetensors``: every tensor of the state dict under its official name, with the
  constructor arguments embedded as JSON metadata (key ``"init_kwargs"``);
* ``<name>.json``: the same constructor arguments plus provenance, human-readable.

:func:`convert_official_pickle` turns an official StyleGAN2-ADA network pickle into that
format through :mod:`dfm_gan.safe_pickle`, which never executes code from the pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from dfm_gan.networks import Generator

__all__ = [
    "convert_official_pickle",
    "generator_from_state",
    "load_generator",
    "load_official_generator",
    "save_generator",
]

_META_KEY = "init_kwargs"


def generator_from_state(
    init_kwargs: Mapping[str, Any], state_dict: Mapping[str, Tensor], *, source: str = "state dict"
) -> Generator:
    """Build a :class:`Generator` from constructor arguments and load every tensor exactly.

    Args:
        init_kwargs: the official ``Generator`` constructor arguments.
        state_dict: tensors under their official names.
        source: named in error messages (e.g. the file they came from).

    Raises:
        ValueError: missing or unexpected tensors, or shape mismatches (all names listed).
    """
    kwargs = dict(init_kwargs)
    for key in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"):
        if key not in kwargs:
            raise ValueError(
                f"{source}: generator config has no {key!r}; got keys {sorted(kwargs)}"
            )
    generator = Generator(**kwargs)
    own = generator.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{source}: tensors do not match the generator built from its config; "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    bad = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ValueError(f"{source}: tensor shapes differ from the config's: {bad[:8]}")
    with torch.no_grad():
        for name, value in own.items():
            value.copy_(state_dict[name].to(value.dtype))
    return generator.eval().requires_grad_(False)


def save_generator(
    generator: Generator,
    path: str | os.PathLike[str],
    *,
    extra: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` (atomically: temp file + rename).

    Args:
        generator: the network to save.
        path: file path; a ``.safetensors`` suffix is optional.
        extra: JSON-serialisable provenance stored in the ``.json`` file (source file, ...).
        dtype: storage dtype (float16 halves the file; loading casts back to float32).

    Returns:
        The ``.safetensors`` path.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        path = path.with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = generator.init_kwargs()
    tensors = {
        k: v.detach().to(dtype).cpu().contiguous() for k, v in generator.state_dict().items()
    }
    target = path.with_suffix(".safetensors")
    tmp = target.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(kwargs)})
    os.replace(tmp, target)
    info = {"init_kwargs": kwargs, "num_ws": generator.num_ws, **dict(extra or {})}
    tmp_json = path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp_json, path.with_suffix(".json"))
    return target


def load_generator(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> Generator:
    """Load a generator saved by :func:`save_generator` (config read from the metadata).

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file holds no generator config, or its tensors do not fit it.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"generator weights not found: {path}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        if _META_KEY not in metadata:
            raise ValueError(
                f"{path}: no {_META_KEY!r} metadata; expected a file written by dfm_gan.save_generator"
            )
        kwargs = json.loads(metadata[_META_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return generator_from_state(kwargs, tensors, source=str(path)).to(device)


def load_official_generator(
    pickle_path: str | os.PathLike[str], *, key: str = "G_ema"
) -> Generator:
    """Build our generator from an official StyleGAN2-ADA pickle, without executing it.

    Args:
        pickle_path: e.g. ``ffhq-res256-mirror-paper256-noaug.pkl``.
        key: which network of the pickle (``"G_ema"``, the one to use; or ``"G"``).

    Raises:
        FileNotFoundError: no such file.
        dfm_gan.safe_pickle.UnsafePickleError: the pickle references a global outside the
            allow-list (nothing from it is executed).
        ValueError: the pickle does not have the official structure.
    """
    from dfm_gan.safe_pickle import read_official_network

    network = read_official_network(pickle_path, key=key)
    return generator_from_state(
        network.init_kwargs, network.state_dict, source=f"{pickle_path}[{key!r}]"
    )


def convert_official_pickle(
    pickle_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    key: str = "G_ema",
) -> Path:
    """Convert an official network pickle to ``out_path.safetensors`` + ``out_path.json``.

    Returns:
        The ``.safetensors`` path; load it with :func:`load_generator`.
    """
    generator = load_official_generator(pickle_path, key=key)
    extra = {"source": os.fspath(Path(pickle_path).name), "network": key}
    return save_generator(generator, out_path, extra=extra)
