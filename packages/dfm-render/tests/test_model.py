"""The inverse-graphics DFM model: field, renderer, predictor, baseline, presets.

Tiny sizes throughout (16x16 images, a few samples per ray); the references are independent
recomputations (the original's concatenated first layer, a full render cropped, unchunked and
un-checkpointed renders) and dfm-core's own contracts (samplers, once-per-sample encoding).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from torch.nn import functional as F

from dfm_core.diffusion import LossInputs
from dfm_core.sampling import sample_ddim
from dfm_core.trainer import NoGradientWarning, Trainer, TrainerConfig
from dfm_render.cameras import crop_patches, project_points
from dfm_render.field import FieldConfig, pool_views
from dfm_render.losses import DetLoss, LPIPSLoss, MissingWeightsError, edge_aware_smoothness
from dfm_render.model import load_baseline_into, make_scene_batch
from dfm_render.presets import SCENE_PRESETS, scene_config
from dfm_render.renderer import Camera, RendererConfig, SceneField, VolumeRenderer

SIZE = 16


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """OpenCV c2w looking from eye to target (y down)."""
    eye, target, up = (torch.tensor(v, dtype=torch.float32) for v in (eye, target, up))
    forward = F.normalize(target - eye, dim=0)
    right = F.normalize(torch.linalg.cross(forward, up), dim=0)
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def orbit(batch: int, views: int, radius: float = 4.0, seed: int = 0) -> torch.Tensor:
    """(B, V, 4, 4) cameras on a circle around the origin, random start angle per sample."""
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(batch, generator=g) * 2 * math.pi
    poses = [
        [
            look_at((radius * math.sin(a), -1.0, radius * math.cos(a)))
            for a in (start[b].item() + 0.7 * v for v in range(views))
        ]
        for b in range(batch)
    ]
    return torch.stack([torch.stack(row) for row in poses])


def intrinsics(batch: int, views: int) -> torch.Tensor:
    k = torch.tensor([[1.1, 0.0, 0.5], [0.0, 1.1, 0.5], [0.0, 0.0, 1.0]])
    return k.expand(batch, views, 3, 3).clone()


def toy_batch(config, batch=2, contexts=1, seed=0, patch=True):
    g = torch.Generator().manual_seed(seed)
    size = config.image_size
    poses = orbit(batch, contexts + 2, seed=seed)
    # Relative to context view 0, as the loaders emit them.
    rel = torch.linalg.inv(poses[:, :1]) @ poses
    K = intrinsics(batch, contexts + 2)
    images = torch.rand(batch, contexts + 2, 3, size, size, generator=g) * 2 - 1
    near = torch.full((batch,), 1.0)
    far = torch.full((batch,), 8.0)
    return make_scene_batch(
        context_images=images[:, :contexts],
        context_c2w=rel[:, :contexts],
        context_intrinsics=K[:, :contexts],
        target_image=images[:, contexts],
        target_c2w=rel[:, contexts],
        target_intrinsics=K[:, contexts],
        novel_images=images[:, contexts + 1 :],
        novel_c2w=rel[:, contexts + 1 :],
        novel_intrinsics=K[:, contexts + 1 :],
        near=near,
        far=far,
        patch_size=config.patch_size if patch else None,
        context_absolute_c2w=poses[:, :contexts] if config.encoder.absolute_pose else None,
        target_absolute_c2w=poses[:, contexts] if config.encoder.absolute_pose else None,
        generator=g,
    )


def tiny_config(preset: str = "objects-demo"):
    return scene_config(preset).reduced(image_size=SIZE)


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter random values (zero-initialised heads would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# ---- field ----------------------------------------------------------------------------


def test_fresh_encoder_outputs_zeros_yet_its_dit_gets_a_gradient():
    """A fresh encoder outputs zero features, but not from a saddle: the DiT's final layer
    (zero at init, adaLN-Zero) must get a gradient through the refinement conv after it."""
    encoder = tiny_config().build_baseline().encoder
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    features = encoder(images, torch.zeros(2))
    assert torch.count_nonzero(features) == 0
    (features * torch.randn_like(features)).sum().backward()
    # The first parameters behind the zero output: refine (its DiT half) and the DiT's final
    # linear layer (its input is the layer-normed tokens, not zero).
    for name in ("refine.weight", "dit.final_layer.linear.weight"):
        grad = encoder.get_parameter(name).grad
        assert grad is not None and bool(grad.any()), name


def test_split_first_layer_equals_the_concatenated_original():
    cfg = FieldConfig(feature_channels=6, width=8, num_blocks=2, combine_layer=1, time_embed_dim=8)
    field = cfg.build().double()
    randomise(field)
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(1, 2, 6, 5, 7, generator=g, dtype=torch.float64)
    c2w = orbit(1, 2).double()
    K = intrinsics(1, 2).double()
    points = torch.randn(1, 11, 3, generator=g, dtype=torch.float64) * 0.5
    # The original: lin_in over [PE(x_cam); bilinear sample of the raw features], one matrix.
    proj = project_points(points, c2w, K)
    grid = (2 * proj.uv - 1).reshape(2, 1, 11, 2)
    raw = F.grid_sample(maps[0], grid, align_corners=False).reshape(2, 6, 11).transpose(1, 2)
    weight = torch.cat([field.lin_pos.weight, field.lin_feat.weight[:, :, 0, 0]], dim=1)
    concatenated = torch.cat([field.encoding(proj.points[0]), raw], dim=-1)
    expected = concatenated @ weight.T + field.lin_pos.bias  # (V, P, W)
    # Ours: project the maps once, sample the projection.
    captured = {}
    block = field.blocks[0]

    def capture(module, args):
        captured["h"] = args[0]

    handle = block.register_forward_pre_hook(capture)
    projected = field.project_features(maps[0])[None]
    times = field.time_embedding(torch.zeros(1, 2, dtype=torch.float64))
    field(points, projected, c2w, K, times)
    handle.remove()
    inside = (proj.depth[0] > 0) & ((proj.uv[0] >= 0) & (proj.uv[0] <= 1)).all(-1)
    assert inside.any()
    torch.testing.assert_close(captured["h"][0][inside], expected[inside], rtol=1e-10, atol=1e-10)


def test_view_pooling_is_a_softmax_over_the_views_that_see_the_point():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)  # (B, V, P, W)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 2
    valid = torch.rand(2, 3, 5, generator=g) < 0.6
    valid[0, :, 0] = False  # a point no view sees
    valid[1, :, 1] = torch.tensor([False, True, False])  # a point one view sees...
    logits[1, 0, 1] = 50.0  # ...whatever an unseen view scores
    for scores in (logits, None):
        pooled = pool_views(hidden, valid, scores)
        for b in range(2):
            for p in range(5):
                views = [v for v in range(3) if valid[b, v, p]] or [0, 1, 2]
                s = [0.0 if scores is None else float(scores[b, v, p]) for v in views]
                w = [math.exp(x - max(s)) for x in s]
                expected = sum(wi * hidden[b, v, p] for wi, v in zip(w, views, strict=True)) / sum(
                    w
                )
                torch.testing.assert_close(pooled[b, p], expected, rtol=1e-12, atol=1e-12)


def test_learned_pooling_starts_as_the_mean_then_learns_which_view_to_trust():
    mean_cfg = FieldConfig(
        feature_channels=6, width=8, num_blocks=2, combine_layer=1, time_embed_dim=8
    )
    learned_cfg = dataclasses.replace(mean_cfg, view_pooling="learned")
    mean_field, learned_field = mean_cfg.build().double(), learned_cfg.build().double()
    randomise(mean_field)
    # A mean-pooling field's weights load into the learned one; only the zero head is new.
    missing = learned_field.load_state_dict(mean_field.state_dict(), strict=False).missing_keys
    assert missing == ["view_logit.weight"]
    assert not learned_field.view_logit.weight.any()
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(1, 3, 8, 5, 7, generator=g, dtype=torch.float64)
    c2w, K = orbit(1, 3).double(), intrinsics(1, 3).double()
    points = torch.randn(1, 11, 3, generator=g, dtype=torch.float64) * 0.5
    times = mean_field.time_embedding(torch.tensor([[0.0, 0.0, 300.0]], dtype=torch.float64))
    before = mean_field(points, maps, c2w, K, times)
    start = learned_field(points, maps, c2w, K, times)
    torch.testing.assert_close(start.rgb, before.rgb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(start.density, before.density, rtol=1e-12, atol=1e-12)
    # The zero head still gets a gradient (views differ), and a non-zero head re-weights them
    # exactly as pool_views with its logits does.
    start.rgb.sum().backward()
    assert learned_field.view_logit.weight.grad.abs().sum() > 0
    with torch.no_grad():
        learned_field.view_logit.weight.normal_(generator=g)
        hidden, valid = learned_field.per_view(points, maps, c2w, K, times)
        logits = hidden @ learned_field.view_logit.weight[0]  # (B, V, P)
        pooled = pool_views(hidden, valid, logits)
        for block in learned_field.blocks[1:]:
            pooled = block(pooled, times[:, -1:])
        raw = learned_field.lin_out(F.relu(pooled))
        trained = learned_field(points, maps, c2w, K, times)
    torch.testing.assert_close(trained.rgb, torch.sigmoid(raw[..., :3]), rtol=1e-12, atol=1e-12)
    assert (trained.rgb - before.rgb).abs().max() > 1e-3


def test_unknown_view_pooling_is_refused_by_name():
    with pytest.raises(ValueError, match=r"FieldConfig\.view_pooling.*'max'"):
        FieldConfig(view_pooling="max")


@pytest.mark.parametrize(
    ("x_shape", "time_shape"),
    [
        ((2, 3, 7, 8), (2, 3, 1, 5)),  # per view: one time per (sample, view), folded
        ((2, 7, 8), (2, 1, 5)),  # after pooling: the target's time per sample, folded
        ((2, 7, 8), (2, 7, 5)),  # a time per point: the plain broadcast form
    ],
)
def test_film_block_is_the_papers_formula_in_value_and_gradient(x_shape, time_shape):
    """x + fc_1(relu(fc_0(relu(x)) * (1 + scale) + shift)), written out in float64."""
    from dfm_render.field import ResnetBlockFC

    block = ResnetBlockFC(8, 5).double()
    randomise(block)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(x_shape, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(time_shape, generator=g, dtype=torch.float64)

    def reference(x):
        film = F.linear(F.silu(t), block.film[1].weight, block.film[1].bias)
        scale, shift = film[..., :8], film[..., 8:]
        inner = F.linear(F.relu(x), block.fc_0.weight, block.fc_0.bias) * (1 + scale) + shift
        return x + F.linear(F.relu(inner), block.fc_1.weight, block.fc_1.bias)

    got, want = block(x, t), reference(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    probe = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * probe).sum(), [x, *block.parameters()])
    expected = torch.autograd.grad((want * probe).sum(), [x, *block.parameters()])
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---- renderer -------------------------------------------------------------------------


def test_patch_render_is_the_crop_of_the_full_render_and_chunks_do_not_matter():
    cfg = tiny_config()
    model = cfg.build().eval()
    randomise(model.predictor)
    batch = toy_batch(cfg)
    with torch.no_grad():
        condition = model.condition(batch.context, batch.target_params)
        scene = model.predictor(
            condition.context, batch.target, torch.full((2,), 10.0), batch.target_params
        )
        full = VolumeRenderer(cfg.renderer).eval()(scene, batch.target_params)
        small_chunks = VolumeRenderer(dataclasses.replace(cfg.renderer, chunk=7)).eval()
        chunked = small_chunks(scene, batch.target_params)
        patch = VolumeRenderer(cfg.renderer).eval()(scene, batch.target_loss_params)
    assert full.observation.shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(chunked.observation, full.observation, rtol=0, atol=1e-6)
    origin = batch.target_loss_params.patch_origin
    torch.testing.assert_close(
        patch.observation, crop_patches(full.observation, origin, cfg.patch_size), atol=1e-5, rtol=0
    )
    assert full.observation.abs().max() <= 1.0
    assert full.depth.shape == (2, 1, SIZE, SIZE)
    # Depth is the weighted sum of sample depths: between near and far where opaque.
    assert (full.depth <= 8.0 + 1e-4).all() and (full.depth >= 0).all()


def test_checkpointed_chunks_give_the_same_gradients():
    cfg = tiny_config()
    batch = toy_batch(cfg)
    grads = []
    for use_checkpoint in (False, True):
        renderer_cfg = dataclasses.replace(
            cfg.renderer, checkpoint=use_checkpoint, train_chunk=96, stratified=False
        )
        model = dataclasses.replace(cfg, renderer=renderer_cfg).build()
        torch.manual_seed(0)
        randomise(model.predictor)
        model.train()
        torch.manual_seed(1)
        terms = model(batch, generator=torch.Generator().manual_seed(2))
        terms["loss"].backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ---- predictor and the core's contracts ------------------------------------------------


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1


def test_context_encoding_and_det_run_once_per_sampling_run():
    cfg = tiny_config()
    model = cfg.build().eval()
    randomise(model.predictor)
    batch = toy_batch(cfg)
    det_renders, context_encodes, target_encodes = Counter(), Counter(), Counter()
    model.predictor.det_renderer.register_forward_hook(lambda *a: det_renders())
    encoder = model.predictor.encoder
    encoder.context_stem.register_forward_hook(lambda *a: context_encodes())
    encoder.target_stem.register_forward_hook(lambda *a: target_encodes())
    steps = 4
    with torch.no_grad():
        condition = model.condition(batch.context, batch.target_params)
        sample_ddim(model.denoiser(condition), model.schedule, (2, 3, SIZE, SIZE), steps=steps)
    assert det_renders.calls == 1 and context_encodes.calls == 1
    assert target_encodes.calls == steps


def test_sampler_contract_on_the_3d_denoiser():
    """Final observation = render of the final signal; a sample depends on its own seed only."""
    cfg = tiny_config()
    model = cfg.build().eval()
    randomise(model.predictor)
    batch = toy_batch(cfg)
    shape = (2, 3, SIZE, SIZE)
    with torch.no_grad():
        condition = model.condition(batch.context, batch.target_params)
        gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
        out = sample_ddim(model.denoiser(condition), model.schedule, shape, steps=3, generator=gens)
        assert isinstance(out.signal, SceneField)
        rendered = model.forward_model(out.signal, batch.target_params).observation
        torch.testing.assert_close(out.observation, rendered, rtol=0, atol=1e-5)
        # Swap the two samples' seeds and contexts: each sample follows its own seed.
        swap = [1, 0]
        from dfm_core.tree import tree_index

        batch_swapped = tree_index(batch, swap)
        condition_swapped = model.condition(batch_swapped.context, batch_swapped.target_params)
        gens = [torch.Generator().manual_seed(s) for s in (12, 11)]
        swapped = sample_ddim(
            model.denoiser(condition_swapped), model.schedule, shape, steps=3, generator=gens
        )
    torch.testing.assert_close(swapped.observation, out.observation[swap], rtol=0, atol=1e-5)


def test_cached_context_activations_change_nothing_and_are_used():
    """Sampling with the context views' coarse activations cached equals sampling without."""
    cfg = tiny_config()
    batch = toy_batch(cfg, contexts=2)
    outputs, views_evaluated = [], []
    for cache in (False, True):
        renderer = dataclasses.replace(cfg.renderer, cache_context=cache)
        model = dataclasses.replace(cfg, renderer=renderer, num_context=2).build().eval()
        torch.manual_seed(0)
        randomise(model.predictor)
        seen: list[int] = []
        per_view = model.predictor.field.per_view

        def counting(points, maps, *args, per_view=per_view, seen=seen):
            seen.append(maps.shape[1])
            return per_view(points, maps, *args)

        model.predictor.field.per_view = counting
        with torch.no_grad():
            condition = model.condition(batch.context, batch.target_params)
            assert (condition.context.cache is not None) == cache
            gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
            out = sample_ddim(
                model.denoiser(condition),
                model.schedule,
                batch.target.shape,
                steps=2,
                generator=gens,
            )
        outputs.append(out.observation)
        views_evaluated.append(seen)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5)
    # Without the cache every render evaluates all 3 views; with it, the coarse pass of each
    # step evaluates only the target view (the 2 context views were done once, up front).
    assert set(views_evaluated[0]) == {3}
    assert 1 in views_evaluated[1] and views_evaluated[1][0] == 2


