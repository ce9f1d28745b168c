"""The motion DFM: forward model, batches, regulariser, presets (2-step training), sampling."""

from __future__ import annotations

import colorsys
import math
import warnings

import pytest
import torch

from dfm_core.diffusion import Context
from dfm_core.trainer import NoGradientWarning, OptimizerConfig, Trainer, TrainerConfig
from dfm_flow.motion import (
    MOTION_PRESETS,
    MotionForwardModel,
    MotionParams,
    MotionSignal,
    edge_aware_smoothness,
    frames_to_batch,
    motion_preset,
    sample_motion,
)
from dfm_flow.softsplat import softsplat
from dfm_flow.visualize import flow_to_rgb, hsv_to_rgb


def _frames(seed, batch=2, height=8, width=8, novel=1):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 3, height, width)
    context = torch.rand(shape, generator=gen) * 2 - 1
    target = torch.rand(shape, generator=gen) * 2 - 1
    novel_frames = torch.rand(batch, novel, 3, height, width, generator=gen) * 2 - 1
    return context, target, novel_frames


# ---- forward model and batches -------------------------------------------------------


def test_forward_model_scales_the_flow_linearly_in_time():
    context, _, _ = _frames(0)
    gen = torch.Generator().manual_seed(1)
    flow = torch.randn(2, 2, 8, 8, generator=gen)
    metric = torch.randn(2, 1, 8, 8, generator=gen)
    model = MotionForwardModel()
    signal = MotionSignal(flow, metric)
    times = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])
    out = model(signal, MotionParams(context, times))
    assert out.shape == (2, 3, 3, 8, 8)
    for b in range(2):
        for n in range(3):
            expected = softsplat(
                context[b : b + 1], times[b, n] * flow[b : b + 1], metric[b : b + 1], "soft"
            )
            torch.testing.assert_close(out[b, n], expected[0])
    single = model(signal, MotionParams(context, torch.ones(2)))
    torch.testing.assert_close(single, softsplat(context, flow, metric, "soft"))
    # Without a metric the forward model averages.
    plain = model(MotionSignal(flow), MotionParams(context, torch.ones(2)))
    torch.testing.assert_close(plain, softsplat(context, flow, None, "average"))


def test_frames_to_batch_times_follow_constant_velocity():
    context, target, novel = _frames(2, novel=2)
    batch = frames_to_batch(context, target, novel, torch.tensor([[1, 2, 3, 5], [2, 1, 3, 4]]))
    torch.testing.assert_close(batch.target_params.time, torch.ones(2))
    torch.testing.assert_close(batch.novel_params.time, torch.tensor([[2.0, 4.0], [-1.0, -2.0]]))
    assert batch.context.observation is context and batch.novel is novel
    assert batch.target_params.source is context
    default = frames_to_batch(context, target, novel)
    torch.testing.assert_close(default.novel_params.time, torch.tensor([[2.0, 3.0], [2.0, 3.0]]))
    no_novel = frames_to_batch(context, target, None)
    assert no_novel.novel is None and no_novel.novel_params is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"context": torch.zeros(2, 4, 8, 8)}, r"^context: expected \(B, 3, H, W\)"),
        ({"target": torch.zeros(2, 3, 8, 9)}, r"^target: expected shape"),
        ({"novel": torch.zeros(2, 3, 8, 8)}, r"^novel: expected \(B, N, 3, H, W\)"),
        ({"frame_index": torch.tensor([[1, 2], [1, 2]])}, r"^frame_index: expected shape \(2, 3\)"),
        (
            {"frame_index": torch.tensor([[1, 1, 3], [1, 2, 3]])},
            r"^frame_index: context and target",
        ),
    ],
)
def test_frames_to_batch_rejects_bad_shapes(kwargs, message):
    context, target, novel = _frames(3)
    args = {"context": context, "target": target, "novel": novel, "frame_index": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        frames_to_batch(**args)


def test_edge_aware_smoothness_closed_form():
    height, width, gamma, step, contrast = 4, 6, 10.0, 2.0, 0.3
    flow = torch.zeros(1, 2, height, width)
    flow[..., 3:] = step  # a flow step between columns 2 and 3, in both channels
    flat = torch.zeros(1, 3, height, width)
    assert edge_aware_smoothness(torch.ones_like(flow), flat, gamma) == 0
    # One of the W - 1 column differences is `step`: mean = step / (W - 1).
    torch.testing.assert_close(
        edge_aware_smoothness(flow, flat, gamma), torch.tensor(step / (width - 1))
    )
    edged = flat.clone()
    edged[..., 3:] = contrast  # an image edge at the same place discounts it by exp(-gamma c)
    expected = step / (width - 1) * math.exp(-gamma * contrast)
    torch.testing.assert_close(edge_aware_smoothness(flow, edged, gamma), torch.tensor(expected))


# ---- presets: 2 training steps each, at reduced size ---------------------------------


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def _collate(items):
    context = torch.stack([c for c, _, _ in items])
    target = torch.stack([t for _, t, _ in items])
    novel = torch.stack([n for _, _, n in items])
    return frames_to_batch(context, target, novel)


@pytest.mark.parametrize("name", sorted(MOTION_PRESETS))
def test_every_preset_trains_on_cpu_and_every_parameter_learns(name, tmp_path):
    torch.manual_seed(0)
    preset = MOTION_PRESETS[name]
    patch = preset.model.patch_size
    size = (2 * patch, 3 * patch)
    # Reduced size: small frames and one DiT block; everything else as in the preset.
    config = motion_preset(name, image_size_hw=size, depth=1).model
    assert config.dit == preset.model.dit and config.predict_metric == preset.model.predict_metric
    diffusion = config.build()
    context, target, novel = _frames(4, batch=4, height=size[0], width=size[1])
    items = [(context[i], target[i], novel[i]) for i in range(4)]
    trainer_config = TrainerConfig(
        max_steps=3,
        batch_size=2,
        num_workers=0,
        log_every=1,
        checkpoint_every=3,
        progress=False,
        gradient_check_steps=3,
        optimizer=OptimizerConfig(lr=preset.learning_rate, warmup_steps=1),
        device="cpu",
    )
    before = [p.detach().clone() for p in diffusion.parameters()]
    trainer = Trainer(
        diffusion, _ListDataset(items), trainer_config, run_dir=tmp_path, collate_fn=_collate
    )
    # adaLN-Zero opens one layer per step (final layer, gates, blocks): by step 3 every
    # parameter has had a gradient, or the trainer warns (a sub-network stuck at zero).
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoGradientWarning)
        trainer.train()
    trainer.close()
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    terms = diffusion(_collate(items[:2]), generator=torch.Generator().manual_seed(0))
    assert set(terms) == {"loss", "target", "novel", "smoothness"}
    assert all(torch.isfinite(v) for v in terms.values())


