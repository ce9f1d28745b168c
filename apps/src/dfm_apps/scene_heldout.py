"""Held-out objects of the synthetic objects world: sample, score, draw (the 3D app's evaluation).

The evaluation half of the inverse-graphics application (``dfm_apps.scenes``) on the world it
synthesizes. The world's ground truth says what the hidden back of each object is, and the
world renders it exactly; given only the front view (frame 0) of objects of a world seed never
used in training:

* **visible side**: PSNR/SSIM of the renders at the frames within +-30 degrees of the front
  against the true frames, DFM (every sample) and baseline, and the samples' depth against
  the exact depth on the object's pixels (``exact_depths``, ``depth_error``);
* **hidden side**: the view from behind (frame N/2) of each sample, compared with the exact
  render of the true scene repainted with each palette colour in turn (so shading is the
  truth's, ``palette_candidates``); a sample's back colour (the mean over the hidden pixels)
  "is" the nearest palette colour when it is within ``evaluation.palette_margin`` of it
  (``classify_backs``: a real colour, not a blend). Reported: the fraction of such samples
  (and, stricter, of those whose every hidden pixel is that close: ``real_colour_pixels``),
  the mean number of distinct colours among the K samples of an object (and of distinct
  nearest colours, counted or not: whether the samples differ at all), and a chi-squared
  test of the pooled counts against uniform.

``evaluate_world`` writes the picture of the backs, turntable and depth videos, the
progressive-sampling animation, exports and report.html; ``evaluation.num_shards`` splits the
objects over processes and ``pool_scores`` merges their scores.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfm_apps.applications import Trained
from dfm_apps.scenes import (
    Evaluation,
    ScenesConfig,
    _set_threads,
    _views_dataset,
    camera_like,
    ensure_world,
    render_at,
    sample_autoregressive,
    sample_scenes,
    scene_batch_from_views,
)
from dfm_core.diffusion import DFMBatch, ForwardDiffusion
from dfm_core.tree import tree_index
from dfm_render import VolumeRenderer, estimate_look_at_point

__all__ = [
    "BACK_MEASURES",
    "autoregressive_video",
    "back_distances",
    "classify_backs",
    "depth_error",
    "ensure_heldout_world",
    "evaluate_world",
    "exact_depths",
    "export_first_sample",
    "export_scene",
    "palette_candidates",
    "palette_distances",
    "pool_scores",
]


def _uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _chi_squared_uniform(counts: np.ndarray) -> tuple[float, float]:
    """Pearson's chi-squared statistic of counts against uniform, and its p-value."""
    from scipy.stats import chisquare

    if counts.sum() == 0:
        return float("nan"), float("nan")
    result = chisquare(counts)
    return float(result.statistic), float(result.pvalue)


def palette_candidates(views: Any, truth: dict, index: int, item: Any) -> tuple:
    """The exact target view of object ``index`` painted with each palette colour in turn.

    The hidden back of an object of the objects world is one palette colour; rendering the
    true scene with each colour gives what every hypothesis looks like under the true shading.

    Args:
        views: the ``CO3DDataset`` over the objects world.
        truth: its ``synthetic_ground_truth.json``.
        index: sequence index.
        item: ``views.views_at(index, ...)``; its target view 0 is rendered.

    Returns:
        candidates (P, 3, H, W) in [0, 1] at the model's image size, and hidden (H, W) bool:
        the pixels that show the hidden back (more than 90 % of their area).
    """
    from dfm_data.worlds.objects import ObjectScene, render_object_scene
    from dfm_data.worlds.raycast import box_downsample

    name = views.sequences[index][1]
    record = truth["sequences"][name]
    # The loader's poses are scaled so the object sits mean_depth_scale away; undo it.
    c2w = (item.world_from_context[0] @ item.target.c2w[0, 0]).double().numpy()
    c2w[:3, 3] *= (views.scales.get(name) or 1.0) / views.config.mean_depth_scale
    scene = ObjectScene.from_json(record["scene"])
    h, w = record["image_size_hw"]
    factor = h // views.config.image_size
    renders, hidden = [], None
    for colour in truth["palette"]:
        painted = dataclasses.replace(scene, hidden_colour=tuple(colour))
        out = render_object_scene(painted, c2w, np.asarray(record["intrinsics_px"]), h, w, 2)
        renders.append(box_downsample(out["rgb"], factor))
        hidden = box_downsample(out["hidden"], factor)
    candidates = torch.from_numpy(np.stack(renders)).permute(0, 3, 1, 2).float()
    return candidates, torch.from_numpy(hidden > 0.9)


