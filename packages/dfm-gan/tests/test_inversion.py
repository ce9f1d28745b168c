"""GAN-inversion DFM model: forward model, batches, 2-step training per preset, sampling."""

import dataclasses

import pytest
import torch

from dfm_core.diffusion import ForwardDiffusion
from dfm_core.sampling import SAMPLERS
from dfm_core.trainer import Trainer, TrainerConfig
from dfm_gan.inversion import (
    INVERSION_PRESETS,
    GanView,
    GeneratorForwardModel,
    InversionDataset,
    collate_inversion,
    inversion_config,
    make_inversion_batch,
    random_patch_masks,
    sample_inversions,
)
from dfm_gan.networks import generator_config

# Every preset, shrunk to CPU size: a tiny random generator in place of the real weights
# (same code path as loaded weights), a 2-block DiT, diffusion at 8x8 or 4x4.
REDUCED = {
    "dit_preset": "DiT-Tiny",
    "dit_overrides": {"patch_size": 2},
    "feature_channels": 16,
    "latent_stats_samples": 64,
}


def _generator(resolution=16):
    torch.manual_seed(0)
    g = generator_config("tiny", img_resolution=resolution).build().eval()
    with torch.no_grad():
        g.mapping.w_avg.normal_()
    return g


def _model(preset="gan-demo", resolution=16, train_resolution=8, **overrides) -> ForwardDiffusion:
    cfg = inversion_config(preset, train_resolution=train_resolution, **{**REDUCED, **overrides})
    return cfg.build(generator=_generator(resolution))


def _batch(model, batch=2, seed=0):
    g = model.forward_model.generator
    gen = torch.Generator().manual_seed(seed)
    w = g.mapping(torch.randn(batch, g.z_dim, generator=gen), truncation_psi=0.5)
    full = g.synthesis(w)
    target = torch.nn.functional.avg_pool2d(full, 2)
    mask = random_patch_masks(
        batch, target.shape[-1], min_fraction=0.25, max_fraction=0.5, generator=gen
    )
    return make_inversion_batch(target, mask, full=full), w


def test_forward_model_is_the_frozen_generator_then_area_downsampling():
    g = _generator()
    fm = GeneratorForwardModel(g)
    w = g.mapping(torch.randn(3, g.z_dim))
    full = g.synthesis(w, noise_mode="const")
    torch.testing.assert_close(fm(w, GanView(16)), full)
    low = fm(w, GanView(4))
    # Area down-sampling = mean over each 4x4 block (brute force).
    ref = full.reshape(3, 3, 4, 4, 4, 4).mean(dim=(3, 5))
    torch.testing.assert_close(low, ref)
    assert not any(p.requires_grad for p in fm.parameters())
    fm.train()
    assert not fm.generator.training  # never tracks w_avg
    with pytest.raises(ValueError, match="resolution"):
        fm(w, GanView(5))


def test_forward_model_is_differentiable_in_w_and_reuses_one_rendering():
    g = _generator()
    fm = GeneratorForwardModel(g)
    w = g.mapping(torch.randn(2, g.z_dim)).requires_grad_(True)
    calls = []
    g.synthesis.register_forward_hook(lambda *a: calls.append(1))
    loss = fm(w, GanView(8)).square().sum() + fm(w, GanView(16)).square().sum()
    (grad,) = torch.autograd.grad(loss, w)
    assert len(calls) == 1
    assert grad.abs().sum() > 0


def test_fresh_model_predicts_the_mean_latent():
    model = _model()
    batch, _ = _batch(model)
    x = torch.randn_like(batch.target)
    w = model.predictor(batch.context, x, torch.tensor([10.0, 500.0]), batch.target_params)
    g = model.forward_model.generator
    assert w.shape == (2, g.num_ws, g.w_dim)
    torch.testing.assert_close(w, model.predictor.latent_mean.expand_as(w))


def test_w_plus_predicts_one_code_per_layer():
    model = _model(latent="w+")
    assert model.predictor.head.out_features == model.predictor.num_ws * model.predictor.w_dim
    batch, _ = _batch(model)
    with torch.no_grad():
        model.predictor.head.bias.normal_()
    w = model.predictor(batch.context, batch.target, torch.tensor([1.0, 2.0]), batch.target_params)
    assert not torch.allclose(w[:, 0], w[:, 1])


def test_batch_layout_and_validation():
    target = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = random_patch_masks(
        2, 8, min_fraction=0.25, max_fraction=0.5, generator=torch.Generator().manual_seed(0)
    )
    batch = make_inversion_batch(target, mask, full=torch.zeros(2, 3, 16, 16))
    obs = batch.context.observation
    assert obs.shape == (2, 4, 8, 8)
    torch.testing.assert_close(obs[:, :3], target * mask)
    torch.testing.assert_close(obs[:, 3:], mask)
    assert batch.novel_params == GanView(16) and batch.target_params == GanView(8)
    side = mask.sum(dim=(1, 2, 3)).sqrt()
    assert bool((mask.sum(dim=(2, 3)) >= 4).all()) and bool((side <= 4).all())
    with pytest.raises(ValueError, match="mask"):
        make_inversion_batch(target, mask[:, :, :4])


