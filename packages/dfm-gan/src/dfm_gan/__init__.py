"""StyleGAN2 generator as a forward model, safe weight import, GAN-inversion DFM."""

from dfm_gan.inversion import (
    INVERSION_PRESETS,
    GanView,
    GeneratorForwardModel,
    InversionDataset,
    InversionModelConfig,
    InversionPredictor,
    InversionSamples,
    collate_inversion,
    inversion_config,
    make_inversion_batch,
    random_patch_masks,
    sample_inversions,
)
from dfm_gan.networks import (
    GENERATOR_PRESETS,
    Generator,
    GeneratorConfig,
    MappingNetwork,
    SynthesisNetwork,
    generator_config,
    truncate,
)
from dfm_gan.official_format import write_official_pickle
from dfm_gan.safe_pickle import UnsafePickleError, read_official_network, safe_load_pickle
from dfm_gan.training import (
    Discriminator,
    GanLossConfig,
    GanTrainState,
    gan_train_step,
    procedural_faces,
)
from dfm_gan.weights import (
    convert_official_pickle,
    load_generator,
    load_official_generator,
    save_generator,
)

__version__ = "0.3.0"

__all__ = [
    "GENERATOR_PRESETS",
    "INVERSION_PRESETS",
    "Discriminator",
    "GanLossConfig",
    "GanTrainState",
    "GanView",
    "Generator",
    "GeneratorConfig",
    "GeneratorForwardModel",
    "InversionDataset",
    "InversionModelConfig",
    "InversionPredictor",
    "InversionSamples",
    "MappingNetwork",
    "SynthesisNetwork",
    "UnsafePickleError",
    "__version__",
    "collate_inversion",
    "convert_official_pickle",
    "gan_train_step",
    "generator_config",
    "inversion_config",
    "load_generator",
    "load_official_generator",
    "make_inversion_batch",
    "procedural_faces",
    "random_patch_masks",
    "read_official_network",
    "safe_load_pickle",
    "sample_inversions",
    "save_generator",
    "truncate",
    "write_official_pickle",
]
