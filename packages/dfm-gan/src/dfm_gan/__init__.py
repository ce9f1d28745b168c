"""StyleGAN2 generator as a forward model, safe weight import, GAN-inversion DFM."""

__version__ = "0.1.0"

__all__ = ["__version__"]
