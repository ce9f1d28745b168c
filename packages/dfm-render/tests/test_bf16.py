"""bfloat16 field evaluation (``RendererConfig.field_dtype``): accuracy, dtypes, default unchanged.

A tiny random field (8x8 image, 8 + 8 samples per ray, 2 views) is rendered three ways: in
float64 (the reference, every step in double precision), in float32 (the default) and with the
field under bfloat16 autocast. The float32 render must be float64's to rounding; the bfloat16
render must stay within the stated tolerances of float64 and must differ from float32 (so the
option demonstrably does something). Compositing is checked to run in float32, and the default
render to be, bit for bit, the plain evaluation with no autocast anywhere.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

import dfm_render.renderer as renderer_module
from dfm_core.diffusion import Context
from dfm_render.field import FieldConfig
from dfm_render.presets import scene_config
from dfm_render.ray_sampling import sample_along_rays
from dfm_render.raymarching import composite
from dfm_render.renderer import Camera, RendererConfig, SceneField, VolumeRenderer

SIZE = 8
SCALE = 0.5  # weights ~ N(0, (SCALE / sqrt(fan_in))^2): every ray partly transparent
NEAR, FAR = 2.0, 6.0
FAR_DELTA = 0.5  # a finite last interval, so opacity is not forced to 1 (it is with 1e10)
# bfloat16 vs float64 on the tiny field below, measured: 55 dB PSNR of the RGB render, max
# depth error 0.017 (0.4 % of the depth range), max opacity error 0.005, features 0.04 (of
# |f| <= 0.9). The bounds leave ~3x margin.
MIN_PSNR_DB = 45.0
MAX_DEPTH_ERROR = 0.0125 * (FAR - NEAR)
MAX_OPACITY_ERROR = 0.015
MAX_FEATURE_ERROR = 0.12


def look_at(eye: tuple[float, float, float]) -> torch.Tensor:
    """(4, 4) OpenCV camera-to-world at ``eye`` looking at the origin (y down)."""
    eye_t = torch.tensor(eye)
    forward = F.normalize(-eye_t, dim=0)
    right = F.normalize(torch.linalg.cross(forward, torch.tensor([0.0, -1.0, 0.0])), dim=0)
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye_t
    return c2w


def tiny_scene(dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[SceneField, Camera]:
    """A random 2-view field (features, weights and time all random) and a third camera.

    Weights ~ N(0, (SCALE / sqrt(fan_in))^2) with non-zero residual branches, so every block
    matters and densities are moderate (rays neither empty nor opaque at their first sample).
    """
    g = torch.Generator().manual_seed(seed)
    cfg = FieldConfig(
        feature_channels=8,
        width=32,
        num_blocks=3,
        combine_layer=2,
        time_embed_dim=16,
        output_features=4,
        density_shift=0.0,
    )
    mlp = cfg.build()
    with torch.no_grad():
        for p in mlp.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (SCALE / math.sqrt(fan_in)))
    mlp = mlp.to(dtype)
    views = torch.stack([look_at((4 * math.sin(a), -1.0, 4 * math.cos(a))) for a in (0.0, 0.8)])
    k = torch.tensor([[1.1, 0.0, 0.5], [0.0, 1.1, 0.5], [0.0, 0.0, 1.0]])
    features = torch.randn(2, 8, SIZE, SIZE, generator=g)
    near, far = torch.full((1,), NEAR), torch.full((1,), FAR)
    with torch.no_grad():
        maps = mlp.project_features(features.to(dtype))[None]  # (1, 2, W, H, W)
        time = mlp.time_embedding(torch.tensor([[0.0, 300.0]], dtype=dtype))  # (1, 2, T)
    scene = SceneField(
        maps=maps,
        c2w=views[None].to(dtype),
        intrinsics=k.expand(1, 2, 3, 3).to(dtype),
        time_embedding=time,
        near=near.to(dtype),
        far=far.to(dtype),
        mlp=mlp,
    )
    camera = Camera(
        c2w=look_at((4 * math.sin(0.4), -1.5, 4 * math.cos(0.4)))[None].to(dtype),
        intrinsics=k[None].to(dtype),
        near=near.to(dtype),
        far=far.to(dtype),
        height=SIZE,
        width=SIZE,
    )
    return scene, camera


def render(field_dtype: str, dtype: torch.dtype = torch.float32, **overrides):
    config = RendererConfig(
        num_coarse=8, num_fine=8, field_dtype=field_dtype, far_delta=FAR_DELTA, **overrides
    )
    scene, camera = tiny_scene(dtype)
    with torch.no_grad():
        return VolumeRenderer(config).eval()(scene, camera)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.double() - b.double()).square().mean().item()
    return 10 * math.log10(4.0 / mse)


def test_field_dtype_is_validated():
    with pytest.raises(ValueError, match="field_dtype"):
        RendererConfig(field_dtype="float16")
    assert RendererConfig().field_dtype == "float32"


def test_bf16_render_agrees_with_float64_within_the_stated_tolerance():
    reference = render("float32", torch.float64)  # float64 field, no autocast
    full = render("float32")
    half = render("bfloat16")
    # The scene is not degenerate: some rays are partly transparent, some nearly opaque.
    assert reference.opacity.max() < 0.9 and reference.opacity.min() > 0.5
    # float32 is float64 to rounding ...
    assert psnr(full.observation, reference.observation) > 90
    # ... bfloat16 is measurably different from float32 but within the stated tolerance.
    assert psnr(half.observation, full.observation) < 80
    assert psnr(half.observation, reference.observation) > MIN_PSNR_DB
    depth_error = (half.depth.double() - reference.depth).abs().max().item()
    opacity_error = (half.opacity.double() - reference.opacity).abs().max().item()
    assert depth_error < MAX_DEPTH_ERROR
    assert opacity_error < MAX_OPACITY_ERROR
    assert half.features is not None and reference.features is not None
    torch.testing.assert_close(half.features.double(), reference.features, atol=0.05, rtol=0.05)


def test_compositing_and_outputs_stay_float32_while_the_field_runs_bf16(monkeypatch):
    seen: dict[str, list[torch.dtype]] = {"composite": [], "matmul_in": [], "autocast": []}

    def recording(density, values, t, **kwargs):
        seen["composite"] += [density.dtype, values.dtype, t.dtype]
        result = composite(density, values, t, **kwargs)
        seen["composite"] += [result.weights.dtype, result.depth.dtype, result.features.dtype]
        return result

    monkeypatch.setattr(renderer_module, "composite", recording)
    scene, camera = tiny_scene()
    block = scene.mlp.blocks[0].fc_1  # (fc_0 runs inside the folded FiLM matmul)

    def hook(module, args, output):
        seen["matmul_in"].append(output.dtype)
        seen["autocast"].append(torch.is_autocast_enabled("cpu"))

    block.register_forward_hook(hook)
    config = RendererConfig(num_coarse=8, num_fine=8, field_dtype="bfloat16")
    with torch.no_grad():
        out = VolumeRenderer(config).eval()(scene, camera)
    assert seen["matmul_in"] and set(seen["matmul_in"]) == {torch.bfloat16}
    assert all(seen["autocast"])
    # The proposal and the final composite: inputs and outputs all float32.
    assert len(seen["composite"]) == 12 and set(seen["composite"]) == {torch.float32}
    for tensor in (out.observation, out.depth, out.opacity, out.features, out.weights, out.t):
        assert tensor.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")  # the context does not leak


def test_default_render_is_the_plain_float32_evaluation_bit_for_bit():
    """float32 (the default) enters no autocast: the render equals, bit for bit, a render
    assembled from the public pieces (rays, depths, field query, composite)."""
    scene, camera = tiny_scene()
    autocast_seen: list[bool] = []
    scene.mlp.lin_out.register_forward_hook(
        lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu"))
    )
    renderer = VolumeRenderer(RendererConfig(num_coarse=12, num_fine=0)).eval()
    with torch.no_grad():
        out = renderer(scene, camera)
        origins, directions, _, _, _ = renderer.rays(camera)
        t = sample_along_rays(camera.near, camera.far, 12, SIZE * SIZE, stratified=False)
        points = origins[:, :, None] + t[..., None] * directions[:, :, None]
        field = scene.query(points.reshape(1, -1, 3))
        values = torch.cat([field.rgb, field.features], -1).reshape(1, SIZE * SIZE, 12, -1)
        expected = composite(
            field.density.reshape(1, SIZE * SIZE, 12),
            values,
            t,
            far_delta=renderer.config.far_delta,
            background=torch.zeros(values.shape[-1]),
        )
    assert autocast_seen and not any(autocast_seen)
    assert torch.equal(
        out.observation,
        expected.features[..., :3].reshape(1, SIZE, SIZE, 3).permute(0, 3, 1, 2) * 2 - 1,
    )
    assert torch.equal(out.depth.flatten(), expected.depth.flatten())
    assert torch.equal(out.weights, expected.weights)


def test_bf16_training_gradients_follow_float32():
    """Training under bf16 (checkpointed chunks): float32 gradients pointing where float32's do."""
    grads = {}
    for field_dtype in ("float32", "bfloat16"):
        scene, camera = tiny_scene()
        config = RendererConfig(num_coarse=8, num_fine=8, field_dtype=field_dtype, train_chunk=24)
        torch.manual_seed(0)  # the same stratified jitter for both
        out = VolumeRenderer(config).train()(scene, camera)
        (out.observation.square().mean() + out.depth.mean()).backward()
        # Every parameter the render uses (maps and time embedding were made beforehand).
        used = [
            p
            for name, p in scene.mlp.named_parameters()
            if name.startswith(("lin_pos", "lin_out", "blocks"))
        ]
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in used)
        grads[field_dtype] = torch.cat([p.grad.flatten() for p in used])
    assert torch.isfinite(grads["bfloat16"]).all()
    cosine = F.cosine_similarity(grads["bfloat16"], grads["float32"], dim=0).item()
    assert cosine > 0.999  # measured 0.99998
    assert not torch.equal(grads["bfloat16"], grads["float32"])


