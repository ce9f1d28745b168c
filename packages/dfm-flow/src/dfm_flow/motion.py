"""Single-image motion prediction as a DFM (supplementary section 2.2 of Tewari, Yin et al.).

The objects of the paper, for this application:

* **Signal**: a motion field, ``MotionSignal(flow (B, 2, H, W), metric (B, 1, H, W) | None)``.
  ``flow`` is the displacement in pixels from the context frame to the target frame (a
  forward flow, channel 0 = x, channel 1 = y; pixel convention in ``dfm_flow.softsplat``);
  ``metric`` is the optional importance Z of softmax splatting, predicted with the flow.
* **Forward model**: ``MotionForwardModel``, softmax splatting of the context image by
  ``time * flow`` (average splatting when no metric is predicted). Its parameters are
  ``MotionParams(source (B, 3, H, W), time)``: the image being warped travels with the
  parameters, so dropping the *network's* context for classifier-free guidance never changes
  what the forward model renders.
* **Constant-velocity assumption**: the target frame is time 1; a novel frame at time tau is
  rendered with the flow scaled by tau (tau = 2 for Vimeo-90K's third frame, tau = -1 for a
  frame before the context). Motion that accelerates or turns between frames is outside what
  the model can represent, so the novel loss then penalises it.
* **Signal predictor**: ``MotionPredictor``, a DiT from dfm-core over the context image and
  the noisy target concatenated on channels, predicting a pixel-aligned flow (and Z).
* **Loss**: ``ForwardDiffusion``'s target + novel losses (eqs. 8-9), per-sample context
  dropout, and an edge-aware flow smoothness regulariser (the paper's depth smoothness
  applied to the flow).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dfm_core.diffusion import Context, DFMBatch, ForwardDiffusion, LossInputs
from dfm_core.dit import dit_config
from dfm_core.guidance import classifier_free_guidance
from dfm_core.sampling import SAMPLERS
from dfm_core.schedules import ScheduleConfig
from dfm_flow.softsplat import softsplat

__all__ = [
    "MOTION_PRESETS",
    "EdgeAwareSmoothness",
    "MotionForwardModel",
    "MotionModelConfig",
    "MotionParams",
    "MotionPredictor",
    "MotionPreset",
    "MotionRegressor",
    "MotionSamples",
    "MotionSignal",
    "edge_aware_smoothness",
    "frames_to_batch",
    "motion_preset",
    "sample_motion",
]


# --------------------------------------------------------------------------------------
# Signal, parameters, forward model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotionSignal:
    """The predicted motion field.

    Attributes:
        flow: (B, 2, H, W), pixels from the context frame to the target frame (time 1).
        metric: (B, 1, H, W) importance Z for softmax splatting, or None (average splatting).
    """

    flow: Tensor
    metric: Tensor | None = None


@dataclass(frozen=True)
class MotionParams:
    """Forward-model parameters: what is warped, and to which time.

    Attributes:
        source: (B, 3, H, W) in [-1, 1], the context frame that is splatted.
        time: (B,) or (B, N) float, frame times in units of the context-to-target interval
            (1 = the target frame); with (B, N) the forward model renders N frames.
    """

    source: Tensor
    time: Tensor


class MotionForwardModel:
    """Softmax splatting of the context frame by ``time * flow`` (constant velocity).

    Args:
        eps_mode: normalisation epsilon of ``softsplat`` (``"add"``, ``"zero"``, ``"clip"``).
    """

    def __init__(self, eps_mode: str = "add") -> None:
        self.eps_mode = eps_mode

    def __call__(self, signal: MotionSignal, params: MotionParams) -> Tensor:
        """Render ``signal`` at ``params``.

        Returns:
            (B, 3, H, W) for ``params.time`` of shape (B,), (B, N, 3, H, W) for (B, N).
        """
        source, time = params.source, params.time
        if time.ndim == 1:
            return self._splat(source, signal.flow, signal.metric, time)
        batch, frames = time.shape
        repeat = (lambda x: x.repeat_interleave(frames, dim=0)) if frames > 1 else (lambda x: x)
        metric = repeat(signal.metric) if signal.metric is not None else None
        out = self._splat(repeat(source), repeat(signal.flow), metric, time.reshape(-1))
        return out.view(batch, frames, *out.shape[1:])

    def _splat(self, source: Tensor, flow: Tensor, metric: Tensor | None, time: Tensor) -> Tensor:
        if time.shape != (flow.shape[0],):
            raise ValueError(
                f"params.time: expected shape ({flow.shape[0]},) or (B, N), got {tuple(time.shape)}"
            )
        scaled = flow * time.to(flow.dtype).view(-1, 1, 1, 1)
        mode = "soft" if metric is not None else "average"
        return softsplat(source, scaled, metric, mode, eps_mode=self.eps_mode)


# --------------------------------------------------------------------------------------
# Network and regulariser
# --------------------------------------------------------------------------------------


class MotionPredictor(nn.Module):
    """``(context, noisy_target, t, target_params) -> MotionSignal`` with a DiT backbone.

    The DiT sees ``[context image, noisy target]`` on channels, (B, 6, H, W), and outputs 2
    flow channels (+1 metric channel) at full resolution. Its output is exactly zero at
    initialisation, so training starts from the identity warp.

    Args:
        dit: DiT with ``in_channels = 6`` and ``out_channels = 3 if predict_metric else 2``.
        flow_scale: pixels per unit of network output (keeps the output O(1)).
        predict_metric: predict the importance Z (else average splatting).
        metric_clip: Z = metric_clip * tanh(raw / metric_clip * metric_scale), a smooth
            version of the reference's clip to [-20, 20].
        metric_scale: gain on the raw metric channel.
    """

    def __init__(
        self,
        dit: nn.Module,
        *,
        flow_scale: float,
        predict_metric: bool,
        metric_clip: float = 20.0,
        metric_scale: float = 10.0,
    ) -> None:
        super().__init__()
        self.dit = dit
        self.flow_scale = flow_scale
        self.predict_metric = predict_metric
        self.metric_clip = metric_clip
        self.metric_scale = metric_scale

    def forward(
        self, context: Context, noisy_target: Tensor, t: Tensor, target_params: Any
    ) -> MotionSignal:
        """Args: context observation (B, 3, H, W), noisy_target (B, 3, H, W), t (B,)."""
        x = torch.cat([context.observation, noisy_target], dim=1)  # (B, 6, H, W)
        raw = self.dit(x, t)  # (B, 2 or 3, H, W)
        flow = raw[:, :2] * self.flow_scale  # (B, 2, H, W), pixels
        metric = None
        if self.predict_metric:
            z = raw[:, 2:3] * self.metric_scale  # (B, 1, H, W)
            metric = self.metric_clip * torch.tanh(z / self.metric_clip)
        return MotionSignal(flow=flow, metric=metric)


def edge_aware_smoothness(flow: Tensor, image: Tensor, gamma: float = 10.0) -> Tensor:
    """Edge-aware smoothness (Godard et al. 2017, the paper's L_EAS applied to motion).

        L = mean(|d_x F| exp(-gamma |d_x I|)) + mean(|d_y F| exp(-gamma |d_y I|))

    with finite differences between neighbouring pixels and |d I| averaged over channels, so
    the flow may change across image edges but is pushed to be constant inside regions.

    Args:
        flow: (B, 2, H, W).
        image: (B, C, H, W), the frame the flow starts from.
        gamma: edge sensitivity (per unit of image value).

    Returns:
        Scalar.
    """
    flow_dx = (flow[..., :, 1:] - flow[..., :, :-1]).abs().mean(1)  # (B, H, W - 1)
    flow_dy = (flow[..., 1:, :] - flow[..., :-1, :]).abs().mean(1)  # (B, H - 1, W)
    image_dx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(1)
    image_dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(1)
    return (flow_dx * torch.exp(-gamma * image_dx)).mean() + (
        flow_dy * torch.exp(-gamma * image_dy)
    ).mean()


@dataclass
class EdgeAwareSmoothness:
    """Regulariser for ``ForwardDiffusion``: ``edge_aware_smoothness`` of the predicted flow
    against the (never dropped) context frame of the batch."""

    gamma: float = 10.0

    def __call__(self, inputs: LossInputs) -> Tensor:
        return edge_aware_smoothness(
            inputs.signal.flow, inputs.batch.context.observation, self.gamma
        )


class MotionRegressor(nn.Module):
    """Deterministic baseline: the same network and forward model, no noise, no sampling.

    The DiT sees ``[context, zeros]`` at t = 0 and is trained on the same target + novel
    losses and smoothness. Under an L2 loss on frames it predicts a compromise motion when
    the truth is ambiguous; that is what the stochastic model is compared with.

    Args:
        predictor: a ``MotionPredictor``.
        forward_model: a ``MotionForwardModel``.
        novel_weight, smoothness_weight, smoothness_gamma: as in ``MotionModelConfig``.
    """

    def __init__(
        self,
        predictor: MotionPredictor,
        forward_model: MotionForwardModel,
        *,
        novel_weight: float = 1.0,
        smoothness_weight: float = 0.02,
        smoothness_gamma: float = 10.0,
    ) -> None:
        super().__init__()
        self.predictor = predictor
        self.forward_model = forward_model
        self.novel_weight = novel_weight
        self.smoothness_weight = smoothness_weight
        self.smoothness_gamma = smoothness_gamma

    def predict(self, image: Tensor) -> MotionSignal:
        """The motion for context frames ``image`` (B, 3, H, W)."""
        t = torch.zeros(image.shape[0], device=image.device, dtype=image.dtype)
        params = MotionParams(image, torch.ones_like(t))
        return self.predictor(Context(image), torch.zeros_like(image), t, params)

    def forward(
        self, batch: DFMBatch, *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Loss terms for the trainer: ``{"loss", "target", "novel", "smoothness"}``."""
        image = batch.context.observation
        signal = self.predict(image)
        terms = {
            "target": (self.forward_model(signal, batch.target_params) - batch.target)
            .square()
            .mean()
        }
        total = terms["target"]
        if batch.novel is not None:
            novel = self.forward_model(signal, batch.novel_params)
            terms["novel"] = (novel - batch.novel).square().mean()
            total = total + self.novel_weight * terms["novel"]
        terms["smoothness"] = edge_aware_smoothness(signal.flow, image, self.smoothness_gamma)
        terms["loss"] = total + self.smoothness_weight * terms["smoothness"]
        return terms


# --------------------------------------------------------------------------------------
# Config and presets
# --------------------------------------------------------------------------------------


@dataclass
class MotionModelConfig:
    """The motion DFM; ``build()`` returns a ``ForwardDiffusion``."""

    image_size_hw: tuple[int, int] = (64, 64)
    """(H, W) of the frames; multiples of ``patch_size``."""
    dit: str = "DiT-S"
    """DiT size preset of dfm-core (``DiT-Tiny``, ``DiT-S``, ``DiT-B``, ``DiT-L``, ``DiT-XL``)."""
    patch_size: int = 4
    """DiT patch side."""
    depth: int | None = None
    """Override of the preset's number of blocks (None keeps it)."""
    hidden_size: int | None = None
    """Override of the preset's token width."""
    num_heads: int | None = None
    """Override of the preset's attention heads."""
    gradient_checkpointing: bool = False
    """Recompute DiT activations in backward (large presets)."""
    predict_metric: bool = True
    """Predict the importance Z with the flow (softmax splatting); False: average splatting."""
    flow_scale: float = 4.0
    """Pixels per unit of network output."""
    metric_clip: float = 20.0
    """|Z| bound (the reference README clips Z to [-20, 20])."""
    eps_mode: str = "add"
    """Normalisation epsilon of the splatting (see ``dfm_flow.softsplat``)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Noise process over target frames."""
    novel_weight: float = 1.0
    """Weight of the novel-frame loss (eq. 9)."""
    context_dropout: float = 0.1
    """Per-sample probability of dropping the context in training (CFG)."""
    smoothness_weight: float = 0.02
    """Weight of the edge-aware flow smoothness (the paper's 0.02 for L_depth)."""
    smoothness_gamma: float = 10.0
    """Edge sensitivity of the smoothness term."""
    loss_type: str = "l2"
    """``"l2"`` (the paper) or ``"l1"``."""

    def __post_init__(self) -> None:
        if isinstance(self.schedule, dict):
            self.schedule = ScheduleConfig(**self.schedule)
        self.image_size_hw = tuple(self.image_size_hw)  # type: ignore[assignment]
        height, width = self.image_size_hw
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"MotionModelConfig.image_size_hw: expected multiples of patch_size={self.patch_size}, "
                f"got {self.image_size_hw}"
            )
        if not self.flow_scale > 0:
            raise ValueError(f"MotionModelConfig.flow_scale: expected > 0, got {self.flow_scale}")

    def build_predictor(self) -> MotionPredictor:
        """The network alone."""
        overrides = {
            k: getattr(self, k)
            for k in ("depth", "hidden_size", "num_heads")
            if getattr(self, k) is not None
        }
        backbone = dit_config(
            self.dit,
            in_channels=6,
            out_channels=3 if self.predict_metric else 2,
            patch_size=self.patch_size,
            gradient_checkpointing=self.gradient_checkpointing,
            **overrides,
        ).build()
        return MotionPredictor(
            backbone,
            flow_scale=self.flow_scale,
            predict_metric=self.predict_metric,
            metric_clip=self.metric_clip,
        )

    def build_regressor(self) -> MotionRegressor:
        """The deterministic baseline with the same backbone (see ``MotionRegressor``)."""
        return MotionRegressor(
            self.build_predictor(),
            MotionForwardModel(self.eps_mode),
            novel_weight=self.novel_weight,
            smoothness_weight=self.smoothness_weight,
            smoothness_gamma=self.smoothness_gamma,
        )

    def build(self) -> ForwardDiffusion:
        """Predictor + forward model + schedule + losses."""
        regularizers = {}
        if self.smoothness_weight > 0:
            regularizers["smoothness"] = (
                self.smoothness_weight,
                EdgeAwareSmoothness(self.smoothness_gamma),
            )
        return ForwardDiffusion(
            self.build_predictor(),
            MotionForwardModel(self.eps_mode),
            self.schedule.build(),
            loss_type=self.loss_type,  # type: ignore[arg-type]
            novel_weight=self.novel_weight,
            context_dropout=self.context_dropout,
            regularizers=regularizers,
        )


