"""GAN inversion with DFM: sample latents ``w`` whose images agree with a visible patch.

The paper's third application (supplementary section 2.3). The *signal* is a StyleGAN2
latent; the *forward model* is the frozen generator followed by area down-sampling to the
training resolution; the *context* is the target image masked down to one patch of random
size and position. A DiT sees the masked context, the mask and the noisy target image
(concatenated along channels) and predicts the latent; the denoised estimate is the
generator's rendering of it, so every sample is an image the GAN can produce.

Design choices:

* **One ``w`` (default), not ``w+``.** The training images are rendered from one ``w``
  broadcast to every layer, so the true signal is exactly representable, and a single
  ``w`` keeps samples in the generator's native W space, where images look like training
  images. ``w+`` (one code per layer, ``num_ws`` times more outputs) can match the
  low-resolution target with codes no mapped ``z`` produces, which look worse at full
  resolution; it is available with ``latent="w+"``.
* **The latent is predicted normalised**: ``w = mean + std * head(features)``, with the
  mean and per-dimension spread of truncated mapped latents measured once at build time,
  and the head zero-initialised, so training starts at the average face.
* **"Novel" observation = the full-resolution image.** A generator has no viewpoint; the
  forward-model parameter here is the output resolution. The network only ever sees the
  (noisy) training-resolution target, so the full-resolution rendering is an observation
  it never sees (DFM eq. 9): it pins down the detail that the down-sampled target cannot,
  which is what makes rendering the sampled latents at full resolution meaningful. It
  needs the full-resolution ground truth, available for generator samples; with real
  images set ``novel_weight=0`` (then only the target loss, eq. 8, remains).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from dfm_core.diffusion import Context, DFMBatch, ForwardDiffusion
from dfm_core.guidance import classifier_free_guidance, reconstruction_guidance
from dfm_core.sampling import SAMPLERS, StepInfo
from dfm_core.schedules import ScheduleConfig
from dfm_gan.networks import Generator, generator_config, truncate

__all__ = [
    "INVERSION_PRESETS",
    "GanView",
    "GeneratorForwardModel",
    "InversionDataset",
    "InversionModelConfig",
    "InversionPredictor",
    "InversionSamples",
    "collate_inversion",
    "inversion_config",
    "load_inversion_model",
    "make_inversion_batch",
    "random_patch_masks",
    "sample_inversions",
    "save_inversion_model",
]

LatentKind = Literal["w", "w+"]
DEFAULT_DEMO_WEIGHTS = Path(__file__).parent / "assets" / "demo32.safetensors"
FFHQ256_PICKLE = "ffhq-res256-mirror-paper256-noaug.pkl"


@dataclass(frozen=True)
class GanView:
    """Forward-model parameters: the resolution the generator's image is rendered at.

    Attributes:
        resolution: output side length; the generator output is area-down-sampled to it
            (equal to the generator's resolution: no resampling).
    """

    resolution: int


class GeneratorForwardModel(nn.Module):
    """``forward(w, GanView(r))``: frozen generator, then area down-sampling to ``r x r``.

    Deterministic (``noise_mode="const"``), differentiable in ``w``, and frozen
    (``requires_grad=False``, eval mode), so the trainer never updates the GAN.

    The full-resolution rendering of the most recent signal is reused when the same signal
    object is rendered again at another resolution (the target and the novel loss of one
    training step), so one step runs the generator once.

    Args:
        generator: the StyleGAN2 generator.
    """

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self._last: tuple[Tensor, Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Copies (EMA, pickling) never carry the cached rendering and its autograd graph.
        state = self.__dict__.copy()
        state["_last"] = None
        return state

    def train(self, mode: bool = True) -> GeneratorForwardModel:
        super().train(mode)
        self.generator.eval()  # the frozen GAN never tracks w_avg or changes mode
        return self

    def render_full(self, w: Tensor) -> Tensor:
        """``w (B, num_ws, w_dim)`` or ``(B, w_dim)`` -> ``(B, 3, R, R)`` at the generator's R."""
        if self._last is not None and self._last[0] is w:
            return self._last[1]
        image = self.generator.synthesis(w, noise_mode="const")
        self._last = (w, image)
        return image

    def forward(self, signal: Tensor, params: GanView) -> Tensor:
        """Render ``signal`` (latents) at ``params.resolution``: ``(B, 3, r, r)`` in ~[-1, 1]."""
        image = self.render_full(signal)
        return downsample(image, params.resolution)


def downsample(image: Tensor, resolution: int) -> Tensor:
    """Area (box-filter) down-sampling of ``(B, C, R, R)`` to ``(B, C, r, r)``; r divides R."""
    size = image.shape[-1]
    if resolution == size:
        return image
    if resolution > size or size % resolution:
        raise ValueError(
            f"resolution: expected a divisor of the generator's {size}, got {resolution}"
        )
    return F.avg_pool2d(image, size // resolution)


class InversionPredictor(nn.Module):
    """DiT over ``[noisy target, masked context, mask]`` -> pooled features -> latent.

    Args:
        dit: a ``dfm_core.dit.DiT`` with ``in_channels = 7``.
        num_ws: the generator's ``num_ws``.
        w_dim: the generator's ``w_dim``.
        latent: ``"w"`` (one code, broadcast) or ``"w+"`` (one per layer).
        latent_mean: ``(w_dim,)`` centre of the latent parametrisation.
        latent_std: ``(w_dim,)`` per-dimension scale.
    """

    def __init__(
        self,
        dit: nn.Module,
        *,
        num_ws: int,
        w_dim: int,
        latent: LatentKind,
        latent_mean: Tensor,
        latent_std: Tensor,
    ) -> None:
        super().__init__()
        if latent not in ("w", "w+"):
            raise ValueError(f"latent: expected 'w' or 'w+', got {latent!r}")
        self.dit = dit
        self.num_ws, self.w_dim, self.latent = num_ws, w_dim, latent
        features = dit.config.out_channels
        codes = 1 if latent == "w" else num_ws
        # The DiT's output starts at exactly zero (adaLN-Zero), so a zero head bias makes a
        # fresh model predict the mean latent; the head weight must not be zero as well, or
        # neither the head nor the DiT would ever receive a gradient.
        self.head = nn.Linear(features, codes * w_dim)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("latent_mean", latent_mean.detach().clone().float())
        self.register_buffer("latent_std", latent_std.detach().clone().float())

    def forward(
        self, context: Context, noisy_target: Tensor, t: Tensor, target_params: GanView
    ) -> Tensor:
        """Predict latents.

        Args:
            context: ``observation (B, 4, r, r)`` = masked image (3) and mask (1); all zero
                when dropped for classifier-free guidance.
            noisy_target: ``(B, 3, r, r)`` x_t.
            t: ``(B,)`` timesteps.
            target_params: unused (one resolution per model).

        Returns:
            ``(B, num_ws, w_dim)`` latents (identical rows for ``latent="w"``).
        """
        del target_params
        x = torch.cat(
            [noisy_target, context.observation.to(noisy_target.dtype)], dim=1
        )  # (B, 7, r, r)
        features = self.dit(x, t).mean(dim=(2, 3))  # (B, F): pooled over pixels
        z = self.head(features)  # (B, codes * w_dim)
        w = self.latent_mean + self.latent_std * z.reshape(
            z.shape[0], -1, self.w_dim
        )  # (B, codes, w_dim)
        return w.expand(-1, self.num_ws, -1) if self.latent == "w" else w


@torch.no_grad()
def latent_statistics(
    generator: Generator, *, psi: float, num: int = 2000, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Mean and per-dimension std ``(w_dim,)`` of truncated mapped latents (seeded)."""
    z = torch.randn(num, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    w = generator.mapping(z.to(generator.w_avg.device), update_w_avg=False)[:, 0]  # (num, w_dim)
    w = truncate(w, generator.w_avg, psi)
    return w.mean(0).cpu(), w.std(0).clamp_min(1e-3).cpu()


def random_patch_masks(
    batch: int,
    resolution: int,
    *,
    min_fraction: float,
    max_fraction: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Masks ``(B, 1, r, r)``: 1 inside one axis-aligned patch of random size and position.

    Patch sides are uniform integers in ``[round(min_fraction r), round(max_fraction r)]``.
    """
    if not 0 < min_fraction <= max_fraction <= 1:
        raise ValueError(
            f"need 0 < min_fraction <= max_fraction <= 1, got {min_fraction}, {max_fraction}"
        )
    lo = max(1, round(min_fraction * resolution))
    hi = max(lo, round(max_fraction * resolution))
    masks = torch.zeros(batch, 1, resolution, resolution)
    for i in range(batch):
        ph, pw = (int(torch.randint(lo, hi + 1, (1,), generator=generator)) for _ in range(2))
        top = int(torch.randint(0, resolution - ph + 1, (1,), generator=generator))
        left = int(torch.randint(0, resolution - pw + 1, (1,), generator=generator))
        masks[i, :, top : top + ph, left : left + pw] = 1.0
    return masks


def make_inversion_batch(target: Tensor, mask: Tensor, *, full: Tensor | None = None) -> DFMBatch:
    """The core's batch for one set of images.

    Args:
        target: ``(B, 3, r, r)`` images at the training resolution, in [-1, 1].
        mask: ``(B, 1, r, r)``, 1 on the visible patch.
        full: ``(B, 3, R, R)`` full-resolution images (the novel observation), or None.
    """
    if target.ndim != 4 or target.shape[1] != 3:
        raise ValueError(f"target: expected (B, 3, r, r), got {tuple(target.shape)}")
    if mask.shape != (target.shape[0], 1, *target.shape[2:]):
        raise ValueError(
            f"mask: expected {(target.shape[0], 1, *target.shape[2:])}, got {tuple(mask.shape)}"
        )
    context = Context(observation=torch.cat([target * mask, mask], dim=1))  # (B, 4, r, r)
    view = GanView(target.shape[-1])
    if full is None:
        return DFMBatch(context=context, target=target, target_params=view)
    return DFMBatch(
        context=context,
        target=target,
        target_params=view,
        novel=full,
        novel_params=GanView(full.shape[-1]),
    )


class InversionDataset(Dataset):
    """Generator samples with patch masks; item ``i`` is a pure function of ``(seed, i)``.

    Items are dicts of tensors: ``target (3, r, r)``, ``mask (1, r, r)``, ``full (3, R, R)``,
    ``w (w_dim,)``; batch them with :func:`collate_inversion`.
    """

    def __init__(
        self,
        generator: Generator,
        config: InversionModelConfig,
        *,
        num: int = 100_000,
        seed: int = 0,
    ) -> None:
        self.generator = generator.eval()
        self.config = config
        self.num = num
        self.seed = seed

    def __len__(self) -> int:
        return self.num

    @torch.no_grad()
    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.num:
            raise IndexError(index)
        cfg = self.config
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        z = torch.randn(1, self.generator.z_dim, generator=g)
        w = self.generator.mapping(z, truncation_psi=cfg.truncation_psi)  # (1, num_ws, w_dim)
        full = self.generator.synthesis(w, noise_mode="const").clamp(-1, 1)  # (1, 3, R, R)
        mask = random_patch_masks(
            1,
            cfg.train_resolution,
            min_fraction=cfg.patch_min_fraction,
            max_fraction=cfg.patch_max_fraction,
            generator=g,
        )
        return {
            "target": downsample(full, cfg.train_resolution)[0],
            "mask": mask[0],
            "full": full[0],
            "w": w[0, 0],
        }


def collate_inversion(items: Sequence[dict[str, Tensor]]) -> DFMBatch:
    """Stack :class:`InversionDataset` items into a :class:`DFMBatch` (novel = full res)."""
    stacked = {k: torch.stack([item[k] for item in items]) for k in items[0]}
    return make_inversion_batch(stacked["target"], stacked["mask"], full=stacked["full"])


@dataclass
class InversionModelConfig:
    """The GAN-inversion DFM model; ``build()`` returns a ``ForwardDiffusion``."""

    generator_path: str | None = None
    """Generator weights: our ``.safetensors`` or an official ``.pkl`` (imported safely).
    None with ``build(generator=...)`` uses the given network."""
    generator_preset: str = "demo32"
    """Architecture for ``random_generator=True`` (tests, benchmarks)."""
    random_generator: bool = False
    """Build a randomly initialised generator instead of loading weights (tests only)."""
    train_resolution: int = 16
    """Resolution of the diffusion (target/context observations); paper: 64."""
    novel_resolution: int | None = None
    """Resolution of the novel observation; None: the generator's own (full) resolution."""
    latent: LatentKind = "w"
    """Predicted signal: one ``w`` broadcast to every layer, or ``w+`` (see module notes)."""
    truncation_psi: float = 0.5
    """Truncation of the training latents (paper: 0.5), also used for the latent statistics."""
    patch_min_fraction: float = 0.15
    """Smallest visible patch side, as a fraction of ``train_resolution``."""
    patch_max_fraction: float = 0.5
    """Largest visible patch side."""
    dit_preset: str = "DiT-Tiny"
    """``dfm_core.dit`` preset of the backbone."""
    dit_overrides: dict[str, Any] = field(default_factory=dict)
    """``DiTConfig`` fields replaced on the preset (``patch_size``, ``depth``, ...)."""
    feature_channels: int = 128
    """DiT output channels, pooled into the latent head."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Noise schedule of the target observations."""
    novel_weight: float = 1.0
    """Weight of the full-resolution (novel) loss; 0 disables it."""
    context_dropout: float = 0.1
    """Context dropout for classifier-free guidance."""
    latent_stats_samples: int = 2000
    """Mapped samples used for the latent mean/std."""
    seed: int = 0
    """Seeds the initialisation (and the latent statistics)."""

    def load_generator(self) -> Generator:
        """The generator named by this config (see ``generator_path``).

        Raises:
            FileNotFoundError: the weights are missing; the message says what to download
                and where to put it.
        """
        if self.random_generator:
            torch.manual_seed(self.seed)
            return generator_config(self.generator_preset).build().eval()
        if self.generator_path is None:
            raise ValueError("generator_path: set it, or pass build(generator=...)")
        path = Path(os.path.expanduser(self.generator_path))
        if not path.is_file():
            raise FileNotFoundError(_missing_weights_message(path))
        from dfm_gan.weights import load_generator, load_official_generator

        return load_official_generator(path) if path.suffix == ".pkl" else load_generator(path)

    def build(self, generator: Generator | None = None) -> ForwardDiffusion:
        """Model: ``InversionPredictor`` + ``GeneratorForwardModel`` + schedule.

        Args:
            generator: use this (frozen) generator instead of ``load_generator()``.
        """
        generator = generator if generator is not None else self.load_generator()
        if generator.img_resolution % self.train_resolution:
            raise ValueError(
                f"train_resolution: {self.train_resolution} must divide the generator's "
                f"resolution {generator.img_resolution}"
            )
        mean, std = latent_statistics(
            generator, psi=self.truncation_psi, num=self.latent_stats_samples, seed=self.seed
        )
        from dfm_core.dit import dit_config  # imports timm: only when a model is built

        torch.manual_seed(self.seed)
        dit = dit_config(
            self.dit_preset, in_channels=7, out_channels=self.feature_channels, **self.dit_overrides
        ).build()
        predictor = InversionPredictor(
            dit,
            num_ws=generator.num_ws,
            w_dim=generator.w_dim,
            latent=self.latent,
            latent_mean=mean,
            latent_std=std,
        )
        return ForwardDiffusion(
            predictor,
            GeneratorForwardModel(generator),
            self.schedule.build(),
            novel_weight=self.novel_weight,
            context_dropout=self.context_dropout,
        )


def _missing_weights_message(path: Path) -> str:
    if path.name.startswith("ffhq") or path.suffix == ".pkl":
        return (
            f"generator weights not found: {path}. Download {FFHQ256_PICKLE} from NVIDIA's "
            "StyleGAN2-ADA release (pretrained/transfer-learning-source-nets/ on "
            "nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/) and put it at that path, or convert "
            f"it once with dfm_gan.convert_official_pickle('{FFHQ256_PICKLE}', '{path.with_suffix('')}') "
            "and point generator_path at the .safetensors (the .pkl is read without executing it)."
        )
    return (
        f"generator weights not found: {path} (expected a dfm_gan .safetensors or an official .pkl)"
    )


INVERSION_PRESETS: dict[str, InversionModelConfig] = {
    # Offline demo: the shipped 32x32 procedural-faces generator, diffusion at 16x16.
    "gan-demo": InversionModelConfig(
        generator_path=str(DEFAULT_DEMO_WEIGHTS),
        generator_preset="demo32",
        train_resolution=16,
        dit_preset="DiT-S",
        dit_overrides={"patch_size": 2, "depth": 4, "hidden_size": 64, "num_heads": 4},
        feature_channels=64,
    ),
    # The paper: StyleGAN2-ADA FFHQ 256 (paper256 config), diffusion at 64x64, psi 0.5.
    "ffhq256": InversionModelConfig(
        generator_path=f"~/.cache/dfm/stylegan2/{FFHQ256_PICKLE}",
        generator_preset="paper256",
        train_resolution=64,
        dit_preset="DiT-B",
        dit_overrides={"patch_size": 4},
        feature_channels=512,
    ),
}
"""Named configurations; :func:`inversion_config` returns an editable copy."""


def inversion_config(preset: str, **overrides: Any) -> InversionModelConfig:
    """A copy of a named preset with some fields replaced.

    Raises:
        ValueError: unknown preset or field (valid names listed).
    """
    if preset not in INVERSION_PRESETS:
        raise ValueError(
            f"preset: unknown inversion preset {preset!r}; valid: {sorted(INVERSION_PRESETS)}"
        )
    fields = {f.name for f in dataclasses.fields(InversionModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"overrides: unknown InversionModelConfig fields {unknown}; valid: {sorted(fields)}"
        )
    base = INVERSION_PRESETS[preset]
    overrides = {
        "dit_overrides": dict(base.dit_overrides),
        **overrides,
    }  # never share the preset's dict
    return dataclasses.replace(base, **overrides)


def save_inversion_model(
    model: ForwardDiffusion,
    config: InversionModelConfig,
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    **extra: Any,
) -> Path:
    """Write the predictor's weights (not the frozen generator's) with the config as metadata.

    Args:
        model: from ``config.build``.
        config: the config it was built from (stored as JSON metadata ``"config"``).
        path: ``.safetensors`` output path.
        dtype: storage dtype of floating-point tensors (float16 halves the file; loading
            casts back to the model's dtype).
        **extra: JSON-serialisable provenance stored as metadata ``"info"``.
    """
    import json

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.predictor.state_dict().items()
    }
    metadata = {"config": json.dumps(dataclasses.asdict(config)), "info": json.dumps(extra)}
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_inversion_model(
    path: str | os.PathLike[str], *, generator: Generator | None = None
) -> tuple[ForwardDiffusion, InversionModelConfig]:
    """Load a model saved by :func:`save_inversion_model`.

    Args:
        path: the ``.safetensors`` file.
        generator: the generator to use; None loads ``config.generator_path`` (a relative
            path is resolved next to ``path``).

    Raises:
        FileNotFoundError: ``path`` (or the generator weights) missing, named in the message.
    """
    import json

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"inversion model weights not found: {path}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "config" not in metadata:
        raise ValueError(f"{path}: no 'config' metadata; expected a file from save_inversion_model")
    raw = json.loads(metadata["config"])
    raw["schedule"] = ScheduleConfig(**raw["schedule"])
    config = InversionModelConfig(**raw)
    if (
        generator is None
        and config.generator_path
        and not Path(os.path.expanduser(config.generator_path)).is_absolute()
    ):
        config = dataclasses.replace(
            config, generator_path=str(path.parent / config.generator_path)
        )
    model = config.build(generator=generator)
    model.predictor.load_state_dict(tensors)
    return model, config


@dataclass(frozen=True)
class InversionSamples:
    """K samples per context.

    Attributes:
        latents: ``(B, K, num_ws, w_dim)`` sampled signals.
        observations: ``(B, K, 3, r, r)`` the samples at the training resolution.
        images: ``(B, K, 3, R, R)`` the latents rendered at full resolution.
    """

    latents: Tensor
    observations: Tensor
    images: Tensor


@torch.no_grad()
def sample_inversions(
    model: ForwardDiffusion,
    image: Tensor,
    mask: Tensor,
    *,
    num_samples: int = 8,
    steps: int = 50,
    guidance_scale: float = 1.0,
    reconstruction_weight: float = 0.0,
    seed: int | Sequence[int] = 0,
    sampler: str = "ddim",
    callback: Callable[[StepInfo], None] | None = None,
) -> InversionSamples:
    """Sample ``num_samples`` latents per masked image and render them at full resolution.

    Args:
        model: from :meth:`InversionModelConfig.build`.
        image: ``(B, 3, r, r)`` images at the training resolution (only the patch is used).
        mask: ``(B, 1, r, r)``, 1 on the visible patch.
        num_samples: K samples per image.
        steps: DDIM steps (paper: 50).
        guidance_scale: classifier-free guidance scale (1: plain conditional model).
        reconstruction_weight: weight of reconstruction guidance towards the visible patch
            (dfm-core's ``reconstruction_guidance``, Ho et al. 2022 eq. 7): each step's
            estimate moves down the gradient of ``|| mask * (G(w_hat) - image) ||^2`` through
            the denoiser and the frozen generator. It uses only the known forward model and
            the observed pixels, so the samples stay a posterior over the hidden part; 0 (the
            default) samples the plain conditional model. Costs one backward pass per step.
        seed: one seed per image (an int ``s`` means ``s, s + 1, ...``); sample ``k`` of
            image ``b`` draws its noise from ``seeds[b] * 1000 + k`` alone, so it does not
            depend on the batch it is in.
        sampler: a ``dfm_core.sampling.SAMPLERS`` name (paper: ``"ddim"``).
        callback: called after every sampler step with its ``StepInfo`` (batch ``B * K``,
            image-major; ``info.signal`` holds the latent estimates).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {sorted(SAMPLERS)}, got {sampler!r}")
    batch = image.shape[0]
    seeds = (
        [int(seed) + b for b in range(batch)] if isinstance(seed, int) else [int(s) for s in seed]
    )
    if len(seeds) != batch:
        raise ValueError(f"seed: expected {batch} seeds (one per image), got {len(seeds)}")
    device = image.device
    k = num_samples
    masked = torch.cat([image * mask, mask], dim=1).repeat_interleave(k, dim=0)  # (B*K, 4, r, r)
    view = GanView(image.shape[-1])
    context = Context(observation=masked)
    condition = model.condition(context, view)
    if guidance_scale == 1.0:
        denoiser = model.denoiser(condition)
    else:
        null = model.condition(context, view, drop=True)
        denoiser = classifier_free_guidance(model.denoise, condition, null, guidance_scale)
    if reconstruction_weight < 0:
        raise ValueError(f"reconstruction_weight: expected >= 0, got {reconstruction_weight}")
    if reconstruction_weight > 0:
        visible = masked[:, 3:]  # (B*K, 1, r, r)

        def observe_patch(latents: Tensor, params: GanView) -> Tensor:
            return model.forward_model(latents, params) * visible

        denoiser = reconstruction_guidance(
            denoiser,
            model.schedule,
            forward_model=observe_patch,
            context_observation=masked[:, :3],
            context_params=view,
            weight=reconstruction_weight,
        )
    generators = [
        torch.Generator(device="cpu").manual_seed(s * 1000 + j) for s in seeds for j in range(k)
    ]
    out = SAMPLERS[sampler](
        denoiser,
        model.schedule,
        (batch * k, *image.shape[1:]),
        steps=steps,
        generator=generators,
        callback=callback,
        device=device,
    )
    forward_model = model.forward_model
    assert isinstance(forward_model, GeneratorForwardModel)
    latents = out.signal  # (B*K, num_ws, w_dim)
    images = forward_model.render_full(latents)
    return InversionSamples(
        latents=latents.reshape(batch, k, *latents.shape[1:]),
        observations=out.observation.reshape(batch, k, *out.observation.shape[1:]),
        images=images.reshape(batch, k, *images.shape[1:]),
    )
