"""Cameras, rays, volume rendering and pixelNeRF conditioning for 3D DFM."""

__version__ = "0.1.0"

__all__ = ["__version__"]
