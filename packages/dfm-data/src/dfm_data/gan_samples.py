"""GAN samples: a dataset of (masked-patch context, generated image, latent) for GAN inversion.

Following the paper's GAN-inversion setup: draw ``z ~ N(0, I)``, map it to ``w`` through the
generator's mapping network, truncate towards the average latent (``w = w_avg + psi (w - w_avg)``,
default ``psi = 0.5``), render with the synthesis network, downsample to the training resolution, and
hide everything but one patch of random size and position. Every item is a pure function of
``(seed, index)``.

The generator is anything satisfying :class:`MappingSynthesisGenerator`; no GAN code is imported
here (dfm-gan's StyleGAN2 satisfies it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from dfm_data.batch import MaskedPatchBatch
from dfm_data.seeding import derive_seed

__all__ = ["GanSamplesConfig", "GanSamplesDataset", "MappingSynthesisGenerator"]


@runtime_checkable
class MappingSynthesisGenerator(Protocol):
    """A generator exposing its mapping and synthesis networks (StyleGAN-style).

    Attributes:
        z_dim: size of the input latent ``z``.

    ``mapping(z)``: ``z (B, z_dim)`` -> ``w (B, num_ws, w_dim)`` or ``(B, w_dim)``, untruncated.
    ``synthesis(w)``: ``w`` as returned by ``mapping`` -> image ``(B, 3, R, R)``, nominally in ``[-1, 1]``.
    An optional ``w_avg`` attribute (``(w_dim,)``) is used for truncation; without it the average is
    estimated from ``GanSamplesConfig.w_avg_samples`` mapped samples.
    """

    z_dim: int

    def mapping(self, z: Tensor) -> Tensor: ...

    def synthesis(self, w: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class GanSamplesConfig:
    """Options of :class:`GanSamplesDataset`."""

    num_samples: int = 10_000
    """Dataset length (distinct seeds)."""
    image_size: int = 64
    """Training resolution; generated images are box-downsampled to it (paper: 64 from 256)."""
    truncation_psi: float = 0.5
    """Truncation towards ``w_avg`` (paper: 0.5; 1 disables)."""
    patch_min_fraction: float = 0.15
    """Smallest visible patch side, as a fraction of ``image_size``."""
    patch_max_fraction: float = 0.5
    """Largest visible patch side, as a fraction of ``image_size``."""
    w_avg_samples: int = 2_000
    """Samples used to estimate ``w_avg`` when the generator has none."""
    seed: int = 0
    """Base seed: item ``i`` uses ``derive_seed(seed, i)``."""
    device: str = "cpu"
    """Device the generator runs on (outputs are moved to CPU)."""

    def __post_init__(self) -> None:
        if not 0 < self.patch_min_fraction <= self.patch_max_fraction <= 1:
            raise ValueError("need 0 < patch_min_fraction <= patch_max_fraction <= 1")

    def build(self, generator: MappingSynthesisGenerator) -> GanSamplesDataset:
        """The dataset over ``generator``."""
        return GanSamplesDataset(generator, self)


class GanSamplesDataset(Dataset):
    """Generated images with masked-patch contexts as :class:`MaskedPatchBatch` items (``B = 1``)."""

    def __init__(
        self, generator: MappingSynthesisGenerator, config: GanSamplesConfig = GanSamplesConfig()
    ) -> None:
        for name in ("mapping", "synthesis", "z_dim"):
            if not hasattr(generator, name):
                raise TypeError(
                    f"generator has no {name!r}; it must expose mapping(z), synthesis(w) and z_dim"
                )
        self.generator = generator
        self.config = config
        self._w_avg: Tensor | None = None

    def __len__(self) -> int:
        return self.config.num_samples

    @torch.no_grad()
    def w_avg(self) -> Tensor:
        """The average latent used for truncation: ``generator.w_avg`` or a seeded estimate."""
        if self._w_avg is None:
            avg = getattr(self.generator, "w_avg", None)
            if avg is None:
                g = torch.Generator().manual_seed(derive_seed(self.config.seed, -1))
                z = torch.randn(self.config.w_avg_samples, self.generator.z_dim, generator=g)
                w = self.generator.mapping(z.to(self.config.device)).float().cpu()
                avg = w.mean(0)
                if avg.ndim == 2:  # (num_ws, w_dim): every w is the same vector broadcast
                    avg = avg.mean(0)
            self._w_avg = torch.as_tensor(avg).float().cpu()
        return self._w_avg

    @torch.no_grad()
    def __getitem__(self, index: int) -> MaskedPatchBatch:
        """Item ``index``: a pure function of ``(config.seed, index)``."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        cfg = self.config
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, index))
        z = torch.randn(1, self.generator.z_dim, generator=g)
        w = self.generator.mapping(z.to(cfg.device)).float().cpu()
        w_avg = self.w_avg()
        w = w_avg + cfg.truncation_psi * (w - w_avg)
        image = self.generator.synthesis(w.to(cfg.device)).float().cpu()
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(
                f"generator.synthesis returned shape {tuple(image.shape)}, expected (1, 3, R, R)"
            )
        target = F.interpolate(image, size=(cfg.image_size, cfg.image_size), mode="area").clamp(
            -1, 1
        )
        s = cfg.image_size
        lo = max(1, round(cfg.patch_min_fraction * s))
        hi = max(lo, round(cfg.patch_max_fraction * s))
        ph, pw = (int(torch.randint(lo, hi + 1, (1,), generator=g)) for _ in range(2))
        top = int(torch.randint(0, s - ph + 1, (1,), generator=g))
        left = int(torch.randint(0, s - pw + 1, (1,), generator=g))
        mask = torch.zeros(1, 1, s, s)
        mask[..., top : top + ph, left : left + pw] = 1.0
        return MaskedPatchBatch(
            context=target * mask,
            mask=mask,
            target=target,
            w=w,
            index=torch.tensor([index], dtype=torch.int64),
        )