def test_loss_reaches_the_network_through_the_splatting():
    config = motion_preset("motion-demo", image_size_hw=(8, 8), depth=1).model
    diffusion = config.build()
    torch.nn.init.normal_(diffusion.predictor.dit.final_layer.linear.weight, std=0.02)
    context, target, novel = _frames(5)
    terms = diffusion(
        frames_to_batch(context, target, novel), generator=torch.Generator().manual_seed(0)
    )
    terms["target"].backward()
    grads = [p.grad for p in diffusion.predictor.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


# ---- sampling -------------------------------------------------------------------------


def _perturbed_demo_model(seed=0):
    torch.manual_seed(seed)
    diffusion = motion_preset("motion-demo", image_size_hw=(8, 8), depth=1).model.build()
    with torch.no_grad():  # the DiT starts at exactly zero output; make samples depend on x_t
        for p in diffusion.predictor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return diffusion.eval()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "edm"])
def test_sampler_contract_shapes(sampler):
    diffusion = _perturbed_demo_model()
    image, _, _ = _frames(6, batch=2)
    out = sample_motion(
        diffusion,
        image,
        num_samples=3,
        steps=2,
        sampler=sampler,
        times=(1.0, 2.0),
        generator=torch.Generator().manual_seed(0),
    )
    assert out.flow.shape == (2, 3, 2, 8, 8)
    assert out.metric is not None and out.metric.shape == (2, 3, 1, 8, 8)
    assert out.frames.shape == (2, 3, 2, 3, 8, 8)
    assert torch.isfinite(out.frames).all()
    # Frames are the input splatted by the sampled flow, at times 1 and 2.
    for t_index, time in enumerate((1.0, 2.0)):
        expected = softsplat(image[1:2], time * out.flow[1, 2:3], out.metric[1, 2:3], "soft")
        torch.testing.assert_close(out.frames[1, 2, t_index], expected[0])


def test_per_sample_generators_make_samples_independent_of_batch_position():
    # float64, so that batch-size-dependent float32 matmul rounding cannot hide a real mix-up.
    diffusion = _perturbed_demo_model().double()
    image = _frames(7, batch=2)[0].double()

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    alone = sample_motion(diffusion, image[1:], num_samples=1, steps=3, generator=gens(42), eta=1.0)
    together = sample_motion(
        diffusion, image, num_samples=2, steps=3, generator=gens(1, 2, 42, 3), eta=1.0
    )
    torch.testing.assert_close(together.flow[1, 0], alone.flow[0, 0], atol=1e-9, rtol=1e-9)
    other = sample_motion(diffusion, image[1:], num_samples=1, steps=3, generator=gens(43), eta=1.0)
    assert not torch.allclose(other.flow, alone.flow)


