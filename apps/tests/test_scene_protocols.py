"""Real-data 3D presets (co3d-hydrant, re10k) and the fixed-pair evaluation protocols.

The datasets are dfm-data's synthetic worlds written in the real on-disk formats (the
objects world in the CO3D v2 layout under category "hydrant", the rooms world as pixelSplat
chunks), so the real loaders, eval_batches and index files are what the protocols read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfm_apps import scene_heldout, scene_pairs, scene_protocols, scenes
from dfm_apps.cli import main
from dfm_apps.image_metrics import FID_WEIGHTS_URL, LPIPSMetric, MissingWeightsError
from dfm_apps.scene_pairs import EvalPair, seeded_pairs
from dfm_apps.scene_protocols import ProtocolConfig, score_images
from dfm_render import scene_config

OBJECT_FRAMES = 8


def reduced_overrides(preset: str, image_size: int = 16) -> list[str]:
    """``model.*`` dot-list overrides turning a preset's model into ``.reduced(image_size)``."""
    full = dataclasses.asdict(scene_config(preset))
    small = dataclasses.asdict(scene_config(preset).reduced(image_size))

    def walk(a: dict, b: dict, prefix: str) -> list[str]:
        out = []
        for key, value in b.items():
            if isinstance(value, dict):
                out += walk(a[key], value, f"{prefix}{key}.")
            elif a[key] != value:
                out.append(f"{prefix}{key}={value}")
        return out

    return walk(full, small, "model.")


def common_overrides(root: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.min_gap=1",
        "data.max_gap=3",
        "trainer.max_steps=2",
        "trainer.batch_size=2",
        "trainer.num_workers=0",
        "trainer.progress=false",
        "baseline_steps=2",
        "evaluation.steps=2",
        "evaluation.protocol.num_pairs=2",
        "evaluation.protocol.num_samples=2",
        "evaluation.protocol.fid=false",
        "num_threads=1",
    ]


@pytest.fixture(scope="module")
def hydrants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The objects world in the CO3D v2 layout as category 'hydrant' (2 test sequences)."""
    from dfm_data.worlds.objects import ObjectsWorldConfig, synthesize_objects

    root = tmp_path_factory.mktemp("co3d") / "co3d"
    world = ObjectsWorldConfig(
        n_sequences=10, n_frames=OBJECT_FRAMES, image_size_hw=(32, 32), categories=("hydrant",),
        supersample=1, seed=5,
    )  # fmt: skip
    synthesize_objects(root, world, progress=False)
    return root


@pytest.fixture(scope="module")
def rooms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rooms world (360x640 frames, as RealEstate10k's); returns its pixelSplat root."""
    from dfm_data.worlds.rooms import RoomsWorldConfig, synthesize_rooms

    root = tmp_path_factory.mktemp("re10k") / "rooms"
    synthesize_rooms(
        root, RoomsWorldConfig(n_clips=3, n_frames=6, test_fraction=0.34), progress=False
    )
    return root / "pixelsplat"


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random VGG16 `features` state dict keyed as torchvision's file (He-scaled normals;
    torchvision's own initialisation of the network takes seconds on a busy CPU)."""
    from torchvision.models.vgg import cfgs

    generator = torch.Generator().manual_seed(0)
    state, index, channels = {}, 0, 3
    for entry in cfgs["D"]:  # a conv is followed by a ReLU; "M" is a max-pool
        if entry == "M":
            index += 1
            continue
        scale = math.sqrt(2.0 / (channels * 9))
        state[f"features.{index}.weight"] = (
            torch.randn(entry, channels, 3, 3, generator=generator) * scale
        )
        state[f"features.{index}.bias"] = torch.zeros(entry)
        index, channels = index + 2, entry
    path = tmp_path_factory.mktemp("weights") / "vgg16-random.pth"
    torch.save(state, path)
    return path


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64) / 255.0


