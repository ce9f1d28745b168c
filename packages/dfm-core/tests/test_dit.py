"""Tests for the DiT backbone: shapes, adaLN-Zero init, closed-form embeddings, input checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import dfm_core.dit as dit_module
from dfm_core.dit import (
    DIT_PRESETS,
    DiT,
    DiTConfig,
    dit_config,
    sincos_pos_embed_2d,
    timestep_embedding,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from intra-op threads, and spinning threads crawl on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides: object) -> DiT:
    torch.manual_seed(0)
    return dit_config("DiT-Tiny", **overrides).build()


def randomise(model: DiT, seed: int = 0, std: float = 0.05) -> DiT:
    """Perturb every parameter, so the zero-initialised layers stop hiding the network."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return model


def inputs(b: int = 2, c: int = 3, h: int = 8, w: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen)
    t = torch.rand(b, generator=gen) * 1000
    return x, t


# --------------------------------------------------------------------------------------
# Shapes and initialisation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(8, 8), (8, 12), (12, 8)])
def test_output_shape_square_and_non_square(h: int, w: int) -> None:
    model = tiny(in_channels=3, out_channels=5)
    x, t = inputs(h=h, w=w)
    assert model(x, t).shape == (2, 5, h, w)


def test_one_model_serves_two_resolutions_and_pos_embed_stays_out_of_state_dict() -> None:
    model = randomise(tiny())
    for h, w in [(8, 8), (16, 12)]:
        x, t = inputs(h=h, w=w)
        y = model(x, t)
        assert y.shape == (2, 3, h, w)
        assert torch.isfinite(y).all()
    assert len(model._pos_embed_cache) == 2
    assert not any("pos" in key for key in model.state_dict())


def test_output_is_exactly_zero_at_init_and_not_after_perturbing_final_layer() -> None:
    model = tiny()
    x, t = inputs()
    assert torch.equal(model(x, t), torch.zeros(2, 3, 8, 8))
    with torch.no_grad():
        model.final_layer.linear.bias.normal_()
    y = model(x, t)
    assert y.abs().min() > 0
    # The blocks still start as the identity: only the final layer contributes.
    with torch.no_grad():
        model.final_layer.linear.weight.normal_()
    assert not torch.allclose(model(x, t), y)


def test_unpatchify_inverts_patch_ordering() -> None:
    # Token (i, j) with patch entry (a, b, c) must land at pixel (c, i*p + a, j*p + b).
    model = tiny(out_channels=2)
    p, h, w = 2, 3, 4
    tokens = torch.arange(h * w * p * p * 2, dtype=torch.float32).reshape(1, h * w, p * p * 2)
    out = model.unpatchify(tokens, h, w)
    ref = tokens.reshape(h, w, p, p, 2)
    for i, j, a, b, c in [(0, 0, 0, 0, 0), (2, 3, 1, 0, 1), (1, 2, 0, 1, 0)]:
        assert out[0, c, i * p + a, j * p + b] == ref[i, j, a, b, c]


# --------------------------------------------------------------------------------------
# Closed-form embeddings
# --------------------------------------------------------------------------------------


def test_sincos_pos_embed_matches_numpy_closed_form() -> None:
    dim, gh, gw = 16, 3, 5
    q = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(q, dtype=np.float64) / q)
    expected = np.zeros((gh * gw, dim), dtype=np.float64)
    for i in range(gh):
        for j in range(gw):
            n = i * gw + j
            expected[n, :q] = np.sin(j * omega)
            expected[n, q : 2 * q] = np.cos(j * omega)
            expected[n, 2 * q : 3 * q] = np.sin(i * omega)
            expected[n, 3 * q :] = np.cos(i * omega)
    got = sincos_pos_embed_2d(dim, gh, gw)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)


def test_model_pos_embed_is_cached_and_cast() -> None:
    model = tiny()
    pe = model.pos_embed(2, 3)
    assert pe.shape == (1, 6, 64) and pe.dtype == torch.float32
    assert model.pos_embed(2, 3) is pe
    torch.testing.assert_close(pe[0], sincos_pos_embed_2d(64, 2, 3).float(), rtol=0, atol=0)


