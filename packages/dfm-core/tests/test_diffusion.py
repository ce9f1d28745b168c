"""The DFM objective and denoiser against hand computations."""

import math

import pytest
import torch
from torch import nn

from dfm_core.diffusion import Context, DFMBatch, ForwardDiffusion, drop_context
from dfm_core.projection_problem import SubspaceProjection, random_projections
from dfm_core.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule.from_name("cosine", 100)


class Recorder(nn.Module):
    """A predictor returning a fixed signal and recording what it was given."""

    def __init__(self, signal: torch.Tensor) -> None:
        super().__init__()
        self.signal = nn.Parameter(signal.clone())
        self.calls: list[tuple] = []
        self.encodes = 0

    def encode_context(self, context):
        self.encodes += 1
        return context

    def forward(self, context, noisy_target, t, target_params):
        self.calls.append((context, noisy_target, t, target_params))
        return self.signal


def make_batch(batch_size=6, d=3, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(batch_size, d, generator=g)
    params = random_projections(3 * batch_size, k, d, g).reshape(3, batch_size, k, d)
    obs = [(params[i] @ signal[..., None]).squeeze(-1) for i in range(3)]
    batch = DFMBatch(Context(obs[0], params[0]), obs[1], params[1], obs[2], params[2])
    return batch, signal


def test_loss_terms_match_a_hand_computation():
    batch, _ = make_batch()
    predicted = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))
    reg = lambda inputs: inputs.signal.square().mean()  # noqa: E731
    model = ForwardDiffusion(
        Recorder(predicted),
        SubspaceProjection(),
        SCHEDULE,
        novel_weight=0.5,
        regularizers={"size": (0.1, reg)},
    )
    terms = model(batch, generator=torch.Generator().manual_seed(0))
    target = (
        ((batch.target_params @ predicted[..., None]).squeeze(-1) - batch.target).square().mean()
    )
    novel = ((batch.novel_params @ predicted[..., None]).squeeze(-1) - batch.novel).square().mean()
    assert torch.allclose(terms["target"], target)
    assert torch.allclose(terms["novel"], novel)
    assert torch.allclose(terms["size"], predicted.square().mean())
    assert torch.allclose(terms["loss"], target + 0.5 * novel + 0.1 * predicted.square().mean())
    l1 = ForwardDiffusion(Recorder(predicted), SubspaceProjection(), SCHEDULE, loss_type="l1")
    terms = l1(batch, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(
        terms["target"],
        ((batch.target_params @ predicted[..., None]).squeeze(-1) - batch.target).abs().mean(),
    )


def test_snr_weighting_matches_a_float64_recomputation():
    batch, _ = make_batch()
    predicted = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))
    recorder = Recorder(predicted)
    model = ForwardDiffusion(recorder, SubspaceProjection(), SCHEDULE, snr_weight=(0.5, 4.0))
    terms = model(batch, generator=torch.Generator().manual_seed(0))
    t = recorder.calls[0][2].long()
    alpha_bar = SCHEDULE.alphas_cumprod  # float64
    weights = (alpha_bar / (1 - alpha_bar)).clamp(0.5, 4.0)
    weights = weights[t] / weights.mean()  # normalised over the T levels
    per_sample = lambda obs, params: (  # noqa: E731
        ((params.double() @ predicted.double()[..., None]).squeeze(-1) - obs.double())
        .square()
        .mean(-1)
    )
    target = (weights * per_sample(batch.target, batch.target_params)).mean()
    novel = (weights * per_sample(batch.novel, batch.novel_params)).mean()
    assert terms["target"].item() == pytest.approx(target.item(), rel=1e-5)
    assert terms["novel"].item() == pytest.approx(novel.item(), rel=1e-5)
    assert not torch.allclose(weights, torch.ones_like(weights))  # the test has power
    with pytest.raises(ValueError, match="snr_weight"):
        ForwardDiffusion(recorder, SubspaceProjection(), SCHEDULE, snr_weight=(2.0, 1.0))


