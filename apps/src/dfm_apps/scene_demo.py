"""The inverse-graphics demo on the shipped objects-demo weights (``dfm demo --only scenes``).

No training: loads the DFM model and the pixelNeRF baseline shipped in dfm-render
(``dfm_render.pretrained``), writes a small held-out objects world (world seed 1000 + seed, never
used in training; 12 views 30 degrees apart per object, 64^2 frames read through dfm-data's CO3D
loader at the model's 32^2, as in training) and, given only each object's front view (frame 0):

* samples K scenes per object in one batched call (each sample with its own seed), with
  DPM-Solver++(2M) at 12 steps by default: every denoiser evaluation renders the scene, so the
  demo uses fewer evaluations than ``dfm sample``'s DDIM 50 to stay within its time budget;
* **visible side**: PSNR/SSIM of every sample's and the baseline's renders at the views 30
  degrees either side of the front (the edges of the visible range), against the world's
  frames (``dfm sample`` scores every view within +-30 degrees; the demo renders these two to
  save time);
* **hidden side**: the view from behind (180 degrees) of each sample, classified by the nearest
  palette colour against the exact render of the true object repainted with each palette
  colour (``scene_heldout.classify_backs``: a "real colour" is close to one colour, not a
  blend), the number of distinct colours among the K samples, and their spread (mean
  pairwise RMS difference over the hidden pixels; 0 for a deterministic model);
* a picture (per object: input view, true back, baseline back, the K sampled backs), turntable
  and colour-mapped depth videos of the first object's samples beside the baseline (mp4 + gif),
  the progressive-sampling animation (the x0 estimate over the denoising steps), and a point
  cloud and mesh (.ply, .obj) of the first object's first sample, fused from those renders.

Cost on one CPU thread is dominated by rendering (each 32^2 view of a sampled scene queries the
field at 32 points per ray over two views): the denoising steps, then the turntable.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfm_apps.applications import DemoSection, MissingWeights

__all__ = ["WORLD_SEED", "back_spread", "evaluate_heldout", "load_demo_models", "run_demo"]

WORLD_SEED = 1000
"""Seed of the demo's held-out objects world at ``seed=0`` (``WORLD_SEED + seed`` in general;
training uses world seed 0)."""

COMMAND = "dfm demo --only scenes"
"""The command that reproduces the demo section."""

_UPSCALE = 3
"""Nearest-neighbour upscaling of the 32^2 renders in pictures and videos."""


def load_demo_models(weights_dir: str | Path | None = None) -> tuple[Any, Any, Any, dict]:
    """The shipped DFM model, baseline, their ``SceneModelConfig`` and the DFM file's metadata.

    Args:
        weights_dir: folder holding ``objects_demo_{dfm,baseline}.safetensors``; None uses the
            files shipped in dfm-render.

    Raises:
        MissingWeights: a weights file is absent (the message names it and the command that
            writes it).
        ValueError: the two files were written from different model configs.
    """
    from dfm_render.pretrained import (
        load_objects_demo,
        read_scene_config,
        read_weights_metadata,
        weights_path,
    )

    models, configs = {}, {}
    for kind in ("dfm", "baseline"):
        path = weights_path(kind, weights_dir)
        try:
            configs[kind] = read_scene_config(path)
            models[kind] = load_objects_demo(kind, path)
        except FileNotFoundError as error:
            raise MissingWeights(str(error)) from error
    if configs["dfm"] != configs["baseline"]:
        raise ValueError(
            f"{weights_path('baseline', weights_dir)}: the baseline was saved with another "
            "model config than the DFM weights; ship both from one run"
        )
    metadata = read_weights_metadata(weights_path("dfm", weights_dir))
    metadata["baseline_steps"] = read_weights_metadata(weights_path("baseline", weights_dir)).get(
        "steps", "?"
    )
    return models["dfm"], models["baseline"], configs["dfm"], metadata


def evaluate_heldout(
    data_root: str | Path,
    out_dir: str | Path,
    *,
    num_objects: int = 64,
    num_samples: int = 16,
    steps: int = 15,
    shard: int = 0,
    num_shards: int = 1,
    processes: int = 1,
    weights_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The shipped weights on held-out objects, the full hidden-side check (``nox -s slow``).

    ``scenes.evaluate`` on the objects world of seed ``WORLD_SEED`` (``data_root`` names where
    it is written), every sampled view scored, DPM-Solver++(2M) at ``steps``, no videos or
    exports. ``shard``/``num_shards`` score every ``num_shards``-th object from ``shard``
    (``scene_heldout.pool_scores`` of all shards' results is the unsplit result);
    ``processes > 1`` does exactly that itself, one shard per process, each process taking
    an equal share of torch's threads (the world is written once, first).

    Returns:
        The scores (``scores.json``, also written under ``out_dir``; with ``processes > 1``
        the pooled scores, each shard's under ``out_dir/shard<i>``).
    """
    from dfm_apps import scene_heldout, scenes
    from dfm_apps.config import load_preset, validate

    if processes > 1:
        if num_shards != 1:
            raise ValueError("evaluate_heldout: pass processes or num_shards, not both")
        import json
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        overrides = [
            f"data.root={data_root}",
            f"evaluation.num_scenes={num_objects}",
            f"evaluation.world_seed={WORLD_SEED}",
        ]
        scene_heldout.ensure_heldout_world(validate(load_preset("objects-demo", overrides)))
        threads = max(1, torch.get_num_threads() // processes)
        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(
            processes, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,)
        ) as pool:
            futures = [
                pool.submit(
                    evaluate_heldout,
                    data_root,
                    Path(out_dir) / f"shard{i}",
                    num_objects=num_objects,
                    num_samples=num_samples,
                    steps=steps,
                    shard=i,
                    num_shards=processes,
                    weights_dir=weights_dir,
                )
                for i in range(processes)
            ]
            scores = scene_heldout.pool_scores([future.result() for future in futures])
        Path(out_dir, "scores.json").write_text(json.dumps(scores, indent=1))
        return scores

    diffusion, baseline, model_config, metadata = load_demo_models(weights_dir)
    config = validate(load_preset("objects-demo", [f"data.root={data_root}"]))
    config = dataclasses.replace(
        config,
        model=model_config,
        num_threads=torch.get_num_threads(),
        evaluation=dataclasses.replace(
            config.evaluation,
            num_scenes=num_objects,
            num_samples=num_samples,
            sampler="dpmpp_2m",
            steps=steps,
            world_seed=WORLD_SEED,
            videos=False,
            export=False,
            autoregressive_views=0,
            shard=shard,
            num_shards=num_shards,
        ),
    )
    trained = scenes.Trained(
        diffusion=diffusion,
        baseline=baseline,
        dfm_step=int(metadata.get("steps", 0)),
        baseline_step=int(metadata.get("baseline_steps", 0)),
        resumed_from=None,
    )
    return scenes.evaluate(config, trained, Path(out_dir)).scores_dict()


