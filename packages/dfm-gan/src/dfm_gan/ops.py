"""Pure-PyTorch StyleGAN2 operators: FIR resampling, bias + activation, modulated convolution.

These re-implement, in plain PyTorch (CPU and GPU, no custom CUDA kernels), the maths of the
operators StyleGAN2-ADA builds its generator from (Karras et al. 2020, "Analyzing and
Improving the Image Quality of StyleGAN", eqs. 1-3; the ADA code's reference paths). The
conventions (filter normalisation, padding arithmetic, weight flipping) are those of the
official code, so imported weights produce the same images.

Images are ``(B, C, H, W)``. Filters are 2-D ``(fh, fw)`` tensors made by :func:`setup_filter`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "bias_act",
    "conv2d_resample",
    "modulated_conv2d",
    "normalize_2nd_moment",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]

# name -> (function, default gain). The gain keeps the activations' second moment at 1 for
# unit-variance pre-activations (He et al.): sqrt(2) for (leaky) ReLU, 1 for linear.
ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), math.sqrt(2.0)),
    "relu": (F.relu, math.sqrt(2.0)),
}


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Scale ``x`` to unit mean square along ``dim`` (StyleGAN's pixel norm on ``z``).

    Args:
        x: any shape, e.g. ``(B, z_dim)``.
        dim: the reduced dimension.
        eps: keeps the reciprocal square root finite for an all-zero input.
    """
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def setup_filter(taps: Sequence[float] | Tensor, *, normalize: bool = True) -> Tensor:
    """Separable FIR filter from 1-D taps: the outer product, normalised to sum 1.

    ``[1, 3, 3, 1]`` gives the 4x4 filter with entries ``{1, 3, 9} / 64`` the StyleGAN2
    generator up-samples with (a binomial approximation of a Gaussian low-pass).

    Args:
        taps: 1-D taps (or an already 2-D filter, returned normalised).
        normalize: divide by the sum so the filter has unit DC gain.

    Returns:
        ``(n, n)`` float32 filter.
    """
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 0 or f.ndim > 2 or f.numel() == 0:
        raise ValueError(f"taps: expected 1-D or 2-D filter taps, got shape {tuple(f.shape)}")
    if f.ndim == 1:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    return f


def upfirdn2d(
    x: Tensor,
    f: Tensor,
    *,
    up: int = 1,
    down: int = 1,
    padding: Sequence[int] = (0, 0, 0, 0),
    gain: float = 1.0,
    flip_filter: bool = False,
) -> Tensor:
    """Up-sample by zero insertion, pad, FIR-filter, down-sample by decimation.

    The reference semantics of StyleGAN2's ``upfirdn2d``: insert ``up - 1`` zeros after
    every pixel, pad (negative values crop) by ``padding = (x0, x1, y0, y1)``, convolve
    with ``f * gain`` (true convolution unless ``flip_filter``), keep every ``down``-th
    pixel.

    Args:
        x: ``(B, C, H, W)`` images.
        f: ``(fh, fw)`` filter from :func:`setup_filter`.
        up: integer up-sampling factor.
        down: integer down-sampling factor.
        padding: ``(pad_x0, pad_x1, pad_y0, pad_y1)`` after up-sampling.
        gain: overall gain (``up ** 2`` restores the mean lost to zero insertion).
        flip_filter: correlate instead of convolve.

    Returns:
        ``(B, C, (H * up + y0 + y1 - fh + 1) // down, ...)`` filtered images.
    """
    if x.ndim != 4:
        raise ValueError(f"x: expected (B, C, H, W), got shape {tuple(x.shape)}")
    if f.ndim != 2:
        raise ValueError(f"f: expected a 2-D filter, got shape {tuple(f.shape)}")
    b, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    # Zero insertion: each pixel becomes an up x up cell with the value in its top-left corner.
    x = x.reshape(b, c, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape(b, c, h * up, w * up)
    # Pad (positive) then crop (negative).
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    # F.conv2d correlates; flipping the kernel makes it the convolution the filter is defined by.
    kernel = (f * gain).to(x.dtype)
    if not flip_filter:
        kernel = kernel.flip([0, 1])
    kernel = kernel[None, None].repeat(c, 1, 1, 1)  # (C, 1, fh, fw), depthwise
    x = F.conv2d(x, kernel, groups=c)
    return x[:, :, ::down, ::down]


def upsample2d(x: Tensor, f: Tensor, *, up: int = 2, gain: float = 1.0) -> Tensor:
    """Up-sample ``x`` by ``up`` with filter ``f``, output exactly ``up`` times larger.

    The padding centres the filter on the zero-inserted grid; the gain ``up ** 2``
    compensates the zeros, so a constant image stays constant (the ToRGB skip path).

    Args:
        x: ``(B, C, H, W)``.
        f: ``(fh, fw)`` filter.
        up: integer factor.
        gain: extra gain on top of ``up ** 2``.

    Returns:
        ``(B, C, H * up, W * up)``.
    """
    fh, fw = f.shape
    pad = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, gain=gain * up * up)


