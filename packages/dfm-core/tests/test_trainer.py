"""The training loop: exact resume, accumulation, EMA, LR schedule, failures, DDP."""

from __future__ import annotations

import json
import math
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.utils.data import Dataset

from dfm_core.checkpoint import list_checkpoints, load_train_state, load_weights
from dfm_core.trainer import (
    NoGradientWarning,
    NonFiniteLossError,
    OptimizerConfig,
    ShardedBatchSampler,
    Trainer,
    TrainerConfig,
    derive_seed,
    learning_rate_at,
    worker_seed,
)

DIM = 3


class IndexDataset(Dataset):
    """Item ``i`` is a fixed function of ``i``; optionally augmented with global-RNG noise."""

    def __init__(self, n: int = 20, *, augment: bool = False) -> None:
        self.n = n
        self.augment = augment
        self.seen: list[int] = []  # indices loaded in this process (num_workers=0)
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:  # the dfm-data dataset convention
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        self.seen.append(i)
        x = torch.linspace(-1.0, 1.0, DIM) * (i + 1) / self.n + 0.1 * math.sin(i + self.epoch)
        y = torch.stack([x.sum().sin(), x.prod().cos()])
        if self.augment:  # the three global RNGs a dataset might use
            x = x + 0.01 * (torch.rand(DIM) + float(np.random.rand()) + random.random())  # noqa: NPY002
        return x, y


class NoisyRegressor(nn.Module):
    """A 2-layer MLP whose loss uses generator noise (like a diffusion objective)."""

    def __init__(self, *, noise: float = 0.1, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Linear(DIM, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 2)
        )
        self.noise = noise
        self.calls = 0
        self.nan_at_call: int | None = None
        self.nan_term = "aux"

    def forward(self, batch, *, generator: torch.Generator) -> dict[str, Tensor]:
        x, y = batch  # (B, DIM), (B, 2)
        self.calls += 1
        eps = torch.randn(x.shape, generator=generator, device=generator.device)
        pred = self.net(x + self.noise * eps)
        mse = (pred - y).square().mean()
        aux = pred.detach().abs().mean()
        if self.calls == self.nan_at_call:
            if self.nan_term == "aux":
                aux = aux * float("nan")
            else:
                mse = mse * float("inf")
        return {"loss": mse, "mse": mse.detach(), "aux": aux}


def _config(**overrides) -> TrainerConfig:
    optimizer = OptimizerConfig(name="adamw", lr=1e-2, warmup_steps=2, schedule="cosine")
    base = {
        "max_steps": 6,
        "batch_size": 4,
        "optimizer": optimizer,
        "ema_decay": 0.9,
        "num_workers": 0,
        "log_every": 1,
        "checkpoint_every": 3,
        "callback_every": 1,
        "progress": False,
        "device": "cpu",
    }
    return TrainerConfig(**(base | overrides))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _state(trainer: Trainer) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_is_bit_identical(tmp_path: Path, num_workers: int) -> None:
    """6 steps straight == 3 steps, a new Trainer resuming, 3 more steps."""
    cfg = _config(num_workers=num_workers, grad_accum_steps=2)

    def make(run_dir: Path, model_seed: int = 0) -> Trainer:
        model = NoisyRegressor(dropout=0.2, seed=model_seed)
        return Trainer(model, IndexDataset(augment=True), cfg, run_dir=run_dir)

    straight = make(tmp_path / "straight")
    straight.train()

    first = make(tmp_path / "split")
    first.train(until_step=3)
    first.close()
    second = make(tmp_path / "split", model_seed=123)  # different init: resume overwrites it
    assert second.resume() == 3
    assert second.epoch_batch == 2  # 20 items make 2 steps (4 micro-batches) an epoch
    second.train()

    keys = ("step", "loss", "mse", "aux", "lr", "grad_norm")
    a = [{k: r[k] for k in keys} for r in _metrics(tmp_path / "straight")]
    b = [{k: r[k] for k in keys} for r in _metrics(tmp_path / "split")]
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert a == b
    _assert_same(_state(straight), _state(second))
    _assert_same(straight.ema_model().state_dict(), second.ema_model().state_dict())
    assert straight.generator.get_state().equal(second.generator.get_state())
    assert straight.dataset.epoch == second.dataset.epoch == 2  # set_epoch was called
    if num_workers == 0:
        # The resumed run loaded only the items of the 6 remaining micro-batches.
        assert len(second.dataset.seen) == 6 * 4


