"""Read official StyleGAN2-ADA network pickles without executing anything from them.

An official pickle (``network-snapshot-*.pkl``) is a dict ``{G, D, G_ema, augment_pipe,
training_set_kwargs}``. Its networks are ``@persistence.persistent_class`` instances, which
pickle as a call ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta``
holds the full source code of the defining module and the module's ``__dict__`` (its
``_parameters``, ``_buffers``, ``_modules`` and ``_init_kwargs``). Unpickling with the stock
``pickle`` would import NVIDIA's ``torch_utils`` and ``exec`` that stored source (and any
other global a tampered file names).

:class:`RestrictedUnpickler` resolves *only* the globals on :data:`ALLOWED_GLOBALS`, each
mapped to a harmless implementation:

* tensor rebuilding (``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``) without
  backward hooks; storages (``torch.storage._load_from_bytes``) are read with
  ``torch.load(weights_only=True)``;
* ``collections.OrderedDict``, ``builtins.set`` / ``frozenset``, numpy scalars of numeric
  dtypes (the official layers store gains as numpy floats), ``_codecs.encode`` restricted to
  latin-1 text (how protocol 2 spells ``bytes``);
* ``_reconstruct_persistent_obj`` -> returns the captured :class:`PersistentObject`;
* ``dnnlib.util.EasyDict`` -> a plain ``dict`` subclass.

Any other global raises :class:`UnsafePickleError` naming it, before anything is called:
``find_class`` runs when the pickle *names* a global, ahead of the opcode that would call it.
"""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ALLOWED_GLOBALS",
    "OfficialNetwork",
    "PersistentObject",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "flatten_state",
    "read_official_network",
    "safe_load_pickle",
]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list; nothing was executed."""


@dataclass
class PersistentObject:
    """What a persistent-class instance unpickles to here: its class name and ``__dict__``.

    Attributes:
        class_name: e.g. ``"Generator"`` (``meta["class_name"]``).
        state: the module's ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``,
            ``_init_kwargs``, plain attributes).
        version: persistence format version from the pickle.
    """

    class_name: str
    state: dict[str, Any]
    version: int | None = None


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict (can receive pickle BUILD state)."""


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    # The official function exec()s meta["module_src"]; here the source is ignored.
    if not isinstance(meta, Mapping) or meta.get("type") != "class" or "state" not in meta:
        raise pickle.UnpicklingError(
            "persistent object: expected meta = {type: 'class', class_name, state, ...}"
        )
    state = meta["state"]
    if not isinstance(state, Mapping):
        raise pickle.UnpicklingError("persistent object: meta['state'] must be a dict")
    return PersistentObject(str(meta.get("class_name")), dict(state), meta.get("version"))


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool,
    backward_hooks: Any,
    metadata: Any = None,
) -> Tensor:
    # Backward hooks from a file would be callables run later: dropped.
    del backward_hooks
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"tensor: expected a storage, got {type(storage).__name__}")
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, size, stride, bool(requires_grad), OrderedDict(), metadata
    )


def _rebuild_tensor(
    storage: Any, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> Tensor:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride, False, None)


def _rebuild_parameter(
    data: Any, requires_grad: bool, backward_hooks: Any, *state: Any
) -> nn.Parameter:
    del backward_hooks, state
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError(f"parameter: expected a tensor, got {type(data).__name__}")
    return nn.Parameter(data, requires_grad=bool(requires_grad))


def _load_storage_from_bytes(data: bytes) -> Any:
    # torch.storage._load_from_bytes runs a full (unsafe) torch.load; weights_only is safe.
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage: expected bytes")
    return torch.load(io.BytesIO(data), weights_only=True)


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # Protocol 2 has no bytes opcode: bytes are pickled as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode: only (str, 'latin1') is allowed")
    return text.encode("latin1")


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if (
        not isinstance(dtype, np.dtype)
        or dtype.hasobject
        or not isinstance(data, (bytes, bytearray))
    ):
        raise UnsafePickleError("numpy scalar: only numeric dtypes with raw bytes are allowed")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafePickleError("numpy dtype: expected a type string")
    dtype = np.dtype(spec, align=align, copy=copy)
    if dtype.hasobject:
        raise UnsafePickleError(f"numpy dtype: object dtype {spec!r} is not allowed")
    return dtype