def test_det_loss_ignores_samples_whose_context_was_dropped():
    target = torch.zeros(3, 3, 4, 4)
    det = torch.stack([torch.full((3, 4, 4), v) for v in (1.0, 2.0, 3.0)])

    class Det:
        observation = det

    inputs = LossInputs(
        batch=type("B", (), {"target": target})(),
        t=torch.zeros(3),
        keep=torch.tensor([True, False, True]),
        condition=type("C", (), {"det": Det})(),
        signal=None,
        target_render=None,
    )
    assert DetLoss()(inputs).item() == pytest.approx((1.0 + 9.0) / 2)


def test_edge_aware_smoothness_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    disparity = torch.rand(1, 1, 3, 4, generator=g) + 0.5
    image = torch.rand(1, 3, 3, 4, generator=g)
    d = disparity[0, 0] / disparity.mean()
    total_x = total_y = 0.0
    for i in range(3):
        for j in range(3):
            grad_i = (image[0, :, i, j + 1] - image[0, :, i, j]).abs().mean()
            total_x += abs(d[i, j + 1] - d[i, j]) * math.exp(-grad_i)
    for i in range(2):
        for j in range(4):
            grad_i = (image[0, :, i + 1, j] - image[0, :, i, j]).abs().mean()
            total_y += abs(d[i + 1, j] - d[i, j]) * math.exp(-grad_i)
    expected = total_x / 9 + total_y / 8
    assert edge_aware_smoothness(disparity, image).item() == pytest.approx(
        float(expected), rel=1e-5
    )


