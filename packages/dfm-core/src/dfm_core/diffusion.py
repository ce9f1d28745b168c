"""The DFM objective: a diffusion model over observations whose network predicts signals.

Notation follows Tewari, Yin et al. (NeurIPS 2023). A *signal* S is never observed
directly; observations are ``O = forward(S, phi)`` for forward-model parameters phi.
The network ``denoise_theta(O_ctxt, O_t^trgt; t, phi_ctxt, phi_trgt)`` returns a
signal, and the forward model renders it back to observation space:

    target loss  (eq. 8):  || O^trgt  - forward(S_hat, phi^trgt)  ||
    novel loss   (eq. 9):  || O^novel - forward(S_hat, phi^novel) ||

The novel-view term is what makes the learned distribution one over signals
(Proposition 1 of the supplementary): ``phi^novel`` is never shown to the network.
Sampling runs a standard diffusion sampler over the *target observation*, with the
denoised estimate ``x0_hat = forward(S_hat, phi^trgt)``; the final S_hat is the sample.

Nothing here knows what a signal, an observation or a parameter is: applications plug
in a forward model, a signal predictor and the batches that carry their parameters.

Three hooks serve forward models heavier than a projection (a volume renderer, say),
each generic:

* **Work done once per sample.** A predictor may define ``encode_context(context)``
  (depends on the context only) or ``encode_condition(context, target_params)`` (also on
  the target's parameters, e.g. a context-only estimate rendered at the target camera).
  The core calls it once per training step and once per sampling run, never per
  denoising step.
* **Losses on a subset of the observation.** ``DFMBatch.target_loss_params`` /
  ``target_loss_observation`` let the target loss render the signal at other parameters
  than those the network sees (a random patch of the target view, while the network
  sees the whole noisy target image).
* **Render auxiliaries.** A forward model may return a ``Rendering``-like object (any
  object with an ``observation`` tensor attribute) instead of a tensor, carrying extras
  such as depth or compositing weights. The core compares ``observation`` and hands the
  whole object to the regularisers (``LossInputs``), so nothing is rendered twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from dfm_core.sampling import Denoised
from dfm_core.schedules import NoiseSchedule

__all__ = [
    "Condition",
    "Context",
    "DFMBatch",
    "ForwardDiffusion",
    "ForwardModel",
    "LossInputs",
    "Regularizer",
    "SignalPredictor",
    "drop_context",
    "observation_of",
]


@runtime_checkable
class ForwardModel(Protocol):
    """Maps a signal and forward-model parameters to an observation.

    ``forward(signal, params) -> observation`` of shape (B, *obs_shape). ``signal`` is
    opaque to the core (a radiance field, a flow field, a StyleGAN ``w`` code...).
    Must be differentiable in ``signal``.

    The return value may also be any object with an ``observation`` tensor attribute
    (plus whatever auxiliaries the application wants regularisers to read, e.g. depth);
    see ``observation_of``.
    """

    def __call__(self, signal: Any, params: Any) -> Any: ...


def observation_of(rendered: Any) -> Tensor:
    """The observation tensor of a forward-model output (a tensor, or ``.observation``)."""
    if isinstance(rendered, Tensor):
        return rendered
    observation = getattr(rendered, "observation", None)
    if not isinstance(observation, Tensor):
        raise TypeError(
            "forward model must return a Tensor or an object with an `observation` tensor, "
            f"got {type(rendered).__name__}"
        )
    return observation


@runtime_checkable
class SignalPredictor(Protocol):
    """The network: ``(context, noisy_target, t, target_params) -> signal``.

    Args (of ``__call__``):
        context: the (possibly encoded, possibly dropped) context, see ``Context``.
        noisy_target: x_t, shape (B, *obs_shape).
        t: float timesteps, shape (B,), in [0, T-1]; may be fractional at sampling time.
        target_params: forward-model parameters of the target observation.

    A predictor may also define ``encode_context(context) -> encoded``, or
    ``encode_condition(context, target_params) -> encoded`` when the work also depends
    on the target's parameters (the latter wins if both exist). The core calls it once
    per sample (once per training step, once per sampling run, never per denoising
    step) and hands the result to ``__call__`` as ``context``; this is where expensive
    per-sample work belongs.
    """

    def __call__(
        self, context: Any, noisy_target: Tensor, t: Tensor, target_params: Any
    ) -> Any: ...


@dataclass(frozen=True)
class Context:
    """Context observations and their forward-model parameters.

    Applications may subclass it to carry more fields (absolute poses, intrinsics...);
    the core only touches ``observation``, which it zeroes to drop a sample's context
    for classifier-free guidance (as in the paper, supplementary section 2.4).

    Attributes:
        observation: shape (B, ...), the context observation(s).
        params: forward-model parameters of the context, opaque to the core.
    """

    observation: Tensor
    params: Any = None


def drop_context(context: Context, keep: Tensor) -> Context:
    """Zero the context observation of the samples where ``keep`` is False.

    Args:
        context: batch of contexts, observation shape (B, ...).
        keep: shape (B,), bool.
    """
    observation = context.observation
    mask = keep.to(observation.dtype).reshape(-1, *([1] * (observation.ndim - 1)))
    return dataclasses.replace(context, observation=observation * mask)


@dataclass(frozen=True)
class DFMBatch:
    """One training batch of the DFM objective.

    Attributes:
        context: context observations and parameters, batch size B.
        target: clean target observation O^trgt, shape (B, *obs_shape).
        target_params: forward-model parameters phi^trgt (the network sees these).
        novel: observation(s) at parameters the network never sees, any shape that
            ``forward(signal, novel_params)`` produces; None disables the novel loss.
        novel_params: phi^novel.
        target_loss_params: parameters at which the target loss (eq. 8) renders the
            signal; None uses ``target_params``. For a loss on part of the target (a
            random patch, a pixel subset) while the network sees the whole noisy target.
        target_loss_observation: the clean observation at ``target_loss_params``, the
            shape the forward model produces there; required with
            ``target_loss_params``.
    """

    context: Context
    target: Tensor
    target_params: Any
    novel: Tensor | None = None
    novel_params: Any = None
    target_loss_params: Any = None
    target_loss_observation: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.target_loss_params is None) != (self.target_loss_observation is None):
            raise ValueError(
                "DFMBatch: target_loss_params and target_loss_observation go together; "
                "give both or neither"
            )


@dataclass(frozen=True)
class Condition:
    """Everything the denoiser is conditioned on, with the context already encoded."""

    context: Any
    target_params: Any


@dataclass(frozen=True)
class LossInputs:
    """Everything one training step computed, for the regularisers to read.

    Attributes:
        batch: the training batch.
        t: (B,) integer timesteps drawn for the step.
        keep: (B,) bool, False where the sample's context was dropped (CFG).
        condition: what the predictor's encode hook returned for the (dropped) context.
        signal: the predicted signal.
        target_render: forward-model output at the target-loss parameters (a tensor or
            an object with ``observation`` and auxiliaries).
        novel_render: the same at ``novel_params``; None without a novel view.
    """

    batch: DFMBatch
    t: Tensor
    keep: Tensor
    condition: Any
    signal: Any
    target_render: Any
    novel_render: Any = None


class Regularizer(Protocol):
    """A named extra loss term: ``(inputs: LossInputs) -> scalar``."""

    def __call__(self, inputs: LossInputs) -> Tensor: ...


@dataclass
class _WeightedRegularizer:
    weight: float
    fn: Regularizer


LossType = Literal["l2", "l1"]


class ForwardDiffusion(nn.Module):
    """Signal predictor + forward model + noise schedule, trained with the DFM objective.

    Args:
        predictor: the network, see ``SignalPredictor``.
        forward_model: see ``ForwardModel``. If it is an ``nn.Module`` it is registered
            as a submodule (so e.g. frozen generator weights move with ``.to()``).
        schedule: noise process over target observations.
        loss_type: ``"l2"`` (the paper) or ``"l1"``.
        novel_weight: weight of the novel-view loss (eq. 9).
        context_dropout: probability with which each sample's context is dropped in
            training, for classifier-free guidance (0.1 in the paper).
        regularizers: named extra terms, ``{name: (weight, fn)}``.
        snr_weight: ``(low, high)`` weights each sample's target and novel losses by
            clamp(SNR(t), low, high), SNR = abar / (1 - abar). None (the paper) weights
            every t equally. (0, 5) is Min-SNR-5 in x0 space (Hang et al. 2023);
            (1, inf) is truncated SNR (Salimans & Ho 2022). Weights are divided by their
            mean over t, so the loss keeps the scale of the unweighted objective.
    """

    def __init__(
        self,
        predictor: nn.Module,
        forward_model: ForwardModel,
        schedule: NoiseSchedule,
        *,
        loss_type: LossType = "l2",
        novel_weight: float = 1.0,
        context_dropout: float = 0.1,
        regularizers: Mapping[str, tuple[float, Regularizer]] | None = None,
        snr_weight: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if loss_type not in ("l2", "l1"):
            raise ValueError(f"loss_type: expected 'l2' or 'l1', got {loss_type!r}")
        if not 0.0 <= context_dropout < 1.0:
            raise ValueError(
                f"context_dropout: expected a probability in [0, 1), got {context_dropout}"
            )
        if novel_weight < 0:
            raise ValueError(f"novel_weight: expected >= 0, got {novel_weight}")
        if snr_weight is not None and not 0 <= snr_weight[0] <= snr_weight[1]:
            raise ValueError(
                f"snr_weight: expected (low, high) with 0 <= low <= high, got {snr_weight}"
            )
        self.snr_weight = snr_weight
        self._snr_weights: Tensor | None = None
        if snr_weight is not None:
            snr = schedule.alphas_cumprod / (1 - schedule.alphas_cumprod)
            weights = snr.clamp(*snr_weight)
            self._snr_weights = (weights / weights.mean()).float()  # one per timestep
        self.predictor = predictor
        self.forward_model = forward_model
        self.schedule = schedule
        self.loss_type: LossType = loss_type
        self.novel_weight = novel_weight
        self.context_dropout = context_dropout
        self.regularizers: dict[str, _WeightedRegularizer] = {}
        for name, (weight, fn) in (regularizers or {}).items():
            if name in ("loss", "target", "novel"):
                raise ValueError(f"regularizers: name {name!r} is reserved")
            self.regularizers[name] = _WeightedRegularizer(float(weight), fn)

    # ---- training -------------------------------------------------------------------
    def forward(
        self, batch: DFMBatch, *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """The DFM loss terms for one batch (called by the trainer).

        Returns:
            ``{"loss": total, "target": ..., "novel": ..., <regularizer names>: ...}``,
            each a scalar; ``total`` = target + novel_weight * novel + sum(w_i * reg_i).
        """
        target = batch.target
        batch_size = target.shape[0]
        device = target.device
        generator_device = generator.device if generator is not None else device

        # t ~ U{0..T-1} and eps ~ N(0, I), per sample, from the injected generator.
        t = torch.randint(
            0,
            self.schedule.num_timesteps,
            (batch_size,),
            generator=generator,
            device=generator_device,
        ).to(device)
        noise = torch.randn(target.shape, generator=generator, device=generator_device).to(
            device, target.dtype
        )
        noisy_target = self.schedule.add_noise(target, t, noise)

        # Classifier-free guidance: drop each sample's context independently.
        keep = (
            torch.rand(batch_size, generator=generator, device=generator_device).to(device)
            >= self.context_dropout
        )
        context = drop_context(batch.context, keep)

        condition = self.encode(context, batch.target_params)
        signal = self.predictor(condition, noisy_target, t.to(target.dtype), batch.target_params)
        weight = self.loss_weight(t)
        terms: dict[str, Tensor] = {}
        loss_params, loss_observation = batch.target_params, target
        if batch.target_loss_observation is not None:  # set together with its params
            loss_params, loss_observation = batch.target_loss_params, batch.target_loss_observation
        target_render = self.forward_model(signal, loss_params)
        terms["target"] = self._distance(observation_of(target_render), loss_observation, weight)
        total = terms["target"]
        novel_render = None
        if batch.novel is not None:
            novel_render = self.forward_model(signal, batch.novel_params)
            terms["novel"] = self._distance(observation_of(novel_render), batch.novel, weight)
            total = total + self.novel_weight * terms["novel"]
        if self.regularizers:
            inputs = LossInputs(batch, t, keep, condition, signal, target_render, novel_render)
            for name, term in self.regularizers.items():
                terms[name] = term.fn(inputs)
                total = total + term.weight * terms[name]
        terms["loss"] = total
        return terms

    def loss_weight(self, t: Tensor) -> Tensor | None:
        """Per-sample loss weights (B,) for integer timesteps t (B,); None if uniform."""
        if self._snr_weights is None:
            return None
        return self._snr_weights.to(t.device)[t.long()]

    def _distance(self, prediction: Tensor, reference: Tensor, weight: Tensor | None) -> Tensor:
        if prediction.shape != reference.shape:
            raise ValueError(
                f"forward model output has shape {tuple(prediction.shape)} but the observation it is "
                f"compared with has shape {tuple(reference.shape)}"
            )
        error = prediction - reference
        per_element = error.square() if self.loss_type == "l2" else error.abs()
        if weight is None:
            return per_element.mean()
        per_sample = per_element.reshape(per_element.shape[0], -1).mean(dim=1)
        return (weight.to(per_sample.dtype) * per_sample).mean()

    # ---- sampling ----------------------------------------------------------------------
    def encode(self, context: Any, target_params: Any) -> Any:
        """Run the predictor's encode hook (once per sample), see ``SignalPredictor``."""
        encode_condition = getattr(self.predictor, "encode_condition", None)
        if callable(encode_condition):
            return encode_condition(context, target_params)
        encode_context = getattr(self.predictor, "encode_context", None)
        return encode_context(context) if callable(encode_context) else context

    def condition(self, context: Context, target_params: Any, *, drop: bool = False) -> Condition:
        """Encode a context once for a whole sampling run.

        Args:
            context: batch of contexts.
            target_params: forward-model parameters of the observation to sample.
            drop: encode the dropped (all-zero) context instead, for the unconditional
                branch of classifier-free guidance.
        """
        if drop:
            keep = torch.zeros(
                context.observation.shape[0], dtype=torch.bool, device=context.observation.device
            )
            context = drop_context(context, keep)
        return Condition(self.encode(context, target_params), target_params)

    def denoise(self, x_t: Tensor, t: Tensor, condition: Condition) -> Denoised:
        """Predict the signal from x_t and render it at the target parameters.

        Args:
            x_t: noisy target observation, shape (B, *obs_shape).
            t: float timesteps, shape (B,).
            condition: from ``condition()``.

        Returns:
            ``Denoised(x0=forward(signal, phi^trgt), signal=signal)``.
        """
        signal = self.predictor(condition.context, x_t, t, condition.target_params)
        x0 = observation_of(self.forward_model(signal, condition.target_params))
        return Denoised(x0=x0, signal=signal)

    def denoiser(self, condition: Condition) -> Callable[[Tensor, Tensor], Denoised]:
        """Bind a condition, giving the ``denoiser(x_t, t)`` callable samplers take."""
        return lambda x_t, t: self.denoise(x_t, t, condition)
