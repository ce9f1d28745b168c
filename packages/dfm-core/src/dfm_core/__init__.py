"""Generic diffusion-with-forward-models core: schedules, objective, samplers, guidance, DiT, trainer."""

__version__ = "0.1.0"

__all__ = ["__version__"]