def test_data_randomness_does_not_depend_on_num_workers(tmp_path: Path) -> None:
    losses = []
    for workers in (0, 2):
        cfg = _config(num_workers=workers, max_steps=2)
        trainer = Trainer(
            NoisyRegressor(), IndexDataset(augment=True), cfg, run_dir=tmp_path / str(workers)
        )
        trainer.train()
        losses.append([r["loss"] for r in _metrics(tmp_path / str(workers))])
    assert losses[0] == losses[1]


def test_resume_after_a_run_killed_mid_save(tmp_path: Path) -> None:
    cfg = _config()
    Trainer(NoisyRegressor(), IndexDataset(), cfg, run_dir=tmp_path).train(until_step=3)
    checkpoints = tmp_path / "checkpoints"
    # Killed while writing step 6: a temp dir with half a file, a manifest-less dir.
    temp = checkpoints / ".tmp-step_000006-deadbeef"
    temp.mkdir()
    (temp / "model.safetensors").write_bytes(b"\x00" * 7)
    (checkpoints / "step_000006").mkdir()
    (checkpoints / "step_000006" / "state.pt").write_bytes(b"\x80")
    with open(tmp_path / "metrics.jsonl", "a") as f:  # logged after the last checkpoint
        f.write(json.dumps({"step": 4, "loss": 1.0}) + "\n" + '{"step": 5, "lo')  # cut short

    resumed = Trainer(NoisyRegressor(seed=5), IndexDataset(), cfg, run_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"skipped damaged checkpoint step_000006: .*manifest"):
        assert resumed.resume() == 3
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2, 3]
    resumed.train()
    assert sorted(os.listdir(checkpoints)) == ["latest", "step_000003", "step_000006"]

    straight = Trainer(NoisyRegressor(), IndexDataset(), cfg, run_dir=tmp_path / "straight")
    straight.train()
    _assert_same(_state(straight), _state(resumed))


def test_refuses_to_train_over_existing_checkpoints(tmp_path: Path) -> None:
    Trainer(NoisyRegressor(), IndexDataset(), _config(max_steps=1), run_dir=tmp_path).train()
    fresh = Trainer(NoisyRegressor(), IndexDataset(), _config(max_steps=1), run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"up to step 1.*resume"):
        fresh.train()
    empty = Trainer(NoisyRegressor(), IndexDataset(), _config(), run_dir=tmp_path / "new")
    assert empty.resume() is None


def test_request_stop_saves_and_returns(tmp_path: Path) -> None:
    def stop_at_two(trainer: Trainer, step: int) -> None:
        if step == 2:
            trainer.request_stop()  # e.g. from a SLURM preemption signal handler

    trainer = Trainer(
        NoisyRegressor(), IndexDataset(), _config(), run_dir=tmp_path, callbacks=[stop_at_two]
    )
    trainer.train()
    # the flag is read at the next step's all-reduce, so step 3 completes, then it saves
    assert trainer.step == 3
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [3]
    trainer.train()  # a later call continues
    assert trainer.step == 6


def test_checkpoint_contents_and_keep_last(tmp_path: Path) -> None:
    cfg = _config(max_steps=5, checkpoint_every=1, keep_last=2)
    trainer = Trainer(
        NoisyRegressor(), IndexDataset(), cfg, run_dir=tmp_path, run_config={"model": "mlp"}
    )
    trainer.train()
    checkpoints = tmp_path / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["latest", "step_000004", "step_000005"]
    state, config = load_weights(tmp_path)
    assert config["run"] == {"model": "mlp"}
    assert config["trainer"]["optimizer"]["betas"] == [0.9, 0.99]
    assert TrainerConfig(**config["trainer"]) == cfg
    _assert_same(state, _state(trainer))
    ema, _ = load_weights(checkpoints / "step_000005", ema=True)
    _assert_same(ema, trainer.ema_model().state_dict())
    train_state = load_train_state(checkpoints / "step_000005")
    assert train_state["step"] == 5
    assert train_state["world_size"] == 1
    assert train_state["ema"]["num_updates"] == 5


# ----------------------------------------------------------------------------- maths