def test_classifier_free_guidance_path_runs_and_differs():
    diffusion = _perturbed_demo_model()
    image, _, _ = _frames(8, batch=1)
    plain = sample_motion(diffusion, image, steps=2, generator=torch.Generator().manual_seed(0))
    guided = sample_motion(
        diffusion, image, steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0)
    )
    assert guided.flow.shape == plain.flow.shape
    assert not torch.allclose(guided.flow, plain.flow)


def test_sample_motion_rejects_bad_arguments():
    diffusion = _perturbed_demo_model()
    with pytest.raises(ValueError, match=r"^image: expected"):
        sample_motion(diffusion, torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"^sampler: unknown name"):
        sample_motion(diffusion, torch.zeros(1, 3, 8, 8), sampler="bogus")
    with pytest.raises(ValueError, match=r"^preset: unknown name 'nope'"):
        motion_preset("nope")


def test_predictor_sees_context_and_noisy_target_on_channels():
    diffusion = _perturbed_demo_model()
    image, target, _ = _frames(9, batch=1)
    predictor = diffusion.predictor
    t = torch.tensor([10.0])
    params = MotionParams(image, torch.ones(1))
    signal = predictor(Context(image), target, t, params)
    direct = predictor.dit(torch.cat([image, target], dim=1), t)
    torch.testing.assert_close(signal.flow, direct[:, :2] * predictor.flow_scale)
    assert signal.metric.abs().max() <= predictor.metric_clip


# ---- flow pictures -------------------------------------------------------------------


def test_hsv_to_rgb_matches_colorsys():
    gen = torch.Generator().manual_seed(10)
    hsv = torch.rand(50, 3, generator=gen, dtype=torch.float64)
    rgb = hsv_to_rgb(hsv[:, 0], hsv[:, 1], hsv[:, 2])
    expected = torch.tensor(
        [colorsys.hsv_to_rgb(*row.tolist()) for row in hsv], dtype=torch.float64
    )
    torch.testing.assert_close(rgb, expected)


def test_flow_colour_wheel():
    flow = torch.zeros(2, 1, 5)
    flow[:, 0, 1] = torch.tensor([2.0, 0.0])  # right
    flow[:, 0, 2] = torch.tensor([0.0, 2.0])  # down
    flow[:, 0, 3] = torch.tensor([-2.0, 0.0])  # left
    flow[:, 0, 4] = torch.tensor([1.0, 0.0])  # right, half speed
    rgb = flow_to_rgb(flow, max_magnitude=2.0)
    assert rgb.shape == (3, 1, 5)
    torch.testing.assert_close(rgb[:, 0, 0], torch.ones(3))  # no motion: white
    torch.testing.assert_close(rgb[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))  # red
    torch.testing.assert_close(rgb[:, 0, 2], torch.tensor(colorsys.hsv_to_rgb(0.25, 1, 1)))
    torch.testing.assert_close(rgb[:, 0, 3], torch.tensor([0.0, 1.0, 1.0]))  # cyan
    torch.testing.assert_close(rgb[:, 0, 4], torch.tensor([1.0, 0.5, 0.5]))  # pale red
    with pytest.raises(ValueError, match=r"^flow: expected shape"):
        flow_to_rgb(torch.zeros(3, 4, 4))


def test_regressor_baseline_loss_is_the_frame_error_of_its_prediction():
    torch.manual_seed(0)
    regressor = motion_preset("motion-demo", image_size_hw=(8, 8), depth=1).model.build_regressor()
    with torch.no_grad():
        for p in regressor.predictor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    context, target, novel = _frames(11)
    batch = frames_to_batch(context, target, novel)
    terms = regressor(batch)
    signal = regressor.predict(context)
    assert signal.flow.shape == (2, 2, 8, 8)
    rendered = softsplat(context, signal.flow, signal.metric, "soft")
    torch.testing.assert_close(terms["target"], (rendered - target).square().mean())
    rendered_novel = softsplat(context, 2 * signal.flow, signal.metric, "soft")
    torch.testing.assert_close(terms["novel"], (rendered_novel - novel[:, 0]).square().mean())
    expected = terms["target"] + terms["novel"] + 0.02 * edge_aware_smoothness(signal.flow, context)
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()
