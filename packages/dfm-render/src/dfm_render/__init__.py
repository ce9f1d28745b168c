"""dfm-render: the 3D forward model of DFM and the inverse-graphics model built on it.

Stages, one module each: ``cameras`` (pixel grids, rays, projection), ``ray_sampling``
(depths along rays, hierarchical sampling), ``raymarching`` (emission-absorption
compositing), ``encoding`` and ``pixel_features`` (pixelNeRF conditioning), ``field`` (the
time-conditioned radiance field), ``encoder`` (conv stem + DiT), ``renderer`` (the forward
model), ``model`` (DFM predictor, pixelNeRF baseline), ``losses``, ``presets``; plus
``trajectories`` (camera paths) and ``export`` (point clouds, meshes).
"""

from dfm_render.cameras import (
    Projection,
    Rays,
    crop_patches,
    patch_grid,
    pixel_grid,
    project_points,
    random_patch_origins,
    rays_from_pixels,
)
from dfm_render.encoder import EncoderConfig, ImageEncoder
from dfm_render.encoding import PositionalEncoding
from dfm_render.export import (
    Mesh,
    PointCloud,
    extract_mesh,
    fuse_point_cloud,
    save_mesh,
    save_point_cloud,
    voxel_downsample,
    write_obj,
    write_ply,
)
from dfm_render.field import FieldConfig, FieldOutput, RadianceFieldMLP
from dfm_render.losses import LossWeights, LPIPSLoss, MissingWeightsError
from dfm_render.model import (
    PixelNeRFBaseline,
    SceneCondition,
    ScenePredictor,
    load_baseline_into,
    make_scene_batch,
)
from dfm_render.pixel_features import sample_pixel_features
from dfm_render.presets import SCENE_PRESETS, SamplingConfig, SceneModelConfig, scene_config
from dfm_render.pretrained import load_objects_demo, save_scene_weights
from dfm_render.ray_sampling import sample_along_rays, sample_pdf
from dfm_render.raymarching import RayRendering, composite, distortion_loss, merge_samples
from dfm_render.renderer import Camera, RendererConfig, SceneField, SceneRendering, VolumeRenderer
from dfm_render.trajectories import (
    absolute_from,
    estimate_look_at_point,
    estimate_up,
    interpolate_poses,
    look_at,
    orbit_poses,
    relative_to,
    rigid_inverse,
)

__version__ = "0.3.0"

__all__ = [
    "SCENE_PRESETS",
    "Camera",
    "EncoderConfig",
    "FieldConfig",
    "FieldOutput",
    "ImageEncoder",
    "LPIPSLoss",
    "LossWeights",
    "Mesh",
    "MissingWeightsError",
    "PixelNeRFBaseline",
    "PointCloud",
    "PositionalEncoding",
    "Projection",
    "RadianceFieldMLP",
    "RayRendering",
    "Rays",
    "RendererConfig",
    "SamplingConfig",
    "SceneCondition",
    "SceneField",
    "SceneModelConfig",
    "ScenePredictor",
    "SceneRendering",
    "VolumeRenderer",
    "__version__",
    "absolute_from",
    "composite",
    "crop_patches",
    "distortion_loss",
    "estimate_look_at_point",
    "estimate_up",
    "extract_mesh",
    "fuse_point_cloud",
    "interpolate_poses",
    "load_baseline_into",
    "load_objects_demo",
    "look_at",
    "make_scene_batch",
    "merge_samples",
    "orbit_poses",
    "patch_grid",
    "pixel_grid",
    "project_points",
    "random_patch_origins",
    "rays_from_pixels",
    "relative_to",
    "rigid_inverse",
    "sample_along_rays",
    "sample_pdf",
    "sample_pixel_features",
    "save_mesh",
    "save_point_cloud",
    "save_scene_weights",
    "scene_config",
    "voxel_downsample",
    "write_obj",
    "write_ply",
]