def _psnr64(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    sq = (a - b) ** 2  # (H, W, 3)
    mse = sq.mean() if mask is None else sq[mask].mean()
    return float(10 * np.log10(1.0 / mse))


# ----------------------------------------------------------------------------- presets end to end


def test_dfm_train_and_sample_co3d_hydrant(hydrants, vgg_file, tmp_path, capsys):
    """2 steps of the co3d-hydrant preset at reduced size, then its protocol and `dfm sample`."""
    run = tmp_path / "run"
    overrides = [
        *common_overrides(hydrants),
        *reduced_overrides("co3d-hydrant"),
        f"evaluation.protocol.lpips_weights={vgg_file}",
    ]
    assert main(["train", "co3d-hydrant", "--run-dir", str(run), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "dfm_psnr_full" in printed and "dfm_psnr_masked" in printed
    record = json.loads((run / "metrics.json").read_text())
    assert record["protocol"] == "co3d" and "eval batches" in record["pairs_source"]
    figures, missing = record["metrics"], record["not_computed"]
    for key in ("psnr_full", "ssim_full", "lpips_full", "psnr_masked", "lpips_masked"):
        assert math.isfinite(figures[f"dfm_{key}"]) and math.isfinite(figures[f"baseline_{key}"])
    for key in ("best_of_k_psnr_full", "diversity_rmse", "palette_coverage"):
        assert math.isfinite(figures[f"dfm_{key}"])
    assert 0 <= figures["dfm_palette_coverage"] <= 1
    # FID was switched off: reported as not computed, with the reason, never dropped.
    assert figures["dfm_fid_full"] is None and "fid=false" in missing["dfm_fid_full"]
    table = (run / "metrics.md").read_text()
    assert "| FID | full |" in table and "fid=false" in table and "2025 re-evaluation" in table

    # The pairs are the world's eval batches: context = front (frame 0), target = the back.
    assert len(record["pairs"]) == 2
    for pair in record["pairs"]:
        assert pair["context"] == [0] and pair["target"] == [OBJECT_FRAMES // 2]

    # Every figure is recomputed from the written PNG frames, in float64 numpy.
    full, masked, base = [], [], []
    lpips = LPIPSMetric("vgg", backbone_path=vgg_file)
    lp = []
    for pair in record["pairs"]:
        folder = run / pair["folder"]
        truth = _png(folder / "target0-truth.png")
        mask = _png(folder / "target0-mask.png") > 0.5
        assert mask.any() and not mask.all()
        base.append(_psnr64(_png(folder / "target0-baseline.png"), truth))
        for j in range(2):
            sample = _png(folder / f"target0-sample{j}.png")
            full.append(_psnr64(sample, truth))
            masked.append(_psnr64(sample, truth, mask))
            to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float()  # noqa: E731
            lp.append(float(lpips(to_t(sample), to_t(truth))[0]))
    assert figures["dfm_psnr_full"] == pytest.approx(np.mean(full), abs=1e-9)
    assert figures["dfm_psnr_masked"] == pytest.approx(np.mean(masked), abs=1e-9)
    assert figures["baseline_psnr_full"] == pytest.approx(np.mean(base), abs=1e-9)
    assert figures["dfm_lpips_full"] == pytest.approx(np.mean(lp), abs=1e-5)
    assert (run / "report.html").is_file() and (run / "pairs.png").is_file()

    # `dfm sample` on the run scores the same pairs with new sampler noise.
    assert main(["sample", str(run), "--seed", "7", "evaluation.protocol.lpips=false"]) == 0
    out = run / "samples" / "seed-7"
    again = json.loads((out / "metrics.json").read_text())
    assert [p["target"] for p in again["pairs"]] == [p["target"] for p in record["pairs"]]
    assert math.isfinite(again["metrics"]["dfm_psnr_full"])


def test_dfm_train_and_sample_re10k(rooms, tmp_path, capsys):
    """2 steps of the re10k preset at reduced size on pixelSplat chunks, scored on an index."""
    from dfm_data import RealEstate10kConfig

    clips = RealEstate10kConfig(root=str(rooms), layout="torch", split="test").build().clips
    # Target 0 is the last frame, which looks back at the hidden wall.
    index = {clips[0]: {"context": [0, 5], "target": [5, 3]}, "0000000000000000": None}
    index_file = tmp_path / "evaluation_index_re10k.json"
    index_file.write_text(json.dumps(index))
    run = tmp_path / "run"
    overrides = [
        *common_overrides(rooms),
        *reduced_overrides("re10k"),
        "evaluation.protocol.lpips=false",
        f"evaluation.protocol.index_file={index_file}",
    ]
    assert main(["train", "re10k", "--run-dir", str(run), *overrides]) == 0
    capsys.readouterr()
    record = json.loads((run / "metrics.json").read_text())
    assert record["protocol"] == "re10k" and "pixelSplat evaluation index" in record["pairs_source"]
    # One context (the model takes one view), both targets of the index.
    assert [(p["name"], p["context"], p["target"]) for p in record["pairs"]] == [
        (clips[0], [0], [5, 3])
    ]
    figures, missing = record["metrics"], record["not_computed"]
    assert record["num_target_images"] == 2
    assert math.isfinite(figures["dfm_psnr_full"]) and math.isfinite(figures["dfm_ssim_full"])
    assert figures["dfm_psnr_masked"] is None and "no object masks" in missing["dfm_psnr_masked"]
    assert "lpips=false" in missing["dfm_lpips_full"]
    assert 0 <= figures["dfm_palette_coverage"] <= 1  # the rooms world's ground truth
    folder = run / record["pairs"][0]["folder"]
    expected = [
        _psnr64(_png(folder / f"target{t}-sample{j}.png"), _png(folder / f"target{t}-truth.png"))
        for t in range(2)
        for j in range(2)
    ]
    assert figures["dfm_psnr_full"] == pytest.approx(np.mean(expected), abs=1e-9)
    assert main(["sample", str(run), "--seed", "3"]) == 0
    # `dfm eval` runs the same protocol into RUN/eval/<protocol>-seed<seed>/.
    assert main(["eval", str(run), "--protocol", "re10k", "--seed", "3"]) == 0
    again = json.loads((run / "eval" / "re10k-seed3" / "metrics.json").read_text())
    assert again["pairs"] == record["pairs"] and again["protocol"] == "re10k"
    assert (run / "eval" / "re10k-seed3" / "metrics.md").read_text().startswith("# Protocol")


def test_room_candidates_recognise_the_true_back_wall(rooms):
    """The exact repainted renders match the loader's frame only in the clip's true colour."""
    truth = json.loads((rooms.parent / "ground_truth.json").read_text())
    config = scenes.ScenesConfig(
        data=scenes.SceneDataConfig(root=str(rooms), format="re10k", synthesize=False)
    )
    config.model = config.model.reduced(16)
    assert scene_protocols.world_truth(config, rooms) == truth
    margin = config.evaluation.palette_margin
    for split in ("train", "test"):
        dataset = scenes._views_dataset(config, rooms, split, 0)
        for index, clip in enumerate(dataset.clips):
            item = scene_protocols._views_at(dataset, EvalPair(index, clip, (0,), (5,)))
            candidates, hidden = scene_protocols.room_palette_candidates(
                dataset, truth, index, item
            )
            assert hidden.sum() >= 16
            frame = (item.target.images[:, 0] + 1) / 2
            for measure in scene_heldout.BACK_MEASURES:
                nearest, real, _ = scene_heldout.classify_backs(
                    frame, candidates, hidden, margin, measure=measure
                )
                assert nearest.item() == truth["clips"][clip]["hidden_index"] and real.item()
                other = (nearest.item() + 1) % len(candidates)
                blend = (candidates[nearest.item()] + candidates[other])[None] / 2
                assert not scene_heldout.classify_backs(
                    blend, candidates, hidden, margin, measure=measure
                )[1].item()
            # The first camera never sees the wall behind it (that is the ambiguity).
            item0 = scene_protocols._views_at(dataset, EvalPair(index, clip, (0,), (0,)))
            _, hidden0 = scene_protocols.room_palette_candidates(dataset, truth, index, item0)
            assert hidden0.sum() == 0


# ----------------------------------------------------------------------------- pairs


def test_seeded_pairs_are_deterministic_and_follow_the_documented_recipe():
    names, lengths = [f"s{i}" for i in range(6)], [40, 1, 12, 40, 40, 5]
    pairs = seeded_pairs(names, lengths, num_pairs=4, seed=3, min_gap=5, max_gap=20)
    assert pairs == seeded_pairs(names, lengths, num_pairs=4, seed=3, min_gap=5, max_gap=20)
    # The first pairs do not depend on how many are asked for.
    assert seeded_pairs(names, lengths, num_pairs=2, seed=3, min_gap=5, max_gap=20) == pairs[:2]
    assert [p.name for p in pairs] == ["s0", "s2", "s3", "s4"]  # s1 has a single frame
    for p in pairs:
        n = lengths[p.index]
        rng = np.random.default_rng([3, p.index])
        gap = min(int(rng.integers(5, 21)), n - 1)
        start = int(rng.integers(0, n - gap))
        assert p == EvalPair(p.index, p.name, (start,), (start + gap,))
        assert 0 <= p.context[0] < p.target[0] < n
    assert seeded_pairs(names, lengths, num_pairs=4, seed=4, min_gap=5, max_gap=20) != pairs


def test_eval_batch_pairs_map_entries_to_split_positions(hydrants, tmp_path):
    config = scenes.ScenesConfig(data=scenes.SceneDataConfig(root=str(hydrants), synthesize=False))
    config.data.categories = ["hydrant"]
    dataset = scenes._views_dataset(config, hydrants, "test", 0)
    path = hydrants / "hydrant" / "eval_batches" / "eval_batches_fewview_dev.json"
    pairs, skipped = scene_pairs.eval_batch_pairs(dataset, path, num_pairs=10, num_context=1)
    batches = json.loads(path.read_text())
    assert skipped == 0 and len(pairs) == len(batches) == 2
    for pair, batch in zip(pairs, batches, strict=True):
        frames = dataset.frames[pair.name]
        assert frames[pair.target[0]].image_path == batch[0][2]  # first entry: the target
        assert frames[pair.context[0]].image_path == batch[1][2]
    # A batch naming a frame outside the split is skipped and counted; a broken one is an error.
    outside = [["nope", 0, "hydrant/nope/images/frame000001.jpg"]] * 2
    (tmp_path / "eb.json").write_text(json.dumps([outside, *batches]))
    pairs2, skipped2 = scene_pairs.eval_batch_pairs(
        dataset, tmp_path / "eb.json", num_pairs=10, num_context=1
    )
    assert skipped2 == 1 and pairs2 == pairs
    (tmp_path / "bad.json").write_text(json.dumps([[["s", "0", "p"], ["s", 0, "p"]]]))
    with pytest.raises(ValueError, match=r"bad\.json: batch 0 entry 0"):
        scene_pairs.eval_batch_pairs(dataset, tmp_path / "bad.json", num_pairs=1, num_context=1)


def test_pixelsplat_index_pairs(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(
        json.dumps(
            {
                "b": {"context": [1, 9], "target": [4, 5, 6]},
                "a": {"context": [0, 2], "target": [1]},
                "c": None,  # the index's own exclusion
                "d": {"context": [0, 50], "target": [20]},  # beyond the clip: skipped
                "zz": {"context": [0, 1], "target": [1]},  # not loaded: skipped
            }
        )
    )
    pairs, skipped = scene_pairs.pixelsplat_index_pairs(
        ["a", "b", "c", "d"], [10, 10, 10, 30], path, num_pairs=10, num_context=1
    )
    assert pairs == [EvalPair(0, "a", (0,), (1,)), EvalPair(1, "b", (1,), (4, 5, 6))]
    assert skipped == 2
    path.write_text(json.dumps({"a": {"context": [0], "target": "1"}}))
    with pytest.raises(ValueError, match=r"index\.json: a: expected"):
        scene_pairs.pixelsplat_index_pairs(["a"], [10], path, num_pairs=1, num_context=1)


# ----------------------------------------------------------------------------- metrics


def test_masked_and_full_figures_differ_as_constructed():
    """Samples equal to the truth on the object and off by d elsewhere (and the reverse)."""
    torch.manual_seed(0)
    truth = torch.rand(3, 3, 16, 16, dtype=torch.float64) * 0.5 + 0.25
    mask = torch.zeros(3, 16, 16, dtype=torch.bool)
    mask[:, 4:12, 3:13] = True  # 80 of 256 pixels
    d = torch.tensor([0.1, 0.2], dtype=torch.float64)  # per sample
    off_object = truth[:, None] + d[None, :, None, None, None] * (~mask[:, None, None])
    out = score_images(off_object, truth, masks=mask)
    assert out["psnr_masked"] == math.inf  # zero error on the object
    # Full image: MSE = d^2 * (fraction of pixels off the object), averaged over the samples.
    frac = 1 - 80 / 256
    expected = np.mean([10 * np.log10(1 / (v**2 * frac)) for v in (0.1, 0.2)])
    assert out["psnr_full"] == pytest.approx(expected, abs=1e-9)
    on_object = truth[:, None] + d[None, :, None, None, None] * mask[:, None, None]
    out = score_images(on_object, truth, masks=mask)
    expected_masked = np.mean([10 * np.log10(1 / v**2) for v in (0.1, 0.2)])
    expected_full = np.mean([10 * np.log10(1 / (v**2 * 80 / 256)) for v in (0.1, 0.2)])
    assert out["psnr_masked"] == pytest.approx(expected_masked, abs=1e-9)
    assert out["psnr_full"] == pytest.approx(expected_full, abs=1e-9)
    assert out["psnr_full"] > out["psnr_masked"]
    # The best of the K = 2 samples is the one off by 0.1; the pair's RMS difference is 0.1*sqrt(f).
    assert out["best_of_k_psnr_masked"] == pytest.approx(20.0, abs=1e-9)
    assert out["diversity_rmse"] == pytest.approx(0.1 * math.sqrt(80 / 256), abs=1e-9)
    assert out["ssim_full"] < 1
    assert out["fid_full"] is None and out["lpips_full"] is None  # no weights given: skipped


def test_lpips_and_fid_see_whole_and_composited_images(monkeypatch):
    """FID pools all K samples against the truths; masked LPIPS/FID see both images on the
    background colour, and images with an empty mask are left out of the masked figures."""
    calls = []

    def fake_fid(a, b, *, weights_path, **_):
        calls.append((a.clone(), b.clone(), weights_path))
        return float(len(calls))

    monkeypatch.setattr("dfm_apps.image_metrics.fid", fake_fid)
    torch.manual_seed(1)
    truth = torch.rand(3, 3, 12, 12, dtype=torch.float64)
    samples = torch.rand(3, 2, 3, 12, 12, dtype=torch.float64)
    mask = torch.zeros(3, 12, 12, dtype=torch.bool)
    mask[:2, 2:8, 3:9] = True  # image 2: no object pixel

    def l1(a, b):
        return (a - b).abs().mean(dim=(1, 2, 3))

    out = score_images(samples, truth, masks=mask, lpips=l1, fid_weights="w.pth", background=0.25)
    assert (out["fid_full"], out["fid_masked"]) == (1.0, 2.0)
    a, b, weights = calls[0]
    assert weights == "w.pth"
    assert torch.equal(a, samples.flatten(0, 1)) and torch.equal(b, truth)
    on_bg = lambda x, m: torch.where(m[:, None], x, torch.full_like(x, 0.25))  # noqa: E731
    a, b, _ = calls[1]
    m2 = mask[:2].repeat_interleave(2, dim=0)
    assert torch.equal(a, on_bg(samples[:2].flatten(0, 1), m2))
    assert torch.equal(b, on_bg(truth[:2], mask[:2]))
    expected_masked = np.mean(
        [
            float(
                l1(on_bg(samples[i, j][None], mask[i][None]), on_bg(truth[i][None], mask[i][None]))
            )
            for i in range(2)
            for j in range(2)
        ]
    )
    assert out["lpips_masked"] == pytest.approx(expected_masked, abs=1e-12)
    expected_full = np.mean(
        [float(l1(samples[i, j][None], truth[i][None])) for i in range(3) for j in range(2)]
    )
    assert out["lpips_full"] == pytest.approx(expected_full, abs=1e-12)
    assert out["diversity_lpips"] == pytest.approx(
        float(l1(samples[:, 0], samples[:, 1]).mean()), abs=1e-12
    )


def test_a_single_sample_has_no_stochastic_figures():
    truth = torch.rand(2, 3, 12, 12)
    out = score_images(truth[:, None], truth)
    assert out["psnr_full"] == math.inf and out["ssim_full"] == pytest.approx(1.0)
    assert out["best_of_k_psnr_full"] is None and out["diversity_rmse"] is None


# ----------------------------------------------------------------------------- weights and errors


def test_missing_lpips_and_fid_weights_name_the_file_and_the_switch(tmp_path):
    missing = tmp_path / "vgg16.pth"
    with pytest.raises(MissingWeightsError) as info:
        scene_protocols.check_protocol_weights(ProtocolConfig(lpips_weights=str(missing)))
    message = str(info.value)
    assert str(missing) in message and "vgg16-397923af.pth" in message
    assert "evaluation.protocol.lpips=false" in message
    with pytest.raises(MissingWeightsError) as info:
        scene_protocols.check_protocol_weights(ProtocolConfig(lpips=False))
    assert FID_WEIGHTS_URL in str(info.value) and "evaluation.protocol.fid=false" in str(info.value)
    scene_protocols.check_protocol_weights(ProtocolConfig(lpips=False, fid=False))


def test_missing_weights_stop_train_before_any_step(hydrants, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train", "co3d-hydrant", "--run-dir", str(run), *common_overrides(hydrants),
        *reduced_overrides("co3d-hydrant"), f"evaluation.protocol.lpips_weights={tmp_path / 'x.pth'}",
    ]  # fmt: skip
    assert main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "->" not in line]
    assert len(err) == 1 and "x.pth" in err[0] and "lpips=false" in err[0]
    assert not (run / "checkpoints").exists() and not (run / "baseline" / "checkpoints").exists()


def test_missing_data_root_says_what_to_download(tmp_path, capsys):
    for preset, needle in (("co3d-hydrant", "CO3D v2"), ("re10k", "pixelSplat")):
        args = [
            "train", preset, "--run-dir", str(tmp_path / preset), f"data.root={tmp_path / 'none'}",
            "evaluation.protocol.lpips=false", "evaluation.protocol.fid=false",
        ]  # fmt: skip
        assert main(args) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if "->" not in line]
        assert len(err) == 1 and needle in err[0] and "data.root" in err[0], err


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.format=zip", "data.format: expected one of ['co3d', 're10k']"),
        ("data.layout=zip", "data.layout: expected one of ['torch', 'mat', 'txt']"),
        ("evaluation.protocol.lpips_net=squeeze", "evaluation.protocol.lpips_net"),
        ("evaluation.protocol.split=dev", "evaluation.protocol.split"),
        ("evaluation.protocol.nope=1", "evaluation.protocol.nope"),
    ],
)
def test_bad_protocol_values_are_one_line(override, needle, capsys):
    assert main(["train", "re10k", "--dry-run", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dfm: error:") and needle in err[0], err


def test_presets_hold_dfm_render_models():
    from dfm_apps.config import load_preset, validate

    for name in ("co3d-hydrant", "re10k"):
        config = validate(load_preset(name))
        assert config.model == scene_config(name)
        assert config.data.format == ("co3d" if name == "co3d-hydrant" else "re10k")
        assert not config.data.synthesize and scene_protocols.uses_protocol(config)
    assert not scene_protocols.uses_protocol(validate(load_preset("objects-demo")))


def test_run_protocol_refuses_another_format(hydrants):
    config = scenes.ScenesConfig(data=scenes.SceneDataConfig(root=str(hydrants), synthesize=False))
    with pytest.raises(ValueError, match="use --protocol co3d"):
        scene_protocols.run_protocol(config, None, Path("unused"), protocol="re10k")
    with pytest.raises(ValueError, match="expected one of"):
        scene_protocols.run_protocol(config, None, Path("unused"), protocol="dtu")


def _untrained(config: scenes.ScenesConfig) -> scenes.Trained:
    diffusion, baseline = scenes.build_models(config)
    return scenes.Trained(diffusion.eval(), baseline.eval(), 0, 0, None)


def test_run_protocol_directly_seeded_pairs_are_reproducible(hydrants, tmp_path):
    """Without eval batches the documented seeded pairs are scored; a rerun writes the same
    metrics.json; missing LPIPS weights stop it before anything is written."""
    config = scenes.ScenesConfig(
        name="direct",
        model=scene_config("co3d-hydrant").reduced(16),
        data=scenes.SceneDataConfig(
            root=str(hydrants), categories=["hydrant"], synthesize=False, min_gap=1, max_gap=3
        ),
    )
    config.evaluation.steps = 2
    config.evaluation.protocol = ProtocolConfig(
        num_pairs=2, num_samples=2, eval_batches=False, lpips=False, fid=False, pair_seed=11
    )
    trained = _untrained(config)
    first = scene_protocols.run_protocol(config, trained, tmp_path / "a", protocol="co3d")
    second = scene_protocols.run_protocol(config, trained, tmp_path / "b", protocol="co3d")
    record = json.loads(first.files["metrics"].read_text())
    assert record["pairs_source"].startswith("seeded choice (switched off)")
    dataset = scenes._views_dataset(config, hydrants, "test", 0)
    names = [name for _, name in dataset.sequences]
    expected = seeded_pairs(
        names, [len(dataset.frames[n]) for n in names], num_pairs=2, seed=11, min_gap=1, max_gap=3
    )
    assert [(p["name"], tuple(p["context"]), tuple(p["target"])) for p in record["pairs"]] == [
        (p.name, p.context, p.target) for p in expected
    ]
    assert first.files["metrics"].read_text() == (second.files["metrics"].read_text())
    assert first.scores_dict() == second.scores_dict()
    config.evaluation.protocol.lpips = True
    config.evaluation.protocol.lpips_weights = str(tmp_path / "absent.pth")
    with pytest.raises(MissingWeightsError, match=r"absent\.pth"):
        scene_protocols.run_protocol(config, trained, tmp_path / "c", protocol="co3d")
    assert not (tmp_path / "c").exists()