def test_lpips_without_weights_names_the_file_to_download(tmp_path):
    loss = LPIPSLoss(tmp_path / "missing" / "vgg16-397923af.pth")
    render = type("R", (), {"observation": torch.zeros(1, 3, 8, 8)})()
    batch = type("B", (), {"target": torch.zeros(1, 3, 8, 8), "target_loss_observation": None})()
    inputs = LossInputs(batch, torch.zeros(1), torch.ones(1, dtype=torch.bool), None, None, render)
    with pytest.raises(MissingWeightsError, match=r"vgg16-397923af\.pth.*download"):
        loss(inputs)


# ---- baseline and initialising DFM from it ---------------------------------------------


def test_every_baseline_tensor_carries_over_into_dfm():
    cfg = tiny_config("co3d-hydrant")
    baseline = cfg.build_baseline()
    randomise(baseline, seed=3)
    dfm = cfg.build()
    written = load_baseline_into(dfm.predictor, baseline.state_dict())
    state = dfm.predictor.state_dict()
    for name, value in baseline.state_dict().items():
        homes = [name] if name.startswith("encoder.") else [name, "det_" + name]
        for home in homes:
            assert home in written
            got = (
                state[home][: value.shape[0]]
                if home.startswith("det_field.lin_out")
                else state[home]
            )
            torch.testing.assert_close(got, value, rtol=0, atol=0, msg=f"{name} -> {home}")
    # The baseline renders the same image as DFM's context-only field (O_det) after loading.
    batch = toy_batch(cfg)
    baseline.eval(), dfm.eval()
    with torch.no_grad():
        scene = baseline.scene(batch.context)
        base_rgb = (
            VolumeRenderer(
                dataclasses.replace(cfg.renderer, num_coarse=cfg.det_samples, num_fine=0)
            )
            .eval()(scene, batch.target_params)
            .observation
        )
        det = dfm.predictor.encode_condition(batch.context, batch.target_params).det.observation
    torch.testing.assert_close(det, base_rgb, rtol=0, atol=1e-5)


