"""The `dfm` command line: demos, training and sampling presets, SLURM launcher, reports."""

__version__ = "0.4.0"

__all__ = ["__version__"]