def test_grad_accumulation_equals_a_bigger_batch(tmp_path: Path) -> None:
    results = []
    for batch_size, accum in ((4, 2), (8, 1)):
        cfg = _config(batch_size=batch_size, grad_accum_steps=accum, max_steps=3)
        trainer = Trainer(
            NoisyRegressor(noise=0.0), IndexDataset(), cfg, run_dir=tmp_path / str(accum)
        )
        trainer.train()
        results.append((trainer, _metrics(tmp_path / str(accum))))
    (a, metrics_a), (b, metrics_b) = results
    for ra, rb in zip(metrics_a, metrics_b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6)
        # the logged pre-clip norm would catch a missing 1 / grad_accum_steps
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-5)
    for key, value in _state(a).items():
        torch.testing.assert_close(value, _state(b)[key], rtol=0, atol=1e-6)


def test_ema_matches_the_closed_form(tmp_path: Path) -> None:
    decay, every = 0.9, 2
    snapshots: list[dict[str, Tensor]] = []
    model = NoisyRegressor()
    snapshots.append({k: v.double().clone() for k, v in model.state_dict().items()})

    def record(trainer: Trainer, step: int) -> None:
        assert step == len(snapshots)
        snapshots.append({k: v.double().clone() for k, v in trainer.model.state_dict().items()})

    cfg = _config(ema_decay=decay, ema_every=every, max_steps=7)
    trainer = Trainer(model, IndexDataset(), cfg, run_dir=tmp_path, callbacks=[record])
    trainer.train()
    assert trainer.ema.num_updates == 3

    for key, value in trainer.ema_model().state_dict().items():
        recursion = snapshots[0][key]
        for step in range(1, 8):
            if step % every == 0:
                recursion = decay * recursion + (1 - decay) * snapshots[step][key]
        n, updates = 3, [snapshots[s][key] for s in (2, 4, 6)]
        closed = decay**n * snapshots[0][key] + (1 - decay) * sum(
            decay ** (n - j) * p for j, p in enumerate(updates, start=1)
        )
        torch.testing.assert_close(recursion, closed, rtol=0, atol=1e-12)
        torch.testing.assert_close(value.double(), recursion, rtol=0, atol=1e-6)
    assert not trainer.ema_model().training
    assert not any(p.requires_grad for p in trainer.ema_model().parameters())


def test_learning_rate_schedule(tmp_path: Path) -> None:
    constant = OptimizerConfig(lr=0.5, warmup_steps=4)
    assert [learning_rate_at(constant, s, 100) for s in range(6)] == [
        0.125,
        0.25,
        0.375,
        0.5,
        0.5,
        0.5,
    ]
    cosine = OptimizerConfig(lr=1.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    for step in range(2, 12):
        progress = min(1.0, (step - 2) / 8)
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        assert learning_rate_at(cosine, step, 10) == pytest.approx(expected, abs=1e-15)
    assert learning_rate_at(OptimizerConfig(lr=0.3, warmup_steps=0), 0, 10) == 0.3

    cfg = _config(max_steps=5)
    trainer = Trainer(NoisyRegressor(), IndexDataset(), cfg, run_dir=tmp_path)
    trainer.train()
    logged = [r["lr"] for r in _metrics(tmp_path)]
    assert logged == [learning_rate_at(cfg.optimizer, s, 5) for s in range(5)]


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize(("term", "expected"), [("aux", ("aux",)), ("mse", ("loss", "mse"))])
def test_non_finite_loss_stops_cleanly(tmp_path: Path, term: str, expected: tuple) -> None:
    model = NoisyRegressor()
    model.nan_at_call, model.nan_term = 5, term
    cfg = _config(max_steps=10, checkpoint_every=2)
    trainer = Trainer(model, IndexDataset(), cfg, run_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=rf"step 5\b.*{expected[-1]}") as info:
        trainer.train()
    assert info.value.step == 5
    assert info.value.terms == expected
    assert trainer.step == 4
    checkpoints = tmp_path / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["latest", "step_000002", "step_000004"]
    assert [s for s, _ in list_checkpoints(checkpoints)] == [2, 4]
    state, _ = load_weights(tmp_path)
    assert all(torch.isfinite(v).all() for v in state.values())
    _assert_same(state, _state(trainer))  # the bad step was not applied
    assert load_train_state(checkpoints / "step_000004")["step"] == 4


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: OptimizerConfig(name="sgd"), "name"),
        (lambda: OptimizerConfig(lr=0.0), "lr"),
        (lambda: OptimizerConfig(betas=(0.9, 1.0)), "betas"),
        (lambda: OptimizerConfig(weight_decay=-1.0), "weight_decay"),
        (lambda: OptimizerConfig(warmup_steps=-1), "warmup_steps"),
        (lambda: OptimizerConfig(schedule="linear"), "schedule"),
        (lambda: TrainerConfig(max_steps=0), "max_steps"),
        (lambda: TrainerConfig(batch_size=-2), "batch_size"),
        (lambda: TrainerConfig(grad_accum_steps=0), "grad_accum_steps"),
        (lambda: TrainerConfig(grad_clip=0.0), "grad_clip"),
        (lambda: TrainerConfig(ema_decay=1.0), "ema_decay"),
        (lambda: TrainerConfig(ema_every=0), "ema_every"),
        (lambda: TrainerConfig(keep_last=0), "keep_last"),
        (lambda: TrainerConfig(log_every=0), "log_every"),
        (lambda: TrainerConfig(checkpoint_every=0), "checkpoint_every"),
        (lambda: TrainerConfig(seed=-1), "seed"),
        (lambda: TrainerConfig(num_workers=-1), "num_workers"),
    ],
)
def test_bad_config_names_the_field(make, field: str) -> None:
    with pytest.raises(ValueError, match=rf"\.{field} "):
        make()


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than one optimiser step needs"):
        Trainer(NoisyRegressor(), IndexDataset(3), _config(), run_dir=tmp_path)

    class NoDict(NoisyRegressor):
        def forward(self, batch, *, generator):
            return super().forward(batch, generator=generator)["loss"]

    trainer = Trainer(NoDict(), IndexDataset(), _config(), run_dir=tmp_path)
    with pytest.raises(TypeError, match="key 'loss'"):
        trainer.train()

    class NotScalar(NoisyRegressor):
        def forward(self, batch, *, generator):
            return super().forward(batch, generator=generator) | {"vec": torch.ones(2)}

    trainer = Trainer(NotScalar(), IndexDataset(), _config(), run_dir=tmp_path / "b")
    with pytest.raises(TypeError, match="'vec' must be a 0-dim tensor"):
        trainer.train()