def bias_act(
    x: Tensor,
    b: Tensor | None = None,
    *,
    act: str = "linear",
    gain: float | None = None,
    clamp: float | None = None,
) -> Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)``, with ``b`` broadcast along dim 1.

    Args:
        x: ``(B, C, ...)``.
        b: ``(C,)`` bias or None.
        act: a key of :data:`ACTIVATIONS`.
        gain: multiplier after the activation; None uses the activation's default gain.
        clamp: symmetric clamp after the gain (StyleGAN2-ADA's ``conv_clamp``); None disables.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"act: expected one of {sorted(ACTIVATIONS)}, got {act!r}")
    fn, default_gain = ACTIVATIONS[act]
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    x = fn(x)
    gain = default_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def conv2d_resample(
    x: Tensor,
    w: Tensor,
    *,
    f: Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> Tensor:
    """2-D correlation with ``w``, optionally up-sampling by 2 with the FIR filter ``f``.

    ``up = 1``: ``F.conv2d(x, w, padding)``. ``up = 2`` (the synthesis ``conv0`` layers):
    a stride-2 transposed convolution followed by FIR filtering with gain 4, with the
    padding arithmetic of StyleGAN2-ADA's ``conv2d_resample``, so the output is exactly
    ``2H x 2W`` and matches the official layer for the same weights.

    Args:
        x: ``(B, C_in, H, W)``.
        w: ``(C_out, C_in // groups, kh, kw)`` weights.
        f: ``(fh, fw)`` FIR filter, required for ``up > 1``.
        up: 1 or an integer factor > 1.
        padding: symmetric padding of the (virtual) up-sampled input.
        groups: convolution groups (the batch when modulating per sample).

    Returns:
        ``(B, C_out, H * up, W * up)`` for ``padding = kh // 2``.
    """
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    if f is None:
        raise ValueError("f: a resampling filter is required when up > 1")
    out_channels, in_per_group, kh, kw = w.shape
    fh, fw = f.shape
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    py0 = padding + (fh + up - 1) // 2 - (kh - 1)
    py1 = padding + (fh - up) // 2 - (kh - up)
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    # conv_transpose2d wants (C_in, C_out // groups, kh, kw): swap in/out inside each group.
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    x = F.conv_transpose2d(x, wt, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    *,
    noise: Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: Tensor | None = None,
    demodulate: bool = True,
    fused: bool = True,
) -> Tensor:
    """StyleGAN2's weight-modulated convolution (Karras et al. 2020, eqs. 1-3).

    Each sample ``i`` gets its own weights ``w'_i[o, c] = weight[o, c] * styles[i, c]``
    (eq. 1); with ``demodulate`` each output channel is rescaled by
    ``d_i[o] = (sum_{c,k} w'_i[o, c, k]^2 + 1e-8)^(-1/2)`` (eq. 3), so unit-variance
    inputs give unit-variance outputs. Noise is added after demodulation.

    Args:
        x: ``(B, C_in, H, W)`` input.
        weight: ``(C_out, C_in, kh, kw)`` shared weights.
        styles: ``(B, C_in)`` per-sample scales.
        noise: broadcastable to ``(B, C_out, H * up, W * up)``, or None.
        up: 1, or 2 for the up-sampling layers.
        padding: convolution padding (``kh // 2`` keeps the size).
        resample_filter: ``(fh, fw)`` FIR filter, required for ``up > 1``.
        demodulate: apply eq. 3 (False for ToRGB).
        fused: one grouped convolution with the batch folded into the groups; otherwise
            scale the activations instead of the weights (same result, cheaper for large
            batches with few channels).

    Returns:
        ``(B, C_out, H * up, W * up)``.
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if styles.shape != (batch, in_channels):
        raise ValueError(
            f"styles: expected shape (B, C_in) = ({batch}, {in_channels}), got {tuple(styles.shape)}"
        )
    w = weight[None] * styles.reshape(batch, 1, in_channels, 1, 1)  # (B, C_out, C_in, kh, kw)
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # (B, C_out)
    if fused:
        if dcoefs is not None:
            w = w * dcoefs.reshape(batch, out_channels, 1, 1, 1)
        x = x.reshape(1, batch * in_channels, *x.shape[2:])  # (1, B*C_in, H, W)
        w = w.reshape(batch * out_channels, in_channels, kh, kw)
        x = conv2d_resample(x, w, f=resample_filter, up=up, padding=padding, groups=batch)
        x = x.reshape(batch, out_channels, *x.shape[2:])  # (B, C_out, H', W')
    else:
        # conv(x * s, weight) == conv(x, weight * s): modulate the activations instead.
        x = x * styles.to(x.dtype).reshape(batch, in_channels, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, out_channels, 1, 1)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x
