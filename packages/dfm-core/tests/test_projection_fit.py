"""fit_projection_models: one training path, and the run directory's config as the check."""

import pytest
import torch

from dfm_core.checkpoint import CheckpointMismatchError
from dfm_core.projection_fit import ProjectionFitConfig, fit_projection_models, problem_record
from dfm_core.projection_models import ProjectionModelConfig
from dfm_core.projection_problem import ProjectionProblem
from dfm_core.schedules import schedule_linear

TINY = ProjectionModelConfig(hidden=8, depth=1, fourier_features=4)


def _fit(problem, tmp_path, **changes):
    settings = dict(model=TINY, steps=2, baseline_steps=2, batch_size=8) | changes
    config = ProjectionFitConfig(**settings)
    return fit_projection_models(problem, config, tmp_path, progress=False)


def _params(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_rerun_returns_the_saved_models_without_training(tmp_path):
    problem = ProjectionProblem.build(2, 1, num_components=2, seed=0)
    first, first_baseline = _fit(problem, tmp_path)
    again, again_baseline = _fit(problem, tmp_path)
    for a, b in ((first, again), (first_baseline, again_baseline)):
        saved, loaded = _params(a), _params(b)
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert (tmp_path / "dfm" / "checkpoints").is_dir()
    assert (tmp_path / "baseline" / "checkpoints").is_dir()


@pytest.mark.parametrize(
    "other,changes,field",
    [
        (
            dict(signal_dim=2, observation_dim=1, num_components=2, seed=1),
            {},
            "problem.prior_sha256",
        ),
        (dict(signal_dim=4, observation_dim=1, num_components=2, seed=0), {}, "problem.signal_dim"),
        (
            dict(signal_dim=2, observation_dim=1, num_components=2, seed=0),
            {"steps": 3},
            "fit.steps",
        ),
        (
            dict(signal_dim=2, observation_dim=1, num_components=2, seed=0, noise_std=0.05),
            {},
            "problem.noise_std",
        ),
    ],
)
def test_a_changed_problem_or_config_is_refused_by_name(tmp_path, other, changes, field):
    _fit(ProjectionProblem.build(2, 1, num_components=2, seed=0), tmp_path)
    with pytest.raises(CheckpointMismatchError, match=field.replace(".", r"\.")):
        _fit(ProjectionProblem.build(**other), tmp_path, **changes)


def test_schedule_and_device_are_parameters(tmp_path):
    problem = ProjectionProblem.build(2, 1, num_components=2, seed=0)
    config = ProjectionFitConfig(
        model=TINY, steps=1, baseline_steps=1, batch_size=4, schedule="linear", num_timesteps=50
    )
    diffusion, baseline = fit_projection_models(
        problem, config, tmp_path, device="cpu", progress=False
    )
    assert torch.allclose(diffusion.schedule.betas, schedule_linear(50))
    assert next(diffusion.parameters()).device.type == "cpu"
    assert next(baseline.parameters()).device.type == "cpu"


def test_problem_record_tells_priors_of_the_same_shape_apart():
    a = problem_record(ProjectionProblem.build(3, 1, num_components=3, seed=0))
    b = problem_record(ProjectionProblem.build(3, 1, num_components=3, seed=1))
    assert {k for k in a if a[k] != b[k]} == {"prior_sha256"}
    assert a == problem_record(ProjectionProblem.build(3, 1, num_components=3, seed=0))