# ----------------------------------------------------------------------------- seeds/data


def test_sampler_shards_are_disjoint_and_resumable() -> None:
    def batches(rank: int, epoch: int = 0, start: int = 0) -> list[list[int]]:
        sampler = ShardedBatchSampler(
            22, 3, world_size=2, rank=rank, seed=7, epoch=epoch, start_batch=start
        )
        return list(sampler)

    rank0, rank1 = batches(0), batches(1)
    assert len(rank0) == len(rank1) == 22 // 6
    for b0, b1 in zip(rank0, rank1, strict=True):
        assert len(b0) == len(b1) == 3
        assert not set(b0) & set(b1)
    seen = [i for pair in zip(rank0, rank1, strict=True) for b in pair for i in b]
    assert len(set(seen)) == len(seen) == 18
    # one process with the global batch sees the same items per step, in rank order
    single = list(ShardedBatchSampler(22, 6, seed=7))
    assert single == [b0 + b1 for b0, b1 in zip(rank0, rank1, strict=True)]
    assert batches(0, start=2) == rank0[2:]
    assert batches(0) == rank0  # deterministic in (seed, epoch)
    assert batches(0, epoch=1) != rank0
    assert len(ShardedBatchSampler(22, 3, world_size=2, start_batch=2)) == 1
    # the drop unit is a whole optimiser step: 22 // (3 * 2 * 2) = 1 step of 2 micro-batches
    assert len(ShardedBatchSampler(22, 3, world_size=2, grad_accum_steps=2)) == 2


def test_seeds_are_distinct_per_seed_rank_epoch_worker() -> None:
    grid = [(s, r, e, w) for s in range(2) for r in range(3) for e in range(3) for w in range(3)]
    seeds = [worker_seed(*key) for key in grid]
    assert len(set(seeds)) == len(grid)
    assert seeds == [worker_seed(*key) for key in grid]
    assert all(0 <= s < 2**64 for s in seeds)
    # the original's np.random.seed(worker_id * 4) repeated across ranks and epochs
    assert worker_seed(0, 0, 0, 1) != worker_seed(0, 1, 0, 1) != worker_seed(0, 0, 1, 1)
    assert derive_seed(1, 2) != derive_seed(2, 1)
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1)


def test_generators_differ_per_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The per-rank seeds without a process group: the generator seed keys on the rank.
    states = []
    for rank in (0, 1):
        monkeypatch.setattr(Trainer, "_init_distributed", lambda self, r=rank: _fake(self, r))
        trainer = Trainer(NoisyRegressor(), IndexDataset(), _config(), run_dir=tmp_path)
        states.append(trainer.generator.get_state())
    assert not states[0].equal(states[1])


