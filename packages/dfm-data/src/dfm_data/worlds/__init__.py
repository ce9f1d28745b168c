"""Synthetic worlds written in the real on-disk formats (exact analytic ray casting, seeded)."""

from dfm_data.worlds.motion import (
    MotionWorldConfig,
    motion_flow,
    render_motion_frame,
    synthesize_motion,
)
from dfm_data.worlds.objects import (
    ObjectScene,
    ObjectsWorldConfig,
    render_object_scene,
    synthesize_objects,
)

__all__ = [
    "MotionWorldConfig",
    "ObjectScene",
    "ObjectsWorldConfig",
    "motion_flow",
    "render_motion_frame",
    "render_object_scene",
    "synthesize_motion",
    "synthesize_objects",
]
