"""StyleGAN2 generator as a forward model, safe weight import, GAN-inversion DFM."""

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

__version__ = "0.2.0"

__all__ = [
    "GENERATOR_PRESETS",
    "Discriminator",
    "GanLossConfig",
    "GanTrainState",
    "Generator",
    "GeneratorConfig",
    "MappingNetwork",
    "SynthesisNetwork",
    "UnsafePickleError",
    "__version__",
    "convert_official_pickle",
    "gan_train_step",
    "generator_config",
    "load_generator",
    "load_official_generator",
    "procedural_faces",
    "read_official_network",
    "safe_load_pickle",
    "save_generator",
    "truncate",
    "write_official_pickle",
]