def _fake(trainer: Trainer, rank: int) -> bool:
    trainer.rank, trainer.world_size, trainer.local_rank = rank, 1, 0
    return False


# ----------------------------------------------------------------------------- DDP

DDP_STEPS = 4


def _ddp_config() -> TrainerConfig:
    return _config(max_steps=DDP_STEPS, checkpoint_every=2, callback_every=100)


def _ddp_worker(rank: int, out: Path, port: int) -> None:
    """One rank: 2 steps, a new Trainer resumes, 2 more; dump what this rank saw."""
    torch.set_num_threads(1)  # forked from a process that ran OpenMP: stay single-threaded
    # What torchrun exports; the Trainer initialises the process group from it.
    os.environ |= {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    cfg = _ddp_config()
    datasets = [IndexDataset(24), IndexDataset(24)]
    first = Trainer(NoisyRegressor(noise=0.0), datasets[0], cfg, run_dir=out / "run")
    assert first.world_size == 2 and first.rank == rank
    first.train(until_step=2)
    saved_generator = first.generator.get_state()
    second = Trainer(NoisyRegressor(noise=0.0, seed=9), datasets[1], cfg, run_dir=out / "run")
    assert second.resume() == 2
    assert second.generator.get_state().equal(saved_generator)
    second.train()
    torch.save(
        {
            "state": second.model.state_dict(),
            "ema": second.ema_model().state_dict(),
            "seen": datasets[0].seen + datasets[1].seen,
            "generator": second.generator.get_state(),
        },
        out / f"rank{rank}.pt",
    )
    first.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_matches_single_process(tmp_path: Path) -> None:
    """2 gloo ranks == 1 process with the global batch; disjoint shards; resume on every rank."""
    single_data = IndexDataset(24)
    single_cfg = _ddp_config()
    single_cfg.batch_size *= 2
    single = Trainer(NoisyRegressor(noise=0.0), single_data, single_cfg, run_dir=tmp_path / "one")
    single.train()

    # fork, not spawn: the ranks inherit the imported torch instead of paying for it again.
    mp.start_processes(_ddp_worker, args=(tmp_path, _free_port()), nprocs=2, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    _assert_same(ranks[0]["state"], ranks[1]["state"])
    _assert_same(ranks[0]["ema"], ranks[1]["ema"])
    assert not ranks[0]["generator"].equal(ranks[1]["generator"])  # per-rank streams

    for key, value in _state(single).items():
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=0, atol=1e-5)
    for a, b in zip(_metrics(tmp_path / "run"), _metrics(tmp_path / "one"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)

    # Disjoint shards whose union per step is the single-process batch.
    seen0, seen1 = (torch.tensor(r["seen"]).view(DDP_STEPS, 4) for r in ranks)
    reference = torch.tensor(single_data.seen).view(DDP_STEPS, 8)
    for step in range(DDP_STEPS):
        assert not set(seen0[step].tolist()) & set(seen1[step].tolist())
        assert torch.equal(torch.cat([seen0[step], seen1[step]]), reference[step])
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [2, 4]


# ----------------------------------------------------------------------------- dead parameters


def _stuck_regressor() -> NoisyRegressor:
    """Both layers at zero: h = tanh(0) = 0, so dL/dW2 = g h^T = 0 and dL/dh = W2^T g = 0
    forever; only the output bias b2 learns."""
    model = NoisyRegressor()
    with torch.no_grad():
        for layer in (model.net[0], model.net[3]):
            layer.weight.zero_()
            layer.bias.zero_()
    return model


def test_warns_about_parameters_stuck_at_a_zero_initialised_saddle(tmp_path: Path) -> None:
    import warnings

    model = _stuck_regressor()
    with pytest.warns(NoGradientWarning, match="3 of 4") as caught:
        Trainer(model, IndexDataset(), _config(gradient_check_steps=4), run_dir=tmp_path).train()
    message = str(caught[0].message)
    assert all(name in message for name in ("net.0.weight", "net.0.bias", "net.3.weight"))
    assert "net.3.bias" not in message
    assert torch.count_nonzero(model.net[3].weight) == 0  # really stuck, not just slow

    # A healthy model, and a disabled check, warn about nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoGradientWarning)
        Trainer(NoisyRegressor(), IndexDataset(), _config(), run_dir=tmp_path / "ok").train()
        config = _config(gradient_check_steps=0)
        Trainer(_stuck_regressor(), IndexDataset(), config, run_dir=tmp_path / "off").train()
