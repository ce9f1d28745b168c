"""NeRF positional encoding (Mildenhall et al. 2020, eq. 4), with pixelNeRF's frequency scaling.

``gamma(x) = (x, sin(f_0 x), cos(f_0 x), ..., sin(f_{K-1} x), cos(f_{K-1} x))`` with
``f_k = freq_factor * 2^k`` applied to every coordinate; each ``sin``/``cos`` block holds all ``in_dim``
coordinates. This is pixelNeRF's layout and its defaults (6 frequencies, factor 1.5: 39 features for
a 3D point), which the original DFM field uses on camera-frame points.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PositionalEncoding"]


class PositionalEncoding(nn.Module):
    """Sinusoidal features of coordinates at geometrically spaced frequencies.

    Args:
        in_dim: number of input coordinates ``D``.
        num_freqs: number of frequencies ``K``.
        freq_factor: the lowest frequency; ``f_k = freq_factor * 2^k`` (radians per unit).
        include_input: prepend the raw coordinates.

    Attributes:
        out_dim: ``D * (include_input + 2 K)`` (39 for the defaults).
    """

    freqs: Tensor

    def __init__(
        self,
        in_dim: int = 3,
        num_freqs: int = 6,
        freq_factor: float = 1.5,
        include_input: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(in_dim, int) or in_dim < 1:
            raise ValueError(f"in_dim must be a positive int, got {in_dim!r}")
        if not isinstance(num_freqs, int) or num_freqs < 0:
            raise ValueError(f"num_freqs must be a non-negative int, got {num_freqs!r}")
        self.in_dim = in_dim
        self.num_freqs = num_freqs
        self.freq_factor = float(freq_factor)
        self.include_input = bool(include_input)
        self.out_dim = in_dim * (int(self.include_input) + 2 * num_freqs)
        # Not persistent: derived from the config, so checkpoints carry no extra tensors.
        freqs = self.freq_factor * 2.0 ** torch.arange(num_freqs, dtype=torch.float64)
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Encode coordinates.

        Args:
            x: ``(..., in_dim)`` coordinates.

        Returns:
            ``(..., out_dim)``: ``[x, sin(f_0 x), cos(f_0 x), sin(f_1 x), ...]``, dtype of ``x``.
        """
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"x must end in in_dim = {self.in_dim} coordinates, got {tuple(x.shape)}"
            )
        scaled = x[..., None, :] * self.freqs.to(x)[:, None]  # (..., K, D)
        waves = torch.stack([scaled.sin(), scaled.cos()], dim=-2)  # (..., K, 2, D)
        waves = waves.flatten(-3)  # (..., 2 K D)
        return torch.cat([x, waves], dim=-1) if self.include_input else waves

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, num_freqs={self.num_freqs}, freq_factor={self.freq_factor}, "
            f"include_input={self.include_input}, out_dim={self.out_dim}"
        )
