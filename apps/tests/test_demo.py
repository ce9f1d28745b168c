"""`dfm demo` (every application on shipped weights), `dfm eval`, and shipping weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dfm_apps import projection
from dfm_apps.applications import APPLICATIONS, DemoSection, MissingWeights
from dfm_apps.cli import main
from dfm_apps.config import load_run_config, validate


def test_shipping_a_run_keeps_every_weight(tiny_run: Path, tmp_path: Path) -> None:
    path = projection.ship_weights(tiny_run, tmp_path / "w.safetensors")
    settings, config_yaml, shipped = projection.load_shipped(path)
    reference = projection.load_models(
        validate(load_run_config(tiny_run / "config.yaml")), tiny_run
    )
    for got, want in (
        (shipped.diffusion, reference.diffusion),
        (shipped.baseline, reference.baseline),
    ):
        want_state = want.state_dict()
        assert got.state_dict().keys() == want_state.keys()
        assert all(torch.equal(v, want_state[k]) for k, v in got.state_dict().items())
    assert (shipped.dfm_step, shipped.baseline_step) == (
        reference.dfm_step,
        reference.baseline_step,
    )
    assert settings.problem == reference_settings(tiny_run).problem
    assert "signal_dim" in config_yaml


def reference_settings(run_dir: Path):
    return validate(load_run_config(run_dir / "config.yaml"))


def test_projection_demo_scores_what_the_run_scores(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = projection.ship_weights(tiny_run, tmp_path / "w.safetensors")
    monkeypatch.setattr(projection, "WEIGHTS", weights)
    section = projection.demo(tmp_path / "demo", seed=5)
    assert isinstance(section, DemoSection)
    assert all(Path(p).is_file() for p in section.images.values())
    # The same weights evaluated through the run's own path, same seed: the same figures.
    import dataclasses

    settings = reference_settings(tiny_run)
    settings = dataclasses.replace(
        settings, evaluation=dataclasses.replace(settings.evaluation, seed=5)
    )
    trained = projection.load_models(settings, tiny_run)
    direct = projection.evaluate(settings, trained, tmp_path / "direct").scores_dict()
    assert section.scores["DFM / noise floor"] == pytest.approx(direct["dfm_ratio"], rel=1e-6)
    assert section.scores["baseline / noise floor"] == pytest.approx(
        direct["baseline_ratio"], rel=1e-6
    )


def test_demo_lists_missing_weights_and_writes_a_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.safetensors"
    monkeypatch.setattr(projection, "WEIGHTS", missing)
    out = tmp_path / "demo"
    assert main(["demo", "--only", "projection", "--run-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "not run: weights not installed" in captured.out
    assert str(missing) in captured.out and "dfm train projection" in captured.out
    page = (out / "report.html").read_text()
    assert "not run" in page and "dfm demo --run-dir" in page
    with pytest.raises(MissingWeights):
        projection.load_shipped(missing)


def test_demo_refuses_an_unknown_application(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--only", "nope"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("dfm: error: --only nope") and all(n in line for n in APPLICATIONS)


def test_eval_without_protocols_writes_metrics(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_run), "--out", str(out), "--seed", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["dfm_ratio"]) and metrics["dfm_ratio"] > 0
    assert "| dfm_ratio |" in (out / "metrics.md").read_text()
    assert main(["eval", str(tiny_run), "--protocol", "co3d"]) == 2
    assert "--protocol 'co3d'" in capsys.readouterr().err
