"""Forward warping by splatting (Niklaus & Liu, "Softmax Splatting for Video Frame
Interpolation", CVPR 2020), in pure PyTorch: CPU and GPU, float32 and float64.

**Pixel convention (stated once for dfm-flow, the same as dfm-data's cameras).** Continuous
image coordinates put the top-left corner of the top-left pixel at ``(0, 0)`` and the
bottom-right corner of the image at ``(W, H)``; pixel ``(row i, col j)`` covers
``[j, j + 1] x [i, i + 1]`` and has its centre at ``(j + 0.5, i + 0.5)``. This is the
convention of ``grid_sample(..., align_corners=False)``, which ``backwarp`` uses. A flow is
a displacement in pixels, so it is the same in any convention that only shifts the origin:
channel 0 moves along x (columns, rightwards), channel 1 along y (rows, downwards), and
``flow[:, :, i, j]`` moves the pixel ``(i, j)`` of the *source* image to the continuous
position ``(j + 0.5 + flow_x, i + 0.5 + flow_y)`` of the *target* image (source -> target,
a forward flow).

**Splatting.** Summation splatting (the paper's operator Sigma, eq. 1) deposits every
source pixel into the 4 target pixels around its new position with bilinear weights
``b = (1 - |dx|)(1 - |dy|)`` and sums; deposits that fall outside the image are dropped.
The other modes are ratios of two summations (eqs. 2-4):

    average:  Sigma(I) / Sigma(1)
    linear:   Sigma(Z I) / Sigma(Z)                 (Z > 0, e.g. inverse depth)
    soft:     Sigma(exp(Z) I) / Sigma(exp(Z))       (softmax splatting)

Softmax splatting subtracts each sample's largest Z before ``exp``: the ratio is unchanged
mathematically, ``exp`` cannot overflow, and the result is invariant to adding a constant to
Z up to rounding (the reference adds its epsilon to ``Sigma(exp(Z))`` without shifting, so
there the invariance only holds to ~1e-4). Large ``|Z|`` differences make softmax splatting a
z-buffer: the pixel with the largest Z wins each target pixel.

**Epsilon of the normalisation** (``eps_mode``; target pixels that receive nothing have a
zero denominator):

    "add"   out = num / (den + eps)         (the reference's default, eps = 1e-7). Biases
            every pixel towards 0 by eps / den, which matters when den is tiny (a target
            pixel grazed by a bilinear corner, or softmax weights far below the max).
    "zero"  out = num / den, with den = 1 where den == 0 (exact wherever anything landed).
    "clip"  out = num / max(den, eps).

Holes (target pixels nothing lands in) are 0 in every mode.

**Gradients.** The summation kernel is one ``scatter_add_`` per corner over all channels
at once (channels-first layout, one index row expanded over channels), with a hand-written
backward (a ``gather`` of the output gradient at the same corners) that recomputes indices
and bilinear weights instead of storing them: less memory and faster than autograd through
the scatter. The flow gradient is that of the bilinear weights, which
are piecewise linear in the flow; at integer crossings the one-sided derivative from the
right is used (``floor`` convention). Gradients for the metric Z come from autograd through
``exp`` and the normalisation. Double backward is not supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "EpsMode",
    "ImportanceMetric",
    "ImportanceMetricConfig",
    "NonFinite",
    "SplatMode",
    "backwarp",
    "importance_metric",
    "pixel_grid",
    "softsplat",
]

SplatMode = Literal["summation", "average", "linear", "soft"]
EpsMode = Literal["add", "zero", "clip"]
NonFinite = Literal["raise", "drop"]

_MODES = ("summation", "average", "linear", "soft")
# The reference's current (strMode) and old (strType) names.
_MODE_ALIASES = {"sum": "summation", "avg": "average", "softmax": "soft"}
_EPS_MODES = ("add", "zero", "clip")


# --------------------------------------------------------------------------------------
# Summation splatting: one scatter per corner, hand-written backward
# --------------------------------------------------------------------------------------

# Corner offsets (dx, dy) from the floor of the landing position.
_CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))


@dataclass(frozen=True)
class _Landing:
    """Where every source pixel lands, flattened over N = B * H * W pixels.

    Attributes:
        first: (N,) int64 flat target index ``b * H * W + y0 * W + x0`` of the top-left corner.
        ix, iy: (N,) int64 floor of the landing position (index units).
        ax, ay: (N,) fractional parts, in [0, 1).
    """

    first: Tensor
    ix: Tensor
    iy: Tensor
    ax: Tensor
    ay: Tensor


def _landing(flow: Tensor, valid: Tensor | None) -> _Landing:
    """Landing positions of a (B, 2, H, W) flow; ``valid`` (B, H, W) False drops a pixel."""
    batch, _, height, width = flow.shape
    n = batch * height * width
    gx = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width)
    gy = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1)
    # Landing position in index units (pixel centres at integers, see the module docstring).
    # Clamping to [-2, size + 1] changes no weight (everything beyond is fully outside)
    # and keeps huge flows from overflowing the integer conversion.
    x = (gx + flow[:, 0]).clamp(-2.0, width + 1.0)
    y = (gy + flow[:, 1]).clamp(-2.0, height + 1.0)
    if valid is not None:  # dropped pixels land fully outside
        x = torch.where(valid, x, torch.full_like(x, -2.0))
        y = torch.where(valid, y, torch.full_like(y, -2.0))
    x0, y0 = torch.floor(x.reshape(n)), torch.floor(y.reshape(n))
    ax, ay = x.reshape(n) - x0, y.reshape(n) - y0
    ix, iy = x0.long(), y0.long()
    base = torch.arange(batch, device=flow.device).repeat_interleave(height * width)
    first = (base * height + iy) * width + ix
    return _Landing(first, ix, iy, ax, ay)


def _corner(
    land: _Landing, dx: int, dy: int, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Index (N,) int64 (dump slot N when outside), bilinear weight (N,) and inside (N,) bool."""
    n = land.first.shape[0]
    cx, cy = land.ix + dx, land.iy + dy
    inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
    wx = land.ax if dx else 1.0 - land.ax
    wy = land.ay if dy else 1.0 - land.ay
    weight = wx * wy * inside
    index = torch.where(inside, land.first + (dy * width + dx), n)
    return index, weight, inside


