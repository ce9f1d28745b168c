"""Write network pickles in the official StyleGAN2-ADA structure (test fixtures, no NVIDIA code).

The official training loop pickles ``{G, D, G_ema, augment_pipe, training_set_kwargs}`` where
every network is a ``@persistence.persistent_class`` instance, reduced to
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = {type: 'class',
version, module_src, class_name, state}`` and ``state`` the module's ``__dict__``
(``_init_kwargs`` holding ``dnnlib.util.EasyDict`` objects).

:func:`write_official_pickle` reproduces that structure from our modules: it writes tiny
stand-in ``torch_utils/persistence.py`` and ``dnnlib/util.py`` modules into a temporary
directory, puts it on ``sys.path`` only while pickling (so the pickle references exactly the
global names the official files do), then removes the directory and the modules again.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

__all__ = ["write_official_pickle"]

_PERSISTENCE_SRC = '''"""Stand-in for NVIDIA's torch_utils.persistence (pickle structure only)."""

def _reconstruct_persistent_obj(meta):
    # The official function exec()s meta["module_src"]. Never needed by the safe loader.
    raise RuntimeError("stand-in _reconstruct_persistent_obj must not be called")


class PersistentStandIn:
    """Pickles exactly like an official persistent-class instance."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,))
'''

_DNNLIB_UTIL_SRC = '''"""Stand-in for dnnlib.util (pickle structure only)."""


class EasyDict(dict):
    def __getattr__(self, name):
        return self[name]
'''

_PLAIN = (int, float, str, bool, type(None))


def _module_meta(
    module: nn.Module,
    class_name: str,
    init_kwargs: Mapping[str, Any] | None,
    persistence: Any,
    easydict: type,
    extra_state: Mapping[str, Any] | None = None,
) -> Any:
    state: dict[str, Any] = {
        "training": False,
        "_parameters": OrderedDict(
            (k, None if v is None else nn.Parameter(v.detach().clone(), requires_grad=False))
            for k, v in module._parameters.items()
        ),
        "_buffers": OrderedDict(
            (k, None if v is None else v.detach().clone()) for k, v in module._buffers.items()
        ),
        "_non_persistent_buffers_set": set(module._non_persistent_buffers_set),
        "_backward_hooks": OrderedDict(),
        "_forward_hooks": OrderedDict(),
        "_forward_pre_hooks": OrderedDict(),
        "_state_dict_hooks": OrderedDict(),
        "_load_state_dict_pre_hooks": OrderedDict(),
        "_modules": OrderedDict(
            (k, _module_meta(v, type(v).__name__, None, persistence, easydict))
            for k, v in module._modules.items()
            if v is not None
        ),
        "_init_args": (),
        "_init_kwargs": _to_easydict(init_kwargs or {}, easydict),
    }
    for name, value in vars(module).items():
        if name.startswith("_") or name in state:
            continue
        if isinstance(value, float) and "gain" in name:
            state[name] = np.float64(value)  # the official layers store numpy scalars here
        elif isinstance(value, _PLAIN) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value)
        ):
            state[name] = value
    state.update(extra_state or {})
    meta = {
        "type": "class",
        "version": 6,
        "module_src": "# official module source would be stored here (never executed)\n",
        "class_name": class_name,
        "state": state,
    }
    return persistence.PersistentStandIn(meta)


def _to_easydict(value: Any, easydict: type) -> Any:
    if isinstance(value, Mapping):
        return easydict({k: _to_easydict(v, easydict) for k, v in value.items()})
    return value


def write_official_pickle(
    path: str | os.PathLike[str],
    networks: Mapping[str, tuple[nn.Module, Mapping[str, Any]] | None],
    *,
    training_set_kwargs: Mapping[str, Any] | None = None,
    extra_state: Mapping[str, Mapping[str, Any]] | None = None,
    protocol: int = pickle.DEFAULT_PROTOCOL,
) -> Path:
    """Pickle modules in the structure of an official StyleGAN2-ADA snapshot.

    Args:
        path: output ``.pkl`` path.
        networks: ``{"G": (module, init_kwargs), "D": ..., "G_ema": ..., "augment_pipe": None}``;
            each module is pickled as a persistent-class object with its ``_init_kwargs``.
        training_set_kwargs: stored as an EasyDict under ``training_set_kwargs``.
        extra_state: ``{network key: {attribute: value}}`` merged into a network's state
            (tests use it to smuggle in objects the loader must refuse).
        protocol: pickle protocol (official files: 3 or 4, depending on the Python used).

    Returns:
        ``path``.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "torch_utils").mkdir()
        (root / "torch_utils" / "__init__.py").write_text("")
        (root / "torch_utils" / "persistence.py").write_text(_PERSISTENCE_SRC)
        (root / "dnnlib").mkdir()
        (root / "dnnlib" / "__init__.py").write_text("from .util import EasyDict\n")
        (root / "dnnlib" / "util.py").write_text(_DNNLIB_UTIL_SRC)
        sys.path.insert(0, tmp)
        saved = {
            k: sys.modules.pop(k)
            for k in list(sys.modules)
            if k.split(".")[0] in ("torch_utils", "dnnlib")
        }
        try:
            persistence = importlib.import_module("torch_utils.persistence")
            easydict = importlib.import_module("dnnlib.util").EasyDict
            data: dict[str, Any] = {}
            for key, entry in networks.items():
                if entry is None:
                    data[key] = None
                    continue
                module, init_kwargs = entry
                data[key] = _module_meta(
                    module,
                    type(module).__name__,
                    init_kwargs,
                    persistence,
                    easydict,
                    (extra_state or {}).get(key),
                )
            data["training_set_kwargs"] = _to_easydict(dict(training_set_kwargs or {}), easydict)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                pickle.dump(data, f, protocol=protocol)
        finally:
            sys.path.remove(tmp)
            for k in [k for k in sys.modules if k.split(".")[0] in ("torch_utils", "dnnlib")]:
                del sys.modules[k]
            sys.modules.update(saved)
    return path
