"""Softmax splatting forward model and single-image motion DFM."""

from dfm_flow.motion import (
    MOTION_PRESETS,
    EdgeAwareSmoothness,
    MotionForwardModel,
    MotionModelConfig,
    MotionParams,
    MotionPredictor,
    MotionPreset,
    MotionSamples,
    MotionSignal,
    edge_aware_smoothness,
    frames_to_batch,
    motion_preset,
    sample_motion,
)
from dfm_flow.pretrained import load_motion_demo
from dfm_flow.softsplat import (
    ImportanceMetric,
    ImportanceMetricConfig,
    backwarp,
    importance_metric,
    pixel_grid,
    softsplat,
)
from dfm_flow.visualize import flow_to_rgb, hsv_to_rgb

__version__ = "0.2.0"

__all__ = [
    "MOTION_PRESETS",
    "EdgeAwareSmoothness",
    "ImportanceMetric",
    "ImportanceMetricConfig",
    "MotionForwardModel",
    "MotionModelConfig",
    "MotionParams",
    "MotionPredictor",
    "MotionPreset",
    "MotionSamples",
    "MotionSignal",
    "__version__",
    "backwarp",
    "edge_aware_smoothness",
    "flow_to_rgb",
    "frames_to_batch",
    "hsv_to_rgb",
    "importance_metric",
    "load_motion_demo",
    "motion_preset",
    "pixel_grid",
    "sample_motion",
    "softsplat",
]
