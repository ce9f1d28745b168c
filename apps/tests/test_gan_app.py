"""The GAN-inversion application: both presets train 2 steps through `dfm`, sample, demo, errors.

Metrics are checked against independent recomputations (scikit-image's PSNR on the cropped
patch, a plain pixel loop for the diversity) and against dfm-gan's own ``evaluate_inversion``
(the protocol of the shipped weights' model card).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dfm_apps import gan
from dfm_apps.applications import MissingWeights
from dfm_apps.cli import main
from dfm_apps.config import load_preset, validate
from dfm_gan.inversion import INVERSION_PRESETS
from dfm_gan.networks import generator_config
from dfm_gan.official_format import write_official_pickle
from dfm_gan.quality import evaluate_inversion

# A 1-block, 16-wide DiT; 2 steps of batch 2; 2 held-out images x 2 samples x 2 DDIM steps.
TINY = [
    "trainer.max_steps=2",
    "trainer.batch_size=2",
    "trainer.checkpoint_every=1",
    "trainer.log_every=1",
    "trainer.optimizer.warmup_steps=1",
    "trainer.progress=false",
    "trainer.num_workers=0",
    "baseline_steps=2",
    "model.dit_overrides.depth=1",
    "model.dit_overrides.hidden_size=16",
    "model.dit_overrides.num_heads=2",
    "model.feature_channels=8",
    "model.latent_stats_samples=16",
    "evaluation.num_contexts=2",
    "evaluation.num_samples=2",
    "evaluation.steps=2",
    "evaluation.picture_contexts=2",
    "num_threads=1",
]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [
        line for line in err.splitlines() if not line.startswith("dfm: ") or "error" in line[:11]
    ]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("dfm: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step gan-demo run on the shipped demo32 generator."""
    run = tmp_path_factory.mktemp("gan") / "run"
    assert main(["train", "gan-demo", "--run-dir", str(run), *TINY]) == 0
    return run


def test_gan_demo_trains_two_steps_without_storing_the_generator(demo_run: Path) -> None:
    for name in ("config.yaml", "completions.png", "denoising.mp4", "scores.json", "report.html"):
        assert (demo_run / name).is_file(), name
    scores = json.loads((demo_run / "scores.json").read_text())
    assert scores["dfm_step"] == 2 and scores["baseline_step"] == 2
    assert all(math.isfinite(scores[k]) for k in scores if k.startswith(("dfm_", "baseline_")))
    assert scores["baseline_diversity_outside"] == 0.0  # one answer per patch
    for where in (demo_run, demo_run / gan.BASELINE_DIR):
        for file in ("model.safetensors", "ema.safetensors"):
            with safe_open(str(where / "checkpoints" / "step_000002" / file), "pt") as f:
                keys = list(f.keys())
            assert keys and all(k.startswith("model.predictor.") for k in keys), keys[:3]
    report = (demo_run / "report.html").read_text()
    assert 'src="denoising.mp4"' in report and "data:image/png;base64," in report


def test_gan_demo_resumes_and_samples(demo_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    assert main(["train", "gan-demo", "--run-dir", str(run), "--resume", *TINY,
                 "trainer.max_steps=3", "evaluation.video=false"]) == 0  # fmt: skip
    assert json.loads((run / "scores.json").read_text())["dfm_step"] == 3
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--seed", "5", "--out", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["evaluation.seed"] == 5 and math.isfinite(scores["dfm_psnr_patch_db"])
    # The loaded EMA weights are the trained ones, not a fresh initialisation.
    config = validate(load_preset("gan-demo", TINY))
    trained = gan.load_models(config, run)
    fresh, _ = gan.build_models(config, gan.load_generator(config.generator))
    head = trained.diffusion.predictor.head.weight  # type: ignore[union-attr]
    assert not torch.equal(head, fresh.predictor.head.weight)  # type: ignore[union-attr]


def test_ffhq256_dry_run_and_two_steps_on_a_user_official_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "ffhq256", "--dry-run"]) == 0
    assert "ffhq-res256-mirror-paper256-noaug.pkl" in capsys.readouterr().out
    torch.manual_seed(0)
    g = generator_config("tiny", img_resolution=16).build().eval()
    with torch.no_grad():
        g.mapping.w_avg.normal_()
    pkl = write_official_pickle(
        tmp_path / "network-snapshot.pkl",
        {"G": (g, g.init_kwargs()), "G_ema": (g, g.init_kwargs())},
    )
    run = tmp_path / "run"
    overrides = [
        f"generator.path={pkl}", "model.train_resolution=8", "model.dit_preset=DiT-Tiny",
        "model.dit_overrides.patch_size=2", *TINY, "evaluation.video=false",
    ]  # fmt: skip
    assert main(["train", "ffhq256", "--run-dir", str(run), *overrides]) == 0
    assert (run / "completions.png").is_file() and (run / "report.html").is_file()
    scores = json.loads((run / "scores.json").read_text())
    assert math.isfinite(scores["dfm_latent_rms"]) and scores["dfm_step"] == 2


