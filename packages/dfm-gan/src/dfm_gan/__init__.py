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
from dfm_gan.training import (
    Discriminator,
    GanLossConfig,
    GanTrainState,
    gan_train_step,
    procedural_faces,
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
    "__version__",
    "gan_train_step",
    "generator_config",
    "procedural_faces",
    "truncate",
]
