"""Rendering quality of bfloat16 field evaluation against float32, same weights, same scenes.

``RendererConfig.field_dtype = "bfloat16"`` runs the field's matmuls in bfloat16 (compositing in
float32). Issue 7 §7 allows a faster step only with equal rendering quality shown on the same
scenes; this script measures it, in two parts.

* ``random``: the field of the *reduced* and *paper* benchmark configs (``bench_render._config``:
  512-wide, 5 blocks, 16 + 16 and 64 + 64 samples per ray), random weights (default init, plus
  random residual branches ``fc_1`` so every block contributes), random 512-channel feature maps
  of a context view (t = 0) and a noisy target view (t = 500), rendered at a third camera
  (32^2 and 64^2) in float64 (reference), float32 and bfloat16: PSNR of the RGB render,
  max |error| of depth (and as a fraction of far - near) and of opacity.
* ``trained``: the newest EMA checkpoint of an objects-demo run (``--run-dir``, read only, via
  ``dfm_apps.scenes.load_models``) or the shipped weights (``--shipped``): a full DDIM sample
  (fixed seeds) of each of ``--objects`` held-out objects (world seed 1000, as the scenes demo)
  from its front view, once with a float32 field and once with bfloat16 (every render: O_det,
  the context cache, every denoising step). Reported: PSNR between the two final renders at
  the sampled (back) view and at the visible-side views (+-30 degrees), and PSNR of each against
  the world's ground-truth frames; and, as the scale to read those against, PSNR between the
  float32 samples and float32 samples of other seeds (seed + 100).

Usage::

    nice -n 10 uv run python packages/dfm-render/benchmarks/bench_bf16_quality.py \\
        --parts random trained --run-dir /work/runs/od2 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch


def _psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """PSNR in dB of two image tensors with values in [0, peak] (one number over all)."""
    mse = (a.double() - b.double()).square().mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(peak**2 / mse)


# ---- random weights at the benchmark configs --------------------------------------------------
def random_part(paper: bool) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_render import _batch, _config

    from dfm_render.renderer import Camera, SceneField, VolumeRenderer

    config = _config(paper)
    torch.manual_seed(0)
    mlp = config.field.build()
    with torch.no_grad():
        for block in mlp.blocks:  # the residual branches start at zero; make them count
            torch.nn.init.kaiming_normal_(block.fc_1.weight, a=0.0, mode="fan_in")
            block.fc_1.weight.mul_(0.5)
    batch = _batch(config, 1, 1)
    params = batch.context.params
    target = batch.target_params
    size = config.image_size
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, config.field.feature_channels, size, size, generator=g)
    results = {}
    renders = {}
    for name, dtype, field_dtype in (
        ("float64", torch.float64, "float32"),
        ("float32", torch.float32, "float32"),
        ("bfloat16", torch.float32, "bfloat16"),
    ):
        field = mlp.to(dtype)
        with torch.no_grad():
            maps = field.project_features(features.to(dtype))[None]
            times = field.time_embedding(torch.tensor([[0.0, 500.0]], dtype=dtype))
        c2w = torch.cat([params.c2w, target.c2w[:, None]], dim=1).to(dtype)
        k = torch.cat([params.intrinsics, target.intrinsics[:, None]], dim=1).to(dtype)
        scene = SceneField(maps, c2w, k, times, target.near.to(dtype), target.far.to(dtype), field)
        # Rendered at a camera between the two views (the target pose, slightly moved).
        novel = target.c2w.clone().to(dtype)
        novel[:, :3, 3] += torch.tensor([0.3, 0.0, 0.0], dtype=dtype)
        camera = Camera(novel, k[:, -1], scene.near, scene.far, size, size)
        renderer = VolumeRenderer(dataclasses.replace(config.renderer, field_dtype=field_dtype))
        start = time.perf_counter()
        with torch.no_grad():
            renders[name] = renderer.eval()(scene, camera)
        results[f"{name}_s"] = time.perf_counter() - start
    ref = renders["float64"]
    span = float(target.far[0] - target.near[0])
    for name in ("float32", "bfloat16"):
        out = renders[name]
        results[name] = {
            "psnr_vs_float64": _psnr((out.observation + 1) / 2, (ref.observation + 1) / 2),
            "depth_max_err": (out.depth.double() - ref.depth).abs().max().item(),
            "depth_max_err_of_range": (out.depth.double() - ref.depth).abs().max().item() / span,
            "depth_mean_err_of_range": (out.depth.double() - ref.depth).abs().mean().item() / span,
            "opacity_max_err": (out.opacity.double() - ref.opacity).abs().max().item(),
        }
    results["bf16_vs_fp32_psnr"] = _psnr(
        (renders["bfloat16"].observation + 1) / 2, (renders["float32"].observation + 1) / 2
    )
    results["opacity_range"] = (ref.opacity.min().item(), ref.opacity.max().item())
    results["image"] = size
    results["samples"] = (config.renderer.num_coarse, config.renderer.num_fine)
    return results


# ---- the trained objects-demo model -----------------------------------------------------------
def trained_part(run_dir: Path | None, shipped: bool, objects: int, steps: int, work: Path) -> dict:
    from dfm_apps import scenes
    from dfm_apps.config import load_run_config, validate
    from dfm_apps.scene_demo import WORLD_SEED, _held_out_size, _orbit_frames
    from dfm_render import VolumeRenderer

    frames_total = 12
    _, visible, back = _orbit_frames(frames_total, frames_total)
    results: dict = {"source": "shipped" if shipped else str(run_dir), "objects": objects}
    # The weights are loaded once (a running training may write a newer checkpoint meanwhile);
    # the precision is then switched on the same model's renderers.
    if shipped:
        from dfm_apps.scene_demo import load_demo_models

        diffusion, _, model_config, meta = load_demo_models()
        results["step"] = meta.get("steps", "?")
    else:
        assert run_dir is not None
        settings = validate(load_run_config(run_dir / "config.yaml"))
        trained = scenes.load_models(settings, run_dir)
        diffusion, model_config = trained.diffusion, settings.model
        results["step"] = trained.dfm_step
    outputs = {}
    # float32 with other seeds: the sample-to-sample spread, the scale to read bf16's against.
    for run, field_dtype, seed0 in (
        ("float32", "float32", 0),
        ("bfloat16", "bfloat16", 0),
        ("float32-other-seeds", "float32", 100),
    ):
        model_config = dataclasses.replace(
            model_config,
            renderer=dataclasses.replace(model_config.renderer, field_dtype=field_dtype),
        )
        results["renderers_switched"] = _set_renderers(diffusion, field_dtype)
        world = scenes.WorldConfig(
            n_sequences=_held_out_size(objects), n_frames=frames_total, size=64, seed=WORLD_SEED
        )
        root = work / f"world-{objects}"
        data = scenes.SceneDataConfig(root=str(root), world=world)
        settings_w = scenes.ScenesConfig(model=model_config, data=data)
        scenes.ensure_world(root, world, seed=world.seed, categories=data.categories)
        views = scenes._views_dataset(settings_w, root, "train", 0)
        items, batches = [], []
        for index in range(objects):
            item = views.views_at(index, [0], [back], visible)
            batch = scenes.scene_batch_from_views(
                item, patch_size=None, absolute_pose=model_config.encoder.absolute_pose
            )
            items.append(item)
            batches.append(dataclasses.replace(batch, novel=None, novel_params=None))
        batch = scenes.collate_scene_batches(batches)
        start = time.perf_counter()
        out = scenes.sample_scenes(
            diffusion, batch, num_samples=1, seeds=list(range(seed0, seed0 + objects)),
            steps=steps, sampler="ddim",
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        renderer = VolumeRenderer(model_config.renderer).eval()
        vis = []
        for index, item in enumerate(items):
            scene = _index(out.signal, index)
            cams = scenes.camera_like(
                batches[index].target_params, item.novel.c2w, item.novel.intrinsics
            )
            vis.append(scenes.render_at(renderer, scene, cams).observation[0])  # (n, 3, H, W)
        outputs[run] = {
            "back": (out.observation.clamp(-1, 1) + 1) / 2,  # (O, 3, H, W)
            "visible": (torch.stack(vis).clamp(-1, 1) + 1) / 2,  # (O, n, 3, H, W)
            "seconds": elapsed,
        }
        truth_back = torch.stack([(it.target.images[0, 0] + 1) / 2 for it in items])
        truth_vis = torch.stack([(it.novel.images[0] + 1) / 2 for it in items])
    f, b, o = outputs["float32"], outputs["bfloat16"], outputs["float32-other-seeds"]
    results["steps"] = steps
    results["sampling_s"] = {name: out["seconds"] for name, out in outputs.items()}
    results["other_seeds_vs_fp32_psnr"] = {
        "back": _psnr(o["back"], f["back"]),
        "visible": _psnr(o["visible"], f["visible"]),
    }
    results["bf16_vs_fp32_psnr"] = {
        "back": _psnr(b["back"], f["back"]),
        "visible": _psnr(b["visible"], f["visible"]),
        "back_per_object": [_psnr(b["back"][i], f["back"][i]) for i in range(objects)],
    }
    results["vs_truth_psnr"] = {
        name: {"back": _psnr(o["back"], truth_back), "visible": _psnr(o["visible"], truth_vis)}
        for name, o in outputs.items()
    }
    return results


def _index(tree, index: int):
    from dfm_core.tree import tree_index

    return tree_index(tree, slice(index, index + 1))


def _set_renderers(diffusion, field_dtype: str) -> int:
    """Set ``field_dtype`` on every VolumeRenderer of the model (the forward model, O_det's and
    the context cache's); their sample counts are kept. Returns how many were set."""
    from dfm_render import VolumeRenderer

    count = 0
    for module in diffusion.modules():
        if isinstance(module, VolumeRenderer):
            module.config = dataclasses.replace(module.config, field_dtype=field_dtype)
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["random"],
                        choices=("random", "random-paper", "trained"))  # fmt: skip
    parser.add_argument("--run-dir", type=Path, help="objects-demo run (newest EMA checkpoint)")
    parser.add_argument("--shipped", action="store_true", help="use the shipped demo weights")
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dfm-bf16-quality"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import json

    for part in args.parts:
        if part in ("random", "random-paper"):
            result = random_part(paper=part == "random-paper")
        else:
            if args.run_dir is None and not args.shipped:
                parser.error("trained: pass --run-dir DIR or --shipped")
            result = trained_part(args.run_dir, args.shipped, args.objects, args.steps, args.work)
        print(json.dumps({"part": part, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
