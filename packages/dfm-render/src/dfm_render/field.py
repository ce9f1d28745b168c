"""The pixel-aligned radiance field: a time-conditioned ResNet-FC over views (pixelNeRF + DFM).

A 3D point x is taken into every view's camera frame, positionally encoded there, and paired
with the feature read at its projection in that view's feature map (pixelNeRF, Yu et al. 2021).
Each (point, view) pair runs through the first ``combine_layer`` residual blocks on its own,
the blocks are pooled over the views that see the point (a mean, or with
``FieldConfig.view_pooling = "learned"`` a softmax-weighted mean whose weights the field
learns), and the remaining blocks map the pooled code to RGB, density and optional feature
channels. Every block is FiLM-modulated by the view's diffusion time (DFM, Tewari et al.
2023, section 3.2 and Fig. 2): context views carry t = 0, the noisy target view its denoising
t; after pooling the target's time conditions.

The first layer is linear in the concatenation [PE(x); f(uv)], so its feature half commutes with
bilinear sampling: ``W_f · sample(F, uv) = sample(W_f · F, uv)``. ``project_features`` applies
``W_f`` once per feature-map pixel instead of once per (point, view); the field then samples the
projected map. The result is identical to the original's ``lin_in`` on the concatenation (tested),
at a fraction of the cost when points outnumber pixels (they do by ~100x).

Precision: under ``torch.autocast`` (``RendererConfig.field_dtype = "bfloat16"``) the hidden
activations, the pixel-feature gather and the matmuls run in the autocast dtype, from float32
weights; the camera projection, positional encoding and the output activations (density, RGB)
stay in the points' dtype. Without autocast nothing is cast: every step runs in the points' dtype.

Shapes: B batch, V views, P points, C_in encoder feature channels, W field width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dfm_render.cameras import project_points
from dfm_render.encoding import PositionalEncoding
from dfm_render.pixel_features import sample_pixel_features

__all__ = ["VIEW_POOLINGS", "FieldConfig", "FieldOutput", "RadianceFieldMLP", "pool_views"]

VIEW_POOLINGS = ("mean", "learned")


@dataclass
class FieldConfig:
    """Hyper-parameters of ``RadianceFieldMLP``; ``build()`` makes it."""

    feature_channels: int = 512
    """Channels C_in of the encoder's pixel-aligned feature maps."""
    width: int = 512
    """Hidden width W of the residual blocks."""
    num_blocks: int = 5
    """Residual FC blocks."""
    combine_layer: int = 3
    """Blocks run per view before the mean over views (the original's combine_layer)."""
    time_embed_dim: int = 2048
    """Width of the time embedding that FiLM-modulates every block."""
    output_features: int = 0
    """Extra rendered feature channels besides RGB and density (64 for O_det in DFM)."""
    num_freqs: int = 6
    """Positional-encoding frequencies of the camera-frame point (39 inputs with 6)."""
    freq_factor: float = 1.5
    """Base frequency of the positional encoding: frequencies freq_factor * 2^k."""
    density_shift: float = -1.0
    """density = softplus(raw + shift); a negative shift starts the field near-empty."""
    view_pooling: str = "mean"
    """How the per-view codes are combined after ``combine_layer`` blocks. ``"mean"``: the plain
    mean over the views that see the point (pixelNeRF, the original DFM). ``"learned"``: a
    softmax-weighted mean whose logits a linear head reads from each view's code. The head
    starts at zero, so a learned-pooling field starts equal to the mean-pooling one (and can be
    fine-tuned from its weights); it can then learn which view to trust at a point, e.g. the
    target view over a context view that sees the point only through the surface in front of
    it (the mean blends the two: an object's hidden back takes on its front's colour). In
    dfm-render's models it applies to DFM's joint field (context views and the noisy target);
    the context-only fields (O_det's, the baseline's) keep the mean."""

    def __post_init__(self) -> None:
        for name in ("feature_channels", "width", "num_blocks", "time_embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"FieldConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if not 0 <= self.combine_layer <= self.num_blocks:
            raise ValueError(
                f"FieldConfig.combine_layer: expected 0..num_blocks={self.num_blocks}, "
                f"got {self.combine_layer}"
            )
        if self.output_features < 0:
            raise ValueError(
                f"FieldConfig.output_features: expected >= 0, got {self.output_features}"
            )
        if self.view_pooling not in VIEW_POOLINGS:
            raise ValueError(
                f"FieldConfig.view_pooling: expected one of {', '.join(VIEW_POOLINGS)}, "
                f"got {self.view_pooling!r}"
            )

    def build(self) -> RadianceFieldMLP:
        """Instantiate the field (random weights; the residual branches start at zero)."""
        return RadianceFieldMLP(self)


@dataclass(frozen=True)
class FieldOutput:
    """What the field returns for P points.

    Attributes:
        density: (B, P) >= 0, in inverse scene units.
        rgb: (B, P, 3) in [0, 1].
        features: (B, P, output_features), or None when the field has none.
    """

    density: Tensor
    rgb: Tensor
    features: Tensor | None


def _hidden_dtype(x: Tensor) -> torch.dtype:
    """The dtype hidden activations are kept in: autocast's while it is on for ``x``'s device
    (so the matmuls neither re-cast their inputs nor promote the residual adds), else ``x``'s."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class ResnetBlockFC(nn.Module):
    """Pre-activation residual FC block with a FiLM (scale, shift) from the time embedding.

    ``x + fc_1(relu(film(fc_0(relu(x)))))``; ``fc_1`` starts at zero, so each block starts as the
    identity (as in pixelNeRF's ResnetFC).
    """

    def __init__(self, width: int, time_embed_dim: int) -> None:
        super().__init__()
        self.fc_0 = nn.Linear(width, width)
        self.fc_1 = nn.Linear(width, width)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(time_embed_dim, 2 * width))
        nn.init.kaiming_normal_(self.fc_0.weight, a=0.0, mode="fan_in")
        nn.init.zeros_(self.fc_0.bias)
        nn.init.zeros_(self.fc_1.weight)
        nn.init.zeros_(self.fc_1.bias)

    def forward(self, x: Tensor, time_embedding: Tensor) -> Tensor:
        """x (..., W); time_embedding broadcastable to (..., T) -> (..., W)."""
        scale, shift = self.film(time_embedding).chunk(2, dim=-1)  # (..., W) each
        if x.ndim >= 3 and scale.shape[:-2] == x.shape[:-2] and scale.shape[-2] == 1:
            h = _film_linear(F.relu(x), self.fc_0, 1 + scale, shift)
        else:
            h = self.fc_0(F.relu(x)) * (1 + scale) + shift
        return x + self.fc_1(F.relu(h))


def _film_linear(x: Tensor, linear: nn.Linear, gain: Tensor, shift: Tensor) -> Tensor:
    """``linear(x) * gain + shift`` with the gain folded into per-group weights.

    Every group of points (a view of a batch element) shares one (gain, shift), so
    ``(x A^T + b) * g + s = x (A^T diag(g)) + (b * g + s)``: one batched matmul with a scaled
    copy of the (W, W) weight per group. Same values; but the gain's gradient now comes from
    the small weight gradient instead of a reduction of a full (..., P, W) product over the
    points, which the plain form's backward materialises (~25 % of a block's time on CPU).

    Args:
        x: (..., P, W_in) inputs.
        linear: the block's fc_0 (weight (W_out, W_in), bias (W_out,)).
        gain, shift: (..., 1, W_out), one per group of P points.

    Returns:
        (..., P, W_out).
    """
    groups, (points, width_in) = x.shape[:-2], x.shape[-2:]
    width_out = linear.out_features
    weight = linear.weight.t().to(x.dtype) * gain  # (..., W_in, W_out): columns scaled
    bias = linear.bias.to(x.dtype) * gain + shift  # (..., 1, W_out)
    out = torch.baddbmm(
        bias.reshape(-1, 1, width_out),
        x.reshape(-1, points, width_in),
        weight.reshape(-1, width_in, width_out),
    )  # (G, P, W_out)
    return out.reshape(*groups, points, width_out)


class RadianceFieldMLP(nn.Module):
    """Pixel-aligned, time-conditioned radiance field over any number of views.

    Use ``project_features`` once per feature map, then ``forward`` per batch of points.
    """

    def __init__(self, config: FieldConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoding = PositionalEncoding(3, c.num_freqs, c.freq_factor, include_input=True)
        # lin_in of the original, split into its position and feature halves (module docstring).
        self.lin_pos = nn.Linear(self.encoding.out_dim, c.width)
        self.lin_feat = nn.Conv2d(c.feature_channels, c.width, kernel_size=1, bias=False)
        self.time_mlp = nn.Sequential(
            nn.Linear(c.width, c.time_embed_dim),
            nn.GELU(),
            nn.Linear(c.time_embed_dim, c.time_embed_dim),
        )
        self.blocks = nn.ModuleList(
            ResnetBlockFC(c.width, c.time_embed_dim) for _ in range(c.num_blocks)
        )
        self.lin_out = nn.Linear(c.width, 4 + c.output_features)
        if c.view_pooling == "learned":
            # Zero-initialised: every view's logit is 0, i.e. the plain mean (FieldConfig). No
            # bias: a logit shared by every view cancels in the softmax.
            self.view_logit = nn.Linear(c.width, 1, bias=False)
            nn.init.zeros_(self.view_logit.weight)

    # ---- per feature map ---------------------------------------------------------------
    def project_features(self, features: Tensor) -> Tensor:
        """Apply the feature half of the first layer to whole maps: (N, C_in, H, W) -> (N, W, H, W)."""
        return self.lin_feat(features)

    def time_embedding(self, t: Tensor) -> Tensor:
        """(B, V) diffusion times -> (B, V, time_embed_dim)."""
        from dfm_core.dit import timestep_embedding

        flat = timestep_embedding(t.reshape(-1), self.config.width)  # (B*V, W)
        emb = self.time_mlp(flat.to(self.lin_pos.weight.dtype))
        return emb.reshape(*t.shape, -1)

    # ---- per batch of points -----------------------------------------------------------
    def per_view(
        self,
        points: Tensor,
        projected_maps: Tensor,
        c2w: Tensor,
        intrinsics: Tensor,
        time_embedding: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """The per-view part: the blocks before the mean over views.

        Args: as ``forward``.

        Returns:
            hidden (B, V, P, W) and valid (B, V, P) (the view sees the point).
        """
        projection = project_points(points, c2w, intrinsics)  # uv (B,V,P,2), depth (B,V,P)
        dtype = _hidden_dtype(points)
        sampled, valid = sample_pixel_features(
            projected_maps.to(dtype), projection.uv, projection.depth
        )  # (B, V, P, W): a bfloat16 table halves the gather's memory traffic under autocast
        # (B, V, P, W) per-view input: W_p PE(x_cam) + sample(W_f F, uv) [+ bias].
        h = (self.lin_pos(self.encoding(projection.points)) + sampled).to(dtype)
        per_view_time = time_embedding[:, :, None, :]  # (B, V, 1, T)
        for block in self.blocks[: self.config.combine_layer]:
            h = block(h, per_view_time)
        return h, valid

    def forward(
        self,
        points: Tensor,
        projected_maps: Tensor,
        c2w: Tensor,
        intrinsics: Tensor,
        time_embedding: Tensor,
        *,
        cached: tuple[Tensor, Tensor] | None = None,
    ) -> FieldOutput:
        """Evaluate the field at world points.

        Args:
            points: (B, P, 3) world points.
            projected_maps: (B, V, W, H, W_img) from ``project_features``, one per view.
            c2w: (B, V, 4, 4) OpenCV camera-to-world of each view.
            intrinsics: (B, V, 3, 3) normalised intrinsics of each view.
            time_embedding: (B, V, T) from ``time_embedding``; the last view's conditions
                the blocks after the mean over views (DFM: the noisy target view).
            cached: ``per_view`` outputs (hidden (B, Vc, P, W), valid (B, Vc, P)) already
                computed for the first Vc views at these points (views whose features and
                time do not change between calls, e.g. the context views while sampling);
                only the remaining views are evaluated.

        Returns:
            ``FieldOutput`` for the P points.
        """
        cfg = self.config
        if cached is None:
            h, valid = self.per_view(points, projected_maps, c2w, intrinsics, time_embedding)
        else:
            done = cached[0].shape[1]
            h_new, valid_new = self.per_view(
                points,
                projected_maps[:, done:],
                c2w[:, done:],
                intrinsics[:, done:],
                time_embedding[:, done:],
            )
            h = torch.cat([cached[0].to(h_new.dtype), h_new], dim=1)
            valid = torch.cat([cached[1], valid_new], dim=1)
        logits = self.view_logit(h).squeeze(-1) if cfg.view_pooling == "learned" else None
        pooled = pool_views(h, valid, logits)  # (B, P, W)
        target_time = time_embedding[:, -1, None, :]  # (B, 1, T)
        for block in self.blocks[cfg.combine_layer :]:
            pooled = block(pooled, target_time)
        # Under autocast (RendererConfig.field_dtype) lin_out returns bfloat16; the activations
        # run in the points' dtype (float32), so density and colour leave the field at full
        # precision for compositing. A no-op without autocast.
        out = self.lin_out(F.relu(pooled)).to(points.dtype)  # (B, P, 4 + F_out)
        density = F.softplus(out[..., 3] + cfg.density_shift)
        rgb = torch.sigmoid(out[..., :3])
        features = out[..., 4:] if cfg.output_features else None
        return FieldOutput(density=density, rgb=rgb, features=features)


def pool_views(hidden: Tensor, valid: Tensor, logits: Tensor | None = None) -> Tensor:
    """Combine per-view codes into one per point: a weighted mean over the views that see it.

    The weights are ``softmax(logits)`` over the views that see the point (``logits`` None: all
    equal, the plain mean). A point no view sees takes the softmax over every view (the plain
    mean without logits). The original averages every view, seen or not, because it
    border-pads.

    Args:
        hidden: (B, V, P, W) per-view codes.
        valid: (B, V, P) bool, the view sees the point.
        logits: (B, V, P) per-view scores, or None.

    Returns:
        (B, P, W) in ``hidden``'s dtype; the weights are computed in float32 at least.
    """
    if logits is None:
        logits = torch.zeros(valid.shape, device=hidden.device, dtype=hidden.dtype)
    # float32 at least (bfloat16 codes under autocast), float64 for float64 codes.
    logits = logits.to(
        torch.promote_types(torch.promote_types(logits.dtype, hidden.dtype), torch.float32)
    )
    seen = valid.any(dim=1, keepdim=True)  # (B, 1, P)
    masked = logits.masked_fill(~valid & seen, float("-inf"))  # unseen views drop out
    weight = torch.softmax(masked, dim=1).to(hidden.dtype)  # (B, V, P)
    return (hidden * weight[..., None]).sum(dim=1)  # (B, P, W)
