"""The inverse-graphics application: data adapter, hidden-side oracle, and `dfm train objects-demo`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dfm_apps import scene_heldout, scenes
from dfm_apps.applications import init_from_run
from dfm_apps.cli import main
from dfm_apps.config import load_run_config, validate

TINY = [
    "data.world.n_sequences=6",
    "data.world.n_frames=12",
    "data.world.size=16",
    "data.min_gap=2",
    "data.max_gap=6",
    "model.image_size=16",
    "model.patch_size=4",
    "trainer.max_steps=2",
    "trainer.batch_size=2",
    "baseline_steps=2",
    "evaluation.num_scenes=1",
    "evaluation.num_samples=2",
    "evaluation.steps=2",
    "evaluation.autoregressive_views=2",
    "evaluation.autoregressive_step=3",
    "num_threads=1",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small objects world (64^2 frames, as the demo's) and its loader at the 32^2 model size."""
    root = tmp_path_factory.mktemp("objects") / "world"
    config = scenes.ScenesConfig()
    config.data.root = str(root)
    config.data.world = scenes.WorldConfig(n_sequences=5, n_frames=8, size=64, seed=3)
    scenes.ensure_world(root, config.data.world, seed=3, categories=["orb"])
    views = scenes._views_dataset(config, root, "train", 1)
    truth = json.loads((root / "orb" / "synthetic_ground_truth.json").read_text())
    return config, views, truth


def test_views_become_a_patch_batch_for_the_3d_model(world):
    config, views, _ = world
    items = scenes.SceneTrainingSet(views, patch_size=config.model.patch_size)
    batch = scenes.collate_scene_batches([items[0], items[1]])
    size, patch = config.model.image_size, config.model.patch_size
    assert batch.context.observation.shape == (2, 1, 3, size, size)
    assert batch.target.shape == (2, 3, size, size)
    assert batch.target_loss_observation.shape == (2, 3, patch, patch)
    assert batch.novel.shape == (2, 1, 3, patch, patch)
    # The loss patch is the target image at the patch origin.
    origin = batch.target_loss_params.patch_origin
    for b in range(2):
        i, j = origin[b].tolist()
        expected = batch.target[b, :, i : i + patch, j : j + patch]
        assert torch.equal(batch.target_loss_observation[b], expected)
    # Context view 0 is the reference frame.
    torch.testing.assert_close(batch.context.params.c2w[:, 0], torch.eye(4).expand(2, 4, 4))


@pytest.mark.parametrize("measure", scene_heldout.BACK_MEASURES)
def test_the_hidden_side_oracle_recognises_the_true_back_colour(world, measure):
    """The repainted exact renders agree with the loader's image only for the true colour."""
    config, views, truth = world
    back = 4  # half of the 8-frame orbit: the view from behind
    margin = config.evaluation.palette_margin
    for index in range(len(views)):
        name = views.sequences[index][1]
        item = views.views_at(index, [0], [back])
        candidates, hidden = scene_heldout.palette_candidates(views, truth, index, item)
        assert hidden.sum() > 10  # the back view shows the hidden half
        image = (item.target.images[:, 0] + 1) / 2
        true_index = truth["sequences"][name]["hidden_index"]
        nearest, real, _ = scene_heldout.classify_backs(
            image, candidates, hidden, margin, measure=measure
        )
        assert nearest.item() == true_index and real.item()
        # An even blend of the true colour and another is close to both, and counts as neither.
        other = (true_index + 1) % len(candidates)
        blend = (candidates[true_index] + candidates[other])[None] / 2
        _, blend_real, _ = scene_heldout.classify_backs(
            blend, candidates, hidden, margin, measure=measure
        )
        assert not blend_real.item()
        # The colour measure reads the back's colour, not where its shading falls: the true
        # back with its hidden pixels shuffled keeps its colour; per pixel it is another image.
        shuffled = image.clone()
        pixels = shuffled[..., hidden]
        shuffled[..., hidden] = pixels[..., torch.randperm(pixels.shape[-1])]
        distance = scene_heldout.back_distances(shuffled, candidates, hidden, measure)[0]
        unshuffled = scene_heldout.back_distances(image, candidates, hidden, measure)[0]
        if measure == "colour":
            torch.testing.assert_close(distance, unshuffled)
        else:
            assert distance[true_index] > unshuffled[true_index] + 0.01
    # The front view shows no hidden pixel (that is the ambiguity).
    item = views.views_at(0, [0], [0])
    _, hidden = scene_heldout.palette_candidates(views, truth, 0, item)
    assert hidden.sum() == 0


