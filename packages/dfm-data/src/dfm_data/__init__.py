"""Real-format dataset loaders (CO3D v2, RealEstate10k, Vimeo-90K, GAN samples) and synthetic worlds."""

__version__ = "0.1.0"

__all__ = ["__version__"]
