"""StyleGAN2 generator (as in StyleGAN2-ADA, PyTorch), with the official state-dict layout.

Mapping network ``z -> w`` (2nd-moment normalisation, equalised-learning-rate FC layers with
an lr multiplier, a tracked ``w_avg`` and truncation), synthesis network ``w -> image``
(a learned 4x4 constant, modulated/demodulated 3x3 convolutions, FIR ``[1, 3, 3, 1]``
up-sampling, per-pixel noise, the "skip" ToRGB architecture). Parameter and buffer names
are those of the official ``G_ema`` (``mapping.fc0.weight``, ``synthesis.b4.const``,
``synthesis.b8.conv0.affine.weight``, ``...noise_const``, ``mapping.w_avg``...), so importing
official weights is a name-for-name copy (:mod:`dfm_gan.weights`). The constructor takes the
official ``_init_kwargs`` (``z_dim, c_dim, w_dim, img_resolution, img_channels,
mapping_kwargs, synthesis_kwargs``).

Differences from the official code, on purpose:

* Everything runs in the input's float dtype (fp32 by default); ``num_fp16_res`` is
  accepted (official pickles carry it) but mixed precision is left to ``torch.autocast``.
* The default ``noise_mode`` is ``"const"`` (the official default is ``"random"``), so an
  image is a pure function of ``w``: the generator is then a deterministic forward model.
  ``"random"`` takes an optional ``torch.Generator``.
* ``mapping(z)`` and ``generator(z)`` accept ``c=None`` for unconditional models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from dfm_gan.ops import (
    ACTIVATIONS,
    bias_act,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
)

__all__ = [
    "GENERATOR_PRESETS",
    "FullyConnectedLayer",
    "Generator",
    "GeneratorConfig",
    "MappingNetwork",
    "NoiseMode",
    "SynthesisBlock",
    "SynthesisLayer",
    "SynthesisNetwork",
    "ToRGBLayer",
    "generator_config",
    "truncate",
]

NoiseMode = Literal["random", "const", "none"]
_NOISE_MODES = ("random", "const", "none")


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate (Karras et al. 2018, section 4.1).

    The stored weight is ``N(0, 1) / lr_multiplier``; the forward pass scales it by
    ``lr_multiplier / sqrt(in_features)`` (and the bias by ``lr_multiplier``), so Adam's
    effective step on the *used* weight is ``lr * lr_multiplier`` for every layer. The
    mapping network uses ``lr_multiplier = 0.01``.

    Args:
        in_features: input width.
        out_features: output width.
        bias: learn a bias.
        activation: a key of :data:`dfm_gan.ops.ACTIVATIONS`.
        lr_multiplier: learning-rate multiplier.
        bias_init: initial bias value (1 for style affines: styles start at 1).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        # Plain floats (the official code stores numpy scalars; same values).
        self.weight_gain = float(lr_multiplier / np.sqrt(in_features))
        self.bias_gain = float(lr_multiplier)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_features) -> (B, out_features)``."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        x = x.matmul(w.t())
        return bias_act(x, b, act=self.activation)


class MappingNetwork(nn.Module):
    """``z (B, z_dim)`` [+ label ``c``] -> ``w`` broadcast to ``(B, num_ws, w_dim)``.

    Args:
        z_dim: latent width (0 for a label-only model).
        c_dim: label width (0: unconditional).
        w_dim: intermediate latent width.
        num_ws: how many copies of ``w`` to output (None: return ``(B, w_dim)``).
        num_layers: FC layers (8 in the paper configs).
        embed_features: label embedding width (default ``w_dim``).
        layer_features: hidden width (default ``w_dim``).
        activation: hidden activation.
        lr_multiplier: equalised-lr multiplier of every layer (0.01).
        w_avg_beta: decay of the running average of ``w`` tracked in training mode
            (``w_avg <- beta * w_avg + (1 - beta) * mean_batch(w)``); None: no tracking.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers: expected >= 1, got {num_layers}")
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx],
                features[idx + 1],
                activation=activation,
                lr_multiplier=lr_multiplier,
            )
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: Tensor,
        c: Tensor | None = None,
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = True,
    ) -> Tensor:
        """Map latents to ``w``.

        Args:
            z: ``(B, z_dim)`` latents, typically N(0, I).
            c: ``(B, c_dim)`` labels; None for unconditional models.
            truncation_psi: ``w <- w_avg + psi (w - w_avg)``; 1 is the identity, 0 gives
                ``w_avg`` (the truncation trick, Karras et al. 2019).
            truncation_cutoff: truncate only the first this many of the ``num_ws`` copies
                (coarse layers); None truncates all.
            update_w_avg: in training mode, update the running ``w_avg``.

        Returns:
            ``(B, num_ws, w_dim)``, or ``(B, w_dim)`` when ``num_ws`` is None.
        """
        x = None
        if self.z_dim > 0:
            if z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z: expected shape (B, {self.z_dim}), got {tuple(z.shape)}")
            x = normalize_2nd_moment(z.float())
        if self.c_dim > 0:
            if c is None or c.shape[-1] != self.c_dim:
                raise ValueError(f"c: this model needs labels of shape (B, {self.c_dim})")
            y = normalize_2nd_moment(self.embed(c.float()))
            x = torch.cat([x, y], dim=1) if x is not None else y
        assert x is not None, "a mapping network needs z_dim > 0 or c_dim > 0"
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)  # (B, w_dim)
        if (
            self.w_avg_beta is not None
            and self.training
            and update_w_avg
            and hasattr(self, "w_avg")
        ):
            # lerp(end=w_avg, weight=beta): beta * w_avg + (1 - beta) * batch mean.
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # (B, num_ws, w_dim)
        if truncation_psi != 1:
            x = truncate(x, self.w_avg, truncation_psi, truncation_cutoff)
        return x


