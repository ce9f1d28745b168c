"""Presets, overrides and their error messages (`dfm demo --dry-run`, `dfm train`)."""

from __future__ import annotations

import pytest
import yaml

from dfm_apps.cli import main
from dfm_apps.config import ConfigError, ProjectionConfig, load_preset, merge_overrides, validate
from dfm_apps.presets import preset_names, preset_text


def _dry_run(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main([*args, "--dry-run"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_presets_ship_inside_the_package() -> None:
    assert {"projection", "projection-6d"} <= set(preset_names())
    assert "signal_dim: 2" in preset_text("projection")


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates_against_its_schema(name: str) -> None:
    from dfm_apps.applications import application
    from dfm_apps.config import schema

    config = validate(load_preset(name))
    assert isinstance(config, schema(config.app))
    assert application(config.app).CONFIG is type(config)
    assert config.name == name
    if config.app == "projection":
        assert isinstance(config, ProjectionConfig)


def test_demo_dry_run_prints_preset_and_schema_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    printed = _dry_run(capsys, "train", "projection")
    preset = yaml.safe_load(preset_text("projection"))
    assert printed["problem"]["signal_dim"] == 2 and printed["problem"]["observation_dim"] == 1
    assert printed["trainer"]["max_steps"] == preset["trainer"]["max_steps"]
    # Keys the YAML leaves out come from the dataclasses' defaults.
    assert printed["trainer"]["grad_clip"] == 1.0
    assert printed["evaluation"]["guidance_scale"] == 1.0
    assert printed["app"] == "projection"


def test_train_dry_run_of_the_6d_preset(capsys: pytest.CaptureFixture[str]) -> None:
    printed = _dry_run(capsys, "train", "projection-6d")
    assert (printed["problem"]["signal_dim"], printed["problem"]["observation_dim"]) == (6, 3)


def test_overrides_apply_wherever_they_sit(capsys: pytest.CaptureFixture[str]) -> None:
    printed = _dry_run(
        capsys,
        "train",
        "projection",
        "trainer.max_steps=7",
        "--run-dir",
        "somewhere",
        "evaluation.sampler=edm",
    )
    assert printed["trainer"]["max_steps"] == 7
    assert printed["evaluation"]["sampler"] == "edm"
    assert printed["trainer"]["optimizer"]["betas"] == [0.9, 0.99]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "nope"], ["unknown preset 'nope'", "projection", "projection-6d"]),
        (
            ["train", "projection", "trainer.bogus=3"],
            ["trainer.bogus", "valid keys under 'trainer'", "max_steps"],
        ),
        (
            ["train", "projection", "bogus=3"],
            ["'bogus'", "valid keys at the top level", "evaluation"],
        ),
        (["train", "projection", "trainer.max_steps=abc"], ["trainer.max_steps", "abc"]),
        (["train", "projection", "trainer.max_steps=0"], ["max_steps", "positive integer"]),
        (["train", "projection", "model.context_dropout=0.1"], ["context_dropout"]),
        (["train", "projection", "evaluation.sampler=euler"], ["evaluation.sampler", "ddim"]),
        (
            ["train", "projection", "problem.target_views=foo"],
            ["problem.target_views", "uniform", "complement"],
        ),
        (
            ["train", "projection", "problem.observation_dim=2"],
            ["problem.observation_dim", "< signal_dim = 2"],
        ),
        (
            ["train", "projection-6d", "problem.observation_dim=4"],
            ["problem.target_views='complement'", "2 * observation_dim <= signal_dim"],
        ),
        (["train", "projection", "problem.num_components=0"], ["problem.num_components", ">= 1"]),
        (
            ["train", "projection", "schedule.name=quadratic"],
            ["schedule.name", "cosine", "linear", "sigmoid"],
        ),
        (["train", "projection", "schedule.num_timesteps=1"], ["schedule.num_timesteps", ">= 2"]),
        (["train", "projection", "data.batch_size=0"], ["data.batch_size", ">= 1"]),
        (
            ["train", "projection", "trainer.device=gpu"],
            ["TrainerConfig.device", "cuda:N", "'gpu'"],
        ),
    ],
)
def test_bad_input_gives_a_clear_error(
    capsys: pytest.CaptureFixture[str], args: list[str], expected: list[str]
) -> None:
    assert main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfm: error:")
    for text in expected:
        assert text in err


def test_override_without_equals_sign_is_refused() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        merge_overrides(load_preset("projection"), ["trainer.max_steps"])
