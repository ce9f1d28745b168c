"""Faults injected into training: signals, damaged checkpoints, mismatched models, kills.

Each test injects one fault the hardening issue found and checks the trainer's answer
against an uninterrupted reference run (bit-identical) or against the exact message.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_trainer import (
    IndexDataset,
    NoisyRegressor,
    _assert_same,
    _config,
    _free_port,
    _metrics,
    _state,
)
from torch import Tensor, nn

from dfm_core.checkpoint import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    list_checkpoints,
)
from dfm_core.trainer import (
    STOP_SIGNALS,
    NonFiniteLossError,
    Trainer,
    TrainingInterrupted,
    graceful_stop,
)


def _flip_byte(path: Path, offset_fraction: float = 0.5) -> None:
    """Damage ``path`` in place without changing its size (what a size check cannot see)."""
    data = bytearray(path.read_bytes())
    i = int(len(data) * offset_fraction)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _reference(tmp_path: Path, **cfg) -> Trainer:
    trainer = Trainer(NoisyRegressor(), IndexDataset(), _config(**cfg), run_dir=tmp_path / "ref")
    trainer.train()
    return trainer


# ----------------------------------------------------------------------------- signals


class SignalAtCall(NoisyRegressor):
    """Sends ``signum`` to this process from inside forward call ``at`` (mid-step)."""

    def __init__(self, signum: int, at: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.signum, self.at = signum, at

    def forward(self, batch, *, generator: torch.Generator) -> dict[str, Tensor]:
        out = super().forward(batch, generator=generator)
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return out


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_saves_at_the_step_boundary_and_resume_is_exact(tmp_path: Path, signum: int) -> None:
    cfg = {"max_steps": 6, "checkpoint_every": 100}  # no periodic checkpoint would save step 4
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    run = tmp_path / "run"
    model = SignalAtCall(signum, at=4)
    trainer = Trainer(model, IndexDataset(), _config(**cfg), run_dir=run)
    with graceful_stop(), pytest.raises(TrainingInterrupted) as info:
        trainer.train()
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before  # handlers restored
    error = info.value
    name = signal.Signals(signum).name
    assert (error.signal_name, error.step, error.exit_code) == (name, 4, 128 + signum)
    assert str(error) == (
        f"stopped by {name} after step 4; checkpoint saved to {run / 'checkpoints' / 'step_000004'}"
        " (run again with the same run directory to resume)"
    )
    assert "\n" not in str(error)
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4]

    resumed = Trainer(NoisyRegressor(seed=9), IndexDataset(), _config(**cfg), run_dir=run)
    assert resumed.resume() == 4
    resumed.train()
    reference = _reference(tmp_path, **cfg)
    _assert_same(_state(reference), _state(resumed))
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in _metrics(run)] == [r["loss"] for r in _metrics(tmp_path / "ref")]


def test_install_signal_handlers_is_the_same_context(tmp_path: Path) -> None:
    model = SignalAtCall(signal.SIGTERM, at=2)
    trainer = Trainer(model, IndexDataset(), _config(max_steps=4), run_dir=tmp_path)
    with trainer.install_signal_handlers(), pytest.raises(TrainingInterrupted, match="SIGTERM"):
        trainer.train()
    assert trainer.step == 2


def test_second_sigint_aborts_and_a_signal_outside_training_stops_at_once(
    tmp_path: Path,
) -> None:
    class TwoInterrupts(NoisyRegressor):
        def forward(self, batch, *, generator):
            out = super().forward(batch, generator=generator)
            if self.calls == 2:  # Ctrl-C twice within one step
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            return out

    trainer = Trainer(TwoInterrupts(), IndexDataset(), _config(max_steps=6), run_dir=tmp_path)
    with graceful_stop(), pytest.raises(KeyboardInterrupt):
        trainer.train()
    with graceful_stop(), pytest.raises(TrainingInterrupted, match="no training step"):
        os.kill(os.getpid(), signal.SIGUSR1)


def test_second_sigterm_stops_at_once_without_saving(tmp_path: Path) -> None:
    """A run whose first SIGTERM cannot reach a step boundary (stuck) must still die."""

    class TwoTerms(NoisyRegressor):
        def forward(self, batch, *, generator):
            out = super().forward(batch, generator=generator)
            if self.calls == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
            return out

    trainer = Trainer(TwoTerms(), IndexDataset(), _config(max_steps=6), run_dir=tmp_path)
    with graceful_stop(), pytest.raises(TrainingInterrupted) as info:
        trainer.train()
    assert info.value.signal_name == "SIGTERM"
    assert not list((tmp_path / "checkpoints").glob("step_*"))  # stopped before any save


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.mark.parametrize("damaged", ["model.safetensors", "ema.safetensors", "state.pt"])
def test_resume_falls_back_past_a_corrupt_newest_checkpoint(tmp_path: Path, damaged: str) -> None:
    cfg = {"max_steps": 6, "checkpoint_every": 2, "keep_last": None}
    run = tmp_path / "run"
    Trainer(NoisyRegressor(), IndexDataset(), _config(**cfg), run_dir=run).train()
    _flip_byte(run / "checkpoints" / "step_000006" / damaged)

    resumed = Trainer(NoisyRegressor(seed=3), IndexDataset(), _config(**cfg), run_dir=run)
    with pytest.warns(UserWarning, match=rf"skipped damaged checkpoint step_000006: .*{damaged}"):
        assert resumed.resume() == 4
    assert [p.name for p, _ in resumed.skipped_checkpoints] == ["step_000006"]
    assert "checksum mismatch" in resumed.skipped_checkpoints[0][1]
    resumed.train()  # redoes steps 5-6 and rewrites step_000006
    _assert_same(_state(_reference(tmp_path, **cfg)), _state(resumed))
    fresh = Trainer(NoisyRegressor(), IndexDataset(), _config(**cfg), run_dir=run)
    assert fresh.resume() == 6 and not fresh.skipped_checkpoints


def test_resume_names_a_truncated_newest_checkpoint(tmp_path: Path) -> None:
    cfg = {"max_steps": 4, "checkpoint_every": 2, "keep_last": None}
    Trainer(NoisyRegressor(), IndexDataset(), _config(**cfg), run_dir=tmp_path).train()
    state = tmp_path / "checkpoints" / "step_000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    resumed = Trainer(NoisyRegressor(), IndexDataset(), _config(**cfg), run_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"step_000004: .*state\.pt: 100 bytes, the manifest says"):
        assert resumed.resume() == 2


def test_resume_refuses_when_every_checkpoint_is_damaged(tmp_path: Path) -> None:
    cfg = {"max_steps": 4, "checkpoint_every": 2, "keep_last": None}
    Trainer(NoisyRegressor(), IndexDataset(), _config(**cfg), run_dir=tmp_path).train()
    for step in (2, 4):
        _flip_byte(tmp_path / "checkpoints" / f"step_{step:06d}" / "model.safetensors")
    again = Trainer(NoisyRegressor(), IndexDataset(), _config(**cfg), run_dir=tmp_path)
    with pytest.raises(CheckpointCorruptError, match=r"every checkpoint.*step_000004.*step_000002"):
        again.resume()


class Wider(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.inner = NoisyRegressor()
        self.inner.net[0] = nn.Linear(3, width)
        self.inner.net[3] = nn.Linear(width, 2)

    def forward(self, batch, *, generator):
        return self.inner(batch, generator=generator)


def test_resume_refuses_a_checkpoint_of_another_model_naming_fields(tmp_path: Path) -> None:
    cfg = _config(max_steps=2)
    Trainer(Wider(16), IndexDataset(), cfg, run_dir=tmp_path, run_config={"width": 16}).train()
    other = Trainer(Wider(32), IndexDataset(), cfg, run_dir=tmp_path, run_config={"width": 32})
    with pytest.raises(CheckpointMismatchError) as info:
        other.resume()
    message = str(info.value)
    assert "width (16 -> 32)" in message
    assert "inner.net.0.weight (checkpoint (16, 3), model (32, 3))" in message
    assert other.step == 0  # nothing was loaded


def test_frozen_config_keys_refuse_same_shaped_changes(tmp_path: Path) -> None:
    cfg = _config(max_steps=2)
    saved = {"schedule": {"name": "cosine"}, "evaluation": {"steps": 10}}
    Trainer(NoisyRegressor(), IndexDataset(), cfg, run_dir=tmp_path, run_config=saved).train()
    changed_eval = {"schedule": {"name": "cosine"}, "evaluation": {"steps": 50}}
    ok = Trainer(
        NoisyRegressor(),
        IndexDataset(),
        cfg,
        run_dir=tmp_path,
        run_config=changed_eval,
        frozen_config_keys=("schedule",),
    )
    assert ok.resume() == 2
    changed_schedule = {"schedule": {"name": "linear"}, "evaluation": {"steps": 10}}
    refused = Trainer(
        NoisyRegressor(),
        IndexDataset(),
        cfg,
        run_dir=tmp_path,
        run_config=changed_schedule,
        frozen_config_keys=("schedule",),
    )
    with pytest.raises(CheckpointMismatchError, match=r"schedule\.name \('cosine' -> 'linear'\)"):
        refused.resume()


# ----------------------------------------------------------------------------- kills, NaN, device


class DiesAtCall(NoisyRegressor):
    """Raises at forward call ``at``: the process dies mid-step, nothing is saved."""

    def __init__(self, at: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.at = at

    def forward(self, batch, *, generator):
        if self.calls + 1 == self.at:
            raise SystemExit("killed")
        return super().forward(batch, generator=generator)


@pytest.mark.parametrize("call_resume", [True, False])
def test_no_duplicate_metrics_after_a_kill_before_the_first_checkpoint(
    tmp_path: Path, call_resume: bool
) -> None:
    cfg = _config(max_steps=6, checkpoint_every=100)
    with pytest.raises(SystemExit):
        Trainer(DiesAtCall(at=5), IndexDataset(), cfg, run_dir=tmp_path).train()
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2, 3, 4]
    assert list_checkpoints(tmp_path / "checkpoints") == []
    again = Trainer(NoisyRegressor(), IndexDataset(), cfg, run_dir=tmp_path)
    if call_resume:
        assert again.resume() is None
    again.train()
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_non_finite_message_is_true_about_checkpoints(tmp_path: Path) -> None:
    model = NoisyRegressor()
    model.nan_at_call = 2
    early = Trainer(model, IndexDataset(), _config(checkpoint_every=3), run_dir=tmp_path / "a")
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been saved yet") as info:
        early.train()
    assert "intact" not in str(info.value) and info.value.last_checkpoint_step is None
    model = NoisyRegressor()
    model.nan_at_call = 5
    late = Trainer(model, IndexDataset(), _config(checkpoint_every=3), run_dir=tmp_path / "b")
    with pytest.raises(NonFiniteLossError, match=r"last good checkpoint \(step 3\) is intact"):
        late.train()
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")] == [3]


def test_cuda_device_without_cuda_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda' but CUDA is not available"):
        Trainer(NoisyRegressor(), IndexDataset(), _config(device="cuda"), run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"TrainerConfig\.device must be cpu, cuda.*'gpu'"):
        _config(device="gpu")  # the form is checked by the config itself (--dry-run)
    cfg = _config()
    cfg.device = "gpu"  # set after validation: the Trainer checks again
    with pytest.raises(ValueError, match=r"'gpu' is not a device"):
        Trainer(NoisyRegressor(), IndexDataset(), cfg, run_dir=tmp_path)


def _ddp_signal_worker(rank: int, out: Path, port: int) -> None:
    """Rank 1 alone is signalled mid-step; both ranks must stop after the same step."""
    torch.set_num_threads(1)
    os.environ |= {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    model = SignalAtCall(signal.SIGTERM, at=2) if rank == 1 else NoisyRegressor()
    cfg = _config(max_steps=6, checkpoint_every=100)
    trainer = Trainer(model, IndexDataset(24), cfg, run_dir=out / "run")
    try:
        with graceful_stop():
            trainer.train()
        result = {"rank": rank, "stopped": None}
    except TrainingInterrupted as stop:
        result = {"rank": rank, "stopped": stop.signal_name, "step": stop.step}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    trainer.close()


def test_a_signal_on_one_ddp_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:

    mp.start_processes(
        _ddp_signal_worker, args=(tmp_path, _free_port()), nprocs=2, start_method="fork"
    )
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == {"rank": 0, "stopped": "a signal on another rank", "step": 2}
    assert results[1] == {"rank": 1, "stopped": "SIGTERM", "step": 2}
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [2]
