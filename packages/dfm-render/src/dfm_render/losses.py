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
    "LPIPS_BACKBONES",
    "DepthSmoothnessLoss",
    "DetLoss",
    "DistortionLoss",
    "LPIPSLoss",
    "LossWeights",
    "MissingWeightsError",
    "edge_aware_smoothness",
    "load_lpips",
    "torchvision_checkpoint",
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


LPIPS_BACKBONES: dict[str, tuple[str, str]] = {
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "alex": (
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    ),
}
"""LPIPS backbone -> (torchvision's weight file name, where to download it)."""


def torchvision_checkpoint(filename: str) -> Path:
    """Where torchvision caches a weight file: ``$TORCH_HOME/hub/checkpoints/<filename>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_lpips(net: str = "vgg", backbone_path: str | os.PathLike[str] | None = None) -> nn.Module:
    """LPIPS v0.1 (Zhang et al. 2018) with its backbone read from a local file, frozen.

    The ``lpips`` package ships its linear heads; the backbone is torchvision's VGG16 or
    AlexNet state dict, which torchvision would download on first use. Here it is only read
    from ``backbone_path`` (default: torchvision's cache path), with
    ``torch.load(weights_only=True)``; nothing is downloaded.

    Args:
        net: ``"vgg"`` (VGG16: DFM, pixelNeRF, pixelSplat) or ``"alex"``.
        backbone_path: the torchvision state-dict file (only ``features.*`` is used).

    Raises:
        ValueError: unknown ``net``.
        MissingWeightsError: the file does not exist (the message says what to download and
            where to put it).
        KeyError: the file lacks a backbone tensor or has one of the wrong shape.
    """
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"net must be one of {sorted(LPIPS_BACKBONES)}, got {net!r}")
    filename, url = LPIPS_BACKBONES[net]
    path = Path(backbone_path) if backbone_path is not None else torchvision_checkpoint(filename)
    if not path.is_file():
        raise MissingWeightsError(
            f"LPIPS-{net} backbone weights not found at {path}. Nothing is downloaded: fetch "
            f"{url} and save it as {torchvision_checkpoint(filename)} (torchvision's cache, "
            "under $TORCH_HOME), or pass the file's path (backbone_path / lpips_weights)."
        )
    import warnings

    import lpips  # heavy import (torchvision), only when LPIPS is used

    state = torch.load(path, map_location="cpu", weights_only=True)
    with warnings.catch_warnings():
        # pnet_rand=True builds the backbone without torchvision's download; the weights are
        # loaded below. torchvision warns about the legacy `pretrained` argument.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    # lpips splits torchvision's `features` Sequential into slices that keep the original
    # layer indices as child names: `slice2.5.weight` is torchvision's `features.5.weight`.
    loaded = {}
    for key, value in model.net.state_dict().items():
        _, index, param = key.split(".")
        source = f"features.{index}.{param}"
        if source not in state:
            raise KeyError(f"{path}: missing backbone tensor {source!r}")
        if state[source].shape != value.shape:
            raise KeyError(
                f"{path}: {source!r} has shape {tuple(state[source].shape)}, "
                f"expected {tuple(value.shape)}"
            )
        loaded[key] = state[source]
    model.net.load_state_dict(loaded)
    return model.eval().requires_grad_(False)


class LPIPSLoss:
    """LPIPS-VGG between rendered and true target patches (inputs in [-1, 1]).

    The backbone weights are read by ``load_lpips`` from ``weights_path`` or torchvision's
    cache, on the first call; a clear ``MissingWeightsError`` says what to download and where
    to put it when they are missing. The network is frozen.
    """

    def __init__(self, weights_path: str | os.PathLike[str] | None = None) -> None:
        self.weights_path = weights_path
        self._net: nn.Module | None = None

    def __call__(self, inputs: LossInputs) -> Tensor:
        render = inputs.target_render.observation
        if self._net is None:
            self._net = load_lpips("vgg", self.weights_path).to(render.device)
        return self._net(render, _target_patch(inputs), normalize=False).mean()