# ---- presets ---------------------------------------------------------------------------


class BatchDataset(torch.utils.data.Dataset):
    def __init__(self, config, contexts):
        self.config, self.contexts = config, contexts

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return toy_batch(self.config, batch=1, contexts=self.contexts, seed=index)


def collate(items):
    from dfm_core.tree import tree_cat

    return tree_cat(items)


@pytest.mark.parametrize("preset", [*sorted(SCENE_PRESETS), "objects-demo+learned-pooling"])
@pytest.mark.parametrize("model_kind", ["dfm", "baseline"])
def test_every_preset_trains_on_cpu_and_every_parameter_learns(preset, model_kind, tmp_path):
    cfg = tiny_config(preset.removesuffix("+learned-pooling"))
    if preset.endswith("+learned-pooling"):
        cfg = dataclasses.replace(cfg, field=dataclasses.replace(cfg.field, view_pooling="learned"))
    model = cfg.build() if model_kind == "dfm" else cfg.build_baseline()
    dataset = BatchDataset(cfg, contexts=cfg.num_context)
    trainer = Trainer(
        model,
        dataset,
        TrainerConfig(
            max_steps=3,
            batch_size=2,
            num_workers=0,
            log_every=1,
            progress=False,
            gradient_check_steps=3,
        ),
        run_dir=tmp_path,
        collate_fn=collate,
    )
    # Fresh initialisation (not ``randomise``): zero-initialised heads are what can leave a
    # sub-network at a saddle where it never receives a gradient (the encoder's DiT once did).
    # Zero-initialised layers open one after another (the DiT's final layer at step 1, its
    # adaLN gates at step 2, the attention and MLP behind them at step 3), so by the third
    # step every parameter must have had a gradient, or the trainer warns.
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoGradientWarning)
        trainer.train()
    assert trainer.step == 3
    expected_terms = {"loss", "target", "novel"}
    assert (tmp_path / "metrics.jsonl").is_file()
    import json

    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert expected_terms <= set(record)