def exact_depths(
    views: Any,
    truth: dict,
    index: int,
    c2w: torch.Tensor,
    item: Any,
    *,
    object_only: bool = False,
) -> torch.Tensor:
    """Exact z-depth of sequence ``index``'s scene at cameras ``c2w``, in the loader's scaled units.

    Rendered by the world's own ray caster at the model's image size (intrinsics scaled with
    the image: pixel (i, j) covers [j, j+1] x [i, i+1] at both sizes), so each pixel's depth is
    that of the ray through its centre, as the volume renderer's rays are.

    Args:
        views: the ``CO3DDataset`` over the objects world.
        truth: its ``synthetic_ground_truth.json``.
        index: sequence index.
        c2w: (V, 4, 4) the loader's (scaled, context-relative) camera-to-world matrices.
        item: ``views.views_at(index, ...)`` (for ``world_from_context``).
        object_only: keep only the pixels whose centre ray hits the object (the spheres), not
            the ground.

    Returns:
        (V, H, W) depths, 0 where the ray hits the sky (and, with ``object_only``, the ground).
    """
    from dfm_data.worlds.objects import ObjectScene, render_object_scene

    name = views.sequences[index][1]
    record = truth["sequences"][name]
    to_world = (views.scales.get(name) or 1.0) / views.config.mean_depth_scale
    scene = ObjectScene.from_json(record["scene"])
    h, w = record["image_size_hw"]
    size = views.config.image_size
    intrinsics = np.asarray(record["intrinsics_px"], dtype=np.float64).copy()
    intrinsics[0] *= size / w
    intrinsics[1] *= size / h
    depths = []
    for camera in c2w:
        pose = (item.world_from_context[0] @ camera).double().numpy()
        pose[:3, 3] *= to_world
        out = render_object_scene(scene, pose, intrinsics, size, size, 1)
        depth = out["depth"] / to_world
        # One sub-sample per pixel: the mask is 1 exactly where the centre ray hits a sphere.
        depths.append(np.where(out["mask"] > 0.5, depth, 0.0) if object_only else depth)
    return torch.from_numpy(np.stack(depths)).float()


