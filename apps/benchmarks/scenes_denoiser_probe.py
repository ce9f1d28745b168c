"""Where a 3D DFM model's hidden side fails: its one-step x0 estimate at the back, by noise level.

Sampling can only end on a real palette colour behind an object if the denoiser (a) renders
that colour when the noisy target already shows it (low noise: the target view's features
carry it), and (b) predicts the object's presence behind it from the front view alone (high
noise: the mean over the 4 colours, a blend, on the object's silhouette). This probe noises
the true back view (frame N/2 of held-out objects, world seed 1000) to several levels t,
takes one x0 estimate (DFM eq. 5's forward model applied to the predicted scene) and reports:

* PSNR of x0 against the true back;
* the fraction of x0 backs that ``scene_heldout.classify_backs`` counts as a palette colour
  (by the back's colour, and stricter, by every hidden pixel), and the fraction whose
  nearest palette colour is the true one;
* a row ``20, target view only``: the t = 20 estimate's scene rendered with its context view
  turned away (``target_view_only``), i.e. what the target view's code alone gives;
* ``object``: the fraction of the hidden pixels (the object's back in the exact render) where
  x0 is closer to the truth than to the render of the same view without the object (the
  ground and sky behind it), i.e. where the estimate draws the object at all.

The last row scores the deterministic pixelNeRF baseline's render of the back the same way
(what the front view alone gives without diffusion). A second table follows the baseline's
field around the object: at 0, 45, 90 and 180 degrees from the input view, the relative depth
error on the object's pixels (``scene_heldout.depth_error``) and PSNR on the object's pixels
and on the rest (floor, sky). At 0 degrees the render is of the input view itself: what a
pixel-aligned field should reproduce almost exactly.

    uv run python apps/benchmarks/scenes_denoiser_probe.py --objects 8
    uv run python apps/benchmarks/scenes_denoiser_probe.py --run runs/od --objects 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dfm_apps import scene_heldout, scenes
from dfm_apps.config import load_preset, load_run_config, validate
from dfm_apps.image_metrics import psnr
from dfm_apps.scene_demo import WORLD_SEED, load_demo_models
from dfm_render import VolumeRenderer

LEVELS = (20, 100, 300, 500, 700, 999)


@dataclass
class BackView:
    """What an estimate of one object's back view is scored against."""

    candidates: torch.Tensor  # (P, 3, H, W) the exact back painted with each palette colour
    hidden: torch.Tensor  # (H, W) bool, the object's hidden back
    hidden_index: int  # the true colour
    truth: torch.Tensor  # (3, H, W) in [0, 1]
    empty: torch.Tensor  # (3, H, W) in [0, 1], the same view without the object

    def score(self, x0: torch.Tensor) -> tuple[float, ...]:
        """x0 (1, 3, H, W) in [-1, 1] -> PSNR; for the colour and the per-pixel measure, the
        distance to the nearest candidate over that candidate's separation from the others
        (``classify_backs`` counts <= 1/3) and whether it counts; the true one nearest?;
        object drawn."""
        x0 = (x0.clamp(-1, 1) + 1) / 2
        figures = [float(psnr(x0, self.truth[None]).mean())]
        for measure in scene_heldout.BACK_MEASURES:
            nearest, real, best = scene_heldout.classify_backs(
                x0, self.candidates, self.hidden, 1 / 3, measure=measure
            )
            between = scene_heldout.back_distances(
                self.candidates, self.candidates, self.hidden, measure
            )
            separation = between.fill_diagonal_(float("inf")).min(dim=1).values[nearest]
            figures += [float(best[0] / separation[0]), float(real[0])]
        closer = (x0[0] - self.truth).norm(dim=0) < (x0[0] - self.empty).norm(dim=0)
        figures += [float(int(nearest[0]) == self.hidden_index)]
        return (*figures, float(closer[self.hidden].float().mean()))


TARGET_ONLY = f"{LEVELS[0]}, target view only"


def target_view_only(scene):
    """The joint field with its context views turned away: every point lies behind their
    cameras, so only the target view's code reaches the pooling (``FieldConfig.view_pooling``).
    How much the context view's code pulls the estimate of the hidden back, which that view
    sees only through the object's front."""
    half_turn = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=scene.c2w.dtype))
    c2w = scene.c2w.clone()
    c2w[:, :-1] = c2w[:, :-1] @ half_turn  # (B, Vc, 4, 4): 180 degrees about the camera's y
    return dataclasses.replace(scene, c2w=c2w, cache=None)


def without_object(views, truth: dict, index: int, item) -> torch.Tensor:
    """The exact back view with the spheres removed: (3, H, W) in [0, 1]."""
    from dfm_data.worlds.objects import ObjectScene, render_object_scene

    name = views.sequences[index][1]
    record = truth["sequences"][name]
    scene = ObjectScene.from_json(record["scene"])
    empty = ObjectScene(**{**scene.to_json(), "centres": ((0.0, -1e6, 0.0),), "radii": (1e-3,)})
    to_world = (views.scales.get(name) or 1.0) / views.config.mean_depth_scale
    size = views.config.image_size
    h, w = record["image_size_hw"]
    intrinsics = np.asarray(record["intrinsics_px"], dtype=np.float64).copy()
    intrinsics[0] *= size / w
    intrinsics[1] *= size / h
    pose = (item.world_from_context[0] @ item.target.c2w[0, 0]).double().numpy()
    pose[:3, 3] *= to_world
    rgb = render_object_scene(empty, pose, intrinsics, size, size, 2)["rgb"]
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()


