"""DiT: the image-in, image-out transformer backbone shared by every DFM application.

A Diffusion Transformer (Peebles & Xie, "Scalable Diffusion Models with Transformers",
ICCV 2023) with adaLN-Zero blocks, as used by DFM (Tewari, Yin et al., NeurIPS 2023) to
encode context and noisy target views into feature maps. Differences from the class-
conditional original:

* The output is a dense map: ``(B, C_in, H, W) -> (B, C_out, H, W)`` with any ``C_out``
  (DFM reads 512-channel feature maps, not noise predictions).
* The 2-D sin-cos positional embedding is computed for the actual token grid
  ``(H/p, W/p)``, so one model serves every resolution and non-square inputs, and it is
  not part of the ``state_dict`` (DFM's 64→128 px fine-tune loads cleanly).
* The class-label embedding is replaced by an optional conditioning vector ``cond``
  (an absolute camera pose, a context code...) projected and added to the timestep
  embedding.

The file reads top to bottom: embeddings, the adaLN-Zero block, the final layer, the
model, then its config and the named presets (``DIT_PRESETS``, sizes from the DiT paper).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

try:  # timm >= 1.0.16 exposes Attention in timm.layers; older 1.0.x only in the ViT module.
    from timm.layers import Attention, Mlp
except ImportError:  # pragma: no cover - depends on the installed timm
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention

__all__ = [
    "DIT_PRESETS",
    "DiT",
    "DiTConfig",
    "dit_config",
    "sincos_pos_embed_2d",
    "timestep_embedding",
]


# --------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------


def _linear(module: nn.Module) -> nn.Linear:
    """Narrow an ``nn.Sequential`` entry to the ``nn.Linear`` it is (for the type checker)."""
    assert isinstance(module, nn.Linear)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal frequency embedding of (possibly fractional) timesteps.

    ``emb[:, k] = cos(t · f_k)`` and ``emb[:, half + k] = sin(t · f_k)`` with
    ``f_k = max_period^(-k / half)``, ``half = dim // 2`` (the DiT / ADM layout). The
    arithmetic runs in float64, so the embedding is smooth in ``t`` even at ``t ≈ 1000``.

    Args:
        t: ``(B,)`` timesteps, any real value (samplers evaluate non-integer ``t``).
        dim: Embedding width; must be even.
        max_period: Period of the slowest frequency.

    Returns:
        ``(B, dim)`` float32 embedding on ``t``'s device.
    """
    if dim % 2 != 0:
        raise ValueError(f"timestep_embedding: dim must be even, got {dim}")
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (half,)
    args = t.to(torch.float64)[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).float()  # (B, dim)


def sincos_pos_embed_2d(embed_dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sin-cos positional embedding of an ``grid_h × grid_w`` token grid.

    Tokens are ordered row-major (index ``i * grid_w + j`` for row ``i``, column ``j``),
    matching ``conv(x).flatten(2)``. With ``q = embed_dim // 4`` and
    ``ω_k = 10000^(-k / q)``, channels ``[0, q)`` hold ``sin(j ω_k)``, ``[q, 2q)``
    ``cos(j ω_k)``, ``[2q, 3q)`` ``sin(i ω_k)`` and ``[3q, 4q)`` ``cos(i ω_k)``: column
    first, then row, which is the layout of DiT/MAE's ``get_2d_sincos_pos_embed`` for
    square grids.

    Args:
        embed_dim: Embedding width; must be divisible by 4.
        grid_h: Number of token rows (``H / patch_size``).
        grid_w: Number of token columns (``W / patch_size``).

    Returns:
        ``(grid_h * grid_w, embed_dim)`` float64 tensor on the CPU.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"sincos_pos_embed_2d: embed_dim must be divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10_000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (q,)
    rows = torch.arange(grid_h, dtype=torch.float64)  # (h,)
    cols = torch.arange(grid_w, dtype=torch.float64)  # (w,)
    ii, jj = torch.meshgrid(rows, cols, indexing="ij")  # (h, w) each
    out_j = jj.reshape(-1, 1) * omega[None]  # (h*w, q)
    out_i = ii.reshape(-1, 1) * omega[None]  # (h*w, q)
    return torch.cat([out_j.sin(), out_j.cos(), out_i.sin(), out_i.cos()], dim=1)  # (h*w, D)


class TimestepEmbedder(nn.Module):
    """Timestep ``t`` → sinusoidal frequency embedding → Linear–SiLU–Linear → ``(B, D)``."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: Tensor) -> Tensor:
        """Embed ``t`` of shape ``(B,)`` into ``(B, hidden_size)``."""
        freq = timestep_embedding(t, self.frequency_embedding_size)  # (B, F)
        return self.mlp(freq.to(_linear(self.mlp[0]).weight.dtype))  # (B, D)


class CondEmbedder(nn.Module):
    """Conditioning vector ``(B, cond_dim)`` → Linear–SiLU–Linear → ``(B, D)``."""

    def __init__(self, cond_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(cond_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, cond: Tensor) -> Tensor:
        """Embed ``cond`` of shape ``(B, cond_dim)`` into ``(B, hidden_size)``."""
        return self.mlp(cond.to(_linear(self.mlp[0]).weight.dtype))  # (B, D)


# --------------------------------------------------------------------------------------
# adaLN-Zero transformer block and final layer
# --------------------------------------------------------------------------------------


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation: ``x · (1 + scale) + shift`` with per-sample ``(B, D)`` shift/scale."""
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, N, D)