@dataclass
class MotionPreset:
    """A named model plus the training settings it was meant for."""

    model: MotionModelConfig
    """The model."""
    batch_size: int
    """Global batch size."""
    learning_rate: float
    """Adam learning rate."""
    notes: str = ""
    """Where the numbers come from."""


MOTION_PRESETS: dict[str, MotionPreset] = {
    # Paper (supplementary 2.2): DiT denoiser, Adam lr 2e-5, batch 72 on 2 RTX A6000, Vimeo-90K.
    # The supplementary gives no resolution or DiT size for this application; we use the
    # native Vimeo-90K frame size (448 x 256) with DiT-B and patch 8 (32 x 56 tokens).
    "vimeo": MotionPreset(
        model=MotionModelConfig(
            image_size_hw=(256, 448),
            dit="DiT-B",
            patch_size=8,
            flow_scale=16.0,
            gradient_checkpointing=True,
        ),
        batch_size=72,
        learning_rate=2e-5,
        notes="paper: lr 2e-5, batch 72, Vimeo-90K; size and DiT-B/8 are our choice (not stated)",
    ),
    # Trainable on 2 CPU cores: the synthetic motion world at 64 x 64, a small DiT with
    # 8 x 8 patches (64 tokens; patch 4 made a step ~4x slower on CPU).
    "motion-demo": MotionPreset(
        model=MotionModelConfig(
            image_size_hw=(64, 64),
            dit="DiT-Tiny",
            patch_size=8,
            hidden_size=128,
            depth=4,
            num_heads=4,
            flow_scale=4.0,
            schedule=ScheduleConfig(name="cosine", num_timesteps=1000),
        ),
        batch_size=16,
        learning_rate=3e-4,
        notes="synthetic motion world (dfm-data), 64 x 64",
    ),
}


