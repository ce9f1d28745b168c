"""Real-format dataset loaders (CO3D v2, RealEstate10k, Vimeo-90K, GAN samples) and synthetic worlds.

Every loader returns a typed batch (:mod:`dfm_data.batch`) with ``B = 1`` per item; use
:func:`collate` (or :func:`make_dataloader`) to batch them. Bad input raises one family of errors
(:class:`DatasetError`), or is skipped and counted with ``on_error="skip"``.
"""

from dfm_data.batch import FrameBatch, MaskedPatchBatch, ViewBatch, Views, collate
from dfm_data.cli import main
from dfm_data.co3d import CO3DConfig, CO3DDataset
from dfm_data.errors import (
    BadAnnotationError,
    BadCameraError,
    CorruptImageError,
    DatasetError,
    EmptySubsetError,
    ImageSizeError,
    MissingFileError,
    SkipCounter,
    UnknownCategoryError,
)
from dfm_data.gan_samples import GanSamplesConfig, GanSamplesDataset, MappingSynthesisGenerator
from dfm_data.realestate10k import RealEstate10kConfig, RealEstate10kDataset
from dfm_data.sampling import FrameSamplingConfig
from dfm_data.seeding import item_rng, make_dataloader, worker_init_fn
from dfm_data.validate import ValidationReport, validate_co3d, validate_re10k, validate_vimeo
from dfm_data.vimeo90k import Vimeo90KConfig, Vimeo90KDataset

__version__ = "0.3.0"

__all__ = [
    "BadAnnotationError",
    "BadCameraError",
    "CO3DConfig",
    "CO3DDataset",
    "CorruptImageError",
    "DatasetError",
    "EmptySubsetError",
    "FrameBatch",
    "FrameSamplingConfig",
    "GanSamplesConfig",
    "GanSamplesDataset",
    "ImageSizeError",
    "MappingSynthesisGenerator",
    "MaskedPatchBatch",
    "MissingFileError",
    "RealEstate10kConfig",
    "RealEstate10kDataset",
    "SkipCounter",
    "UnknownCategoryError",
    "ValidationReport",
    "ViewBatch",
    "Views",
    "Vimeo90KConfig",
    "Vimeo90KDataset",
    "__version__",
    "collate",
    "item_rng",
    "main",
    "make_dataloader",
    "validate_co3d",
    "validate_re10k",
    "validate_vimeo",
    "worker_init_fn",
]