def depth_error(depth: torch.Tensor, opacity: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean relative depth error over the object's pixels: mean |d - d*| / d*.

    Args:
        depth: (..., V, H, W) rendered depth (the renderer's expected depth, unnormalised).
        opacity: (..., V, H, W) rendered opacity, to turn expected depth into depth given a hit.
        exact: (V, H, W) exact depth, 0 off the object.
    """
    hit = exact > 0
    given_hit = depth / opacity.clamp_min(1e-6)
    relative = (given_hit - exact).abs() / exact.clamp_min(1e-6)
    return float(relative[..., hit].mean())


def palette_distances(
    images: torch.Tensor, candidates: torch.Tensor, hidden: torch.Tensor
) -> torch.Tensor:
    """RMS distance over the hidden pixels of each image (N, 3, H, W) in [0, 1] to each
    candidate (P, 3, H, W): (N, P)."""
    diff = (images[:, None] - candidates[None]) ** 2  # (N, P, 3, H, W)
    return diff[..., hidden].mean(dim=(2, 3)).sqrt()


BACK_MEASURES = ("colour", "pixels")
"""How ``classify_backs`` compares a back with the repainted truths: ``colour``, the mean colour
of the hidden pixels (the back's colour, issue 8 section 4); ``pixels``, every hidden pixel (RMS;
stricter: the shape and shading of the back must match too, not only its colour)."""


def back_distances(
    images: torch.Tensor, candidates: torch.Tensor, hidden: torch.Tensor, measure: str = "colour"
) -> torch.Tensor:
    """Distance of each image (N, 3, H, W) in [0, 1] to each candidate (P, 3, H, W): (N, P).

    ``colour``: Euclidean distance between the mean RGB over the hidden pixels of the image
    and that of the candidate (the truth painted one palette colour, so shading is the
    truth's and the candidates' means differ only by their colour). ``pixels``: the RMS
    distance over the hidden pixels (``palette_distances``).
    """
    if measure == "pixels":
        return palette_distances(images, candidates, hidden)
    if measure != "colour":
        raise ValueError(f"measure: expected one of {list(BACK_MEASURES)}, got {measure!r}")
    dtype = torch.promote_types(images.dtype, candidates.dtype)  # cdist wants one dtype
    colours = images[..., hidden].mean(-1).to(dtype)  # (N, 3)
    return torch.cdist(colours, candidates[..., hidden].mean(-1).to(dtype))


def classify_backs(
    images: torch.Tensor,
    candidates: torch.Tensor,
    hidden: torch.Tensor,
    margin: float,
    *,
    measure: str = "colour",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which palette colour each back shows, if any (see ``palette_margin``).

    A back counts as palette colour p when its distance to the truth painted p is at most
    ``margin`` times the distance from that candidate to the nearest other one: a "real
    colour", not a blend (an even blend of two colours lies at 1/2 of their separation under
    both measures, both being linear in the image). Calibration (apps/benchmarks/
    scenes_denoiser_probe.py, 6 held-out objects): the loader's own back images lie at a
    median 0.07 (colour) and 0.13 (pixels) of the separation.

    Args:
        images: (N, 3, H, W) backs in [0, 1].
        candidates: (P, 3, H, W) the exact back painted with each palette colour.
        hidden: (H, W) bool, the pixels of the hidden back.
        margin: fraction of the separation (``evaluation.palette_margin``).
        measure: ``colour`` or ``pixels`` (``BACK_MEASURES``).

    Returns:
        nearest (N,) candidate index, real (N,) bool (close enough to count), and the
        distance (N,) to the nearest candidate.
    """
    distances = back_distances(images, candidates, hidden, measure)  # (N, P)
    best, nearest = distances.min(dim=1)
    between = back_distances(candidates, candidates, hidden, measure)  # (P, P)
    between.fill_diagonal_(float("inf"))
    separation = between.min(dim=1).values[nearest]  # (N,)
    return nearest, best <= margin * separation, best


def ensure_heldout_world(config: ScenesConfig) -> Path:
    """Write the held-out objects world ``evaluate_world`` scores (unless it exists); its root.

    World seed ``evaluation.world_seed``, next to ``data.root``; objects of its "train" split
    are scored (3/5 of them), so it is sized to hold ``evaluation.num_scenes`` of those.
    """
    ev = config.evaluation
    world = dataclasses.replace(config.data.world, n_sequences=math.ceil(ev.num_scenes / 0.6) + 2)
    root = Path(config.data.root).with_name(
        f"{Path(config.data.root).name}-heldout-seed{ev.world_seed}-{world.n_sequences}x"
        f"{world.n_frames}-{world.size}px"
    )
    return ensure_world(root, world, seed=ev.world_seed, categories=config.data.categories[:1])


def evaluate_world(
    config: ScenesConfig,
    trained: Trained,
    out_dir: Path,
    *,
    config_yaml: str = "",
) -> Evaluation:
    """Score the models on a held-out objects world (module docstring); write pictures,
    videos, scores.json and report.html under ``out_dir``."""
    from dfm_apps import media, report
    from dfm_apps.image_metrics import psnr, ssim

    _set_threads(config)
    ev = config.evaluation
    out_dir = Path(out_dir)
    root = ensure_heldout_world(config)
    views = _views_dataset(config, root, "train", 0)
    truth = json.loads(
        (root / config.data.categories[0] / "synthetic_ground_truth.json").read_text()
    )
    frames = config.data.world.n_frames
    visible = [f for f in range(1, frames) if min(f, frames - f) * 360.0 / frames <= 30.0]
    back = frames // 2
    diffusion, baseline = trained.diffusion.eval(), trained.baseline.eval()
    renderer = VolumeRenderer(config.model.renderer).eval()
    k = ev.num_samples
    size = config.model.image_size
    palette_counts = np.zeros(len(truth["palette"]), dtype=np.int64)
    stats: dict[str, list[float]] = {
        "dfm_visible_psnr": [], "dfm_visible_ssim": [], "baseline_visible_psnr": [],
        "baseline_visible_ssim": [], "real_colour": [], "distinct": [], "baseline_real_colour": [],
        "real_colour_pixels": [], "distinct_nearest": [],
        "dfm_back_rmse_best": [], "dfm_visible_depth_error": [],
        "baseline_visible_depth_error": [],
    }  # fmt: skip
    files: dict[str, Path] = {}
    pictures: list[tuple[str, np.ndarray]] = []
    indices = range(ev.shard, min(ev.num_scenes, len(views)), ev.num_shards)
    count = len(indices)
    for index in media.progress(indices, desc="held-out objects"):
        name = views.sequences[index][1]
        item = views.views_at(index, [0], [back], visible + list(range(frames)))
        absolute = config.model.encoder.absolute_pose
        batch = scene_batch_from_views(item, patch_size=None, absolute_pose=absolute)
        seeds = [ev.seed * 1000 + index * k + j for j in range(k)]
        recorder = media.ProgressiveRecorder(max_items=k, desc=f"sampling {name}")
        out = sample_scenes(
            diffusion, batch, num_samples=k, seeds=seeds, steps=ev.steps,
            guidance_scale=ev.guidance_scale, temperature=ev.temperature,
            reconstruction_weight=ev.reconstruction_weight, sampler=ev.sampler, callback=recorder,
        )  # fmt: skip
        scene_k = out.signal
        if index == 0:  # the x0 estimate over the denoising steps, every sample side by side
            path = out_dir / "scenes" / name / "progressive.gif"
            media.write_video(path, recorder.frames(), fps=8)
            files[f"{name} progressive.gif"] = path
        if index == 0 and ev.export:
            files |= export_scene(renderer, scene_k, batch, item, out_dir / "scenes" / name, config)
        if index == 0 and ev.autoregressive_views:
            files |= autoregressive_video(diffusion, renderer, batch, item, out_dir, config)
        with torch.no_grad():
            base_scene = baseline.scene(batch.context)
        novel = item.novel
        n_visible = len(visible)
        vis_c2w, vis_k = novel.c2w[:, :n_visible], novel.intrinsics[:, :n_visible]
        truth_visible = (novel.images[0, :n_visible] + 1) / 2
        dfm_vis = render_at(
            renderer,
            scene_k,
            camera_like(
                batch.target_params, vis_c2w.expand(k, -1, -1, -1), vis_k.expand(k, -1, -1, -1)
            ),
        )
        base_vis = render_at(renderer, base_scene, camera_like(batch.target_params, vis_c2w, vis_k))
        for j in range(k):
            pred = (dfm_vis.observation[j] + 1) / 2
            stats["dfm_visible_psnr"].append(float(psnr(pred, truth_visible).mean()))
            stats["dfm_visible_ssim"].append(float(ssim(pred, truth_visible).mean()))
        pred = (base_vis.observation[0] + 1) / 2
        stats["baseline_visible_psnr"].append(float(psnr(pred, truth_visible).mean()))
        stats["baseline_visible_ssim"].append(float(ssim(pred, truth_visible).mean()))
        # 3D consistency: the samples' depth on the object's visible side against the exact
        # depth (the ground, most of each image, would swamp the object's error).
        exact = exact_depths(views, truth, index, vis_c2w[0], item, object_only=True)
        stats["dfm_visible_depth_error"].append(
            depth_error(dfm_vis.depth[:, :, 0], dfm_vis.opacity[:, :, 0], exact)
        )
        stats["baseline_visible_depth_error"].append(
            depth_error(base_vis.depth[0, :, 0], base_vis.opacity[0, :, 0], exact)
        )
        # Hidden side: the back view of each sample against the repainted truths.
        candidates, hidden = palette_candidates(views, truth, index, item)
        backs = (out.observation.clamp(-1, 1) + 1) / 2  # (K, 3, H, W): the target is the back
        nearest, real, _ = classify_backs(backs, candidates, hidden, ev.palette_margin)
        stats["real_colour"] += real.float().tolist()
        _, real_pixels, rmse = classify_backs(
            backs, candidates, hidden, ev.palette_margin, measure="pixels"
        )
        stats["real_colour_pixels"] += real_pixels.float().tolist()
        stats["dfm_back_rmse_best"] += rmse.tolist()  # per-pixel RMS, as before the colour measure
        stats["distinct"].append(float(len(set(nearest[real].tolist()))))
        stats["distinct_nearest"].append(float(len(set(nearest.tolist()))))
        palette_counts += np.bincount(nearest[real].numpy(), minlength=len(palette_counts))
        base_back = render_at(renderer, base_scene, batch.target_params)
        base_rgb = (base_back.observation.clamp(-1, 1) + 1) / 2
        _, base_real, _ = classify_backs(base_rgb, candidates, hidden, ev.palette_margin)
        stats["baseline_real_colour"].append(float(base_real[0]))
        # Pictures: input, true back, baseline back, K sample backs.
        true_back = (item.target.images[0, 0] + 1) / 2
        row = [_uint8(batch.context.observation[0] )[0], _uint8(true_back[None] * 2 - 1)[0],
               _uint8(base_back.observation)[0], *_uint8(out.observation)]  # fmt: skip
        pictures.append((name, np.stack(row)))
        if ev.videos:
            all_c2w, all_k = novel.c2w[:, n_visible:], novel.intrinsics[:, n_visible:]
            for label, scene, count_k in (("dfm", scene_k, k), ("baseline", base_scene, 1)):
                cams = camera_like(
                    batch.target_params,
                    all_c2w.expand(count_k, -1, -1, -1),
                    all_k.expand(count_k, -1, -1, -1),
                )
                turn = render_at(renderer, scene, cams)  # (n, F, 3, H, W)
                rgb = turn.observation.permute(1, 0, 3, 4, 2).reshape(frames, size, -1, 3)
                depth = turn.depth[:, :, 0].permute(1, 2, 0, 3).reshape(frames, size, -1)
                rgb_frames = media.to_uint8_frames((rgb.clamp(-1, 1) + 1) / 2)
                depth_frames = media.colorize_depth(
                    depth, vmin=config.model.near, vmax=config.model.far
                )
                for kind, frames_ in (("turntable", rgb_frames), ("depth", depth_frames)):
                    for suffix in (".mp4", ".gif"):
                        path = out_dir / "scenes" / name / f"{label}-{kind}{suffix}"
                        media.write_video(path, frames_, fps=12)
                        files[f"{name} {label} {kind}{suffix}"] = path
    grid = media.image_grid(
        [img for _, row in pictures for img in row],
        ncols=3 + k,
        captions=[
            c
            for _ in pictures
            for c in ["input", "true back", "baseline", *[f"sample {j}" for j in range(k)]]
        ],
        scale=max(1, 64 // size),  # captions are ~60 pixels wide
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(grid).save(out_dir / "backs.png")
    files["backs"] = out_dir / "backs.png"
    chi2, p = _chi_squared_uniform(palette_counts)
    scores = {
        key: float(np.mean(values)) if values else float("nan") for key, values in stats.items()
    }
    scores |= {
        "palette_chi2": chi2,
        "palette_p": p,
        "num_objects": float(count),
        "num_samples": float(k),
    }
    scores["palette_counts"] = palette_counts.tolist()  # type: ignore[assignment]
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=1))
    files["scores"] = out_dir / "scores.json"
    html = report.render_page(
        title=f"DFM inverse graphics: {config.name}",
        summary=(
            f"DFM ({trained.dfm_step} steps) and the pixelNeRF baseline ({trained.baseline_step} "
            f"steps), given only the front view of {count} held-out objects (world seed "
            f"{ev.world_seed}); {k} samples each, sampler {ev.sampler}, {ev.steps} steps."
        ),
        tables=[_score_table(scores)],
        images={"input, true back, baseline back, sampled backs": out_dir / "backs.png"},
        videos={label: path for label, path in files.items() if label.endswith(".mp4")},
        config_yaml=config_yaml,
        base=out_dir,
    )
    (out_dir / "report.html").write_text(html)
    files["report"] = out_dir / "report.html"
    return Evaluation(scores=scores, files=files)


def pool_scores(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``scores.json`` of an evaluation split over processes (``evaluation.num_shards``).

    Each object adds the same number of values to every mean, so a mean over all objects is
    the shards' means weighted by their object counts; the palette counts add up and the
    chi-squared test is rerun on the sum. Equals the unsplit evaluation up to rounding.
    """
    if not shards:
        raise ValueError("pool_scores: no shards")
    weights = np.array([shard["num_objects"] for shard in shards], dtype=np.float64)
    pooled: dict[str, Any] = {}
    for key in shards[0]:
        if key in ("palette_counts", "palette_chi2", "palette_p", "num_samples"):
            continue
        values = np.array([shard[key] for shard in shards], dtype=np.float64)
        pooled[key] = float(
            values.sum() if key == "num_objects" else values @ weights / weights.sum()
        )
    counts = np.sum([shard["palette_counts"] for shard in shards], axis=0)
    pooled["palette_chi2"], pooled["palette_p"] = _chi_squared_uniform(counts)
    pooled["num_samples"] = shards[0]["num_samples"]
    pooled["palette_counts"] = counts.tolist()
    return pooled


def export_scene(
    renderer: VolumeRenderer, scenes_k: Any, batch: DFMBatch, item: Any, out: Path, config: Any
) -> dict[str, Path]:
    """The first sample as a point cloud fused from its renders along the whole orbit and a
    mesh (64^3 grid): ``export_first_sample`` on fresh renders."""
    c2w, intrinsics = item.novel.c2w[0], item.novel.intrinsics[0]  # every frame of the orbit
    renders = render_at(
        renderer,
        tree_index(scenes_k, slice(0, 1)),
        camera_like(batch.target_params, c2w[None], intrinsics[None]),
    )
    return export_first_sample(out, scenes_k, renders, c2w, intrinsics, far=config.model.far)


def export_first_sample(
    out: Path,
    scenes_k: Any,
    renders: Any,
    c2w: torch.Tensor,
    intrinsics: torch.Tensor,
    *,
    far: float,
    resolution: int = 64,
) -> dict[str, Path]:
    """Sample 0 as a point cloud fused from its renders and a marching-cubes mesh.

    Args:
        out: output folder (``sample0-points.ply``, ``sample0-mesh.ply``, ``sample0-mesh.obj``).
        scenes_k: sampled scenes (a batched ``SceneField``); sample 0 is exported.
        renders: sample 0's (at least) ``SceneRendering`` at n views, observation
            (K >= 1, n, 3, H, W), depth and opacity (K, n, 1, H, W).
        c2w: (n, 4, 4) poses of those views; intrinsics (n, 3, 3).
        far: the far plane (depths beyond 0.9 x far are background, not fused).
        resolution: marching-cubes grid side.
    """
    from dfm_render import extract_mesh, fuse_point_cloud, save_mesh, save_point_cloud

    first = tree_index(scenes_k, slice(0, 1))
    cloud = fuse_point_cloud(
        renders.depth[0, :, 0],
        (renders.observation[0].clamp(-1, 1) + 1) / 2,
        c2w,
        intrinsics,
        opacity=renders.opacity[0, :, 0],
        divide_by_opacity=True,
        max_depth=0.9 * far,
    )
    # The object sits around the point every camera looks at: mesh a box around it.
    centre = estimate_look_at_point(c2w)
    radius = 0.35 * float(torch.linalg.norm(c2w[0, :3, 3] - centre))
    bounds = torch.stack([centre - radius, centre + radius])

    def query(points: torch.Tensor) -> Any:
        with torch.no_grad():
            return first.query(points[None].to(c2w.dtype))

    # A voxel is mostly opaque where density x voxel size ~ 1.
    level = (resolution - 1) / (2 * radius)
    mesh = extract_mesh(
        lambda p: query(p).density[0], bounds, resolution, level=level,
        colour=lambda p: query(p).rgb[0],
    )  # fmt: skip
    return {
        "point cloud": save_point_cloud(out / "sample0-points.ply", cloud),
        "mesh (ply)": save_mesh(out / "sample0-mesh.ply", mesh),
        "mesh (obj)": save_mesh(out / "sample0-mesh.obj", mesh),
    }


def autoregressive_video(
    diffusion: ForwardDiffusion,
    renderer: VolumeRenderer,
    batch: DFMBatch,
    item: Any,
    out_dir: Path,
    config: Any,
) -> dict[str, Path]:
    """Autoregressive 360-degree sample of one object, rendered along its orbit."""
    from dfm_apps import media

    ev = config.evaluation
    frames = config.data.world.n_frames
    c2w, intrinsics = item.novel.c2w[:, -frames:], item.novel.intrinsics[:, -frames:]
    positions = [(i + 1) * ev.autoregressive_step % frames for i in range(ev.autoregressive_views)]
    targets = [(c2w[:, p], intrinsics[:, p]) for p in positions]
    scene, _ = sample_autoregressive(
        diffusion, batch, targets, seed=ev.seed, steps=ev.steps,
        guidance_scale=ev.guidance_scale, temperature=ev.temperature,
    )  # fmt: skip
    turn = render_at(renderer, scene, camera_like(batch.target_params, c2w, intrinsics))
    video = media.to_uint8_frames((turn.observation[0].clamp(-1, 1) + 1).permute(0, 2, 3, 1) / 2)
    path = out_dir / "scenes" / "autoregressive-turntable.mp4"
    media.write_video(path, video, fps=12)
    return {"autoregressive turntable.mp4": path}


def _score_table(scores: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    def f(key: str, digits: int = 2) -> str:
        value = scores.get(key, float("nan"))
        return "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}"

    rows = [
        ["visible side PSNR (dB), +-30 deg", f("dfm_visible_psnr"), f("baseline_visible_psnr")],
        ["visible side SSIM", f("dfm_visible_ssim", 3), f("baseline_visible_ssim", 3)],
        [
            "visible side depth error |d - d*| / d* on the object",
            f("dfm_visible_depth_error", 3),
            f("baseline_visible_depth_error", 3),
        ],
        ["backs whose colour is a palette colour", f("real_colour"), f("baseline_real_colour")],
        ["backs whose every pixel is (stricter)", f("real_colour_pixels"), ""],
        ["distinct colours among the K samples", f("distinct"), "1 at most"],
        ["distinct nearest colours among the K, counted or not", f("distinct_nearest"), ""],
        ["chi-squared p of pooled colours vs uniform", f("palette_p", 3), ""],
    ]
    return ("scores", ["", "DFM", "baseline"], rows)