class _SumSplat(torch.autograd.Function):
    """Summation splatting of (B, C, H, W) by (B, 2, H, W); see ``softsplat``."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, flow: Tensor, valid: Tensor | None) -> Tensor:
        batch, channels, height, width = input.shape
        n = batch * height * width
        land = _landing(flow, valid)
        # Channels first, so one index row serves every channel (expanded, not copied);
        # one corner at a time, so only (C, N) deposits exist at once.
        source = input.transpose(0, 1).reshape(channels, n)
        out = input.new_zeros(channels, n + 1)  # the last column collects dropped deposits
        for dx, dy in _CORNERS:
            index, weight, _ = _corner(land, dx, dy, height, width)
            out.scatter_add_(1, index.expand(channels, -1), source * weight)
        ctx.save_for_backward(input, flow, valid)
        return out[:, :n].reshape(channels, batch, height, width).transpose(0, 1).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        input, flow, valid = ctx.saved_tensors
        batch, channels, height, width = input.shape
        n = batch * height * width
        land = _landing(flow, valid)
        grad_padded = grad_out.new_zeros(channels, n + 1)
        grad_padded[:, :n] = grad_out.transpose(0, 1).reshape(channels, n)
        source = input.transpose(0, 1).reshape(channels, n)
        need_input, need_flow = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_input = torch.zeros_like(source) if need_input else None
        grad_x = torch.zeros_like(land.ax) if need_flow else None
        grad_y = torch.zeros_like(land.ay) if need_flow else None
        for dx, dy in _CORNERS:
            index, weight, inside = _corner(land, dx, dy, height, width)
            # d out[c, index[p]] / d input[c, p] = weight[p]: gather the output gradient.
            gathered = grad_padded.gather(1, index.expand(channels, -1))  # (C, N)
            if grad_input is not None:
                grad_input += gathered * weight
            if grad_x is not None and grad_y is not None:
                # weight = wx(ax) * wy(ay) * inside with wx = ax or 1 - ax (same for y).
                dweight = (gathered * source).sum(0) * inside
                wx = land.ax if dx else 1.0 - land.ax
                wy = land.ay if dy else 1.0 - land.ay
                grad_x += dweight * wy if dx else -dweight * wy
                grad_y += dweight * wx if dy else -dweight * wx
        if grad_input is not None:
            grad_input = grad_input.view(channels, batch, height, width).transpose(0, 1)
        grad_flow = None
        if grad_x is not None and grad_y is not None:
            # Beyond the clamp in ``_landing`` every corner is outside, so the gradient is
            # 0 there as it should be; dropped pixels are outside by construction.
            grad_flow = torch.stack([grad_x, grad_y]).view(2, batch, height, width).transpose(0, 1)
        return grad_input, grad_flow, None


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def _check_image(name: str, tensor: Any, channels: int | None = None) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != 4 or (channels is not None and tensor.shape[1] != channels):
        want = f"(B, {channels}, H, W)" if channels is not None else "(B, C, H, W)"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")
    return tensor


def _check_matches(name: str, tensor: Tensor, like: Tensor, channels: int) -> None:
    b, _, h, w = like.shape
    if tensor.shape != (b, channels, h, w):
        raise ValueError(
            f"{name}: expected shape {(b, channels, h, w)} to match input (B, C, H, W) = "
            f"{tuple(like.shape)}, got {tuple(tensor.shape)}"
        )
    if tensor.device != like.device:
        raise ValueError(f"{name}: expected device {like.device}, got {tensor.device}")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    # Half precision accumulates badly in scatter sums; the reference runs in fp32 too.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def softsplat(
    input: Tensor,
    flow: Tensor,
    metric: Tensor | None = None,
    mode: str = "soft",
    *,
    eps: float = 1e-7,
    eps_mode: str = "add",
    nonfinite: str = "raise",
) -> Tensor:
    """Forward-warp ``input`` by ``flow`` (summation, average, linear or softmax splatting).

    Every source pixel ``(i, j)`` moves to ``(j + flow_x, i + flow_y)`` in index units and
    is deposited bilinearly into the 4 target pixels around it (eq. 1 of Niklaus & Liu);
    deposits outside the image are dropped. See the module docstring for the modes, the
    epsilon modes and the pixel convention.

    Args:
        input: (B, C, H, W) float, the source image or features.
        flow: (B, 2, H, W) float, source -> target displacement in pixels; channel 0 = x
            (rightwards), channel 1 = y (downwards).
        metric: (B, 1, H, W) float importance Z; required by ``"linear"`` (Z > 0) and
            ``"soft"`` (any real Z; larger wins), not accepted by the other modes.
        mode: ``"summation"``, ``"average"``, ``"linear"`` or ``"soft"`` (the reference's
            ``"sum"``, ``"avg"`` and ``"softmax"`` are accepted as aliases).
        eps: epsilon of the normalisation, > 0 (unused by ``"summation"``).
        eps_mode: ``"add"``, ``"zero"`` or ``"clip"``, see the module docstring.
        nonfinite: ``"raise"`` (a ValueError naming ``flow`` or ``metric``) or ``"drop"``
            (source pixels with a non-finite flow or metric contribute nothing).

    Returns:
        (B, C, H, W), the warped input; float32 for half-precision inputs, otherwise the
        promoted dtype of ``input``, ``flow`` and ``metric``.

    Raises:
        ValueError: wrong shapes, batch/size/device mismatch, non-float tensors, unknown
            ``mode``/``eps_mode``/``nonfinite``, a missing or unexpected ``metric``,
            ``eps <= 0``, or non-finite values with ``nonfinite="raise"``.
    """
    mode = _MODE_ALIASES.get(mode, mode)
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {list(_MODES)}, got {mode!r}")
    if eps_mode not in _EPS_MODES:
        raise ValueError(f"eps_mode: expected one of {list(_EPS_MODES)}, got {eps_mode!r}")
    if nonfinite not in ("raise", "drop"):
        raise ValueError(f"nonfinite: expected 'raise' or 'drop', got {nonfinite!r}")
    if not eps > 0:
        raise ValueError(f"eps: expected > 0, got {eps}")
    _check_image("input", input)
    _check_image("flow", flow)
    _check_matches("flow", flow, input, 2)
    needs_metric = mode in ("linear", "soft")
    if needs_metric and metric is None:
        raise ValueError(f"metric: mode {mode!r} needs a metric Z of shape (B, 1, H, W)")
    if not needs_metric and metric is not None:
        raise ValueError(f"metric: mode {mode!r} takes no metric; use 'linear' or 'soft'")
    tensors = [input, flow]
    if metric is not None:
        _check_image("metric", metric)
        _check_matches("metric", metric, input, 1)
        tensors.append(metric)
    dtype = _compute_dtype(*tensors)
    input, flow = input.to(dtype), flow.to(dtype)
    metric = metric.to(dtype) if metric is not None else None

    valid: Tensor | None = None
    for name, tensor in (("flow", flow), ("metric", metric)):
        if tensor is None:
            continue
        finite = torch.isfinite(tensor).all(dim=1)  # (B, H, W)
        if bool(finite.all()):
            continue
        if nonfinite == "raise":
            count = int((~finite).sum())
            raise ValueError(
                f"{name}: {count} pixel(s) have non-finite values; expected finite values "
                "(pass nonfinite='drop' to drop those source pixels)"
            )
        valid = finite if valid is None else valid & finite
    if metric is not None and valid is not None:
        # Dropped pixels deposit nothing (``valid``); give them a finite metric so that no
        # NaN reaches the products below or their gradients.
        metric = torch.where(valid.unsqueeze(1), metric, torch.zeros_like(metric))

    if mode == "summation":
        return _SumSplat.apply(input, flow, valid)
    if mode == "average":
        weight = torch.ones_like(input[:, :1])
    elif mode == "linear":
        assert metric is not None
        weight = metric
    else:
        assert metric is not None
        # exp(Z - max Z) per sample: the same ratio as exp(Z), never overflows (eq. 4).
        logits = metric
        if valid is not None:  # the max runs over the pixels kept
            logits = torch.where(valid.unsqueeze(1), metric, torch.full_like(metric, -math.inf))
        shift = logits.amax(dim=(1, 2, 3), keepdim=True)
        if valid is not None:  # a sample with every pixel dropped
            shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        weight = torch.exp(logits - shift)
    splatted = _SumSplat.apply(torch.cat([input * weight, weight], dim=1), flow, valid)
    numerator, denominator = splatted[:, :-1], splatted[:, -1:]
    if eps_mode == "add":
        denominator = denominator + eps
    elif eps_mode == "zero":
        denominator = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    else:
        denominator = denominator.clamp_min(eps)
    return numerator / denominator


def pixel_grid(
    height: int,
    width: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Continuous coordinates of the pixel centres, (2, H, W): ``(j + 0.5, i + 0.5)``."""
    ys = torch.arange(height, device=device, dtype=dtype) + 0.5
    xs = torch.arange(width, device=device, dtype=dtype) + 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])