def test_back_colour_distance_is_that_of_the_mean_colours():
    """float64 re-computation of the colour measure, and its typed error."""
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(3, 3, 6, 6, generator=generator)
    candidates = torch.rand(4, 3, 6, 6, generator=generator)
    hidden = torch.rand(6, 6, generator=generator) > 0.4
    # Mixed precision, as the protocols' quantised float64 renders against float32 candidates.
    got = scene_heldout.back_distances(images.double(), candidates, hidden, "colour")
    img = images.double().numpy()[..., hidden.numpy()].mean(-1)  # (N, 3)
    cand = candidates.double().numpy()[..., hidden.numpy()].mean(-1)  # (P, 3)
    expected = np.sqrt(((img[:, None] - cand[None]) ** 2).sum(-1))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="measure"):
        scene_heldout.back_distances(images, candidates, hidden, "hue")


def test_dfm_train_objects_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "demo"
    status = main(["train", "objects-demo", "--run-dir", str(run), "data.root=data/w", *TINY])
    assert status == 0
    printed = capsys.readouterr().out
    assert "dfm_visible_psnr" in printed and "real_colour" in printed
    scores = json.loads((run / "scores.json").read_text())
    keys = ("dfm_visible_psnr", "baseline_visible_psnr", "real_colour", "real_colour_pixels")
    for key in (*keys, "distinct", "distinct_nearest"):
        assert isinstance(scores[key], float)
    assert (run / "checkpoints").is_dir() and (run / "baseline" / "checkpoints").is_dir()
    report = (run / "report.html").read_text()
    videos = re.findall(r'<video[^>]*src="([^"]+)"', report)
    assert videos and all((run / Path(v)).is_file() for v in videos)
    assert (run / "backs.png").is_file()
    # Exports, the progressive-sampling animation and the autoregressive turntable.
    made = {p.name for p in run.rglob("*") if p.is_file()}
    for name in ("progressive.gif", "sample0-points.ply", "sample0-mesh.ply", "sample0-mesh.obj"):
        assert name in made
    assert "autoregressive-turntable.mp4" in made
    obj = next(run.rglob("sample0-mesh.obj")).read_text().splitlines()
    assert all(len(line.split()) == 7 for line in obj if line.startswith("v "))
    # A second run on the same directory resumes instead of training again (and samples
    # with reconstruction guidance towards the input view this time).
    guided = [
        *TINY,
        "evaluation.reconstruction_weight=0.5",
        "evaluation.autoregressive_views=0",
        "evaluation.sampler=dpmpp_2m",
    ]
    status = main(
        ["train", "objects-demo", "--run-dir", str(run), "--resume", "data.root=data/w", *guided]
    )
    assert status == 0
    assert "resumed from step 2" in capsys.readouterr().out
    # `dfm export scene`: one sampled scene of the run as point cloud and meshes.
    assert main(["export", "scene", str(run), str(tmp_path / "exported"), "--seed", "3"]) == 0
    written = sorted(p.name for p in (tmp_path / "exported").iterdir())
    assert written == ["sample0-mesh.obj", "sample0-mesh.ply", "sample0-points.ply"]
    with open(tmp_path / "exported" / "sample0-points.ply", "rb") as ply:
        assert ply.readline() == b"ply\n"
    assert main(["export", "scene", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    # `dfm sample` may evaluate the trained field in bfloat16, but not change the model.
    fast = ["evaluation.autoregressive_views=0", "evaluation.steps=2"]
    argv = ["sample", str(run), "--out", str(tmp_path / "bf16"), *fast]
    assert main([*argv, "model.renderer.field_dtype=bfloat16"]) == 0
    assert (tmp_path / "bf16" / "scores.json").is_file()
    capsys.readouterr()
    assert main([*argv, "model.image_size=8"]) == 2
    err = capsys.readouterr().err
    assert "model.image_size" in err and "model.renderer.field_dtype" in err
    # A held-out evaluation split over two processes pools to the unsplit one.
    split = [*fast, "evaluation.num_scenes=3", "evaluation.videos=false", "evaluation.export=false"]
    outputs = []
    for shard in ("", "0", "1"):
        out = tmp_path / f"shard{shard}"
        extra = ["evaluation.num_shards=2", f"evaluation.shard={shard}"] if shard else []
        assert main(["sample", str(run), "--out", str(out), *split, *extra]) == 0
        outputs.append(json.loads((out / "scores.json").read_text()))
    whole, *shards = outputs
    assert [s["num_objects"] for s in outputs] == [3.0, 2.0, 1.0]
    pooled = scene_heldout.pool_scores(shards)
    assert pooled.keys() == whole.keys()
    for key, value in whole.items():
        assert pooled[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key  # float32 scores
    # Fine-tuning (`init_from`) into a model with the learned view pooling: every tensor of
    # the source run carries over and the new zero head makes the new model start equal to it.
    capsys.readouterr()
    tuned = tmp_path / "runs" / "tuned"
    learned = ["model.field.view_pooling=learned", f"init_from={run}"]
    quick = [*fast, "evaluation.num_scenes=1", "evaluation.videos=false", "evaluation.export=false"]
    argv = ["train", "objects-demo", "--run-dir", str(tuned), "data.root=data/w", *TINY, *quick]
    assert main([*argv, *learned]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "init_from ->" in line]
    assert len(notes) == 2 and "kept" not in notes[0]  # the baseline: nothing new
    assert notes[1].endswith("kept at their initialisation: predictor.field.view_logit.weight")
    source = scenes.load_models(validate(load_run_config(run / "config.yaml")), run)
    config = validate(load_run_config(tuned / "config.yaml"))
    fresh, _ = scenes.build_models(config)
    init_from_run(fresh, run)
    assert not fresh.predictor.field.view_logit.weight.any()
    batch = scenes.scene_batch_from_views(
        scenes._views_dataset(config, tmp_path / "data" / "w", "train", 0).views_at(
            0, [0], [3], []
        ),
        patch_size=None,
    )
    with torch.no_grad():
        t, x_t = torch.tensor([500.0]), torch.zeros_like(batch.target)
        outputs = [
            m.eval().denoise(x_t, t, m.condition(batch.context, batch.target_params)).x0
            for m in (source.diffusion, fresh)
        ]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    # Weights of another shape: one line naming the tensor.
    other = tmp_path / "runs" / "other"
    assert main([*argv[:3], str(other), *argv[4:], f"init_from={run}", "model.field.width=16"]) == 1
    errors = [x for x in capsys.readouterr().err.splitlines() if not re.match(r"dfm: \S+ -> ", x)]
    assert len(errors) == 1 and errors[0].startswith("dfm: error: init_from: ")
    assert "'field.blocks.0.fc_0.bias' has shape (64,)" in errors[0]


def test_loader_poses_and_the_models_rays_agree_with_the_world(world):
    """Lift the front view's pixels to 3D with its exact depth and the model's own rays, project
    them into views 45-180 degrees away with the model's projection: where the point is
    visible there, the colours match (poses, intrinsics and conventions all agree)."""
    from dfm_render.cameras import pixel_grid, project_points, rays_from_pixels

    config, views, truth = world
    size = config.model.image_size
    for index in range(2):
        for frame in (1, 2, 4):  # 8 frames per orbit: 45, 90 and 180 degrees away
            item = views.views_at(index, [0], [frame], [])
            context_c2w, target_c2w = item.context.c2w[0], item.target.c2w[0]
            depth = scene_heldout.exact_depths(views, truth, index, context_c2w, item)[0]
            seen = scene_heldout.exact_depths(views, truth, index, target_c2w, item)[0]
            rays = rays_from_pixels(
                context_c2w, item.context.intrinsics[0], pixel_grid(size, size)[None]
            )
            points = rays.origins + depth.reshape(1, -1, 1) * rays.directions  # (1, H*W, 3)
            where = project_points(points, target_c2w[None], item.target.intrinsics[0][None])
            pixel = (where.uv[0, 0] * size).floor().long()  # (H*W, 2) as (x, y)
            inside = (depth.flatten() > 0) & ((pixel >= 0) & (pixel < size)).all(dim=1)
            x, y = pixel[:, 0].clamp(0, size - 1), pixel[:, 1].clamp(0, size - 1)
            visible = inside & ((where.depth[0, 0] - seen[y, x]).abs() < 0.05 * seen[y, x])
            assert visible.sum() > 50, (index, frame)
            source = item.context.images[0, 0].reshape(3, -1)[:, visible]
            found = item.target.images[0, 0][:, y[visible], x[visible]]
            shuffled = found[
                :, torch.randperm(found.shape[1], generator=torch.Generator().manual_seed(0))
            ]
            error = (source - found).abs().mean()
            # A wrong pose or convention lands points on unrelated pixels: error ~ shuffled.
            assert error < 0.75 * (source - shuffled).abs().mean(), (index, frame, float(error))
            assert error < 0.1, (index, frame, float(error))  # [-1, 1] scale: resampling only


def test_exact_depths_match_the_worlds_depth_files(world):
    """Depth re-rendered at the loader's (scaled) cameras = the world's CO3D depth PNGs, scaled."""
    import dataclasses

    from dfm_data.images import load_depth_png, load_mask_png

    config, _, truth = world
    full = dataclasses.replace(
        config, model=dataclasses.replace(config.model, image_size=64)
    )  # the world's own frame size: no resampling between the two
    views = scenes._views_dataset(full, Path(config.data.root), "train", 0)
    index, frames = 1, [0, 3]
    name = views.sequences[index][1]
    item = views.views_at(index, [0], frames)
    exact = scene_heldout.exact_depths(views, truth, index, item.target.c2w[0], item)
    scale = views.config.mean_depth_scale / (views.scales.get(name) or 1.0)
    for k, frame in enumerate(frames):
        path = (
            Path(config.data.root)
            / "orb"
            / name
            / "depths"
            / f"frame{frame + 1:06d}.jpg.geometric.png"
        )
        on_disk = torch.from_numpy(load_depth_png(path)).float() * scale
        hit = (on_disk > 0) & (exact[k] > 0)
        assert hit.sum() > 50
        assert torch.equal(on_disk > 0, exact[k] > 0)
        torch.testing.assert_close(exact[k][hit], on_disk[hit], rtol=2e-3, atol=0)  # float16 file

    # object_only: the same depths on the object, 0 on the ground; the world's soft masks
    # (2x2 sub-samples per pixel) are 1 inside the object and 0 away from it.
    on_object = scene_heldout.exact_depths(
        views, truth, index, item.target.c2w[0], item, object_only=True
    )
    for k, frame in enumerate(frames):
        mask = torch.from_numpy(
            load_mask_png(
                Path(config.data.root) / "orb" / name / "masks" / f"frame{frame + 1:06d}.png"
            )
        )
        inside, outside = mask > 0.99, mask < 0.01
        assert inside.sum() > 20 and (outside & (exact[k] > 0)).sum() > 100  # object and ground
        assert bool((on_object[k][inside] > 0).all()) and bool((on_object[k][outside] == 0).all())
        kept = on_object[k] > 0
        assert torch.equal(on_object[k][kept], exact[k][kept])


def test_depth_error_is_the_mean_relative_error_on_the_object():
    exact = torch.tensor([[[0.0, 2.0], [4.0, 0.0]]])  # (V=1, 2, 2): two object pixels
    opacity = torch.tensor([[[0.0, 0.5], [1.0, 1.0]]])
    depth = torch.tensor([[[0.0, 1.1], [3.0, 7.0]]])  # given a hit: 2.2 and 3.0 on the object
    expected = (abs(2.2 - 2.0) / 2.0 + abs(3.0 - 4.0) / 4.0) / 2
    assert scene_heldout.depth_error(depth, opacity, exact) == pytest.approx(expected)
    assert scene_heldout.depth_error(exact * 1.0, torch.ones_like(exact), exact) == 0.0


def test_only_rank_zero_writes_the_objects_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun another rank waits for rank 0's marker (written last), writing nothing."""
    import threading

    root = tmp_path / "world"
    monkeypatch.setenv("RANK", "1")
    marker = root / "category_to_subset_name_list.json"
    timer = threading.Timer(0.2, lambda: (root.mkdir(), marker.write_text("{}")))
    timer.start()
    world = scenes.WorldConfig(n_sequences=2, n_frames=2, size=8)
    assert scenes.ensure_world(root, world, seed=0, categories=["hydrant"]) == root
    timer.join()
    assert sorted(p.name for p in root.iterdir()) == [marker.name]