def test_the_model_denoises_with_a_bf16_field():
    """The DFM model with field_dtype=bfloat16 (O_det and the joint field, with the per-sample
    context cache): one denoising step agrees with float32 of the same weights."""
    outputs = []
    for field_dtype in ("float32", "bfloat16"):
        cfg = scene_config("objects-demo").reduced(image_size=SIZE)
        cfg = dataclasses.replace(
            cfg, renderer=dataclasses.replace(cfg.renderer, field_dtype=field_dtype)
        )
        torch.manual_seed(0)
        model = cfg.build().eval()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.predictor.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        cams = torch.stack([look_at((4 * math.sin(a), -1.0, 4 * math.cos(a))) for a in (0, 0.7)])
        k = torch.tensor([[1.1, 0.0, 0.5], [0.0, 1.1, 0.5], [0.0, 0.0, 1.0]]).expand(1, 2, 3, 3)
        rel = torch.linalg.inv(cams[:1]) @ cams
        context_camera = Camera(
            rel[None, :1], k[:, :1], torch.full((1,), 1.0), torch.full((1,), 8.0), SIZE, SIZE
        )
        target_camera = Camera(
            rel[None, 1], k[:, 1], torch.full((1,), 1.0), torch.full((1,), 8.0), SIZE, SIZE
        )
        image = torch.rand(1, 1, 3, SIZE, SIZE, generator=g) * 2 - 1
        x = torch.rand(1, 3, SIZE, SIZE, generator=g) * 2 - 1
        with torch.no_grad():
            condition = model.condition(Context(image, context_camera), target_camera)
            outputs.append(model.denoiser(condition)(x, torch.full((1,), 200.0)).x0)
    full, half = outputs
    assert half.dtype == torch.float32
    assert not torch.equal(half, full)
    assert psnr(half, full) > MIN_PSNR_DB
