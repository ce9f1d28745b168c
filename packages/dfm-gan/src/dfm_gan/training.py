"""Training a small StyleGAN2 offline: a procedural dataset, a discriminator, one GAN step.

No pretrained generator can be downloaded in an offline setting, so the demo generator is
trained here on :func:`procedural_faces`, a procedural data set with clear structure (a
face-like ellipse with eyes and a mouth on a coloured background; every attribute is random).
The loss is StyleGAN2's: the non-saturating logistic GAN loss (Goodfellow et al. 2014) with
the R1 gradient penalty on real images (Mescheder et al. 2018), ``w_avg`` tracked by the
mapping network as in the official training loop.

The discriminator is a small residual CNN (StyleGAN2's "resnet" D, reduced: no FIR
down-sampling, plain average pooling); it is only needed to train the demo generator and
is not part of the imported official networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfm_gan.networks import Generator

__all__ = ["Discriminator", "GanLossConfig", "GanTrainState", "gan_train_step", "procedural_faces"]


def procedural_faces(
    num: int, resolution: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Procedural face-like images, a pure function of the RNG state.

    Each image: a vertical colour-gradient background; an ellipse (random centre, size,
    aspect, skin-like colour); two dark eyes (random spacing, height, size); a mouth (a dark
    horizontal bar of random width). Edges are anti-aliased with a one-pixel sigmoid ramp.

    Args:
        num: number of images.
        resolution: side length in pixels.
        generator: RNG (CPU).

    Returns:
        ``(num, 3, resolution, resolution)`` float32 in ``[-1, 1]``.
    """
    if num < 1 or resolution < 4:
        raise ValueError(
            f"need num >= 1 and resolution >= 4, got num={num}, resolution={resolution}"
        )

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(num, *shape, generator=generator)

    coords = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution  # pixel centres
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (R, R)
    yy, xx = yy[None], xx[None]  # (1, R, R)
    soft = resolution  # sigmoid slope: about one pixel wide

    def inside(dist: Tensor) -> Tensor:  # dist < 0 inside, in units of the shape's size
        return torch.sigmoid(-dist * soft)

    top, bottom = u(0.0, 1.0, 3), u(0.0, 1.0, 3)  # (N, 3) background colours
    image = top[:, :, None, None] * (1 - yy[:, None]) + bottom[:, :, None, None] * yy[:, None]
    cx, cy = u(0.35, 0.65, 1, 1), u(0.4, 0.6, 1, 1)  # (N, 1, 1)
    ry = u(0.22, 0.34, 1, 1)
    rx = ry * u(0.7, 0.95, 1, 1)
    r = torch.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)  # (N, R, R)
    face = inside((r - 1) * ry)  # distance scaled back to image units
    skin = torch.stack([u(0.6, 1.0), u(0.4, 0.8), u(0.3, 0.6)], dim=1)  # (N, 3)
    image = image * (1 - face[:, None]) + skin[:, :, None, None] * face[:, None]
    eye_dx, eye_y = rx * u(0.3, 0.5, 1, 1), cy - ry * u(0.1, 0.35, 1, 1)
    eye_r = ry * u(0.1, 0.18, 1, 1)
    eyes = torch.zeros_like(face)
    for side in (-1.0, 1.0):
        d = torch.sqrt((xx - cx - side * eye_dx) ** 2 + (yy - eye_y) ** 2) - eye_r
        eyes = torch.maximum(eyes, inside(d))
    mouth_y, mouth_w = cy + ry * u(0.35, 0.6, 1, 1), rx * u(0.25, 0.6, 1, 1)
    mouth_h = ry * u(0.05, 0.12, 1, 1)
    d_mouth = torch.maximum((xx - cx).abs() - mouth_w, (yy - mouth_y).abs() - mouth_h)
    features = torch.maximum(eyes, inside(d_mouth)) * face
    dark = u(0.0, 0.25, 3)[:, :, None, None]
    image = image * (1 - features[:, None]) + dark * features[:, None]
    return (image * 2 - 1).clamp(-1, 1).float()