ALLOWED_GLOBALS: Mapping[tuple[str, str], Callable[..., Any] | type] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # protocol-2 spelling of builtins
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
}
"""``(module, name)`` a pickle may reference -> what it resolves to (never the original)."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` resolving only :data:`ALLOWED_GLOBALS`; see the module notes."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: not on dfm_gan's allow-list of "
                "tensor/container types (an official StyleGAN2-ADA pickle never needs it; "
                "the file may be tampered with)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r}: not used by network pickles")


def safe_load_pickle(file: str | os.PathLike[str] | BinaryIO) -> Any:
    """Unpickle ``file`` with :class:`RestrictedUnpickler`.

    Raises:
        FileNotFoundError: the path does not exist.
        UnsafePickleError: a global outside the allow-list (its name is in the message).
    """
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"network pickle not found: {path}")
        with path.open("rb") as f:
            return RestrictedUnpickler(f).load()
    return RestrictedUnpickler(file).load()


def _plain(value: Any) -> Any:
    """EasyDict -> dict, numpy scalars -> Python numbers, recursively."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def flatten_state(obj: PersistentObject, prefix: str = "") -> dict[str, Tensor]:
    """The ``state_dict`` of an unpickled persistent module: dotted names -> tensors.

    Walks ``_parameters``, persistent ``_buffers`` and ``_modules`` recursively, in the
    order ``nn.Module.state_dict`` uses.
    """
    out: dict[str, Tensor] = {}
    state = obj.state
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = _as_tensor(value, prefix + name)
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = _as_tensor(value, prefix + name)
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentObject):
            raise ValueError(
                f"submodule {prefix + name}: expected a persistent-class object, got {type(child).__name__}"
            )
        out.update(flatten_state(child, prefix + name + "."))
    return out


def _as_tensor(value: Any, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(value).__name__}")
    return value.detach()


@dataclass(frozen=True)
class OfficialNetwork:
    """One network read from an official pickle.

    Attributes:
        class_name: e.g. ``"Generator"``.
        init_kwargs: constructor arguments (``_init_kwargs``, EasyDicts as dicts).
        state_dict: every parameter and persistent buffer under its official name.
    """

    class_name: str
    init_kwargs: dict[str, Any]
    state_dict: dict[str, Tensor]


def read_official_network(
    file: str | os.PathLike[str] | BinaryIO, *, key: str = "G_ema"
) -> OfficialNetwork:
    """Read one network (default ``G_ema``) of an official StyleGAN2-ADA pickle, safely.

    Args:
        file: path or binary file object of the ``.pkl``.
        key: ``"G_ema"`` (use this one), ``"G"`` or ``"D"``.

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list.
        ValueError: not the official structure (the message says what is missing).
    """
    source = os.fspath(file) if isinstance(file, (str, os.PathLike)) else "pickle"
    data = safe_load_pickle(file)
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a dict of networks, got {type(data).__name__}")
    if key not in data:
        raise ValueError(f"{source}: no network {key!r}; keys are {sorted(map(str, data))}")
    network = data[key]
    if not isinstance(network, PersistentObject):
        raise ValueError(
            f"{source}[{key!r}]: expected a persistent network, got {type(network).__name__}"
        )
    if network.state.get("_init_args"):
        raise ValueError(f"{source}[{key!r}]: positional constructor arguments are not supported")
    init_kwargs = _plain(network.state.get("_init_kwargs") or {})
    if not init_kwargs:
        raise ValueError(f"{source}[{key!r}]: no _init_kwargs; cannot rebuild the architecture")
    return OfficialNetwork(network.class_name, init_kwargs, flatten_state(network))