class DiTBlock(nn.Module):
    """Transformer block whose LayerNorms and residual gates are set by the conditioning.

    The modulation ``c → (shift, scale, gate) × {attention, MLP}`` is zero-initialised
    (adaLN-Zero), so each block starts as the identity.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            in_features=hidden_size,
            hidden_features=int(hidden_size * mlp_ratio),
            act_layer=partial(nn.GELU, approximate="tanh"),  # type: ignore[arg-type]
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Update tokens ``x`` ``(B, N, D)`` under conditioning ``c`` ``(B, D)``."""
        mod = self.adaLN_modulation(c)  # (B, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        h = modulate(self.norm1(x), shift_msa, scale_msa)  # (B, N, D)
        x = x + gate_msa[:, None] * self.attn(h)  # (B, N, D)
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)  # (B, N, D)
        x = x + gate_mlp[:, None] * self.mlp(h)  # (B, N, D)
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map of each token to a ``p × p × C_out`` patch."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Map tokens ``x`` ``(B, N, D)`` under ``c`` ``(B, D)`` to ``(B, N, p·p·C_out)``."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # (B, D) each
        x = modulate(self.norm_final(x), shift, scale)  # (B, N, D)
        return self.linear(x)  # (B, N, p*p*C_out)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Diffusion Transformer mapping an image-like tensor to a same-size output map.

    ``x`` is cut into ``p × p`` patches (a conv with kernel = stride = p), each token gets
    the sin-cos embedding of its grid position, ``depth`` adaLN-Zero blocks run under the
    conditioning ``c = embed(t) [+ embed(cond)]``, and a final adaLN layer predicts a
    ``p × p × C_out`` patch per token. The modulations and the final linear layer are
    zero-initialised, so a freshly built model outputs exactly zero.

    Build it from a config: ``dit_config("DiT-B", in_channels=64, out_channels=512).build()``.

    Attributes:
        config: The ``DiTConfig`` it was built from (save it next to the weights).
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.x_embedder = nn.Conv2d(
            config.in_channels, d, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.t_embedder = TimestepEmbedder(d, config.frequency_embedding_size)
        self.c_embedder = CondEmbedder(config.cond_dim, d) if config.cond_dim is not None else None
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, config.patch_size, config.out_channels)
        # (grid_h, grid_w, device, dtype) -> (1, h*w, D). Not a buffer: it is a function of
        # the input resolution, so it stays out of the state_dict.
        self._pos_embed_cache: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT initialisation: Xavier-uniform linears, N(0, 0.02) embedding MLPs, adaLN-Zero."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        # The patch embedding is a linear map of the flattened patch.
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.x_embedder.bias is not None:
            nn.init.zeros_(self.x_embedder.bias)
        embedders = [self.t_embedder] + ([self.c_embedder] if self.c_embedder is not None else [])
        for embedder in embedders:
            nn.init.normal_(_linear(embedder.mlp[0]).weight, std=0.02)
            nn.init.normal_(_linear(embedder.mlp[2]).weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the output starts at zero.
        zero_init = [self.final_layer.linear]
        for module in self.modules():
            if isinstance(module, (DiTBlock, FinalLayer)):
                zero_init.append(_linear(module.adaLN_modulation[-1]))
        for linear in zero_init:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """Sin-cos positional embedding ``(1, grid_h * grid_w, D)`` for this token grid.

        Computed in float64 once per grid size, then cached on the parameters' device
        and dtype (float32 under autocast, so the residual stream stays in float32).
        """
        weight = self.x_embedder.weight
        key = (grid_h, grid_w, weight.device, weight.dtype)
        cached = self._pos_embed_cache.get(key)
        if cached is None:
            emb = sincos_pos_embed_2d(self.config.hidden_size, grid_h, grid_w)  # (h*w, D)
            cached = emb.to(device=weight.device, dtype=weight.dtype)[None]  # (1, h*w, D)
            self._pos_embed_cache[key] = cached
        return cached

    def unpatchify(self, x: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """Reassemble per-token patches ``(B, h*w, p*p*C_out)`` into ``(B, C_out, h*p, w*p)``."""
        p, c = self.config.patch_size, self.config.out_channels
        b = x.shape[0]
        x = x.reshape(b, grid_h, grid_w, p, p, c)  # (B, h, w, p, p, C_out)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C_out, h, p, w, p)
        return x.reshape(b, c, grid_h * p, grid_w * p)  # (B, C_out, H, W)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Run the DiT.

        Args:
            x: ``(B, in_channels, H, W)`` input; ``H`` and ``W`` divisible by ``patch_size``
                (images in ``[-1, 1]`` by the project convention, or feature maps).
            t: ``(B,)`` diffusion timesteps, real-valued (fractional ``t`` is fine).
            cond: ``(B, cond_dim)`` extra conditioning vector; required exactly when the
                config sets ``cond_dim``.

        Returns:
            ``(B, out_channels, H, W)`` output map.

        Raises:
            ValueError: If a shape disagrees with the config or with ``x``'s batch size.
        """
        self._check_inputs(x, t, cond)
        p = self.config.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p  # token grid: h = H/p, w = W/p
        x = self.x_embedder(x)  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        x = x + self.pos_embed(h, w)  # (B, h*w, D)
        c = self.t_embedder(t)  # (B, D)
        if self.c_embedder is not None:
            c = c + self.c_embedder(cond)  # (B, D)
        # Read at call time, so the flag can be flipped on a built model via model.config.
        use_checkpoint = (
            self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        )
        for block in self.blocks:
            if use_checkpoint:
                x = checkpoint(block, x, c, use_reentrant=False)  # (B, h*w, D)
            else:
                x = block(x, c)  # (B, h*w, D)
        x = self.final_layer(x, c)  # (B, h*w, p*p*C_out)
        return self.unpatchify(x, h, w)  # (B, C_out, H, W)

    def _check_inputs(self, x: Tensor, t: Tensor, cond: Tensor | None) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"DiT: x must have shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}"
            )
        b, _, height, width = x.shape
        if height % cfg.patch_size != 0 or width % cfg.patch_size != 0:
            raise ValueError(
                f"DiT: x's H and W must be divisible by patch_size={cfg.patch_size}, "
                f"got H={height}, W={width}"
            )
        if t.shape != (b,):
            raise ValueError(f"DiT: t must have shape (B,) = ({b},), got {tuple(t.shape)}")
        if cfg.cond_dim is None:
            if cond is not None:
                raise ValueError(
                    "DiT: cond was given but the model was built with cond_dim=None; "
                    "set DiTConfig.cond_dim to use a conditioning vector"
                )
        elif cond is None:
            raise ValueError(
                f"DiT: cond of shape (B, cond_dim) = ({b}, {cfg.cond_dim}) is required "
                f"because the model was built with cond_dim={cfg.cond_dim}"
            )
        elif cond.shape != (b, cfg.cond_dim):
            raise ValueError(
                f"DiT: cond must have shape (B, cond_dim) = ({b}, {cfg.cond_dim}), "
                f"got {tuple(cond.shape)}"
            )


# --------------------------------------------------------------------------------------
# Config and presets
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class DiTConfig:
    """Hyper-parameters of a ``DiT``; ``build()`` makes the model."""

    in_channels: int = 3
    """Channels of the input map ``x``."""
    out_channels: int = 3
    """Channels of the output map (e.g. 512 for DFM's pixel-aligned features)."""
    patch_size: int = 2
    """Side of the square patches turned into tokens; H and W must be multiples of it."""
    hidden_size: int = 1152
    """Token width D; divisible by 4 (2-D sin-cos embedding) and by ``num_heads``."""
    depth: int = 28
    """Number of adaLN-Zero transformer blocks."""
    num_heads: int = 16
    """Attention heads per block."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of ``hidden_size``."""
    cond_dim: int | None = None
    """Width of the optional conditioning vector ``cond`` (e.g. a flattened pose); None: no cond."""
    frequency_embedding_size: int = 256
    """Width of the sinusoidal timestep embedding fed to the timestep MLP; even."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (training only): less memory."""

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "patch_size", "hidden_size", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiTConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads < 1 or self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"DiTConfig: num_heads must divide hidden_size={self.hidden_size}, "
                f"got {self.num_heads}"
            )
        if self.hidden_size % 4 != 0:
            raise ValueError(
                f"DiTConfig: hidden_size must be divisible by 4, got {self.hidden_size}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"DiTConfig: mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.cond_dim is not None and self.cond_dim < 1:
            raise ValueError(f"DiTConfig: cond_dim must be None or >= 1, got {self.cond_dim}")
        if self.frequency_embedding_size < 2 or self.frequency_embedding_size % 2 != 0:
            raise ValueError(
                "DiTConfig: frequency_embedding_size must be even and >= 2, "
                f"got {self.frequency_embedding_size}"
            )

    def build(self) -> DiT:
        """Instantiate the model (randomly initialised, output exactly zero)."""
        return DiT(self)


DIT_PRESETS: Mapping[str, DiTConfig] = types.MappingProxyType(
    {
        # Sizes from the DiT paper (Table 1); DFM used DiT-XL with patch 2.
        "DiT-S": DiTConfig(depth=12, hidden_size=384, num_heads=6),
        "DiT-B": DiTConfig(depth=12, hidden_size=768, num_heads=12),
        "DiT-L": DiTConfig(depth=24, hidden_size=1024, num_heads=16),
        "DiT-XL": DiTConfig(depth=28, hidden_size=1152, num_heads=16),
        # For tests and CPU smoke runs.
        "DiT-Tiny": DiTConfig(depth=2, hidden_size=64, num_heads=2),
    }
)
"""Named model sizes. Read-only; use ``dit_config`` to get an editable copy."""


def dit_config(preset: str, **overrides: object) -> DiTConfig:
    """A copy of a named preset with some fields replaced.

    Args:
        preset: A key of ``DIT_PRESETS`` (``"DiT-S"``, ``"DiT-B"``, ``"DiT-L"``,
            ``"DiT-XL"``, ``"DiT-Tiny"``).
        **overrides: ``DiTConfig`` fields to change, e.g. ``in_channels=64``.

    Returns:
        A new ``DiTConfig``.

    Raises:
        ValueError: If ``preset`` is unknown (the message lists the valid names) or an
            override names no ``DiTConfig`` field.
    """
    if preset not in DIT_PRESETS:
        raise ValueError(f"dit_config: unknown preset {preset!r}; valid: {sorted(DIT_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"dit_config: unknown DiTConfig fields {unknown}; valid: {sorted(fields)}")
    return dataclasses.replace(DIT_PRESETS[preset], **overrides)  # type: ignore[arg-type]
