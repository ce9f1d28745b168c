"""Softmax splatting forward model and single-image motion DFM."""

__version__ = "0.1.0"

__all__ = ["__version__"]
