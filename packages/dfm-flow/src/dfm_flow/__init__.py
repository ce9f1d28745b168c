"""Softmax splatting forward model and single-image motion DFM."""

from dfm_flow.softsplat import (
    ImportanceMetric,
    ImportanceMetricConfig,
    backwarp,
    importance_metric,
    pixel_grid,
    softsplat,
)

__version__ = "0.1.0"

__all__ = [
    "ImportanceMetric",
    "ImportanceMetricConfig",
    "__version__",
    "backwarp",
    "importance_metric",
    "pixel_grid",
    "softsplat",
]