@pytest.mark.parametrize("preset", sorted(INVERSION_PRESETS))
def test_every_preset_trains_on_cpu_and_every_parameter_learns(preset):
    model = _model(preset)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())
    assert params and all(not p.requires_grad for p in model.forward_model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    before = {n: p.detach().clone() for n, p in named.items()}
    gan_before = {k: v.clone() for k, v in model.forward_model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    batch, _ = _batch(model)
    model.train()
    got_gradient = dict.fromkeys(named, False)
    # adaLN-Zero opens one layer per step (final layer, gates, blocks): by step 3 every
    # parameter must have had a gradient (none may sit behind two zero-initialised layers).
    for _ in range(3):
        terms = model(batch, generator=gen)
        assert set(terms) >= {"loss", "target", "novel"}
        assert torch.isfinite(terms["loss"])
        opt.zero_grad()
        terms["loss"].backward()
        for name, parameter in named.items():
            got_gradient[name] |= parameter.grad is not None and bool(parameter.grad.any())
        opt.step()
    assert [name for name, learned in got_gradient.items() if not learned] == []
    changed = {n for n, p in named.items() if not torch.equal(before[n], p)}
    # adaLN-Zero: gradients reach the head, the final layer and the block gates first.
    assert {"predictor.head.weight", "predictor.dit.final_layer.linear.weight"} <= changed
    assert any(n.startswith("predictor.dit.blocks.") for n in changed)
    for k, v in model.forward_model.state_dict().items():
        assert torch.equal(v, gan_before[k]), k


def test_dataset_and_core_trainer_two_steps(tmp_path):
    model = _model()
    g = model.forward_model.generator
    cfg = inversion_config("gan-demo", train_resolution=8, **REDUCED)
    data = InversionDataset(g, cfg, num=8, seed=3)
    a, b = data[5], data[5]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["target"].shape == (3, 8, 8) and a["full"].shape == (3, 16, 16)
    batch = collate_inversion([data[0], data[1]])
    assert batch.novel.shape == (2, 3, 16, 16)
    trainer_cfg = TrainerConfig(
        max_steps=2, batch_size=2, num_workers=0, log_every=1, checkpoint_every=2, progress=False
    )
    trainer = Trainer(
        model, data, trainer_cfg, run_dir=tmp_path / "run", collate_fn=collate_inversion
    )
    trainer.train()
    assert trainer.step == 2
    assert any((tmp_path / "run" / "checkpoints").rglob("model.safetensors"))


def test_sampler_shapes_and_full_resolution_rendering():
    model = _model().eval()
    batch, _ = _batch(model, batch=2)
    out = sample_inversions(
        model, batch.target, batch.context.observation[:, 3:], num_samples=3, steps=2, seed=0
    )
    g = model.forward_model.generator
    assert out.latents.shape == (2, 3, g.num_ws, g.w_dim)
    assert out.observations.shape == (2, 3, 3, 8, 8)
    assert out.images.shape == (2, 3, 3, 16, 16)
    # Every sample is an image the generator renders from its latent.
    flat = out.latents.reshape(6, g.num_ws, g.w_dim)
    torch.testing.assert_close(out.images.reshape(6, 3, 16, 16), g.synthesis(flat))
    torch.testing.assert_close(
        out.observations.reshape(6, 3, 8, 8), torch.nn.functional.avg_pool2d(g.synthesis(flat), 2)
    )


def test_samples_depend_on_their_own_seed_only_and_cfg_runs():
    model = _model()
    with torch.no_grad():  # a non-trivial network, so samples depend on the noise
        model.predictor.head.weight.normal_(0, 0.5)
        for p in model.predictor.dit.final_layer.parameters():
            p.normal_(0, 0.5)
    model.eval()
    batch, _ = _batch(model, batch=2)
    mask = batch.context.observation[:, 3:]
    both = sample_inversions(model, batch.target, mask, num_samples=2, steps=2, seed=[7, 11])
    second = sample_inversions(model, batch.target[1:], mask[1:], num_samples=2, steps=2, seed=[11])
    torch.testing.assert_close(both.latents[1], second.latents[0])
    assert not torch.allclose(both.latents[1, 0], both.latents[1, 1])  # K samples differ
    guided = sample_inversions(
        model, batch.target, mask, num_samples=2, steps=2, seed=[7, 11], guidance_scale=2.0
    )
    assert guided.images.shape == both.images.shape
    assert not torch.allclose(guided.latents, both.latents)
    with pytest.raises(ValueError, match="seed"):
        sample_inversions(model, batch.target, mask, num_samples=1, steps=2, seed=[1])


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_core_sampler_and_the_step_callback(sampler):
    model = _model().eval()
    batch, _ = _batch(model, batch=1)
    mask = batch.context.observation[:, 3:]
    seen = []
    out = sample_inversions(
        model, batch.target, mask, num_samples=2, steps=3, sampler=sampler, callback=seen.append
    )
    assert seen and all(info.num_steps == len(seen) for info in seen)
    assert [info.step for info in seen] == list(range(len(seen)))
    assert seen[-1].signal.shape == (2, *out.latents.shape[2:])  # B * K latent estimates
    g = model.forward_model.generator
    flat = out.latents.reshape(2, g.num_ws, g.w_dim)
    torch.testing.assert_close(out.images.reshape(2, 3, 16, 16), g.synthesis(flat))
    with pytest.raises(ValueError, match="sampler"):
        sample_inversions(model, batch.target, mask, num_samples=1, steps=2, sampler="euler")


def test_missing_weights_name_the_file_and_where_to_get_it(tmp_path):
    cfg = inversion_config(
        "ffhq256", generator_path=str(tmp_path / "ffhq-res256-mirror-paper256-noaug.pkl")
    )
    with pytest.raises(FileNotFoundError, match=r"ffhq-res256-mirror-paper256-noaug\.pkl") as info:
        cfg.build()
    assert "convert_official_pickle" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match="unknown inversion preset"):
        inversion_config("celeba")
    with pytest.raises(ValueError, match="train_resolution"):
        inversion_config("gan-demo", **REDUCED, train_resolution=6).build(generator=_generator())


def test_ffhq256_preset_loads_an_official_pickle(tmp_path):
    from dfm_gan.official_format import write_official_pickle

    g = _generator()
    pkl = tmp_path / "ffhq-res256-mirror-paper256-noaug.pkl"
    write_official_pickle(pkl, {"G": (g, g.init_kwargs()), "G_ema": (g, g.init_kwargs())})
    cfg = dataclasses.replace(
        inversion_config("ffhq256", train_resolution=8, **REDUCED), generator_path=str(pkl)
    )
    model = cfg.build()
    w = g.mapping(torch.randn(2, g.z_dim))
    torch.testing.assert_close(model.forward_model(w, GanView(16)), g.synthesis(w))


def test_reconstruction_guidance_pulls_towards_the_patch_through_the_generator():
    """sample_inversions(reconstruction_weight=w) against the core's guidance assembled by
    hand: the error is over the visible patch of the area-downsampled generator output."""
    from dfm_core.diffusion import Context
    from dfm_core.guidance import reconstruction_guidance
    from dfm_core.sampling import sample_ddim

    model = _model().eval()
    torch.manual_seed(1)
    with torch.no_grad():  # a fresh model ignores its noisy input (zero-initialised head)
        for p in model.predictor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch, _ = _batch(model, batch=2)
    image, mask = batch.target, batch.context.observation[:, 3:]
    plain = sample_inversions(model, image, mask, num_samples=2, steps=3, seed=[3, 5])
    unguided = sample_inversions(
        model, image, mask, num_samples=2, steps=3, seed=[3, 5], reconstruction_weight=0.0
    )
    assert torch.equal(plain.latents, unguided.latents)
    guided = sample_inversions(
        model, image, mask, num_samples=2, steps=3, seed=[3, 5], reconstruction_weight=2.0
    )
    assert not torch.allclose(guided.latents, plain.latents)

    g = model.forward_model.generator
    mask_k = mask.repeat_interleave(2, dim=0)
    context = torch.cat([image * mask, mask], dim=1).repeat_interleave(2, dim=0)
    condition = model.condition(Context(observation=context), GanView(8))

    def patch_of_rendering(latents, _params):
        return torch.nn.functional.avg_pool2d(g.synthesis(latents, noise_mode="const"), 2) * mask_k

    denoiser = reconstruction_guidance(
        model.denoiser(condition),
        model.schedule,
        forward_model=patch_of_rendering,
        context_observation=(image * mask).repeat_interleave(2, dim=0),
        context_params=None,
        weight=2.0,
    )
    generators = [torch.Generator().manual_seed(s * 1000 + j) for s in (3, 5) for j in range(2)]
    reference = sample_ddim(
        denoiser, model.schedule, (4, *image.shape[1:]), steps=3, generator=generators
    )
    torch.testing.assert_close(
        guided.latents.reshape(4, *guided.latents.shape[2:]), reference.signal
    )
    with pytest.raises(ValueError, match="reconstruction_weight"):
        sample_inversions(model, image, mask, num_samples=1, steps=2, reconstruction_weight=-1.0)
