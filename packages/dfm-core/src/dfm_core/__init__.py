"""dfm-core: the generic machinery of diffusion with forward models.

Schedules, the DFM objective, samplers, guidance, the DiT backbone, the trainer and a
built-in projection problem with an exact posterior. Nothing here is specific to an
application: those plug in a forward model, a signal predictor and their batches.
"""

from typing import TYPE_CHECKING, Any

from dfm_core.checkpoint import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWriteError,
    latest_checkpoint,
    load_train_state,
    load_weights,
    save_checkpoint,
    verify_checkpoint,
)
from dfm_core.diffusion import (
    Condition,
    Context,
    DFMBatch,
    ForwardDiffusion,
    ForwardModel,
    LossInputs,
    Regularizer,
    SignalPredictor,
    drop_context,
    observation_of,
)
from dfm_core.guidance import classifier_free_guidance, reconstruction_guidance
from dfm_core.metrics import energy_distance, sliced_wasserstein
from dfm_core.sampling import (
    SAMPLERS,
    Denoised,
    Denoiser,
    SampleOutput,
    StepInfo,
    ddim_timesteps,
    dynamic_threshold,
    karras_sigmas,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_edm,
)
from dfm_core.schedules import (
    SCHEDULES,
    NoiseSchedule,
    ScheduleConfig,
    eps_from_v,
    eps_from_x0,
    schedule_cosine,
    schedule_linear,
    schedule_sigmoid,
    v_from_x0,
    x0_from_eps,
    x0_from_v,
)
from dfm_core.trainer import (
    STOP_SIGNALS,
    NoGradientWarning,
    NonFiniteLossError,
    OptimizerConfig,
    Trainer,
    TrainerConfig,
    TrainingInterrupted,
    graceful_stop,
)
from dfm_core.tree import tree_cat, tree_index, tree_map, tree_to

if TYPE_CHECKING:
    from dfm_core.dit import (
        DIT_PRESETS,
        DiT,
        DiTConfig,
        dit_config,
        sincos_pos_embed_2d,
        timestep_embedding,
    )

__version__ = "0.3.0"

# The DiT pulls in timm, which takes seconds to import; only pay for it when used.
_LAZY_DIT = {
    "DIT_PRESETS",
    "DiT",
    "DiTConfig",
    "dit_config",
    "sincos_pos_embed_2d",
    "timestep_embedding",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_DIT:
        from dfm_core import dit

        return getattr(dit, name)
    raise AttributeError(f"module 'dfm_core' has no attribute {name!r}")


__all__ = [
    "DIT_PRESETS",
    "SAMPLERS",
    "SCHEDULES",
    "STOP_SIGNALS",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "Condition",
    "Context",
    "DFMBatch",
    "Denoised",
    "Denoiser",
    "DiT",
    "DiTConfig",
    "ForwardDiffusion",
    "ForwardModel",
    "LossInputs",
    "NoGradientWarning",
    "NoiseSchedule",
    "NonFiniteLossError",
    "OptimizerConfig",
    "Regularizer",
    "SampleOutput",
    "ScheduleConfig",
    "SignalPredictor",
    "StepInfo",
    "Trainer",
    "TrainerConfig",
    "TrainingInterrupted",
    "__version__",
    "classifier_free_guidance",
    "ddim_timesteps",
    "dit_config",
    "drop_context",
    "dynamic_threshold",
    "energy_distance",
    "eps_from_v",
    "eps_from_x0",
    "graceful_stop",
    "karras_sigmas",
    "latest_checkpoint",
    "load_train_state",
    "load_weights",
    "observation_of",
    "reconstruction_guidance",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_edm",
    "save_checkpoint",
    "schedule_cosine",
    "schedule_linear",
    "schedule_sigmoid",
    "sincos_pos_embed_2d",
    "sliced_wasserstein",
    "timestep_embedding",
    "tree_cat",
    "tree_index",
    "tree_map",
    "tree_to",
    "v_from_x0",
    "verify_checkpoint",
    "x0_from_eps",
    "x0_from_v",
]