def test_predictor_sees_the_forward_process_and_never_the_novel_view():
    batch, _ = make_batch()
    recorder = Recorder(torch.zeros(6, 3))
    model = ForwardDiffusion(recorder, SubspaceProjection(), SCHEDULE, context_dropout=0.0)
    model(batch, generator=torch.Generator().manual_seed(3))
    context, noisy, t, target_params = recorder.calls[0]
    # Replay the generator: t, then eps, then the dropout draw, in that order.
    g = torch.Generator().manual_seed(3)
    t_ref = torch.randint(0, 100, (6,), generator=g)
    eps = torch.randn(batch.target.shape, generator=g)
    abar = SCHEDULE.alphas_cumprod[t_ref].float()[:, None]
    assert torch.equal(t, t_ref.float())
    assert torch.allclose(noisy, abar.sqrt() * batch.target + (1 - abar).sqrt() * eps, atol=1e-6)
    assert target_params is batch.target_params
    assert torch.equal(context.observation, batch.context.observation)
    assert all(batch.novel_params is not arg for arg in recorder.calls[0])


def test_context_dropout_is_per_sample_at_its_rate():
    n, rate = 20000, 0.3
    obs = torch.ones(n, 1)
    recorder = Recorder(torch.zeros(n, 2))
    model = ForwardDiffusion(recorder, lambda s, p: s[:, :1], SCHEDULE, context_dropout=rate)
    batch = DFMBatch(Context(obs), torch.zeros(n, 1), None)
    model(batch, generator=torch.Generator().manual_seed(0))
    kept = recorder.calls[0][0].observation[:, 0]
    dropped_fraction = (kept == 0).double().mean().item()
    assert abs(dropped_fraction - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
    assert set(kept.unique().tolist()) == {0.0, 1.0}  # per sample, not all-or-nothing
    # A small batch mixes kept and dropped samples too (the original dropped whole batches).
    small = Recorder(torch.zeros(64, 2))
    model = ForwardDiffusion(small, lambda s, p: s[:, :1], SCHEDULE, context_dropout=rate)
    model(
        DFMBatch(Context(torch.ones(64, 1)), torch.zeros(64, 1), None),
        generator=torch.Generator().manual_seed(1),
    )
    assert 0 < (small.calls[0][0].observation == 0).sum() < 64


def test_drop_context_keeps_subclass_fields():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class PosedContext(Context):
        absolute_pose: torch.Tensor | None = None

    context = PosedContext(
        torch.ones(3, 2), params="phi", absolute_pose=torch.eye(4).expand(3, 4, 4)
    )
    dropped = drop_context(context, torch.tensor([True, False, True]))
    assert isinstance(dropped, PosedContext) and dropped.params == "phi"
    assert dropped.observation[:, 0].tolist() == [1.0, 0.0, 1.0]


def test_denoiser_renders_the_signal_and_encodes_context_once():
    batch, _ = make_batch(batch_size=4)
    predicted = torch.randn(4, 3)
    recorder = Recorder(predicted)
    model = ForwardDiffusion(recorder, SubspaceProjection(), SCHEDULE)
    condition = model.condition(batch.context, batch.target_params)
    denoiser = model.denoiser(condition)
    for t in (90.0, 50.0, 10.0):
        out = denoiser(torch.randn(4, 2), torch.full((4,), t))
        assert torch.allclose(out.x0, (batch.target_params @ predicted[..., None]).squeeze(-1))
    assert recorder.encodes == 1
    null = model.condition(batch.context, batch.target_params, drop=True)
    assert torch.equal(null.context.observation, torch.zeros_like(batch.context.observation))


def test_bad_configuration_and_shapes_are_named():
    with pytest.raises(ValueError, match="loss_type"):
        ForwardDiffusion(
            Recorder(torch.zeros(1)), SubspaceProjection(), SCHEDULE, loss_type="huber"
        )
    with pytest.raises(ValueError, match="context_dropout"):
        ForwardDiffusion(
            Recorder(torch.zeros(1)), SubspaceProjection(), SCHEDULE, context_dropout=1.0
        )
    with pytest.raises(ValueError, match="reserved"):
        ForwardDiffusion(
            Recorder(torch.zeros(1)),
            SubspaceProjection(),
            SCHEDULE,
            regularizers={"loss": (1.0, None)},
        )
    batch, _ = make_batch()
    wrong = ForwardDiffusion(Recorder(torch.zeros(6, 3)), lambda s, p: s, SCHEDULE)
    with pytest.raises(
        ValueError, match=r"forward model output has shape \(6, 3\) .* shape \(6, 2\)"
    ):
        wrong(batch, generator=torch.Generator().manual_seed(0))


# ---- the contract's hooks for heavier forward models (dfm-core 0.3) -------------------


class ConditionRecorder(Recorder):
    """Encodes (context, target_params) together, as a context-only estimate at the target would."""

    def encode_condition(self, context, target_params):
        self.encodes += 1
        return ("encoded", context, target_params)


def test_encode_condition_sees_target_params_once_per_run_and_step():
    batch, _ = make_batch(batch_size=4)
    recorder = ConditionRecorder(torch.randn(4, 3))
    model = ForwardDiffusion(recorder, SubspaceProjection(), SCHEDULE)
    condition = model.condition(batch.context, batch.target_params)
    denoiser = model.denoiser(condition)
    for t in (90.0, 50.0, 10.0):
        denoiser(torch.randn(4, 2), torch.full((4,), t))
    assert recorder.encodes == 1  # not once per denoising step
    tag, _context, target_params = recorder.calls[-1][0]
    assert tag == "encoded" and target_params is batch.target_params
    model(batch, generator=torch.Generator().manual_seed(0))
    assert recorder.encodes == 2  # once per training step
    assert recorder.calls[-1][0][2] is batch.target_params


class PixelSubset:
    """Projection followed by picking observation coordinates: a 'patch' of the observation."""

    def __call__(self, signal, params):
        projection, coords = params if isinstance(params, tuple) else (params, None)
        full = (projection @ signal[..., None]).squeeze(-1)
        return full if coords is None else full[:, coords]


def test_target_loss_on_a_subset_while_the_network_sees_the_full_target():
    batch, _ = make_batch(batch_size=5, d=4, k=3)
    predicted = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    recorder = Recorder(predicted)
    coords = [0, 2]
    subset = DFMBatch(
        batch.context,
        batch.target,
        batch.target_params,
        target_loss_params=(batch.target_params, coords),
        target_loss_observation=batch.target[:, coords],
    )
    model = ForwardDiffusion(recorder, PixelSubset(), SCHEDULE)
    terms = model(subset, generator=torch.Generator().manual_seed(0))
    assert recorder.calls[0][1].shape == batch.target.shape  # the full noisy target
    full = (batch.target_params @ predicted[..., None]).squeeze(-1)
    expected = (full[:, coords] - batch.target[:, coords]).square().mean()
    assert torch.allclose(terms["target"], expected)
    with pytest.raises(ValueError, match="go together"):
        DFMBatch(batch.context, batch.target, batch.target_params, target_loss_params=(1, 2))


class Rendering:
    def __init__(self, observation, aux):
        self.observation, self.aux = observation, aux


class CountingRenderer:
    """Returns an observation plus an auxiliary, counting renders."""

    def __init__(self):
        self.renders = 0

    def __call__(self, signal, params):
        self.renders += 1
        observation = (params @ signal[..., None]).squeeze(-1)
        return Rendering(observation, aux=signal.square().sum(-1))


def test_regularizers_read_render_auxiliaries_without_rendering_again():
    batch, _ = make_batch(batch_size=6)
    predicted = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    renderer = CountingRenderer()
    seen = {}

    def aux_term(inputs):
        seen["inputs"] = inputs
        return inputs.target_render.aux.mean() + inputs.novel_render.aux.mean()

    model = ForwardDiffusion(
        ConditionRecorder(predicted),
        renderer,
        SCHEDULE,
        context_dropout=0.5,
        regularizers={"aux": (0.25, aux_term)},
    )
    terms = model(batch, generator=torch.Generator().manual_seed(0))
    assert renderer.renders == 2  # target and novel, nothing rendered twice for the term
    assert torch.allclose(terms["aux"], 2 * predicted.square().sum(-1).mean())
    inputs = seen["inputs"]
    assert inputs.condition[0] == "encoded" and inputs.signal is not None
    assert inputs.keep.dtype == torch.bool and inputs.keep.shape == (6,)
    dropped = inputs.condition[1].observation[:, 0] == 0
    assert torch.equal(dropped, ~inputs.keep)
    assert inputs.t.shape == (6,)
    total = terms["target"] + terms["novel"] + 0.25 * terms["aux"]
    assert torch.allclose(terms["loss"], total)
    # The denoiser reads the observation of a Rendering-like output too.
    denoiser = model.denoiser(model.condition(batch.context, batch.target_params))
    out = denoiser(torch.randn(6, 2), torch.full((6,), 10.0))
    assert torch.allclose(out.x0, (batch.target_params @ predicted[..., None]).squeeze(-1))
