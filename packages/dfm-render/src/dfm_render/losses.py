"""Regularisers of the inverse-graphics model, as dfm-core ``Regularizer``s (``fn(LossInputs)``).

Each reads what the training step already rendered (``LossInputs.target_render``, a
``SceneRendering``, and the encoded condition), so nothing is rendered twice. Weights per
dataset follow the original's configs (reference section 1.5):

| term | what | CO3D | RE10k |
|---|---|---|---|
| ``det`` | MSE of O_det's RGB against the clean target, full image, samples with a context | 1 | 1 |
| ``lpips`` | LPIPS-VGG between rendered and true target patches | 0.2 | 1.0 |
| ``depth_smooth`` | edge-aware smoothness of the target patch's disparity | 0 | 0.002 |
| ``distortion`` | mip-NeRF 360 distortion of the target rays' weights | 0 | 0.005 |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dfm_core.diffusion import LossInputs
from dfm_render.raymarching import distortion_loss

__all__ = [
    "DepthSmoothnessLoss",
    "DetLoss",
    "DistortionLoss",
    "LPIPSLoss",
    "LossWeights",
    "MissingWeightsError",
    "edge_aware_smoothness",
]


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights a loss or metric needs are not on disk; the message says what to get."""


@dataclass
class LossWeights:
    """Weights of the extra loss terms (0 leaves a term out)."""

    det: float = 1.0
    """O_det's RGB against the clean target (the original's rgb_cond_loss)."""
    lpips: float = 0.0
    """LPIPS (VGG) on the target patch."""
    depth_smooth: float = 0.0
    """Edge-aware disparity smoothness on the target patch."""
    distortion: float = 0.0
    """Distortion loss on the target rays."""
    lpips_weights: str | None = None
    """Path of torchvision's VGG16 weights file for LPIPS; None: torch's hub cache."""

    def __post_init__(self) -> None:
        for name in ("det", "lpips", "depth_smooth", "distortion"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossWeights.{name}: expected >= 0, got {getattr(self, name)}")

    def regularizers(self) -> dict[str, tuple[float, object]]:
        """The dfm-core regularisers of the non-zero terms, ``{name: (weight, fn)}``."""
        terms: dict[str, tuple[float, object]] = {}
        if self.det:
            terms["det"] = (self.det, DetLoss())
        if self.lpips:
            terms["lpips"] = (self.lpips, LPIPSLoss(self.lpips_weights))
        if self.depth_smooth:
            terms["depth_smooth"] = (self.depth_smooth, DepthSmoothnessLoss())
        if self.distortion:
            terms["distortion"] = (self.distortion, DistortionLoss())
        return terms


def _target_patch(inputs: LossInputs) -> Tensor:
    """The clean observation the target render is compared with: (B, 3, h, w)."""
    batch = inputs.batch
    return batch.target if batch.target_loss_observation is None else batch.target_loss_observation


class DetLoss:
    """MSE between O_det's RGB and the clean target, over samples that kept their context.

    With the context dropped (classifier-free guidance) O_det has nothing to go on, so those
    samples are left out (the original zeroes the term for a dropped batch).
    """

    def __call__(self, inputs: LossInputs) -> Tensor:
        det = inputs.condition.det.observation  # (B, 3, H, W)
        error = (det - inputs.batch.target).square().flatten(1).mean(dim=1)  # (B,)
        keep = inputs.keep.to(error.dtype)
        return (error * keep).sum() / keep.sum().clamp(min=1.0)


class DistortionLoss:
    """Mean mip-NeRF 360 distortion loss over the target rays (Barron et al. 2022, eq. 15)."""

    def __call__(self, inputs: LossInputs) -> Tensor:
        render = inputs.target_render
        params = inputs.batch.target_params
        return distortion_loss(render.weights, render.t, params.near, params.far).mean()


def edge_aware_smoothness(disparity: Tensor, image: Tensor) -> Tensor:
    """Edge-aware smoothness (Godard et al. 2017, eq. 3) of mean-normalised disparity.

    sum over x and y of |d_x d*| exp(-|d_x I|), with d* = d / mean(d) per sample and |d_x I|
    the mean absolute colour gradient: disparity may change where the image does.

    Args:
        disparity: (B, 1, h, w) > 0.
        image: (B, 3, h, w) the true image at the same pixels.
    """
    d = disparity / disparity.mean(dim=(2, 3), keepdim=True).clamp(min=1e-7)
    dx = (d[..., :, 1:] - d[..., :, :-1]).abs()
    dy = (d[..., 1:, :] - d[..., :-1, :]).abs()
    ix = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(dim=1, keepdim=True)
    iy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(dim=1, keepdim=True)
    return (dx * torch.exp(-ix)).mean() + (dy * torch.exp(-iy)).mean()


class DepthSmoothnessLoss:
    """Edge-aware smoothness of the target patch's disparity 1 / depth (the original's)."""

    def __call__(self, inputs: LossInputs) -> Tensor:
        depth = inputs.target_render.depth  # (B, 1, h, w)
        disparity = 1.0 / depth.clamp(min=1e-3, max=80.0)
        return edge_aware_smoothness(disparity, _target_patch(inputs))


VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


def vgg16_weights_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Where LPIPS-VGG's backbone weights are read from (torchvision's file name)."""
    if path is not None:
        return Path(path)
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


class LPIPSLoss:
    """LPIPS with the VGG backbone (Zhang et al. 2018) between rendered and true patches.

    The ``lpips`` package ships its linear heads; the VGG16 backbone weights are torchvision's
    ``vgg16-397923af.pth``, which cannot be downloaded at run time here. They are read from
    ``weights_path`` or torch's hub cache, and a clear ``MissingWeightsError`` names the file,
    where to get it and where to put it when they are missing. The network is frozen.
    """

    def __init__(self, weights_path: str | os.PathLike[str] | None = None) -> None:
        self.weights_path = vgg16_weights_path(weights_path)
        self._net: nn.Module | None = None

    def _build(self, device: torch.device) -> nn.Module:
        if not self.weights_path.is_file():
            raise MissingWeightsError(
                f"LPIPS needs torchvision's VGG16 weights {VGG16_FILE}, not found at "
                f"{self.weights_path}: download {VGG16_URL} and put it there (or pass its path "
                "as lpips_weights / loss weights option), or set the lpips weight to 0"
            )
        import lpips
        import torchvision

        vgg = torchvision.models.vgg16()
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        vgg.load_state_dict(state)
        net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        # lpips.pn.vgg16 splits torchvision's feature stack into five slices, in order.
        slices = [net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5]
        layers = [layer for part in slices for layer in part]
        for mine, theirs in zip(layers, vgg.features[: len(layers)], strict=True):
            mine.load_state_dict(theirs.state_dict())
        net.eval().requires_grad_(False)
        return net.to(device)

    def __call__(self, inputs: LossInputs) -> Tensor:
        render = inputs.target_render.observation
        if self._net is None:
            self._net = self._build(render.device)
        return self._net(render, _target_patch(inputs), normalize=False).mean()
