"""StyleGAN2 generator: layout, mapping, truncation, determinism, a 2-step GAN training run."""

import math

import pytest
import torch

from dfm_gan.networks import (
    GENERATOR_PRESETS,
    FullyConnectedLayer,
    Generator,
    generator_config,
)
from dfm_gan.training import (
    Discriminator,
    GanLossConfig,
    GanTrainState,
    gan_train_step,
    procedural_faces,
)


def _tiny(**overrides) -> Generator:
    torch.manual_seed(0)
    return generator_config("tiny", **overrides).build().eval()


def test_paper256_matches_the_official_layout():
    # Figures from instantiating the official class (reference section 4.3).
    g = generator_config("paper256").build()
    sd = g.state_dict()
    assert g.num_ws == 14
    assert len(sd) == 144
    assert sum(p.numel() for p in g.parameters()) == 24_767_458
    shapes = {
        "mapping.fc0.weight": (512, 512),
        "mapping.fc7.bias": (512,),
        "mapping.w_avg": (512,),
        "synthesis.b4.const": (512, 4, 4),
        "synthesis.b4.resample_filter": (4, 4),
        "synthesis.b8.conv0.affine.weight": (512, 512),
        "synthesis.b8.conv0.noise_const": (8, 8),
        "synthesis.b64.conv0.weight": (256, 512, 3, 3),
        "synthesis.b256.conv1.weight": (64, 64, 3, 3),
        "synthesis.b256.torgb.weight": (3, 64, 1, 1),
        "synthesis.b256.torgb.affine.bias": (64,),
        "synthesis.b256.conv1.noise_strength": (),
    }
    for name, shape in shapes.items():
        assert tuple(sd[name].shape) == shape, name
    assert "synthesis.b4.conv0.weight" not in sd  # b4 starts from the constant


@pytest.mark.parametrize("resolution", [4, 8, 16, 64])
def test_num_ws_and_block_slices_follow_the_official_layout(resolution):
    g = generator_config("tiny", img_resolution=resolution, channel_base=256).build()
    log2 = int(math.log2(resolution))
    assert g.num_ws == 2 * log2 - 2
    slices = g.synthesis.block_ws_slices()
    # b4 reads ws[0:2]; block k >= 1 reads ws[2k-1 : 2k+2) (overlapping by one index).
    assert slices[0] == (0, 2)
    for k, (start, length) in enumerate(slices[1:], start=1):
        assert (start, start + length) == (2 * k - 1, 2 * k + 2)


def test_each_w_index_reaches_exactly_its_layers():
    g = _tiny()
    ws = torch.randn(1, g.num_ws, g.w_dim, requires_grad=True)
    img = g.synthesis(ws)
    for i in range(g.num_ws):
        (grad,) = torch.autograd.grad(img[0, 0, 3, 4], ws, retain_graph=True)
        assert grad[0, i].abs().sum() > 0, f"w index {i} unused"


def test_fully_connected_layer_uses_equalised_learning_rate():
    layer = FullyConnectedLayer(9, 4, lr_multiplier=0.01, activation="linear", bias_init=0.5)
    x = torch.randn(3, 9, dtype=torch.float64)
    layer = layer.double()
    expected = x @ (layer.weight * 0.01 / 3).T + layer.bias * 0.01
    torch.testing.assert_close(layer(x), expected)
    # Stored weights are N(0, 1) / lr_mult, so the used weights are N(0, 1/in).
    big = FullyConnectedLayer(256, 256, lr_multiplier=0.01)
    assert abs(float(big.weight.detach().std()) - 100) < 5


def test_mapping_normalises_z_and_broadcasts_w():
    g = _tiny()
    z = torch.randn(3, g.z_dim)
    ws = g.mapping(z)
    assert ws.shape == (3, g.num_ws, g.w_dim)
    assert torch.equal(ws[:, 0], ws[:, -1])
    # 2nd-moment normalisation makes the mapping invariant to the scale of z.
    torch.testing.assert_close(g.mapping(4.0 * z), ws)


def test_truncation_psi_one_is_identity_and_zero_gives_w_avg():
    g = _tiny()
    g.mapping.w_avg.copy_(torch.randn(g.w_dim))
    z = torch.randn(4, g.z_dim)
    ws = g.mapping(z)
    torch.testing.assert_close(g.mapping(z, truncation_psi=1.0), ws)
    torch.testing.assert_close(
        g.mapping(z, truncation_psi=0.0), g.w_avg.expand(4, g.num_ws, g.w_dim)
    )
    half = g.mapping(z, truncation_psi=0.5)
    torch.testing.assert_close(half, g.w_avg + 0.5 * (ws - g.w_avg))
    cut = g.mapping(z, truncation_psi=0.0, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], g.w_avg.expand(4, 2, g.w_dim))
    torch.testing.assert_close(cut[:, 2:], ws[:, 2:])


