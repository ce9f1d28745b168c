"""The preset YAML files shipped in this package (``dfm_apps/configs/*.yaml``).

Deliberately free of torch and of the core: ``dfm --help`` and ``dfm presets`` list the
presets without importing them. A preset is a YAML file; its first comment line is its
one-line summary, its ``app`` key (default ``projection``) names the schema it fills.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

__all__ = ["preset_names", "preset_summary", "preset_text"]

_SUFFIX = ".yaml"


def _folder() -> Traversable:
    return resources.files("dfm_apps").joinpath("configs")


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(
        entry.name.removesuffix(_SUFFIX)
        for entry in _folder().iterdir()
        if entry.name.endswith(_SUFFIX)
    )


def preset_text(name: str) -> str:
    """The YAML text of preset ``name`` (raises KeyError listing the valid names)."""
    if name not in preset_names():
        raise KeyError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names())}")
    return _folder().joinpath(name + _SUFFIX).read_text()


def preset_summary(name: str) -> str:
    """The first comment line of the preset's file, without the ``#``."""
    for line in preset_text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""