def backwarp(
    image: Tensor, flow: Tensor, *, padding_mode: str = "zeros", interpolation: str = "bilinear"
) -> Tensor:
    """Backward warping: ``out[:, :, i, j] = image`` sampled at ``(j + 0.5, i + 0.5) + flow[:, :, i, j]``.

    With ``flow`` the forward flow F_{0->1} and ``image`` frame 1, the result approximates
    frame 0 (where nothing is occluded). Uses ``grid_sample(align_corners=False)``, the
    pixel convention of the module docstring.

    Args:
        image: (B, C, H, W) float.
        flow: (B, 2, H, W) float, in pixels (channel 0 = x, channel 1 = y).
        padding_mode: ``grid_sample``'s ``"zeros"``, ``"border"`` or ``"reflection"``.
        interpolation: ``grid_sample``'s ``"bilinear"`` or ``"nearest"``.

    Returns:
        (B, C, H, W).
    """
    _check_image("image", image)
    _check_image("flow", flow)
    _check_matches("flow", flow, image, 2)
    _, _, height, width = image.shape
    dtype = _compute_dtype(image, flow)
    image, flow = image.to(dtype), flow.to(dtype)
    position = pixel_grid(height, width, device=flow.device, dtype=dtype) + flow  # (B, 2, H, W)
    # Continuous x in [0, W] maps to [-1, 1] under align_corners=False.
    scale = torch.tensor([2.0 / width, 2.0 / height], device=flow.device, dtype=dtype)
    grid = (position * scale.view(1, 2, 1, 1) - 1.0).permute(0, 2, 3, 1)  # (B, H, W, 2)
    return F.grid_sample(
        image, grid, mode=interpolation, padding_mode=padding_mode, align_corners=False
    )