def test_timestep_embedding_matches_closed_form_for_fractional_t() -> None:
    dim = 32
    t = torch.tensor([0.0, 0.5, 1.25, 999.75])
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = t.numpy().astype(np.float64)[:, None] * freqs[None]
    expected = np.concatenate([np.cos(args), np.sin(args)], axis=1)
    got = timestep_embedding(t, dim)
    assert got.shape == (4, dim) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)


def test_timestep_embedding_is_continuous_in_t() -> None:
    t = torch.tensor([0.3, 17.5, 500.123, 999.9])
    e0 = timestep_embedding(t, 256)
    e1 = timestep_embedding(t + 1e-3, 256)
    # Each coordinate is 1-Lipschitz in t times its frequency (<= 1).
    assert (e1 - e0).abs().max() <= 1.001e-3
    assert (e1 - e0).abs().max() > 0


def test_model_is_continuous_in_fractional_t() -> None:
    model = randomise(tiny()).eval()
    x, _ = inputs()
    t = torch.tensor([250.5, 731.25])
    y0, y1 = model(x, t), model(x, t + 1e-3)
    assert 0 < (y1 - y0).abs().max() < 1e-2


# --------------------------------------------------------------------------------------
# Batch independence, checkpointing, conditioning
# --------------------------------------------------------------------------------------


def test_sample_output_does_not_depend_on_batch_position() -> None:
    model = randomise(tiny(cond_dim=4)).eval()
    x, t = inputs(b=3, h=8, w=12)
    cond = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = model(x, t, cond)
        for i in range(3):
            alone = model(x[i : i + 1], t[i : i + 1], cond[i : i + 1])
            torch.testing.assert_close(alone, batched[i : i + 1], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_matches_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = randomise(tiny(cond_dim=4)).train()
    ckpt = dit_config("DiT-Tiny", cond_dim=4, gradient_checkpointing=True).build().train()
    ckpt.load_state_dict(plain.state_dict())

    calls = []
    real_checkpoint = dit_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(dit_module, "checkpoint", counting_checkpoint)

    x, t = inputs()
    cond = torch.randn(2, 4)
    y_plain, y_ckpt = plain(x, t, cond), ckpt(x, t, cond)
    assert calls == [False, False]  # one per block, non-reentrant
    torch.testing.assert_close(y_ckpt, y_plain, rtol=0, atol=0)
    y_plain.square().sum().backward()
    y_ckpt.square().sum().backward()
    for (name, p_plain), p_ckpt in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p_ckpt.grad, p_plain.grad, msg=name)
    # Not in eval mode, nor without grad.
    calls.clear()
    ckpt.eval()
    ckpt(x, t, cond)
    ckpt.train()
    with torch.no_grad():
        ckpt(x, t, cond)
    assert calls == []


def test_cond_changes_output_with_nonzero_weights() -> None:
    model = randomise(tiny(cond_dim=4)).eval()
    x, t = inputs()
    y_a = model(x, t, torch.zeros(2, 4))
    y_b = model(x, t, torch.ones(2, 4))
    assert (y_a - y_b).abs().max() > 1e-4


def test_cond_changes_output_after_one_training_step() -> None:
    model = tiny(cond_dim=4)
    x, t = inputs()
    cond = torch.randn(2, 4)
    target = torch.randn(2, 3, 8, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):  # step 1 wakes the zero-init head, step 2 the modulations behind it
        opt.zero_grad()
        (model(x, t, cond) - target).square().mean().backward()
        opt.step()
    with torch.no_grad():
        assert (model(x, t, cond) - model(x, t, -cond)).abs().max() > 1e-6


