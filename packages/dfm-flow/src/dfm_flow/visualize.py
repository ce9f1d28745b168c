"""Flow pictures: a small colour wheel (no image-writing dependency here).

Direction maps to hue and magnitude to saturation, on a white background:

* hue = the angle of (flow_x, flow_y) in image axes (x right, y down): 0 deg (rightwards) is
  red, 90 deg (downwards) is yellow-green (hue 90 deg), 180 deg (leftwards) is cyan, 270 deg
  (upwards) is blue-violet; hue runs continuously through the HSV wheel;
* saturation = min(1, |flow| / max_magnitude): zero motion is white, motion at or above
  ``max_magnitude`` pixels is the fully saturated hue;
* value = 1.

So opposite directions get complementary colours and speed reads as colour strength.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["flow_to_rgb", "hsv_to_rgb"]


def hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """HSV -> RGB, elementwise (the standard piecewise-linear hexcone formula).

    Args:
        hue: (...) in [0, 1) (one turn of the wheel).
        saturation: (...) in [0, 1].
        value: (...) in [0, 1].

    Returns:
        (..., 3) RGB in [0, 1].
    """
    # f(n) = V - V S max(0, min(k, 4 - k, 1)), k = (n + 6 H) mod 6, for n = 5, 3, 1 (R, G, B).
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * hue, 6.0)
        ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
        channels.append(value - value * saturation * ramp)
    return torch.stack(channels, dim=-1)


def flow_to_rgb(flow: Tensor, max_magnitude: float | None = None) -> Tensor:
    """Colour-wheel picture of a flow field (see the module docstring for the mapping).

    Args:
        flow: (..., 2, H, W) in pixels, channel 0 = x, channel 1 = y.
        max_magnitude: magnitude drawn fully saturated; None uses the largest magnitude in
            ``flow`` (or 1 for an all-zero flow).

    Returns:
        (..., 3, H, W) RGB in [0, 1].
    """
    if flow.ndim < 3 or flow.shape[-3] != 2:
        raise ValueError(f"flow: expected shape (..., 2, H, W), got {tuple(flow.shape)}")
    fx, fy = flow[..., 0, :, :], flow[..., 1, :, :]
    magnitude = torch.sqrt(fx * fx + fy * fy)
    if max_magnitude is None:
        largest = float(magnitude.max()) if magnitude.numel() else 0.0
        max_magnitude = largest if largest > 0 else 1.0
    if not max_magnitude > 0:
        raise ValueError(f"max_magnitude: expected > 0, got {max_magnitude}")
    hue = torch.remainder(torch.atan2(fy, fx) / (2 * math.pi), 1.0)
    saturation = (magnitude / max_magnitude).clamp(0.0, 1.0)
    rgb = hsv_to_rgb(hue, saturation, torch.ones_like(hue))  # (..., H, W, 3)
    return rgb.movedim(-1, -3)