def importance_metric(
    image0: Tensor,
    image1: Tensor,
    flow: Tensor,
    alpha: float | Tensor = -20.0,
    clip: float | None = 20.0,
) -> Tensor:
    """The paper's importance metric Z = alpha * |I0 - backwarp(I1, F_{0->1})| (eq. 14).

    The brightness-constancy error is the channel mean of the absolute difference. With
    alpha < 0, pixels whose flow is consistent with frame 1 get a larger Z and win
    collisions in softmax splatting. Z is clipped to ``[-clip, clip]`` as the reference
    README recommends (keeps exp(Z) finite in float32 without a max shift).

    Args:
        image0: (B, C, H, W), the frame being splatted.
        image1: (B, C, H, W), the frame the flow points to.
        flow: (B, 2, H, W), F_{0->1} in pixels.
        alpha: scalar or 0-dim tensor (learnable in ``ImportanceMetric``).
        clip: bound of |Z|; None disables clipping.

    Returns:
        (B, 1, H, W).
    """
    _check_image("image0", image0)
    _check_image("image1", image1)
    if image1.shape != image0.shape:
        raise ValueError(
            f"image1: expected shape {tuple(image0.shape)} like image0, got {tuple(image1.shape)}"
        )
    _check_matches("flow", flow, image0, 2)
    error = (image0 - backwarp(image1, flow)).abs().mean(dim=1, keepdim=True)
    metric = alpha * error
    return metric.clamp(-clip, clip) if clip is not None else metric