def test_w_avg_tracks_the_batch_mean_in_training_mode_only():
    g = _tiny()
    z = torch.randn(16, g.z_dim)
    before = g.w_avg.clone()
    g.mapping(z)  # eval mode: no update
    assert torch.equal(g.w_avg, before)
    g.train()
    w = g.mapping(z)[:, 0].detach()
    torch.testing.assert_close(g.w_avg, 0.995 * before + 0.005 * w.mean(0))


def test_noise_modes():
    g = _tiny()
    for name, p in g.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)
    ws = g.mapping(torch.randn(2, g.z_dim))
    const = g.synthesis(ws)  # default: const, deterministic
    torch.testing.assert_close(g.synthesis(ws, noise_mode="const"), const)
    torch.testing.assert_close(g.synthesis(ws), const)
    r1 = g.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(1))
    r2 = g.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(1))
    r3 = g.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(r1, r2)
    assert not torch.allclose(r1, r3)
    none = g.synthesis(ws, noise_mode="none")
    assert not torch.allclose(none, const)
    for name, p in g.named_parameters():
        if name.endswith("noise_strength"):
            p.data.zero_()
    torch.testing.assert_close(g.synthesis(ws), none)


def test_fused_and_unfused_synthesis_agree_and_single_w_broadcasts():
    g = _tiny()
    ws = g.mapping(torch.randn(3, g.z_dim))
    torch.testing.assert_close(g.synthesis(ws, fused=False), g.synthesis(ws), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.synthesis(ws[:, 0]), g.synthesis(ws))
    img = g(torch.randn(3, g.z_dim))
    assert img.shape == (3, 3, 8, 8)
    assert torch.isfinite(img).all()


def test_bad_inputs_raise_typed_errors():
    g = _tiny()
    with pytest.raises(ValueError, match="ws"):
        g.synthesis(torch.randn(2, g.num_ws + 1, g.w_dim))
    with pytest.raises(ValueError, match="z"):
        g.mapping(torch.randn(2, g.z_dim + 1))
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesis(torch.randn(2, g.w_dim), noise_mode="fresh")
    with pytest.raises(ValueError, match="img_resolution"):
        generator_config("tiny", img_resolution=12).build()
    with pytest.raises(ValueError, match="architecture"):
        Generator(8, 0, 8, 8, 3, synthesis_kwargs={"architecture": "resnet"})
    with pytest.raises(ValueError, match="preset"):
        generator_config("ffhq1024")
    with pytest.raises(ValueError, match="unknown GeneratorConfig"):
        generator_config("tiny", resolution=8)


def test_presets_build():
    for name in GENERATOR_PRESETS:
        if name == "paper256":
            continue  # built in test_paper256_matches_the_official_layout
        assert generator_config(name).build().num_ws > 0


def test_procedural_faces_is_seeded_and_in_range():
    a = procedural_faces(4, 16, generator=torch.Generator().manual_seed(0))
    b = procedural_faces(4, 16, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 16, 16)
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert a.std() > 0.2  # real structure, not a flat image


def test_generator_trains_two_steps_with_the_gan_loss():
    torch.manual_seed(0)
    G = generator_config("tiny", img_resolution=8).build()
    D = Discriminator(8, channel_base=64, channel_max=16)
    state = GanTrainState.create(G, D, lr=1e-2)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    d_before = {k: v.clone() for k, v in D.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    reals = procedural_faces(4, 8, generator=g)
    for _ in range(2):
        losses = gan_train_step(state, reals, config=GanLossConfig(r1_every=1), generator=g)
        assert all(math.isfinite(v) for v in losses.values())
    assert losses["r1"] > 0
    after = G.state_dict()
    assert not torch.equal(after["mapping.fc0.weight"], before["mapping.fc0.weight"])
    assert not torch.equal(after["synthesis.b8.conv1.weight"], before["synthesis.b8.conv1.weight"])
    assert not torch.equal(after["mapping.w_avg"], before["mapping.w_avg"])  # tracked in training
    assert not torch.equal(D.state_dict()["out.weight"], d_before["out.weight"])
    assert state.step == 2
