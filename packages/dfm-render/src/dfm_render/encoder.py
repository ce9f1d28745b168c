"""The image encoder: a conv stem, dfm-core's DiT, and a full-resolution refinement head.

DFM (Tewari et al. 2023, section 3.2) encodes every view with one DiT into a pixel-aligned
feature map: context images at t = 0, and the noisy target image (concatenated with the
deterministic estimate O_det rendered at the target camera) at its diffusion time t. Layout,
with the sizes of the paper's CO3D model in brackets::

    image (N, C_in, H, W) -> 7x7 stride-2 conv + ReLU [64]          (one stem per input kind)
                          -> DiT at H/2, patch p [DiT-XL/2, 512 out] (shared by every view)
                          -> bilinear up to H x W
                          ++ 7x7 conv of the first three input channels [64]
                          -> 3x3 conv [512]                          -> (N, C_feat, H, W)

A fresh encoder outputs zero features (the DiT's final layer and the refinement's skip half
start at zero), so the field first learns from positions alone; the refinement's DiT half
starts random, or the DiT would never receive a gradient. Optionally each view's absolute
camera pose conditions the DiT (the original's ``use_abs_pose`` on CO3D): the 3x4 part of
c2w, harmonically embedded (6 octaves, input appended: 12 * 13 = 156 values), enters through
the DiT's ``cond``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dfm_render.encoding import PositionalEncoding

__all__ = ["EncoderConfig", "ImageEncoder", "pose_embedding_dim"]

POSE_FREQS = 6


def pose_embedding_dim() -> int:
    """Width of the harmonic embedding of a flattened 3x4 pose (12 * (1 + 2 * 6) = 156)."""
    return 12 * (1 + 2 * POSE_FREQS)


@dataclass
class EncoderConfig:
    """Hyper-parameters of ``ImageEncoder``."""

    hidden_size: int = 1152
    """DiT token width (DiT-XL: 1152)."""
    depth: int = 28
    """DiT blocks (DiT-XL: 28)."""
    num_heads: int = 16
    """DiT attention heads."""
    patch_size: int = 2
    """DiT patch side, on the stem's H/2 x W/2 map (DFM: 2)."""
    stem_channels: int = 64
    """Channels of the stride-2 conv stem."""
    skip_channels: int = 64
    """Channels of the full-resolution skip conv."""
    feature_channels: int = 512
    """Channels of the output feature map."""
    absolute_pose: bool = False
    """Condition the DiT on each view's absolute camera pose (CO3D in the paper)."""
    gradient_checkpointing: bool = False
    """Recompute DiT blocks in the backward pass (less memory, ~1.3x the time)."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "depth", "num_heads", "patch_size", "stem_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"EncoderConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if self.feature_channels < 1 or self.skip_channels < 1:
            raise ValueError("EncoderConfig.feature_channels and skip_channels must be >= 1")


class ImageEncoder(nn.Module):
    """Encodes views into pixel-aligned feature maps (module docstring).

    Args:
        config: sizes.
        target_channels: channels of the noisy-target input (3 + what O_det adds); 0 builds
            no target stem (the deterministic baseline encodes context images only).
    """

    def __init__(self, config: EncoderConfig, target_channels: int = 0) -> None:
        super().__init__()
        from dfm_core.dit import DiTConfig

        self.config = config
        self.target_channels = target_channels
        c = config
        self.context_stem = nn.Conv2d(3, c.stem_channels, 7, stride=2, padding=3, bias=False)
        self.target_stem = (
            nn.Conv2d(target_channels, c.stem_channels, 7, stride=2, padding=3, bias=False)
            if target_channels
            else None
        )
        self.pose_encoding = (
            PositionalEncoding(12, POSE_FREQS, 1.0, include_input=True) if c.absolute_pose else None
        )
        self.dit = DiTConfig(
            in_channels=c.stem_channels,
            out_channels=c.feature_channels,
            patch_size=c.patch_size,
            hidden_size=c.hidden_size,
            depth=c.depth,
            num_heads=c.num_heads,
            cond_dim=pose_embedding_dim() if c.absolute_pose else None,
            gradient_checkpointing=c.gradient_checkpointing,
        ).build()
        self.skip = nn.Conv2d(3, c.skip_channels, 7, padding=3)
        self.refine = nn.Conv2d(
            c.feature_channels + c.skip_channels, c.feature_channels, 3, padding=1
        )
        # A fresh encoder outputs zero features: the DiT's final layer starts at zero (adaLN-Zero)
        # and so does the refinement's skip half. Its DiT half must NOT also start at zero: the
        # product of two zero factors is a saddle where neither gets a gradient, and the DiT
        # would never train (the features would stay a 9x9-pixel conv of the image).
        with torch.no_grad():
            self.refine.weight[:, c.feature_channels :].zero_()
        nn.init.zeros_(self.refine.bias)

    def forward(
        self, images: Tensor, t: Tensor, absolute_c2w: Tensor | None = None, *, target: bool = False
    ) -> Tensor:
        """Encode N views.

        Args:
            images: (N, 3, H, W) context images in [-1, 1], or with ``target=True`` the noisy
                target and what is concatenated to it, (N, target_channels, H, W).
            t: (N,) diffusion times (0 for context views).
            absolute_c2w: (N, 4, 4) absolute poses; required iff ``config.absolute_pose``.
            target: use the target stem.

        Returns:
            (N, feature_channels, H, W) feature maps.
        """
        height, width = images.shape[-2:]
        multiple = 2 * self.config.patch_size
        if height % multiple or width % multiple:
            raise ValueError(
                f"ImageEncoder: image size {height}x{width} must be divisible by "
                f"2 * patch_size = {multiple}"
            )
        stem = self.target_stem if target else self.context_stem
        if stem is None:
            raise ValueError("ImageEncoder: built without a target stem (target_channels=0)")
        if images.shape[1] != stem.in_channels:
            raise ValueError(
                f"ImageEncoder: expected {stem.in_channels} input channels, got {images.shape[1]}"
            )
        cond = None
        if self.pose_encoding is not None:
            if absolute_c2w is None:
                raise ValueError("ImageEncoder: absolute_c2w is required with absolute_pose=True")
            cond = self.pose_encoding(absolute_c2w[:, :3, :4].reshape(-1, 12))  # (N, 156)
        x = F.relu(stem(images))  # (N, stem, H/2, W/2)
        x = self.dit(x, t.to(x.dtype), cond)  # (N, C_feat, H/2, W/2)
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        skip = self.skip(images[:, :3])  # (N, skip, H, W)
        return self.refine(torch.cat([x, skip], dim=1))  # (N, C_feat, H, W)