class _DBlock(nn.Module):
    """Two 3x3 convs + 2x average-pool down-sampling, with a scaled 1x1 residual path."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = F.leaky_relu(self.conv0(x), 0.2)
        y = F.avg_pool2d(F.leaky_relu(self.conv1(y), 0.2), 2)
        # 1/sqrt(2) keeps the variance of the sum of two unit-variance paths at 1 (StyleGAN2 D).
        return (F.avg_pool2d(self.skip(x), 2) + y) / math.sqrt(2)


class Discriminator(nn.Module):
    """Small residual discriminator: image ``(B, C, R, R)`` -> logit ``(B,)``.

    Args:
        img_resolution: input resolution (power of two >= 8).
        img_channels: input channels.
        channel_base: channels at resolution r: ``min(channel_base // r, channel_max)``.
        channel_max: cap on channels.
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int = 3,
        channel_base: int = 2048,
        channel_max: int = 128,
    ) -> None:
        super().__init__()
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution: expected a power of two >= 8, got {img_resolution}")

        def ch(res: int) -> int:
            return max(1, min(channel_base // res, channel_max))

        self.from_rgb = nn.Conv2d(img_channels, ch(img_resolution), 1)
        blocks, res = [], img_resolution
        while res > 4:
            blocks.append(_DBlock(ch(res), ch(res // 2)))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        c4 = ch(4)
        # +1 channel: minibatch standard deviation (Karras et al. 2018), a diversity cue.
        self.conv = nn.Conv2d(c4 + 1, c4, 3, padding=1)
        self.fc = nn.Linear(c4 * 16, c4)
        self.out = nn.Linear(c4, 1)

    def forward(self, img: Tensor) -> Tensor:
        """``img (B, C, R, R)`` in [-1, 1] -> ``(B,)`` real/fake logits."""
        x = F.leaky_relu(self.from_rgb(img), 0.2)
        x = self.blocks(x)  # (B, C4, 4, 4)
        std = x.std(dim=0, unbiased=False).mean() if x.shape[0] > 1 else x.new_zeros(())
        x = torch.cat([x, std.expand(x.shape[0], 1, 4, 4)], dim=1)
        x = F.leaky_relu(self.conv(x), 0.2)
        x = F.leaky_relu(self.fc(x.flatten(1)), 0.2)
        return self.out(x).squeeze(1)


@dataclass
class GanLossConfig:
    """Options of :func:`gan_train_step`."""

    r1_gamma: float = 0.1
    """Weight of the R1 penalty ``gamma / 2 * E ||grad_x D(x)||^2`` on reals."""
    r1_every: int = 4
    """Lazy regularisation: apply R1 every this many steps, scaled by this factor."""
    truncation_psi: float = 1.0
    """Truncation when drawing fakes for the losses (1: none, as in training)."""


@dataclass
class GanTrainState:
    """Networks, optimisers and the step counter of a GAN run."""

    G: Generator
    D: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    step: int = 0

    @classmethod
    def create(cls, G: Generator, D: Discriminator, lr: float = 2e-3) -> GanTrainState:
        """Adam with StyleGAN2's betas ``(0, 0.99)``."""
        opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
        opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
        return cls(G, D, opt_g, opt_d)


def gan_train_step(
    state: GanTrainState,
    reals: Tensor,
    *,
    config: GanLossConfig | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One generator and one discriminator update (non-saturating logistic loss + lazy R1).

    ``L_G = softplus(-D(G(z)))``; ``L_D = softplus(D(G(z))) + softplus(-D(x))`` plus
    ``r1_every * gamma / 2 * ||grad_x D(x)||^2`` every ``r1_every`` steps.

    Args:
        state: networks and optimisers (both in training mode).
        reals: ``(B, C, R, R)`` real images in [-1, 1].
        config: loss options.
        generator: RNG for the latents and the synthesis noise.

    Returns:
        ``{"loss_g", "loss_d", "r1"}`` (``r1`` is 0 on steps without the penalty).
    """
    config = config or GanLossConfig()
    G, D = state.G, state.D
    G.train()
    D.train()
    batch = reals.shape[0]
    device = reals.device

    def fakes() -> Tensor:
        z = torch.randn(batch, G.z_dim, generator=generator).to(device)
        ws = G.mapping(z, truncation_psi=config.truncation_psi)
        return G.synthesis(ws, noise_mode="random", generator=generator, fused=False)

    # Generator update: D frozen so its gradients are not accumulated.
    D.requires_grad_(False)
    loss_g = F.softplus(-D(fakes())).mean()
    state.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.opt_g.step()
    D.requires_grad_(True)

    # Discriminator update.
    with torch.no_grad():
        fake = fakes()
    real = reals.detach().requires_grad_(config.r1_gamma > 0 and state.step % config.r1_every == 0)
    real_logits = D(real)
    loss_d = F.softplus(D(fake)).mean() + F.softplus(-real_logits).mean()
    r1 = torch.zeros((), device=device)
    if real.requires_grad:
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        r1 = grad.square().sum(dim=[1, 2, 3]).mean()
        loss_d = loss_d + config.r1_every * config.r1_gamma / 2 * r1
    state.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    state.opt_d.step()
    state.step += 1
    return {"loss_g": loss_g.item(), "loss_d": loss_d.item(), "r1": r1.item()}