def test_missing_generator_says_what_to_download(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "ffhq-res256-mirror-paper256-noaug.pkl"
    status = main(["train", "ffhq256", "--run-dir", str(tmp_path / "run"),
                   f"generator.path={missing}", *TINY])  # fmt: skip
    line = _one_error_line(capsys)
    assert status == 1
    assert str(missing) in line and gan.FFHQ256_URL in line and "dfm export stylegan2" in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("evaluation.sampler=euler", "evaluation.sampler: expected one of ['ddim', 'ddpm'"),
        ("model.latent=z", "expected one of ['w', 'w+']"),
        ("generator.path=weights.bin", "generator.path: expected an official StyleGAN2-ADA .pkl"),
        ("model.dit_preset=DiT-Q", "model.dit_preset: expected one of ['DiT-B'"),
        ("evaluation.patch_fraction=0", "evaluation.patch_fraction: expected in (0, 1]"),
        ("evaluation.heldout=1", "unknown key 'evaluation.heldout'; valid keys under"),
        ("model.novel_resolution=16", "model.novel_resolution: leave it null"),
    ],
)
def test_bad_key_or_value_is_one_line(
    override: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "gan-demo", "--dry-run", override]) == 2
    assert expected in _one_error_line(capsys)


def test_presets_match_dfm_gans_models() -> None:
    # gan-demo's model is the one the shipped weights were trained as (the demo loads them).
    for preset in ("gan-demo", "ffhq256"):
        model = validate(load_preset(preset)).model
        reference = dataclasses.replace(INVERSION_PRESETS[preset], generator_path=None)
        assert model == reference, preset


def test_demo_on_the_shipped_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = gan.GanEvaluationConfig(num_contexts=2, num_samples=3, steps=4, picture_contexts=2)
    monkeypatch.setattr(gan, "DEMO_EVALUATION", small)
    threads = torch.get_num_threads()
    section = gan.demo(tmp_path / "demo", seed=1)
    assert torch.get_num_threads() == threads  # the demo's one-thread setting is undone
    for path in [*section.images.values(), *section.videos.values()]:
        assert path.is_file() and path.stat().st_size > 0 and path.is_relative_to(tmp_path)
    assert section.scores and all(math.isfinite(v) for v in section.scores.values())
    assert section.scores["regressor diversity outside patch"] == 0.0
    assert section.scores["DFM diversity outside patch"] > 0.0  # K different completions
    assert section.command == "dfm demo --only gan"
    assert json.loads((tmp_path / "demo" / "scores.json").read_text())["seed"] == 1


def test_demo_without_shipped_weights_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gan, "DEMO_INVERSION", Path("/nonexistent/inversion.safetensors"))
    with pytest.raises(MissingWeights, match=r"inversion\.safetensors.*python -m dfm_gan\.demo"):
        gan.demo(Path("/nonexistent/out"))


@pytest.fixture(scope="module")
def shipped_completions() -> gan.Completions:
    diffusion, regressor, config = gan.load_demo_models()
    ev = gan.GanEvaluationConfig(num_contexts=3, num_samples=3, steps=4, seed=2)
    return gan.complete_held_out(
        diffusion, regressor, ev, resolution=config.train_resolution, psi=config.truncation_psi
    )


def test_scores_against_scikit_image_and_a_pixel_loop(shipped_completions: gan.Completions) -> None:
    from skimage.metrics import peak_signal_noise_ratio

    result = shipped_completions
    dfm, _ = result.quality()
    x = ((result.dfm.observations.double() + 1) / 2).numpy()  # (N, K, 3, r, r)
    truth = ((result.image.double() + 1) / 2).numpy()
    mask = result.mask[:, 0].numpy() > 0.5  # (N, r, r)
    n, k = x.shape[:2]
    psnrs, pairs, best = [], [], []
    for i in range(n):
        rows, cols = np.nonzero(mask[i])
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert mask[i, top:bottom, left:right].all()  # a square patch: crop it
        for j in range(k):
            psnrs.append(
                peak_signal_noise_ratio(
                    truth[i][:, top:bottom, left:right],
                    x[i, j][:, top:bottom, left:right],
                    data_range=1.0,
                )
            )
        outside = [(c, a, b) for c in range(3) for a in range(mask.shape[1])
                   for b in range(mask.shape[2]) if not mask[i, a, b]]  # fmt: skip
        best.append(
            min(
                math.sqrt(sum((x[i, j, c, a, b] - truth[i, c, a, b]) ** 2 for c, a, b in outside)
                          / len(outside))
                for j in range(k)
            )
        )  # fmt: skip
        for j, m in itertools.combinations(range(k), 2):
            total = sum((x[i, j, c, a, b] - x[i, m, c, a, b]) ** 2 for c, a, b in outside)
            pairs.append(math.sqrt(total / len(outside)))
    assert dfm.psnr_patch_db == pytest.approx(float(np.mean(psnrs)), abs=1e-9)
    assert dfm.diversity_outside == pytest.approx(float(np.mean(pairs)), abs=1e-12)
    assert dfm.diversity_outside > 0
    dfm_best, base_best = result.best_of_k_error_outside()
    assert dfm_best == pytest.approx(float(np.mean(best)), abs=1e-12)
    _, base = result.quality()
    assert base_best == pytest.approx(base.error_outside, abs=1e-12)  # one answer: best = mean


def test_app_scores_equal_the_model_cards_evaluation(shipped_completions: gan.Completions) -> None:
    # The same held-out set, seeds and sampler as dfm_gan.quality.evaluate_inversion, so the
    # figures of `dfm demo` and of the model card are one protocol.
    diffusion, regressor, config = gan.load_demo_models()
    generator = diffusion.forward_model.generator  # type: ignore[union-attr]
    reference = evaluate_inversion(
        diffusion, generator, resolution=config.train_resolution, num_contexts=3,
        num_samples=3, steps=4, psi=config.truncation_psi, seed=2,
    )  # fmt: skip
    base_reference = evaluate_inversion(
        regressor, generator, resolution=config.train_resolution, num_contexts=3, num_samples=3
    )
    dfm, base = shipped_completions.quality()
    assert dfm == reference
    assert base == base_reference