@dataclass
class ImportanceMetricConfig:
    """Configuration of ``ImportanceMetric``; ``build()`` makes the module."""

    alpha: float = -20.0
    """Initial alpha (the reference README uses -20)."""
    learnable: bool = True
    """Make alpha a trainable parameter (the paper learns it)."""
    clip: float | None = 20.0
    """Clip Z to [-clip, clip]; None disables it."""

    def build(self) -> ImportanceMetric:
        """Instantiate the module."""
        return ImportanceMetric(self.alpha, learnable=self.learnable, clip=self.clip)


class ImportanceMetric(nn.Module):
    """``importance_metric`` with alpha held as a (possibly learnable) parameter."""

    def __init__(
        self, alpha: float = -20.0, *, learnable: bool = True, clip: float | None = 20.0
    ) -> None:
        super().__init__()
        if clip is not None and not clip > 0:
            raise ValueError(f"clip: expected None or > 0, got {clip}")
        self.alpha = nn.Parameter(torch.tensor(float(alpha)), requires_grad=learnable)
        self.clip = clip

    def forward(self, image0: Tensor, image1: Tensor, flow: Tensor) -> Tensor:
        """Z (B, 1, H, W) for image0/image1 (B, C, H, W) and flow (B, 2, H, W)."""
        return importance_metric(image0, image1, flow, self.alpha, self.clip)