def motion_preset(name: str, **model_overrides: Any) -> MotionPreset:
    """A copy of a named preset with some ``MotionModelConfig`` fields replaced.

    Raises:
        ValueError: unknown preset (the message lists the valid ones) or unknown field.
    """
    if name not in MOTION_PRESETS:
        raise ValueError(f"preset: unknown name {name!r}; valid: {sorted(MOTION_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(MotionModelConfig)}
    unknown = sorted(set(model_overrides) - fields)
    if unknown:
        raise ValueError(f"model_overrides: unknown MotionModelConfig fields {unknown}")
    preset = MOTION_PRESETS[name]
    model = dataclasses.replace(preset.model, **model_overrides)
    return dataclasses.replace(preset, model=model)


# --------------------------------------------------------------------------------------
# Batches and sampling
# --------------------------------------------------------------------------------------


def frames_to_batch(
    context: Tensor,
    target: Tensor,
    novel: Tensor | None = None,
    frame_index: Tensor | None = None,
) -> DFMBatch:
    """Turn frames of clips (e.g. a dfm-data ``FrameBatch``'s fields) into a ``DFMBatch``.

    Times follow the constant-velocity assumption: with frame numbers k_c (context),
    k_t (target) and k_n (novel), the novel frame is at tau = (k_n - k_c) / (k_t - k_c).

    Args:
        context: (B, 3, H, W) in [-1, 1].
        target: (B, 3, H, W) in [-1, 1].
        novel: (B, N, 3, H, W) or None (N = 0 also disables the novel loss).
        frame_index: (B, 2 + N) frame numbers of context, target, novel; None assumes
            consecutive frames (novel k at time k + 2, i.e. Vimeo-90K's im1, im2, im3...).

    Raises:
        ValueError: shapes that disagree.
    """
    if context.ndim != 4 or context.shape[1] != 3:
        raise ValueError(f"context: expected (B, 3, H, W), got {tuple(context.shape)}")
    if target.shape != context.shape:
        raise ValueError(
            f"target: expected shape {tuple(context.shape)}, got {tuple(target.shape)}"
        )
    batch = context.shape[0]
    n_novel = 0 if novel is None else novel.shape[1]
    if novel is not None and (
        novel.ndim != 5 or novel.shape[2:] != context.shape[1:] or novel.shape[0] != batch
    ):
        raise ValueError(
            f"novel: expected (B, N, 3, H, W) with B, H, W of context, got {tuple(novel.shape)}"
        )
    if frame_index is None:
        frame_index = torch.arange(2 + n_novel, device=context.device).expand(batch, -1)
    if frame_index.shape != (batch, 2 + n_novel):
        raise ValueError(
            f"frame_index: expected shape ({batch}, {2 + n_novel}), got {tuple(frame_index.shape)}"
        )
    index = frame_index.to(device=context.device, dtype=context.dtype)
    span = index[:, 1] - index[:, 0]
    if bool((span == 0).any()):
        raise ValueError("frame_index: context and target frames must differ")
    target_params = MotionParams(source=context, time=torch.ones_like(span))
    novel_params = None
    if n_novel:
        novel_params = MotionParams(
            source=context, time=(index[:, 2:] - index[:, :1]) / span[:, None]
        )
    return DFMBatch(
        context=Context(observation=context),
        target=target,
        target_params=target_params,
        novel=novel if n_novel else None,
        novel_params=novel_params,
    )


@dataclass(frozen=True)
class MotionSamples:
    """K sampled motions per input image.

    Attributes:
        flow: (B, K, 2, H, W) pixels to time 1.
        metric: (B, K, 1, H, W) or None.
        frames: (B, K, T, 3, H, W), the input splatted at each requested time.
        times: (T,) the times of ``frames``.
    """

    flow: Tensor
    metric: Tensor | None
    frames: Tensor
    times: Tensor


@torch.no_grad()
def sample_motion(
    diffusion: ForwardDiffusion,
    image: Tensor,
    *,
    num_samples: int = 1,
    steps: int = 50,
    sampler: str = "ddim",
    guidance_scale: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    times: Sequence[float] = (1.0,),
    **sampler_kwargs: Any,
) -> MotionSamples:
    """Draw ``num_samples`` motions for each image with a dfm-core sampler.

    Args:
        diffusion: a motion DFM (``MotionModelConfig.build()``), in eval mode.
        image: (B, 3, H, W) in [-1, 1], the context frames.
        num_samples: K samples per image.
        steps: sampler steps.
        sampler: a key of ``dfm_core.sampling.SAMPLERS`` (``"ddim"``, ``"ddpm"``, ``"edm"``...).
        guidance_scale: classifier-free guidance scale (1 = plain conditional).
        generator: one generator, or B * K generators (sample ``b * K + k`` uses the
            generator at that position, so a sample depends on its seed only).
        times: frame times at which to render each sampled flow (1 = the next frame).
        **sampler_kwargs: passed to the sampler (``eta``, ``temperature``...).

    Returns:
        ``MotionSamples``.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected (B, 3, H, W), got {tuple(image.shape)}")
    if num_samples < 1:
        raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: unknown name {sampler!r}; expected one of {sorted(SAMPLERS)}")
    batch = image.shape[0]
    source = image.repeat_interleave(num_samples, dim=0)  # (B K, 3, H, W)
    ones = torch.ones(source.shape[0], device=image.device, dtype=image.dtype)
    params = MotionParams(source=source, time=ones)
    context = Context(observation=source)
    condition = diffusion.condition(context, params)
    if guidance_scale == 1.0:
        denoiser = diffusion.denoiser(condition)
    else:
        null = diffusion.condition(context, params, drop=True)
        denoiser = classifier_free_guidance(diffusion.denoise, condition, null, guidance_scale)
    out = SAMPLERS[sampler](
        denoiser,
        diffusion.schedule,
        tuple(source.shape),
        steps=steps,
        generator=generator,
        device=image.device,
        dtype=image.dtype,
        **sampler_kwargs,
    )
    signal: MotionSignal = out.signal
    time_tensor = torch.tensor(list(times), device=image.device, dtype=image.dtype)
    frame_params = MotionParams(source=source, time=time_tensor.expand(source.shape[0], -1))
    frames = diffusion.forward_model(signal, frame_params)  # (B K, T, 3, H, W)
    k = num_samples
    return MotionSamples(
        flow=signal.flow.view(batch, k, *signal.flow.shape[1:]),
        metric=None
        if signal.metric is None
        else signal.metric.view(batch, k, *signal.metric.shape[1:]),
        frames=frames.view(batch, k, *frames.shape[1:]),
        times=time_tensor,
    )
