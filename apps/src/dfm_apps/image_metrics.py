"""Image metrics for novel-view evaluation: PSNR, SSIM, LPIPS, FID, and stochastic metrics.

Conventions: images are ``(B, C, H, W)`` floats in ``[0, data_range]`` (``data_range = 1`` unless
stated); masks are ``(B, H, W)`` or ``(B, 1, H, W)`` booleans (``True`` = object pixel). Every
per-image metric returns a ``(B,)`` tensor; averaging over a dataset is the caller's choice
(the published protocols average per-image values).

* **PSNR** ``= 10 log10(data_range² / MSE)``, MSE over all pixels and channels of one image
  (``inf`` for identical images). Masked PSNR takes the MSE over the mask's pixels only.
* **SSIM** is Wang et al. 2004 (IEEE TIP 13(4), eq. 13): an 11×11 Gaussian window with σ = 1.5,
  ``K1 = 0.01``, ``K2 = 0.03``, population (not sample) covariances, evaluated only where the
  window fits inside the image (no padding) and averaged over those positions and over the
  channels. It equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=..., channel_axis=0)``, whose border crop discards
  exactly the padded positions; it is *not* pixelNeRF's 7×7 uniform-window variant.
  Masked SSIM averages the SSIM map over the window centres that lie inside the mask.
* **LPIPS** (Zhang et al. 2018) through the ``lpips`` package, v0.1 linear heads, backbone
  ``"vgg"`` (VGG16; what DFM, pixelNeRF and pixelSplat report) or ``"alex"``; numbers from the
  two backbones are not comparable. The ImageNet backbone is read from torchvision's
  checkpoint file, never downloaded: :class:`LPIPSMetric` raises :class:`MissingWeightsError`
  naming the file, its URL and the directory to put it in.
* **FID** (Heusel et al. 2017) through ``torch-fidelity`` with its TF-ported Inception-v3
  weights (``weights-inception-2015-12-05-6726825d.pth``) from a user path.
* **Stochastic metrics** for K samples per input: best-of-K PSNR, mean pairwise diversity, and
  coverage of the ground-truth modes (see each function).

Masked-object evaluation of LPIPS/FID composites both images onto a constant background first
(:func:`composite_on_background`), since those networks need full images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dfm_render.losses import (
    LPIPS_BACKBONES,
    MissingWeightsError,
    load_lpips,
    torchvision_checkpoint,
)

__all__ = [
    "FID_WEIGHTS_FILE",
    "FID_WEIGHTS_URL",
    "LPIPS_BACKBONES",
    "LPIPSMetric",
    "MissingWeightsError",
    "best_of_k_psnr",
    "composite_on_background",
    "fid",
    "mode_coverage",
    "nearest_mode",
    "pairwise_diversity",
    "psnr",
    "ssim",
    "ssim_map",
]

# Wang et al. 2004, section III-C: Gaussian window of 11x11 with sigma 1.5; K1 = 0.01, K2 = 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# torchvision ImageNet backbones used by lpips, file name in $TORCH_HOME/hub/checkpoints and URL.
FID_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + FID_WEIGHTS_FILE
)


# --------------------------------------------------------------------------- validation


def _check_images(pred: Tensor, target: Tensor) -> None:
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a float tensor (B, C, H, W), got {shape}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )


def _check_mask(mask: Tensor, images: Tensor) -> Tensor:
    """``(B, H, W)`` bool mask from ``(B, H, W)`` or ``(B, 1, H, W)``, checked against images."""
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    b, _, h, w = images.shape
    if mask.shape != (b, h, w):
        raise ValueError(
            f"mask must have shape (B, H, W) or (B, 1, H, W) = ({b}, {h}, {w}), "
            f"got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    return mask


# --------------------------------------------------------------------------- PSNR


def psnr(
    pred: Tensor, target: Tensor, *, data_range: float = 1.0, mask: Tensor | None = None
) -> Tensor:
    """Peak signal-to-noise ratio per image, ``10 log10(data_range² / MSE)`` in dB.

    Args:
        pred: ``(B, C, H, W)`` images in ``[0, data_range]``.
        target: ``(B, C, H, W)`` reference images.
        data_range: the peak value (1 for ``[0, 1]`` images, 255 for 8-bit).
        mask: optional ``(B, H, W)`` / ``(B, 1, H, W)`` bool; the MSE is then the mean over the
            masked pixels (all channels). An empty mask gives NaN.

    Returns:
        ``(B,)`` PSNR in dB, float64 (``inf`` where the images agree exactly).
    """
    _check_images(pred, target)
    sq = (pred.to(torch.float64) - target.to(torch.float64)).square()  # (B, C, H, W)
    if mask is None:
        mse = sq.mean(dim=(1, 2, 3))
    else:
        m = _check_mask(mask, pred).to(torch.float64)[:, None]  # (B, 1, H, W)
        mse = (sq * m).sum(dim=(1, 2, 3)) / (m.sum(dim=(1, 2, 3)) * pred.shape[1])
    return 10.0 * torch.log10(data_range**2 / mse)


# --------------------------------------------------------------------------- SSIM


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian taps, ``(SSIM_WINDOW,)``."""
    x = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def ssim_map(pred: Tensor, target: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Per-position SSIM (Wang et al. 2004, eq. 13) where the window fits in the image.

    ``SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))`` with local
    Gaussian-weighted moments, ``C1 = (K1 L)²``, ``C2 = (K2 L)²``, ``L = data_range``.

    Args:
        pred: ``(B, C, H, W)`` images, ``H, W >= 11``.
        target: ``(B, C, H, W)``.
        data_range: the peak value ``L``.

    Returns:
        ``(B, C, H - 10, W - 10)`` float64 map; entry ``(i, j)`` is the window centred on pixel
        ``(i + 5, j + 5)``.
    """
    _check_images(pred, target)
    b, c, h, w = pred.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}")
    x = pred.to(torch.float64).reshape(b * c, 1, h, w)
    y = target.to(torch.float64).reshape(b * c, 1, h, w)
    g = _gaussian_window(torch.float64, pred.device)

    def blur(z: Tensor) -> Tensor:
        # Separable Gaussian, valid positions only: no padding convention to disagree about.
        z = F.conv2d(z, g.view(1, 1, 1, -1))
        return F.conv2d(z, g.view(1, 1, -1, 1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return s.reshape(b, c, h - SSIM_WINDOW + 1, w - SSIM_WINDOW + 1)


def ssim(
    pred: Tensor, target: Tensor, *, data_range: float = 1.0, mask: Tensor | None = None
) -> Tensor:
    """Mean SSIM per image (Wang et al. 2004; see the module docstring for the exact variant).

    Args:
        pred: ``(B, C, H, W)`` images in ``[0, data_range]``, ``H, W >= 11``.
        target: ``(B, C, H, W)`` reference images.
        data_range: the peak value.
        mask: optional ``(B, H, W)`` / ``(B, 1, H, W)`` bool; the SSIM map is then averaged over
            the window centres inside the mask (centres within 5 pixels of the border are never
            used). A mask with no usable centre gives NaN.

    Returns:
        ``(B,)`` float64 SSIM, averaged over positions and channels.
    """
    s = ssim_map(pred, target, data_range=data_range)  # (B, C, H', W')
    if mask is None:
        return s.mean(dim=(1, 2, 3))
    r = (SSIM_WINDOW - 1) // 2
    m = _check_mask(mask, pred)[:, None, r:-r, r:-r].to(torch.float64)  # (B, 1, H', W')
    return (s * m).sum(dim=(1, 2, 3)) / (m.sum(dim=(1, 2, 3)) * s.shape[1])


def composite_on_background(images: Tensor, mask: Tensor, background: float = 1.0) -> Tensor:
    """Images with every pixel outside ``mask`` set to ``background`` (masked LPIPS / FID).

    Args:
        images: ``(B, C, H, W)``.
        mask: ``(B, H, W)`` / ``(B, 1, H, W)`` bool, ``True`` = keep.
        background: fill value (1.0 = white for ``[0, 1]`` images).

    Returns:
        ``(B, C, H, W)`` new tensor.
    """
    m = _check_mask(mask, images)[:, None]
    return torch.where(m, images, torch.full_like(images, background))


# --------------------------------------------------------------------------- LPIPS


class LPIPSMetric:
    """LPIPS v0.1 distance with an ImageNet backbone read from a local file.

    The ``lpips`` package ships its linear heads; the backbone is torchvision's VGG16 or AlexNet
    state dict, which torchvision would download on first use. Here it is only ever read from
    ``backbone_path`` (default: where torchvision caches it,
    ``$TORCH_HOME/hub/checkpoints/<file>``), with ``torch.load(weights_only=True)``.

    Args:
        net: ``"vgg"`` (VGG16, the DFM/pixelNeRF/pixelSplat choice) or ``"alex"``.
        backbone_path: torchvision state-dict file of the backbone (only its ``features.*``
            entries are used); default: the torch hub cache path above.
        device: device to run on.

    Raises:
        ValueError: unknown ``net``.
        MissingWeightsError: the backbone file does not exist (the message gives its URL).
        KeyError: the file lacks a backbone tensor or has a wrong shape.
    """

    def __init__(
        self,
        net: Literal["vgg", "alex"] = "vgg",
        *,
        backbone_path: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        filename = LPIPS_BACKBONES[net][0] if net in LPIPS_BACKBONES else ""
        path = (
            Path(backbone_path) if backbone_path is not None else torchvision_checkpoint(filename)
        )
        self.model = load_lpips(net, path).to(device)
        self.net = net
        self.backbone_path = path
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """LPIPS distance per image.

        Args:
            pred: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
            target: ``(B, 3, H, W)`` RGB in ``[0, 1]``.

        Returns:
            ``(B,)`` float32 distances (0 for identical images).
        """
        _check_images(pred, target)
        if pred.shape[1] != 3:
            raise ValueError(f"LPIPS needs RGB images (B, 3, H, W), got {tuple(pred.shape)}")
        pred, target = pred.to(self.device, torch.float32), target.to(self.device, torch.float32)
        # normalize=True maps [0, 1] to the [-1, 1] range lpips expects.
        return self.model(pred, target, normalize=True).flatten().cpu()


# --------------------------------------------------------------------------- FID


class _ImageTensors(torch.utils.data.Dataset):
    """torch-fidelity input: ``(N, 3, H, W)`` floats in [0, 1] served as uint8 ``(3, H, W)``."""

    def __init__(self, images: Tensor) -> None:
        self.images = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


def fid(
    images_a: Tensor | str | os.PathLike[str],
    images_b: Tensor | str | os.PathLike[str],
    *,
    weights_path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> float:
    """Fréchet Inception Distance between two image sets, through torch-fidelity.

    ``FID = |μa − μb|² + Tr(Σa + Σb − 2 (Σa Σb)^½)`` over 2048-d Inception-v3 pool features
    (torch-fidelity's TF-faithful port; images are resized to 299 inside the network).

    Args:
        images_a: ``(N, 3, H, W)`` floats in ``[0, 1]`` (quantised to uint8, as image files
            would be), or a folder of png/jpg images.
        images_b: the second set, same kinds.
        weights_path: torch-fidelity's Inception file ``weights-inception-2015-12-05-6726825d.pth``
            (download from :data:`FID_WEIGHTS_URL`). Checked to hold only tensors
            (``torch.load(weights_only=True)``) before torch-fidelity loads it.
        device: ``"cpu"`` or a CUDA device.
        batch_size: images per Inception forward.

    Returns:
        The FID (float). Meaningful only with thousands of images per set; with fewer than
        2048 images the covariances are rank-deficient and the value is biased upward.
        torch-fidelity takes the matrix square root through a dense 2048×2048 eigen-
        decomposition: about a minute on a busy 2-core CPU, whatever the number of images.

    Raises:
        MissingWeightsError: ``weights_path`` does not exist.
        ValueError: bad image tensors.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise MissingWeightsError(
            f"FID Inception weights not found at {path}. Nothing is downloaded: fetch "
            f"{FID_WEIGHTS_URL} and pass its local path as weights_path="
        )
    torch.load(path, map_location="cpu", weights_only=True)  # refuse pickled code
    inputs: list[_ImageTensors | str] = []
    for name, images in (("images_a", images_a), ("images_b", images_b)):
        if isinstance(images, Tensor):
            if images.dim() != 4 or images.shape[1] != 3 or len(images) < 2:
                raise ValueError(
                    f"{name} must be (N >= 2, 3, H, W) images in [0, 1], got {tuple(images.shape)}"
                )
            inputs.append(_ImageTensors(images))
        else:
            if not Path(images).is_dir():
                raise ValueError(f"{name}: {images} is not a tensor nor an image folder")
            inputs.append(str(images))
    import torch_fidelity  # heavy import, only when FID is used

    metrics = torch_fidelity.calculate_metrics(
        input1=inputs[0],
        input2=inputs[1],
        fid=True,
        feature_extractor_weights_path=str(path),
        cuda=torch.device(device).type == "cuda",
        batch_size=batch_size,
        cache=False,
        datasets_download=False,
        samples_shuffle=False,
        # In-memory tensors need no loader workers (save_cpu_ram only sets num_workers=0 here).
        save_cpu_ram=all(isinstance(x, Tensor) for x in (images_a, images_b)),
        verbose=False,
    )
    return float(metrics["frechet_inception_distance"])


# --------------------------------------------------------------------------- stochastic metrics


def _check_samples(samples: Tensor, target: Tensor | None = None) -> None:
    if samples.dim() != 5:
        raise ValueError(f"samples must be (B, K, C, H, W), got {tuple(samples.shape)}")
    if target is not None and (target.dim() != 4 or target.shape != samples[:, 0].shape):
        raise ValueError(
            f"target must be (B, C, H, W) = {tuple(samples[:, 0].shape)}, got {tuple(target.shape)}"
        )


def best_of_k_psnr(
    samples: Tensor, target: Tensor, *, data_range: float = 1.0, mask: Tensor | None = None
) -> Tensor:
    """The best PSNR among K samples of each input (how close the closest sample comes).

    Args:
        samples: ``(B, K, C, H, W)`` K samples per input, in ``[0, data_range]``.
        target: ``(B, C, H, W)`` ground truth.
        data_range: the peak value.
        mask: optional ``(B, H, W)`` / ``(B, 1, H, W)`` bool (masked PSNR of each sample).

    Returns:
        ``(B,)`` float64 ``max_k PSNR(samples[:, k], target)``.
    """
    _check_samples(samples, target)
    b, k = samples.shape[:2]
    flat = samples.flatten(0, 1)
    tgt = target[:, None].expand_as(samples).flatten(0, 1)
    m = None
    if mask is not None:
        m = _check_mask(mask, target)[:, None].expand(b, k, *target.shape[-2:]).flatten(0, 1)
    return psnr(flat, tgt, data_range=data_range, mask=m).view(b, k).amax(dim=1)


def pairwise_diversity(
    samples: Tensor,
    *,
    metric: Literal["rmse", "1-ssim"] | Callable[[Tensor, Tensor], Tensor] = "rmse",
    data_range: float = 1.0,
) -> Tensor:
    """Mean distance over the K(K-1)/2 unordered pairs of samples of each input.

    ``D = 2 / (K (K - 1)) Σ_{i<j} d(x_i, x_j)`` with ``d`` one of: ``"rmse"`` — root mean squared
    difference over pixels and channels (same units as the images); ``"1-ssim"`` —
    ``1 − SSIM(x_i, x_j)`` (this module's SSIM); or a callable ``d(a (P, C, H, W),
    b (P, C, H, W)) -> (P,)`` such as an :class:`LPIPSMetric`. Zero when all samples agree
    (a deterministic model), larger when they differ.

    Args:
        samples: ``(B, K, C, H, W)``, ``K >= 2``.
        metric: the pair distance (see above).
        data_range: peak value, used by ``"1-ssim"``.

    Returns:
        ``(B,)`` mean pairwise distance.
    """
    _check_samples(samples)
    b, k = samples.shape[:2]
    if k < 2:
        raise ValueError(f"pairwise_diversity needs K >= 2 samples per input, got K = {k}")
    i, j = torch.triu_indices(k, k, offset=1, device=samples.device)  # (P,) pairs i < j
    a, c = samples[:, i].flatten(0, 1), samples[:, j].flatten(0, 1)  # (B * P, C, H, W)
    if metric == "rmse":
        d = (a.to(torch.float64) - c.to(torch.float64)).square().mean(dim=(1, 2, 3)).sqrt()
    elif metric == "1-ssim":
        d = 1.0 - ssim(a, c, data_range=data_range)
    elif callable(metric):
        d = metric(a, c)
    else:
        raise ValueError(f"metric must be 'rmse', '1-ssim' or a callable, got {metric!r}")
    return d.reshape(b, len(i)).mean(dim=1)


def nearest_mode(
    values: Tensor, modes: Tensor, *, max_distance: float | None = None
) -> tuple[Tensor, Tensor]:
    """Assigns each sample's summary value to the nearest ground-truth mode.

    E.g. ``values`` = the mean colour of each sample's hidden side, ``modes`` = the palette
    colours the world draws from.

    Args:
        values: ``(B, K, D)`` one D-vector per sample.
        modes: ``(M, D)`` or ``(B, M, D)`` mode centres.
        max_distance: a sample farther than this (Euclidean) from every mode is assigned ``-1``
            (e.g. a blend of two colours rather than a real one).

    Returns:
        ``(index (B, K) long, distance (B, K))``: the nearest mode (or -1) and its distance.
    """
    if values.dim() != 3:
        raise ValueError(f"values must be (B, K, D), got {tuple(values.shape)}")
    if modes.dim() == 2:
        modes = modes.expand(values.shape[0], *modes.shape)
    if modes.dim() != 3 or modes.shape[0] != values.shape[0] or modes.shape[2] != values.shape[2]:
        raise ValueError(
            f"modes must be (M, D) or (B, M, D) with D = {values.shape[2]}, got {tuple(modes.shape)}"
        )
    dist = torch.cdist(values.to(torch.float64), modes.to(torch.float64))  # (B, K, M)
    distance, index = dist.min(dim=-1)
    if max_distance is not None:
        index = torch.where(distance <= max_distance, index, torch.full_like(index, -1))
    return index, distance


def mode_coverage(
    assignments: Tensor,
    num_modes: int,
    *,
    true_modes: Tensor | Sequence[Sequence[int]] | None = None,
) -> Tensor:
    """Fraction of the ground-truth modes that at least one sample hits.

    Args:
        assignments: ``(B, K)`` long mode index of each sample (``-1`` = no mode, as returned by
            :func:`nearest_mode`).
        num_modes: number of modes ``M``.
        true_modes: optional ``(B, M)`` bool, the modes that are plausible for each input
            (default: all ``M``). Hits on implausible modes do not count.

    Returns:
        ``(B,)`` float64 coverage in ``[0, 1]``: ``|{hit modes} ∩ {true modes}| / |{true modes}|``.
    """
    if assignments.dim() != 2:
        raise ValueError(f"assignments must be (B, K), got {tuple(assignments.shape)}")
    if ((assignments < -1) | (assignments >= num_modes)).any():
        raise ValueError(f"assignments must lie in [-1, {num_modes - 1}]")
    b = assignments.shape[0]
    hit = torch.zeros(b, num_modes + 1, dtype=torch.bool, device=assignments.device)
    hit.scatter_(1, assignments + 1, True)  # column 0 collects the -1 (no mode) samples
    hit = hit[:, 1:]
    if true_modes is None:
        plausible = torch.ones_like(hit)
    else:
        plausible = torch.as_tensor(true_modes, dtype=torch.bool, device=assignments.device)
        if plausible.shape != (b, num_modes):
            raise ValueError(
                f"true_modes must be (B, M) = ({b}, {num_modes}), got {tuple(plausible.shape)}"
            )
    covered = (hit & plausible).sum(dim=1).to(torch.float64)
    return covered / plausible.sum(dim=1).to(torch.float64)