def test_pos_embed_cached_in_inference_mode_is_usable_for_training() -> None:
    model = randomise(tiny())
    x, t = inputs()
    with torch.inference_mode():
        model(x, t)
    model(x, t).square().mean().backward()
    assert model.x_embedder.weight.grad is not None


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_shape", "t_shape", "cond_shape", "match"),
    [
        ((2, 4, 8, 8), (2,), (2, 4), "x"),  # wrong channel count
        ((2, 3, 8), (2,), (2, 4), "x"),  # not 4-D
        ((2, 3, 7, 8), (2,), (2, 4), "patch_size"),  # H not divisible
        ((2, 3, 8, 9), (2,), (2, 4), "patch_size"),  # W not divisible
        ((2, 3, 8, 8), (), (2, 4), "t"),  # scalar t
        ((2, 3, 8, 8), (3,), (2, 4), "t"),  # wrong batch
        ((2, 3, 8, 8), (2, 1), (2, 4), "t"),  # extra dim
        ((2, 3, 8, 8), (2,), None, "cond"),  # missing cond
        ((2, 3, 8, 8), (2,), (2, 5), "cond"),  # wrong cond width
        ((2, 3, 8, 8), (2,), (3, 4), "cond"),  # wrong cond batch
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(x_shape, t_shape, cond_shape, match):
    model = tiny(cond_dim=4)
    x = torch.zeros(x_shape)
    t = torch.zeros(t_shape)
    cond = None if cond_shape is None else torch.zeros(cond_shape)
    with pytest.raises(ValueError, match=rf"\b{match}\b"):
        model(x, t, cond)


def test_cond_without_cond_dim_raises() -> None:
    model = tiny()
    x, t = inputs()
    with pytest.raises(ValueError, match="cond_dim"):
        model(x, t, torch.zeros(2, 4))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"hidden_size": 66, "num_heads": 2}, "hidden_size"),
        ({"num_heads": 3}, "num_heads"),
        ({"patch_size": 0}, "patch_size"),
        ({"cond_dim": 0}, "cond_dim"),
        ({"frequency_embedding_size": 255}, "frequency_embedding_size"),
    ],
)
def test_bad_config_raises(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dit_config("DiT-Tiny", **overrides)


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------


def test_preset_sizes_follow_the_dit_paper() -> None:
    sizes = {name: (c.depth, c.hidden_size, c.num_heads) for name, c in DIT_PRESETS.items()}
    assert sizes["DiT-S"] == (12, 384, 6)
    assert sizes["DiT-B"] == (12, 768, 12)
    assert sizes["DiT-L"] == (24, 1024, 16)
    assert sizes["DiT-XL"] == (28, 1152, 16)
    assert all(c.mlp_ratio == 4.0 for c in DIT_PRESETS.values())


def test_dit_s_parameter_count() -> None:
    # DiT paper: DiT-S/2 has 33.0M parameters (with its class embedding); ours has none.
    n = sum(p.numel() for p in dit_config("DiT-S").build().parameters())
    assert 30e6 < n < 35e6


def test_dit_config_returns_an_independent_copy() -> None:
    cfg = dit_config("DiT-S", in_channels=64, out_channels=512, cond_dim=156)
    assert (cfg.in_channels, cfg.out_channels, cfg.cond_dim, cfg.depth) == (64, 512, 156, 12)
    cfg.depth = 1
    assert DIT_PRESETS["DiT-S"].depth == 12
    with pytest.raises(TypeError):
        DIT_PRESETS["DiT-S"] = DiTConfig()  # type: ignore[index]
    assert dataclasses.asdict(dit_config("DiT-Tiny"))["hidden_size"] == 64


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="DiT-XXL") as excinfo:
        dit_config("DiT-XXL")
    assert all(name in str(excinfo.value) for name in DIT_PRESETS)
    with pytest.raises(ValueError, match="depht"):
        dit_config("DiT-S", depht=3)


# --------------------------------------------------------------------------------------
# Optimisation sanity
# --------------------------------------------------------------------------------------


def test_tiny_dit_overfits_a_fixed_mapping() -> None:
    model = tiny()
    x, t = inputs()
    y = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = (model(x, t) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, losses[::10]