def truncate(w: Tensor, w_avg: Tensor, psi: float, cutoff: int | None = None) -> Tensor:
    """The truncation trick: ``w_avg + psi (w - w_avg)`` on all or the first ``cutoff`` ws.

    Args:
        w: ``(B, num_ws, w_dim)`` or ``(B, w_dim)``.
        w_avg: ``(w_dim,)``.
        psi: 1 returns ``w``; 0 returns ``w_avg``.
        cutoff: with ``(B, num_ws, w_dim)`` input, truncate only ``w[:, :cutoff]``.
    """
    w_avg = w_avg.to(w.dtype)
    if cutoff is None or w.ndim == 2:
        return w_avg.lerp(w, psi)
    w = w.clone()
    w[:, :cutoff] = w_avg.lerp(w[:, :cutoff], psi)
    return w


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution + noise + bias + leaky ReLU (one ``w`` per layer).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        w_dim: latent width (input of the style affine).
        resolution: output resolution (size of ``noise_const``).
        kernel_size: convolution size.
        up: 1, or 2 for the first layer of a block (FIR up-sampling).
        use_noise: learn ``noise_strength`` and keep a ``noise_const`` buffer.
        activation: activation after the bias.
        resample_filter: 1-D FIR taps.
        conv_clamp: clamp of the activations (after the gain); None disables.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATIONS[activation][1]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self,
        x: Tensor,
        w: Tensor,
        *,
        noise_mode: NoiseMode = "const",
        fused: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``x (B, C_in, R/up, R/up)``, ``w (B, w_dim)`` -> ``(B, C_out, R, R)``."""
        expected = (self.in_channels, self.resolution // self.up, self.resolution // self.up)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x: expected shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        styles = self.affine(w)  # (B, C_in)
        noise = None
        if self.use_noise and noise_mode == "random":
            shape = (x.shape[0], 1, self.resolution, self.resolution)
            gen_device = generator.device if generator is not None else x.device
            draw = torch.randn(shape, generator=generator, device=gen_device).to(x.device, x.dtype)
            noise = draw * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            fused=fused,
        )
        clamp = self.conv_clamp
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to RGB, without demodulation (its output is the image).

    Styles are additionally scaled by ``1 / sqrt(in_channels * k^2)`` (equalised lr).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: Tensor, w: Tensor, *, fused: bool = True) -> Tensor:
        """``x (B, C_in, R, R)``, ``w (B, w_dim)`` -> ``(B, img_channels, R, R)``."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network ("skip" architecture).

    ``b4`` starts from the learned ``const`` and has one conv; later blocks have ``conv0``
    (2x up-sampling) and ``conv1``. Every block has a ToRGB whose output is added to the
    FIR-up-sampled image of the previous block. It consumes ``num_conv + num_torgb``
    consecutive ws; consecutive blocks share one index (the ToRGB ``w`` of block k is the
    ``conv0`` ``w`` of block k + 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        use_noise: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution = resolution
        self.is_last = is_last
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.num_conv = 0
        self.num_torgb = 0
        layer_kwargs: dict[str, Any] = dict(
            w_dim=w_dim,
            resolution=resolution,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
            use_noise=use_noise,
        )
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1

    def forward(
        self,
        x: Tensor | None,
        img: Tensor | None,
        ws: Tensor,
        *,
        noise_mode: NoiseMode = "const",
        fused: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``ws (B, num_conv + num_torgb, w_dim)`` -> features ``(B, C, R, R)``, image ``(B, 3, R, R)``."""
        w_iter = iter(ws.unbind(dim=1))
        kwargs: dict[str, Any] = dict(noise_mode=noise_mode, fused=fused, generator=generator)
        if self.in_channels == 0:
            x = self.const.to(ws.dtype)[None].repeat(ws.shape[0], 1, 1, 1)  # (B, C, 4, 4)
            x = self.conv1(x, next(w_iter), **kwargs)
        else:
            assert x is not None
            x = self.conv0(x, next(w_iter), **kwargs)  # (B, C, R, R): up-sampled
            x = self.conv1(x, next(w_iter), **kwargs)
        if img is not None:
            img = upsample2d(img, self.resample_filter)  # (B, 3, R, R)
        y = self.torgb(x, next(w_iter), fused=fused)
        img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """``ws (B, num_ws, w_dim)`` -> image ``(B, img_channels, R, R)``, nominally in [-1, 1].

    Args:
        w_dim: latent width.
        img_resolution: output resolution, a power of two >= 4.
        img_channels: output channels.
        channel_base: channels at resolution r are ``min(channel_base // r, channel_max)``.
        channel_max: cap on channels.
        num_fp16_res: accepted for compatibility with official kwargs; see the module notes.
        conv_clamp: activation clamp (256 in the paper configs); None disables.
        architecture: only ``"skip"`` (the StyleGAN2 generator default).
        resample_filter: 1-D FIR taps.
        use_noise: per-layer noise inputs.
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        architecture: str = "skip",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        use_noise: bool = True,
        **unused: Any,
    ) -> None:
        super().__init__()
        # Official pickles may carry GPU-only layout switches; they do not change the maths.
        ignorable = {"fp16_channels_last", "channels_last"}
        unknown = sorted(set(unused) - ignorable)
        if unknown:
            raise ValueError(f"synthesis_kwargs: unsupported options {unknown}")
        if architecture != "skip":
            raise ValueError(
                f"synthesis_kwargs.architecture: only 'skip' is implemented, got {architecture!r}"
            )
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution: expected a power of two >= 4, got {img_resolution}")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        if min(channels.values()) < 1:
            raise ValueError(
                f"channel_base={channel_base} gives no channels at resolution {img_resolution}; "
                f"need channel_base >= {img_resolution}"
            )
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0,
                channels[res],
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                is_last=res == img_resolution,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
                use_noise=use_noise,
            )
            self.num_ws += block.num_conv
            if res == img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def block_ws_slices(self) -> list[tuple[int, int]]:
        """``(start, length)`` of the ws each block reads (the official, overlapping layout)."""
        out, start = [], 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            out.append((start, block.num_conv + block.num_torgb))
            start += block.num_conv
        return out

    def forward(
        self,
        ws: Tensor,
        *,
        noise_mode: NoiseMode = "const",
        fused: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Render images.

        Args:
            ws: ``(B, num_ws, w_dim)`` per-layer latents, or ``(B, w_dim)`` for one ``w``
                broadcast to every layer.
            noise_mode: ``"random"`` (fresh N(0, 1) noise, from ``generator`` if given),
                ``"const"`` (the stored ``noise_const`` buffers) or ``"none"``.
            fused: fused (grouped) modulated convolutions; same result either way.
            generator: RNG for ``noise_mode="random"``.

        Returns:
            ``(B, img_channels, img_resolution, img_resolution)``.
        """
        if noise_mode not in _NOISE_MODES:
            raise ValueError(f"noise_mode: expected one of {_NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim == 2:
            ws = ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(
                f"ws: expected shape (B, {self.num_ws}, {self.w_dim}) or (B, {self.w_dim}), "
                f"got {tuple(ws.shape)}"
            )
        if not ws.is_floating_point():
            raise ValueError(f"ws: expected a floating-point tensor, got {ws.dtype}")
        x = img = None
        for res, (start, length) in zip(
            self.block_resolutions, self.block_ws_slices(), strict=True
        ):
            block = getattr(self, f"b{res}")
            x, img = block(
                x,
                img,
                ws.narrow(1, start, length),
                noise_mode=noise_mode,
                fused=fused,
                generator=generator,
            )
        assert img is not None
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` then ``synthesis``; official constructor arguments.

    Satisfies the ``mapping(z)`` / ``synthesis(w)`` / ``z_dim`` / ``w_avg`` protocol of
    ``dfm_data.GanSamplesDataset``.

    Args:
        z_dim: input latent width (512 for FFHQ).
        c_dim: label width (0: unconditional).
        w_dim: intermediate latent width.
        img_resolution: output resolution (power of two).
        img_channels: output channels.
        mapping_kwargs: :class:`MappingNetwork` options (``num_layers``, ...).
        synthesis_kwargs: :class:`SynthesisNetwork` options (``channel_base``, ...).
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: Mapping[str, Any] | None = None,
        synthesis_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.mapping_kwargs = dict(mapping_kwargs or {})
        self.synthesis_kwargs = dict(synthesis_kwargs or {})
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            **self.synthesis_kwargs,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **self.mapping_kwargs
        )

    @property
    def w_avg(self) -> Tensor:
        """``(w_dim,)`` running average of ``w`` (the truncation centre)."""
        return self.mapping.w_avg

    def init_kwargs(self) -> dict[str, Any]:
        """The constructor arguments, as JSON-serialisable plain values."""
        return dict(
            z_dim=self.z_dim,
            c_dim=self.c_dim,
            w_dim=self.w_dim,
            img_resolution=self.img_resolution,
            img_channels=self.img_channels,
            mapping_kwargs=_plain(self.mapping_kwargs),
            synthesis_kwargs=_plain(self.synthesis_kwargs),
        )

    def forward(
        self,
        z: Tensor,
        c: Tensor | None = None,
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseMode = "const",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``z (B, z_dim)`` -> image ``(B, img_channels, R, R)``; see the two sub-networks."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, generator=generator)


def _plain(value: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python numbers, recursively (JSON-friendly)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class GeneratorConfig:
    """Architecture of a :class:`Generator` (the official ``G_kwargs``, flattened)."""

    img_resolution: int = 256
    """Output resolution, a power of two >= 4."""
    z_dim: int = 512
    """Input latent width."""
    w_dim: int = 512
    """Intermediate latent width."""
    c_dim: int = 0
    """Label width; 0 for unconditional models."""
    img_channels: int = 3
    """Output channels."""
    mapping_layers: int = 8
    """FC layers of the mapping network (paper configs: 8)."""
    mapping_lr_multiplier: float = 0.01
    """Equalised-lr multiplier of the mapping network."""
    w_avg_beta: float = 0.995
    """Decay of the tracked ``w_avg``."""
    channel_base: int = 32768
    """Channels at resolution r: ``min(channel_base // r, channel_max)`` (paper256: 16384)."""
    channel_max: int = 512
    """Cap on channels."""
    conv_clamp: float | None = None
    """Activation clamp (paper configs: 256)."""
    num_fp16_res: int = 0
    """Kept for compatibility with official kwargs (no effect here)."""
    resample_filter: list[float] = field(default_factory=lambda: [1.0, 3.0, 3.0, 1.0])
    """FIR taps of the up-sampling filter."""

    def init_kwargs(self) -> dict[str, Any]:
        """The official ``Generator`` constructor arguments."""
        return dict(
            z_dim=self.z_dim,
            c_dim=self.c_dim,
            w_dim=self.w_dim,
            img_resolution=self.img_resolution,
            img_channels=self.img_channels,
            mapping_kwargs=dict(
                num_layers=self.mapping_layers,
                lr_multiplier=self.mapping_lr_multiplier,
                w_avg_beta=self.w_avg_beta,
            ),
            synthesis_kwargs=dict(
                channel_base=self.channel_base,
                channel_max=self.channel_max,
                conv_clamp=self.conv_clamp,
                num_fp16_res=self.num_fp16_res,
                resample_filter=list(self.resample_filter),
            ),
        )

    def build(self) -> Generator:
        """A randomly initialised generator."""
        return Generator(**self.init_kwargs())

    def to_dict(self) -> dict[str, Any]:
        """Plain-value dict (for JSON / checkpoint metadata)."""
        return asdict(self)


GENERATOR_PRESETS: Mapping[str, GeneratorConfig] = {
    # StyleGAN2-ADA train.py --cfg=paper256 (FFHQ 256): fmaps 0.5, map 8, clamp 256, 4 fp16 res.
    "paper256": GeneratorConfig(
        img_resolution=256, channel_base=16384, conv_clamp=256.0, num_fp16_res=4
    ),
    # The offline demo generator (32x32, 272k parameters; trainable on a CPU).
    "demo32": GeneratorConfig(
        img_resolution=32, z_dim=64, w_dim=64, mapping_layers=4, channel_base=1024, channel_max=64
    ),
    # For unit tests.
    "tiny": GeneratorConfig(
        img_resolution=8, z_dim=8, w_dim=8, mapping_layers=2, channel_base=64, channel_max=16
    ),
}
"""Named generator architectures; use :func:`generator_config` for an editable copy."""


def generator_config(preset: str, **overrides: Any) -> GeneratorConfig:
    """A copy of a named preset with some fields replaced.

    Raises:
        ValueError: unknown preset (lists the valid names) or unknown field.
    """
    if preset not in GENERATOR_PRESETS:
        raise ValueError(
            f"preset: unknown generator preset {preset!r}; valid: {sorted(GENERATOR_PRESETS)}"
        )
    base = asdict(GENERATOR_PRESETS[preset])
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(
            f"overrides: unknown GeneratorConfig fields {unknown}; valid: {sorted(base)}"
        )
    base.update(overrides)
    return GeneratorConfig(**base)