def baseline_at(
    baseline, renderer, views, truth: dict, index: int, frame: int
) -> tuple[float, float, float]:
    """The baseline's render of object ``index`` at ``frame`` from frame 0 alone: the relative
    depth error on the object's pixels, and PSNR on the object's pixels and on the rest."""
    item = views.views_at(index, [0], [frame], [])
    batch = scenes.scene_batch_from_views(item, patch_size=None)
    with torch.no_grad():
        out = renderer(baseline.scene(batch.context), batch.target_params)
    exact = scene_heldout.exact_depths(
        views, truth, index, item.target.c2w[0], item, object_only=True
    )  # (1, H, W)
    on_object = exact > 0
    pred, true = (out.observation + 1) / 2, (item.target.images[:, 0] + 1) / 2  # (1, 3, H, W)
    return (
        scene_heldout.depth_error(out.depth[:, 0], out.opacity[:, 0], exact),
        float(psnr(pred, true, mask=on_object)[0]),
        float(psnr(pred, true, mask=~on_object)[0]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a 3D run directory (default: shipped weights)")
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--world-seed", type=int, default=WORLD_SEED, help="0: the training world's objects"
    )
    parser.add_argument("--world-root", type=Path, help="an objects world already written")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.run is not None:
        config = validate(load_run_config(args.run / "config.yaml"))
        trained = scenes.load_models(config, args.run)
        diffusion, baseline = trained.diffusion, trained.baseline
        label = f"{args.run} (newest checkpoint)"
    else:
        diffusion, baseline, model_config, metadata = load_demo_models()
        config = validate(load_preset("objects-demo"))
        config.model = model_config
        label = f"shipped objects-demo weights ({metadata.get('steps', '?')} steps)"
    schedule = diffusion.schedule
    rows: dict[int | str, list[tuple[float, ...]]] = {"truth": []}
    rows |= {t: [] for t in LEVELS}
    rows[TARGET_ONLY] = []
    rows["baseline"] = []
    renderer = VolumeRenderer(config.model.renderer).eval()
    n_frames = scenes.WorldConfig().n_frames
    angles: dict[int, list[tuple[float, float, float]]] = {
        frame: [] for frame in (0, n_frames // 8, n_frames // 4, n_frames // 2)
    }
    with tempfile.TemporaryDirectory(prefix="dfm-probe-") as work:
        # The training world is rebuilt whole (160 objects) so its objects are the trained ones.
        count = 160 if args.world_seed == 0 else int(args.objects / 0.6) + 2
        world = scenes.WorldConfig(n_sequences=count, seed=args.world_seed)
        root = args.world_root or scenes.ensure_world(
            Path(work) / "w", world, seed=args.world_seed, categories=["orb"]
        )
        views = scenes._views_dataset(config, root, "train", 0)
        truth = json.loads((root / "orb" / "synthetic_ground_truth.json").read_text())
        back = world.n_frames // 2
        for index in range(min(args.objects, len(views))):
            item = views.views_at(index, [0], [back], [])
            batch = scenes.scene_batch_from_views(item, patch_size=None)
            true_back = item.target.images[:, 0]  # (1, 3, H, W) in [-1, 1]
            candidates, hidden = scene_heldout.palette_candidates(views, truth, index, item)
            hidden_index = truth["sequences"][views.sequences[index][1]]["scene"]["hidden_index"]
            empty = without_object(views, truth, index, item)
            truth01 = (true_back[0] + 1) / 2

            back_view = BackView(candidates, hidden, hidden_index, truth01, empty)
            rows["truth"].append(back_view.score(true_back))  # the measures' own calibration
            with torch.no_grad():
                condition = diffusion.condition(batch.context, batch.target_params)
                for level in LEVELS:
                    seed = torch.Generator().manual_seed(index)
                    noise = torch.randn(true_back.shape, generator=seed)
                    t = torch.tensor([float(level)])
                    x_t = schedule.add_noise(true_back, t, noise)
                    denoised = diffusion.denoise(x_t, t, condition)
                    rows[level].append(back_view.score(denoised.x0))
                    if level == LEVELS[0]:
                        alone = target_view_only(denoised.signal)
                        rows[TARGET_ONLY].append(
                            back_view.score(renderer(alone, batch.target_params).observation)
                        )
                scene = baseline.scene(batch.context)
                rows["baseline"].append(
                    back_view.score(renderer(scene, batch.target_params).observation)
                )
            for frame in angles:
                angles[frame].append(baseline_at(baseline, renderer, views, truth, index, frame))
    print(
        f"{label}; {len(rows['truth'])} objects of world seed {args.world_seed}, back view "
        f"(frame {back})\n"
    )
    print(
        "| t (DFM x0) | x0 PSNR (dB) | colour: distance / separation | palette colour | "
        "pixels: distance / separation | every pixel too | nearest is the true colour | "
        "object drawn |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for level, values in rows.items():
        p, colour, real, pixels, real_pixels, right, drawn = np.array(values).T
        print(
            f"| {level} | {p.mean():.2f} | {np.median(colour):.2f} | {real.mean():.0%} | "
            f"{np.median(pixels):.2f} | {real_pixels.mean():.0%} | {right.mean():.0%} | "
            f"{drawn.mean():.0%} |"
        )
    print(
        "\n(distance / separation: median over objects; a back counts as a palette colour at "
        "<= 1/3, an even blend of two lies at 1/2; 'truth' scores the loader's own back image)"
    )
    print(
        "\nThe baseline's field by angle from the input view (0: the input view itself)\n\n"
        "| view | object depth error | object PSNR (dB) | rest PSNR (dB) |\n|---:|---:|---:|---:|"
    )
    for frame, values in angles.items():
        error, on_object, rest = (np.nanmean([v[i] for v in values]) for i in range(3))
        degrees = 360 * frame / n_frames
        print(f"| {degrees:.0f}° | {error:.3f} | {on_object:.2f} | {rest:.2f} |")


if __name__ == "__main__":
    main()