def test_paper_presets_have_the_papers_sizes():
    co3d = SCENE_PRESETS["co3d-hydrant"]
    assert (co3d.encoder.hidden_size, co3d.encoder.depth, co3d.encoder.patch_size) == (1152, 28, 2)
    assert co3d.encoder.feature_channels == 512 and co3d.field.width == 512
    assert (co3d.field.num_blocks, co3d.field.combine_layer) == (5, 3)
    assert (co3d.renderer.num_coarse, co3d.renderer.num_fine, co3d.det_samples) == (64, 64, 64)
    assert (co3d.patch_size, co3d.num_context, co3d.near, co3d.far) == (24, 3, 0.5, 40.0)
    assert co3d.encoder.absolute_pose and co3d.losses.lpips == 0.2
    re = SCENE_PRESETS["re10k"]
    assert (re.det_samples, re.num_context, re.near, re.far) == (32, 1, 0.7, 10.0)
    assert (re.losses.lpips, re.losses.depth_smooth, re.losses.distortion) == (1.0, 0.002, 0.005)
    assert (re.sampling.guidance_scale, re.sampling.temperature) == (2.0, 0.85)
    with pytest.raises(ValueError, match="objects-demo"):
        scene_config("nope")


def test_camera_validates_shapes():
    with pytest.raises(ValueError, match="c2w"):
        Camera(torch.eye(3)[None], torch.eye(3)[None], torch.ones(1), torch.ones(1), 8, 8)
    with pytest.raises(ValueError, match="patch_size"):
        Camera(
            torch.eye(4)[None], torch.eye(3)[None], torch.ones(1), torch.ones(1), 8, 8,
            patch_origin=torch.zeros(1, 2, dtype=torch.long), patch_size=9,
        )  # fmt: skip
    _ = RendererConfig()