def back_spread(images: torch.Tensor, hidden: torch.Tensor) -> float:
    """Mean pairwise RMS difference of K images over the hidden pixels (sample diversity).

    Args:
        images: (K, 3, H, W) in [0, 1], K >= 2.
        hidden: (H, W) bool, the pixels compared.

    Returns:
        The mean over the K (K - 1) / 2 pairs of sqrt(mean over hidden pixels and channels of
        the squared difference); NaN for K < 2 or no hidden pixel.
    """
    k = images.shape[0]
    if k < 2 or not bool(hidden.any()):
        return float("nan")
    values = images.to(torch.float64)[..., hidden]  # (K, 3, P)
    diff = (values[:, None] - values[None]).square().mean(dim=(2, 3)).sqrt()  # (K, K)
    upper = torch.triu_indices(k, k, offset=1)
    return float(diff[upper[0], upper[1]].mean())


def _held_out_size(num_objects: int) -> int:
    """Fewest sequences whose world's train split holds ``num_objects`` (dfm-data's split keeps
    ``n - 2 max(1, n // 5)`` for training from 3 sequences on, every one below)."""
    for n in itertools.count(1):
        if n - (2 * max(1, n // 5) if n >= 3 else 0) >= num_objects:
            return n
    raise AssertionError("unreachable")


def _orbit_frames(frames: int, turntable_frames: int) -> tuple[list[int], list[int], int]:
    """Turntable frames, visible-side frames (+-30 degrees where the orbit has them, else every
    frame within +-30 degrees) and the back frame."""
    if frames % turntable_frames:
        raise ValueError(
            f"turntable_frames: expected a divisor of the world's {frames} frames, "
            f"got {turntable_frames}"
        )
    turntable = list(range(0, frames, frames // turntable_frames))
    angle = [min(f, frames - f) * 360.0 / frames for f in range(frames)]
    within = [f for f in range(1, frames) if angle[f] <= 30.0 + 1e-9]
    visible = [f for f in within if abs(angle[f] - 30.0) < 1e-9]
    return turntable, visible or within, frames // 2


def _tiles(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H', W', 3) uint8, upscaled for display."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.repeat_interleave(_UPSCALE, dim=2).repeat_interleave(_UPSCALE, dim=3)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _hex(colour: Any) -> str:
    """A palette colour (linear RGB in [0, 1]) as #rrggbb."""
    return "#" + "".join(f"{round(255 * float(c)):02x}" for c in colour)


def run_demo(
    out_dir: str | Path,
    *,
    seed: int = 0,
    weights_dir: str | Path | None = None,
    num_objects: int = 2,
    num_samples: int = 4,
    sampler: str = "dpmpp_2m",
    steps: int = 12,
    turntable_frames: int = 12,
    world_frames: int = 12,
    world_size: int = 64,
) -> DemoSection:
    """One image -> K sampled 3D scenes, on the shipped objects-demo weights (module docstring).

    Args:
        out_dir: output folder (the world goes to ``out_dir/world``, files beside it).
        seed: seed of the inputs (the held-out world's seed is ``WORLD_SEED + seed``) and of
            the sampler noise (sample ``j`` of object ``b`` uses ``1000 * seed + b * K + j``).
        weights_dir: folder of the weight files; None uses dfm-render's shipped ones.
        num_objects: held-out objects (each seen only from its front view).
        num_samples: K samples per object.
        sampler: a ``dfm_core.sampling.SAMPLERS`` name.
        steps: sampler steps.
        turntable_frames: frames of the turntable videos (a divisor of ``world_frames``).
        world_frames: frames per orbit of the held-out world (frame 0 is the front).
        world_size: side of the world's frames on disk.

    Returns:
        The section of the combined ``dfm demo`` report.

    Raises:
        MissingWeights: the shipped weights are absent (the message says how to make them).
        ValueError: a bad option (named).
    """
    from dfm_apps import media, scene_heldout, scenes
    from dfm_apps.image_metrics import psnr, ssim
    from dfm_core.sampling import SAMPLERS
    from dfm_core.tree import tree_index
    from dfm_render import VolumeRenderer

    for name, value in (("num_objects", num_objects), ("num_samples", num_samples),
                        ("steps", steps), ("turntable_frames", turntable_frames)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {sorted(SAMPLERS)}, got {sampler!r}")
    out_dir = Path(out_dir)
    diffusion, baseline, model_config, provenance = load_demo_models(weights_dir)
    k = num_samples

    # The held-out world, read through the same loader as training.
    world = scenes.WorldConfig(
        n_sequences=_held_out_size(num_objects), n_frames=world_frames, size=world_size,
        seed=WORLD_SEED + seed,
    )  # fmt: skip
    root = out_dir / "world" / f"seed{world.seed}-{world.n_sequences}x{world_frames}-{world_size}px"
    settings = scenes.ScenesConfig(
        model=model_config, data=scenes.SceneDataConfig(root=str(root), world=world)
    )
    scenes.ensure_world(root, world, seed=world.seed, categories=settings.data.categories)
    views = scenes._views_dataset(settings, root, "train", 0)
    truth = json.loads(
        (root / settings.data.categories[0] / "synthetic_ground_truth.json").read_text()
    )
    turntable, visible, back = _orbit_frames(world_frames, turntable_frames)
    margin = scenes.SceneEvaluationConfig().palette_margin

    # One item per object: its front view as context, the back as the target camera, and the
    # views to render (the visible-side ones, plus the turntable for the first object).
    items, batches, frame_lists = [], [], []
    for index in range(num_objects):
        frames = sorted(set(visible) | (set(turntable) if index == 0 else set()))
        item = views.views_at(index, [0], [back], frames)
        batch = scenes.scene_batch_from_views(
            item, patch_size=None, absolute_pose=model_config.encoder.absolute_pose
        )
        items.append(item)
        batches.append(dataclasses.replace(batch, novel=None, novel_params=None))
        frame_lists.append(frames)
    batch = scenes.collate_scene_batches(batches)

    # K samples per object in one batched call; the recorder keeps the first object's.
    recorder = media.ProgressiveRecorder(max_items=k, desc="scenes demo: sampling")
    seeds = [1000 * seed + b * k + j for b in range(num_objects) for j in range(k)]
    out = scenes.sample_scenes(
        diffusion, batch, num_samples=k, seeds=seeds, steps=steps, sampler=sampler,
        callback=recorder,
    )  # fmt: skip
    with torch.no_grad():
        base_scenes = baseline.scene(batch.context)
    renderer = VolumeRenderer(model_config.renderer).eval()

    files: dict[str, Path] = {}
    stats: dict[str, list[float]] = {
        key: []
        for key in ("dfm_psnr", "dfm_ssim", "base_psnr", "base_ssim", "real", "base_real",
                    "distinct", "spread", "true_found")
    }  # fmt: skip
    pictures, captions, rows = [], [], []
    palette = truth["palette"]
    counts = np.zeros(len(palette), dtype=np.int64)
    for index, item in enumerate(media.progress(items, desc="scenes demo: rendering")):
        name = views.sequences[index][1]
        target = batches[index].target_params
        scene = tree_index(out.signal, slice(index * k, (index + 1) * k))
        base_scene = tree_index(base_scenes, slice(index, index + 1))
        c2w, intrinsics = item.novel.c2w, item.novel.intrinsics  # (1, n, 4, 4), (1, n, 3, 3)
        dfm = scenes.render_at(
            renderer,
            scene,
            scenes.camera_like(target, c2w.expand(k, -1, -1, -1), intrinsics.expand(k, -1, -1, -1)),
        )  # observation (K, n, 3, H, W)
        base = scenes.render_at(renderer, base_scene, scenes.camera_like(target, c2w, intrinsics))
        # Visible side.
        at = [frame_lists[index].index(f) for f in visible]
        truth_vis = (item.novel.images[0, at] + 1) / 2
        for j in range(k):
            pred = (dfm.observation[j, at].clamp(-1, 1) + 1) / 2
            stats["dfm_psnr"].append(float(psnr(pred, truth_vis).mean()))
            stats["dfm_ssim"].append(float(ssim(pred, truth_vis).mean()))
        pred = (base.observation[0, at].clamp(-1, 1) + 1) / 2
        stats["base_psnr"].append(float(psnr(pred, truth_vis).mean()))
        stats["base_ssim"].append(float(ssim(pred, truth_vis).mean()))
        # Hidden side: the back view of every sample and of the baseline.
        candidates, hidden = scene_heldout.palette_candidates(views, truth, index, item)
        backs = out.observation[index * k : (index + 1) * k]  # (K, 3, H, W) in [-1, 1]
        nearest, real, _ = scene_heldout.classify_backs(
            (backs.clamp(-1, 1) + 1) / 2, candidates, hidden, margin
        )
        base_back = scenes.render_at(renderer, base_scene, target).observation
        base_nearest, base_real, _ = scene_heldout.classify_backs(
            (base_back.clamp(-1, 1) + 1) / 2, candidates, hidden, margin
        )
        true_index = int(truth["sequences"][name]["hidden_index"])
        found = set(nearest[real].tolist())
        stats["real"] += real.float().tolist()
        stats["base_real"].append(float(base_real[0]))
        stats["distinct"].append(float(len(found)))
        stats["true_found"].append(float(true_index in found))
        stats["spread"].append(back_spread((backs.clamp(-1, 1) + 1) / 2, hidden))
        counts += np.bincount(nearest[real].numpy(), minlength=len(palette))

        def label(i: int, ok: bool) -> str:
            return _hex(palette[i]) if ok else f"blend (~{_hex(palette[i])})"

        rows.append(
            [name, _hex(palette[true_index]), label(int(base_nearest[0]), bool(base_real[0]))]
            + [label(int(i), bool(ok)) for i, ok in zip(nearest, real, strict=True)]
        )
        true_back = item.target.images[0]  # (1, 3, H, W)
        context = batches[index].context.observation[:, 0]
        pictures += list(_tiles(torch.cat([context, true_back, base_back, backs])))
        captions += ["input", "true back", "baseline", *[f"sample {j}" for j in range(k)]]
        if index == 0:
            files |= _videos(out_dir, dfm, base, frame_lists[0], turntable, model_config)
            files |= _export(out_dir / "export", scene, dfm, c2w[0], intrinsics[0], model_config)

    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    grid = media.image_grid(pictures, ncols=3 + k, captions=captions)
    Image.fromarray(grid).save(out_dir / "backs.png")
    progressive = recorder.frames(scale=_UPSCALE)
    for suffix in (".mp4", ".gif"):
        media.write_video(out_dir / f"progressive{suffix}", progressive, fps=6)

    mean = {key: float(np.mean(v)) if v else float("nan") for key, v in stats.items()}
    scores = {
        "dfm_visible_psnr": mean["dfm_psnr"],
        "baseline_visible_psnr": mean["base_psnr"],
        "dfm_real_colour": mean["real"],
        "baseline_real_colour": mean["base_real"],
        "dfm_distinct_colours": mean["distinct"],
        "dfm_back_spread": mean["spread"],
    }
    (out_dir / "scores.json").write_text(
        json.dumps(
            {**scores, "palette_counts": counts.tolist(), "seeds": seeds, "world_seed": world.seed},
            indent=1,
        )
    )
    sampler_name = {"dpmpp_2m": "DPM-Solver++(2M)", "ddim": "DDIM"}.get(sampler, sampler)
    summary = (
        f"The shipped objects-demo weights (DFM {provenance.get('steps', '?')} steps, pixelNeRF "
        f"baseline {provenance['baseline_steps']} steps) given only the front view of "
        f"{num_objects} held-out objects (objects world seed {world.seed}, never used in "
        f"training). K = {k} samples per object in one batched call, {sampler_name} with "
        f"{steps} steps (fewer than dfm sample's DDIM 50, to fit the demo's time; every step "
        f"renders the scene). Visible side: PSNR/SSIM at +-30 degrees from the front "
        f"against the world's frames. Hidden side: each sample's view from behind, classified "
        f"by the nearest of the {len(palette)} palette colours (a blend does not count); the "
        f"back of the baseline, a deterministic model, is expected to be a blend. These "
        f"weights were trained on one CPU thread for a short time; their measured quality, "
        f"and what it still lacks, is in dfm-render's weights/MODEL_CARD.md."
    )
    score_rows = [
        ["visible side PSNR (dB)", f"{scores['dfm_visible_psnr']:.2f}",
         f"{scores['baseline_visible_psnr']:.2f}"],
        ["visible side SSIM", f"{mean['dfm_ssim']:.3f}", f"{mean['base_ssim']:.3f}"],
        ["backs whose colour is a palette colour", f"{scores['dfm_real_colour']:.2f}",
         f"{scores['baseline_real_colour']:.2f}"],
        ["distinct colours among the K samples", f"{scores['dfm_distinct_colours']:.2f}",
         "1 at most"],
        ["objects whose true colour is among the samples", f"{mean['true_found']:.2f}", ""],
        ["spread of the backs (RMS, [0, 1] scale)", f"{scores['dfm_back_spread']:.3f}", "0"],
    ]  # fmt: skip
    tables = [
        ("scores", ["", "DFM", "baseline"], score_rows),
        (
            "back colour per object (nearest palette colour; 'blend' when not close to any)",
            ["object", "true", "baseline", *[f"sample {j}" for j in range(k)]],
            rows,
        ),
        (
            "3D export of object 0, sample 0 (fused from its turntable renders; marching cubes "
            "on its density)",
            ["file", "path"],
            [[label, str(path.relative_to(out_dir))] for label, path in files.items()
             if path.suffix in (".ply", ".obj")],
        ),
    ]  # fmt: skip
    images = {
        "per object: input view, true back, baseline back, K sampled backs": out_dir / "backs.png"
    }
    videos = {
        caption: files[key]
        for caption, key in (
            ("turntable of object 0: baseline, then the K samples", "turntable.mp4"),
            ("depth along the same turntable (near = blue)", "depth.mp4"),
        )
    }
    videos["progressive sampling of object 0: x_t (top) and the x0 estimate (bottom)"] = (
        out_dir / "progressive.mp4"
    )
    return DemoSection(
        title="Inverse graphics: one image -> K 3D scenes",
        summary=summary,
        scores=scores,
        command=COMMAND + (f" --seed {seed}" if seed else ""),
        tables=tables,
        images=images,
        videos=videos,
    )


def _videos(
    out_dir: Path, dfm: Any, base: Any, frames: list[int], turntable: list[int], config: Any
) -> dict[str, Path]:
    """Turntable and depth videos: the baseline, then the K samples, side by side and captioned
    (mp4 + gif)."""
    from dfm_apps import media

    at = [frames.index(f) for f in turntable]
    rgb = torch.cat([base.observation[:, at], dfm.observation[:, at]])  # (1 + K, T, 3, H, W)
    depth = torch.cat([base.depth[:, at], dfm.depth[:, at]])[:, :, 0]  # (1 + K, T, H, W)
    columns, count = rgb.shape[:2]
    captions = ["baseline", *[f"sample {j}" for j in range(columns - 1)]]
    rgb_tiles = _tiles(rgb.transpose(0, 1).flatten(0, 1))  # (T (1 + K), H', W', 3)
    depth_up = depth.transpose(0, 1).flatten(0, 1)  # (T (1 + K), H, W)
    depth_up = depth_up.repeat_interleave(_UPSCALE, 1).repeat_interleave(_UPSCALE, 2)
    depth_tiles = media.colorize_depth(depth_up, vmin=config.near, vmax=config.far)
    files = {}
    fps = max(1.0, count / 4)  # one turn in about 4 s
    for kind, tiles in (("turntable", rgb_tiles), ("depth", depth_tiles)):
        video = np.stack(
            [
                media.image_grid(tiles[t * columns : (t + 1) * columns], captions=captions)
                for t in range(count)
            ]
        )
        for suffix in (".mp4", ".gif"):
            files[f"{kind}{suffix}"] = media.write_video(
                out_dir / f"{kind}{suffix}", video, fps=fps
            )
    return files


def _export(
    out: Path, scene: Any, renders: Any, c2w: torch.Tensor, intrinsics: torch.Tensor, config: Any
) -> dict[str, Path]:
    """Sample 0 as a point cloud and a mesh (``scene_heldout.export_first_sample``) from the
    views already rendered for the videos, on a 48^3 grid (the demo's time budget).

    Args:
        out: output folder.
        scene: the K sampled scenes of the object (a batched ``SceneField``); sample 0 is exported.
        renders: their ``SceneRendering`` at the n views, observation (K, n, 3, H, W).
        c2w: (n, 4, 4) poses of those views; intrinsics (n, 3, 3).
        config: the ``SceneModelConfig``.
    """
    from dfm_apps.scene_heldout import export_first_sample

    return export_first_sample(out, scene, renders, c2w, intrinsics, far=config.far, resolution=48)
