"""The one training loop used by every DFM application.

Model contract
--------------
The trained object is an ``nn.Module`` whose forward pass computes the loss::

    def forward(self, batch, *, generator: torch.Generator) -> dict[str, Tensor]: ...

* ``batch`` is what the dataset (and ``collate_fn``) produced, already moved to the
  training device with :func:`dfm_core.tree.tree_to` (tensors, dataclasses, tuples,
  dicts of tensors).
* The return value maps names to **scalar** (0-dim) loss tensors. Key ``"loss"`` is the
  total that is back-propagated; the other keys (e.g. ``"target"``, ``"novel_view"``,
  ``"depth_smooth"``) are logged. Every rank must return the same keys on every step.
* **All randomness** (noise, diffusion timesteps, conditioning dropout masks) must be
  drawn from ``generator``, e.g. ``torch.randn(shape, generator=generator,
  device=generator.device)``. The trainer owns that generator (it lives on the training
  device), seeds it distinctly per rank and checkpoints it, which is what makes resume
  bit-identical. (The global RNGs are seeded per rank and checkpointed too, so modules
  such as ``nn.Dropout`` that cannot take a generator also resume exactly.)
* The loss is computed in ``forward`` rather than in a side method so that DDP's
  gradient all-reduce hooks fire.

Data
----
Item order, per-item seeding and sharding across ranks: see :mod:`dfm_core.data_order`.

Distributed
-----------
Launch with ``torchrun --nproc_per_node N``: the trainer initialises the process group
from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` (NCCL on CUDA, gloo on CPU)
unless one is already initialised, wraps the model in DDP, uses ``no_sync`` on all but
the last micro-batch of an accumulated step, and all-reduces the loss terms every step
(the non-finite check is therefore global). Only rank 0 writes checkpoints, metrics and
the progress bar; :meth:`Trainer.save_checkpoint` gathers every rank's RNG states, and
:meth:`Trainer.resume` restores the full state on every rank.

Stopping: signals and damaged checkpoints
-----------------------------------------
Inside :func:`graceful_stop` (or ``with trainer.install_signal_handlers():``), SIGTERM,
SIGINT, SIGUSR1 and SIGUSR2 (SLURM's pre-emption/time-limit warnings) make every trainer
that is training finish its current step, save a checkpoint and raise
:class:`TrainingInterrupted`, whose message is one line naming the signal, the step and
the checkpoint; a second SIGINT aborts at once. With DDP the request is all-reduced, so
every rank stops after the same step. :meth:`Trainer.resume` verifies checkpoints
against their manifest checksums, newest first, and falls back past damaged ones
(warning which one was skipped and why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dfm_core.checkpoint import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    config_differences,
    list_checkpoints,
    load_train_state,
    load_weights,
    save_checkpoint,
    verify_checkpoint,
)
from dfm_core.data_order import (
    SEED_GENERATOR,
    SEED_GLOBAL,
    SEED_LOADER,
    SeededItems,
    ShardedBatchSampler,
    derive_seed,
    init_worker,
    numpy_state,
    python_state,
    seed_globals,
    set_numpy_state,
    set_python_state,
    worker_seed,
)
from dfm_core.ema import EMA
from dfm_core.optim import OptimizerConfig, learning_rate_at
from dfm_core.tree import tree_to

__all__ = [
    "STOP_SIGNALS",
    "NoGradientWarning",
    "NonFiniteLossError",
    "OptimizerConfig",
    "ShardedBatchSampler",
    "Trainer",
    "TrainerConfig",
    "TrainingInterrupted",
    "derive_seed",
    "graceful_stop",
    "learning_rate_at",
    "worker_seed",
]

Callback = Callable[["Trainer", int], None]


# ----------------------------------------------------------------------------- configs


@dataclass
class TrainerConfig:
    """Everything the training loop needs besides the model and the data."""

    max_steps: int = 100_000
    """Optimiser steps to train for (the run is done when the step counter reaches it)."""
    batch_size: int = 8
    """Micro-batch size per rank; the global batch is ``batch_size * world_size * grad_accum_steps``."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimiser step (each loss scaled by ``1 / grad_accum_steps``)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimiser and learning-rate schedule."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value; ``None`` disables clipping (the norm is still logged)."""
    ema_decay: float = 0.999
    """EMA decay per update, in ``[0, 1)``; the EMA weights are what sampling uses."""
    ema_every: int = 1
    """Update the EMA every this many optimiser steps (the original DFM used 10)."""
    ema_warmup: bool = False
    """Ramp the EMA decay up as ``min(ema_decay, (1 + n) / (10 + n))`` over its first ``n``
    updates, so short runs do not keep the initial weights (``dfm_core.ema``)."""
    seed: int = 0
    """Base seed of the per-rank generator, global RNGs, data order and data workers."""
    num_workers: int = 4
    """DataLoader worker processes per rank (0 loads in the training process)."""
    bf16: bool = True
    """Run ``forward`` under bf16 autocast when training on CUDA; no effect on CPU (always fp32)."""
    tf32: bool = True
    """Allow TF32 matmuls on CUDA (``torch.set_float32_matmul_precision("high")``)."""
    log_every: int = 50
    """Append a record to ``metrics.jsonl`` every this many steps (means over the interval)."""
    checkpoint_every: int = 2000
    """Save a checkpoint every this many steps (and always when ``train`` returns)."""
    keep_last: int | None = 3
    """Keep this many newest checkpoints; ``None`` keeps all."""
    callback_every: int = 2000
    """Call each callback with ``(trainer, step)`` every this many steps."""
    progress: bool = True
    """Show a tqdm progress bar on rank 0 (only when stderr is a terminal)."""
    gradient_check_steps: int = 20
    """For this many first steps of a fresh run, note which parameters receive a non-zero
    gradient and then warn (:class:`NoGradientWarning`) naming those that never did: a
    sub-network behind two zero-initialised layers sits at a saddle and never trains, silently.
    0 disables the check."""
    find_unused_parameters: bool = False
    """Passed to DDP; needed when some parameters get no gradient on some steps."""
    device: str | None = None
    """Training device; ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""

    def __post_init__(self) -> None:
        if isinstance(self.optimizer, Mapping):
            self.optimizer = OptimizerConfig(**self.optimizer)
        positive = ("max_steps", "batch_size", "grad_accum_steps", "ema_every", "log_every")
        for name in (*positive, "checkpoint_every", "callback_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainerConfig.{name} must be a positive integer, got {value!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainerConfig.grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainerConfig.ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(
                f"TrainerConfig.seed must be a non-negative integer, got {self.seed!r}"
            )
        if not isinstance(self.gradient_check_steps, int) or self.gradient_check_steps < 0:
            raise ValueError(
                "TrainerConfig.gradient_check_steps must be a non-negative integer, got "
                f"{self.gradient_check_steps!r}"
            )
        if self.num_workers < 0:
            raise ValueError(f"TrainerConfig.num_workers must be >= 0, got {self.num_workers!r}")
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(
                f"TrainerConfig.keep_last must be >= 1 or None, got {self.keep_last!r}"
            )
        if self.device is not None:
            # The form only: whether CUDA exists is checked when the Trainer is built, so
            # a config for a GPU job validates on a login node without one.
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as error:
                raise ValueError(
                    f"TrainerConfig.device must be cpu, cuda, cuda:N or None, got {self.device!r}"
                ) from error

    def build(
        self,
        model: nn.Module,
        dataset: Dataset,
        *,
        run_dir: str | os.PathLike[str],
        collate_fn: Callable[[list[Any]], Any] | None = None,
        callbacks: Sequence[Callback] = (),
        run_config: Any = None,
    ) -> Trainer:
        """A :class:`Trainer` for ``model`` on ``dataset`` with this config."""
        return Trainer(
            model,
            dataset,
            self,
            run_dir=run_dir,
            collate_fn=collate_fn,
            callbacks=callbacks,
            run_config=run_config,
        )


class NoGradientWarning(UserWarning):
    """Some trainable parameters received no non-zero gradient in the first steps of a run."""


class NonFiniteLossError(FloatingPointError):
    """A loss term (or the gradient norm) became NaN or infinite; nothing was saved for that step.

    Attributes:
        step: the optimiser step that failed (1-based: the step that would have completed).
        terms: names of the non-finite terms (``"grad_norm"`` for the gradient norm).
    """

    def __init__(
        self, step: int, terms: Mapping[str, float], last_checkpoint_step: int | None = None
    ) -> None:
        self.step = step
        self.terms = tuple(terms)
        self.last_checkpoint_step = last_checkpoint_step
        listed = ", ".join(f"{name}={value}" for name, value in terms.items())
        if last_checkpoint_step is None:
            advice = "no checkpoint had been saved yet (restart, e.g. with a lower learning rate)"
        else:
            advice = (
                f"the last good checkpoint (step {last_checkpoint_step}) is intact "
                "(resume from it, e.g. with a lower learning rate)"
            )
        super().__init__(f"non-finite loss at step {step}: {listed}; training stopped, {advice}")


class TrainingInterrupted(Exception):
    """Training stopped on a signal (see :func:`graceful_stop`); the message is one line.

    Attributes:
        signal_name: e.g. ``"SIGTERM"`` (``"a signal on another rank"`` on DDP ranks that
            stopped because a peer was signalled).
        signum: the signal number, or ``None`` when it arrived on another rank.
        step: optimiser steps completed and saved, or ``None`` if no trainer was running.
        checkpoint: the checkpoint written on the way out (rank 0), else ``None``.
    """

    def __init__(
        self,
        signum: int | None,
        step: int | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        self.signum = signum
        self.signal_name = (
            signal.Signals(signum).name if signum is not None else "a signal on another rank"
        )
        self.step = step
        self.checkpoint = checkpoint
        if step is None:
            message = f"stopped by {self.signal_name} (no training step was running)"
        elif checkpoint is not None:
            message = (
                f"stopped by {self.signal_name} after step {step}; checkpoint saved to "
                f"{checkpoint} (run again with the same run directory to resume)"
            )
        else:
            message = f"stopped by {self.signal_name} after step {step}; checkpoint saved"
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        """``128 + signum``, the shell's convention for a process ended by a signal."""
        return 128 + (self.signum if self.signum is not None else signal.SIGTERM)


STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)
"""Signals :func:`graceful_stop` handles by default: termination, Ctrl-C, and the two
user signals SLURM sends ahead of pre-emption or the time limit (``--signal``)."""

# Trainers inside `train()` right now, and the first stop signal received under
# `graceful_stop` (module state because a signal handler is process-wide).
_TRAINING: weakref.WeakSet[Trainer] = weakref.WeakSet()
_RECEIVED: list[int] = []


def _on_stop_signal(signum: int, frame: Any) -> None:
    if _RECEIVED and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: the user wants out now
    if _RECEIVED and signum == signal.SIGTERM:
        # A second SIGTERM: the first could not be honoured (e.g. a rank stuck in a
        # collective never reaches the step boundary); stop here, without saving.
        raise TrainingInterrupted(signum)
    if not _RECEIVED:
        _RECEIVED.append(signum)
    trainers = list(_TRAINING)
    if not trainers:  # between training phases (e.g. evaluating): stop right here
        raise TrainingInterrupted(signum)
    for trainer in trainers:
        trainer._stop_signal = signum
        trainer.request_stop()


@contextlib.contextmanager
def graceful_stop(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """Turn ``signals`` into "save at the next step boundary, then stop" for every trainer.

    While the context is active, a signal makes each :class:`Trainer` inside
    :meth:`Trainer.train` finish its step, save a checkpoint and raise
    :class:`TrainingInterrupted`; arriving outside ``train`` (e.g. while evaluating) it
    raises :class:`TrainingInterrupted` at once. A second SIGINT raises
    ``KeyboardInterrupt``, a second SIGTERM ``TrainingInterrupted`` at once (no save). The previous handlers are restored on exit. Main thread only.

    Use it around the whole job (all trainers, then evaluation)::

        with graceful_stop():
            trainer.resume()
            trainer.train()

    Args:
        signals: the signal numbers to handle (default :data:`STOP_SIGNALS`).
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "graceful_stop: signal handlers can only be installed in the main thread"
        )
    previous = {signum: signal.signal(signum, _on_stop_signal) for signum in signals}
    _RECEIVED.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _RECEIVED.clear()


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Trains a loss-returning module (see the module docstring for the contract).

    Args:
        model: the module; moved to the training device and, with several ranks,
            wrapped in DDP. Its parameters with ``requires_grad`` are optimised.
        dataset: map-style dataset of training items.
        config: loop settings.
        run_dir: the run directory; checkpoints go to ``run_dir/checkpoints`` and
            metrics to ``run_dir/metrics.jsonl`` (rank 0 only).
        collate_fn: batches a list of items (default: torch's ``default_collate``).
        callbacks: called as ``callback(trainer, step)`` every ``config.callback_every``
            steps on **every** rank (so they may use collectives); write files only when
            ``trainer.is_main``. Use :meth:`ema_model` to sample.
        run_config: the application's resolved config (JSON-serialisable, dataclasses
            allowed), saved into every checkpoint beside the trainer config so weights
            can be rebuilt without the training script.
        frozen_config_keys: dotted keys of ``run_config`` that fix the weights' meaning
            (e.g. ``("model", "schedule")``); :meth:`resume` refuses a checkpoint whose
            saved values differ, naming the fields. Tensor names and shapes are always
            checked against the model.

    Typical use::

        trainer = Trainer(model, dataset, TrainerConfig(...), run_dir="runs/x")
        trainer.resume()   # no-op on a fresh run
        trainer.train()
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: TrainerConfig,
        *,
        run_dir: str | os.PathLike[str],
        collate_fn: Callable[[list[Any]], Any] | None = None,
        callbacks: Sequence[Callback] = (),
        run_config: Any = None,
        frozen_config_keys: Sequence[str] = (),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Trainer: model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"Trainer: config must be a TrainerConfig, got {type(config).__name__}")
        self.config = config
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.callbacks = list(callbacks)
        self.run_config = run_config
        self.frozen_config_keys = tuple(frozen_config_keys)
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"

        self._pick_device()  # refuse an unusable device before joining a process group
        self._owns_process_group = self._init_distributed()
        self.device = self._pick_device()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            if config.tf32:
                torch.set_float32_matmul_precision("high")

        step_items = config.batch_size * self.world_size * config.grad_accum_steps
        try:
            num_items = len(dataset)  # type: ignore[arg-type]
        except TypeError as error:
            raise TypeError("Trainer: dataset must be map-style (define __len__)") from error
        if num_items < step_items:
            raise ValueError(
                f"Trainer: dataset has {num_items} items, fewer than one optimiser step needs "
                f"(batch_size {config.batch_size} x world_size {self.world_size} x "
                f"grad_accum_steps {config.grad_accum_steps})"
            )
        self.num_items = num_items

        seed_globals(derive_seed(config.seed, SEED_GLOBAL, self.rank))
        if self.device.type == "cuda":
            torch.cuda.manual_seed(derive_seed(config.seed, SEED_GLOBAL, self.rank, 1))
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(derive_seed(config.seed, SEED_GENERATOR, self.rank))

        self.module = model.to(self.device).train()
        self._ddp: DistributedDataParallel | None = None
        if self.world_size > 1:
            self._ddp = DistributedDataParallel(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=config.find_unused_parameters,
            )
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        self._params = [p for _, p in named]
        self._param_names = [n for n, _ in named]
        # Which parameters have had a non-zero gradient (TrainerConfig.gradient_check_steps);
        # None once the run resumes from a checkpoint (its first steps happened elsewhere).
        self._reached: Tensor | None = torch.zeros(len(named), dtype=torch.bool, device=self.device)
        if not self._params:
            raise ValueError("Trainer: model has no parameters with requires_grad=True")
        self.optimizer = config.optimizer.build(self._params)
        self.ema = EMA(
            self.module, decay=config.ema_decay, every=config.ema_every, warmup=config.ema_warmup
        )

        self.step = 0
        self.epoch = 0
        self.epoch_batch = 0  # micro-batches of the current epoch consumed so far
        self._resume_called = False
        self._start_checked = False
        self._stop_requested = False
        self._stop_signal: int | None = None
        self._signalled_somewhere = False
        self._saved_config: dict[str, Any] = {}
        self._last_saved_step: int | None = None
        self.skipped_checkpoints: list[tuple[Path, str]] = []
        """Checkpoints :meth:`resume` passed over as damaged, with the reason."""
        self._term_names: list[str] | None = None

    # -- distributed ---------------------------------------------------------

    def _init_distributed(self) -> bool:
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
            return False
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.world_size = world_size
        if world_size == 1:
            return False
        if not dist.is_available():
            raise RuntimeError("Trainer: WORLD_SIZE > 1 but torch.distributed is unavailable")
        wanted = self.config.device
        use_cuda = (
            torch.cuda.is_available() if wanted is None else torch.device(wanted).type == "cuda"
        )
        if use_cuda:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", init_method="env://", device_id=device)
        else:
            dist.init_process_group("gloo", init_method="env://")
        return True

    def _pick_device(self) -> torch.device:
        if self.config.device is not None:
            try:
                wanted = torch.device(self.config.device)
            except (RuntimeError, TypeError) as error:
                raise ValueError(
                    f"TrainerConfig.device: {self.config.device!r} is not a device "
                    "(expected cpu, cuda, cuda:N or null)"
                ) from error
            if wanted.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(
                    f"TrainerConfig.device={self.config.device!r} but CUDA is not available on "
                    "this machine; use device=cpu, or null to pick automatically"
                )
        if self.config.device is None:
            if torch.cuda.is_available():
                return torch.device("cuda", self.local_rank)
            return torch.device("cpu")
        device = torch.device(self.config.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        return device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes files)."""
        return self.rank == 0

    def _broadcast(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # -- public helpers ------------------------------------------------------

    def ema_model(self) -> nn.Module:
        """The EMA copy of the model (eval mode, no grad): use it for sampling."""
        return self.ema.module

    @property
    def model(self) -> nn.Module:
        """The raw (unwrapped, non-EMA) model being optimised."""
        return self.module

    @property
    def lr(self) -> float:
        """Learning rate of the next optimiser update."""
        return learning_rate_at(self.config.optimizer, self.step, self.config.max_steps)

    def request_stop(self) -> None:
        """Ask :meth:`train` to stop after the next completed step, save and return.

        Safe to call from a signal handler (e.g. a SLURM preemption signal). The flag is
        read when a step all-reduces its losses, so with DDP all ranks stop after the
        same step even if only some of them received the request. To have signals do
        this (and raise :class:`TrainingInterrupted` once saved), use
        :meth:`install_signal_handlers`.
        """
        self._stop_requested = True

    def install_signal_handlers(
        self, signals: Sequence[int] = STOP_SIGNALS
    ) -> contextlib.AbstractContextManager[None]:
        """``with trainer.install_signal_handlers(): trainer.train()``: see :func:`graceful_stop`.

        The handlers act on every trainer training in this process (e.g. a baseline
        trained after the main model), so one context around the whole job suffices.
        """
        return graceful_stop(signals)

    def close(self) -> None:
        """Destroy the process group if the trainer created it (call once, at the very end)."""
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_process_group = False

    # -- data ----------------------------------------------------------------

    def _batch_stream(self) -> Generator[Any, None, None]:
        cfg = self.config
        pin = self.device.type == "cuda"
        while True:
            sampler = ShardedBatchSampler(
                self.num_items,
                cfg.batch_size,
                world_size=self.world_size,
                rank=self.rank,
                seed=cfg.seed,
                epoch=self.epoch,
                start_batch=self.epoch_batch,
                grad_accum_steps=cfg.grad_accum_steps,
            )
            if self.epoch_batch >= sampler.batches_per_epoch:
                self.epoch, self.epoch_batch = self.epoch + 1, 0
                continue
            set_epoch = getattr(self.dataset, "set_epoch", None)
            if callable(set_epoch):  # before the workers fork, so they see it too
                set_epoch(self.epoch)
            loader = DataLoader(
                SeededItems(self.dataset, cfg.seed, self.epoch),
                batch_sampler=sampler,
                num_workers=cfg.num_workers,
                collate_fn=self.collate_fn,
                pin_memory=pin,
                worker_init_fn=functools.partial(init_worker, cfg.seed, self.rank, self.epoch),
                # A dedicated generator: DataLoader draws its base seed from it, which
                # would otherwise consume the global torch RNG and break exact resume.
                generator=torch.Generator().manual_seed(
                    derive_seed(cfg.seed, SEED_LOADER, self.rank, self.epoch)
                ),
            )
            for batch in loader:
                self.epoch_batch += 1
                yield tree_to(batch, self.device, non_blocking=pin)

    # -- one step ------------------------------------------------------------

    def _check_terms(self, terms: Any) -> list[str]:
        if not isinstance(terms, Mapping) or "loss" not in terms:
            raise TypeError(
                "Trainer: model(batch, generator=...) must return a dict of scalar loss "
                f"tensors with key 'loss', got {type(terms).__name__}"
                + (f" with keys {sorted(terms)}" if isinstance(terms, Mapping) else "")
            )
        for name, value in terms.items():
            if not isinstance(value, Tensor) or value.ndim != 0:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise TypeError(f"Trainer: loss term {name!r} must be a 0-dim tensor, got {shape}")
        names = ["loss", *sorted(name for name in terms if name != "loss")]
        if self._term_names is not None and names != self._term_names:
            raise ValueError(
                f"Trainer: loss terms changed from {self._term_names} to {names}; the model "
                "must return the same keys on every step"
            )
        return names

    def _train_step(self, stream: Iterator[Any]) -> tuple[dict[str, float], float, float, bool]:
        cfg = self.config
        accum = cfg.grad_accum_steps
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model: nn.Module = self._ddp if self._ddp is not None else self.module
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda" and cfg.bf16
            else contextlib.nullcontext()
        )
        total: Tensor | None = None
        names: list[str] = []
        for micro in range(accum):
            batch = next(stream)
            skip_sync = self._ddp is not None and micro < accum - 1
            with self._ddp.no_sync() if skip_sync else contextlib.nullcontext():  # type: ignore[union-attr]
                with autocast:
                    terms = model(batch, generator=self.generator)
                names = self._term_names = self._check_terms(terms)
                loss = terms["loss"] / accum if accum > 1 else terms["loss"]
                loss.backward()
            values = torch.stack([terms[name].detach().float() for name in names])
            total = values if total is None else total + values
        assert total is not None
        means = total / accum if accum > 1 else total
        flags = [1.0 if self._stop_requested else 0.0, 1.0 if self._stop_signal else 0.0]
        packed = torch.cat([means, torch.tensor(flags, device=self.device)])
        if self.world_size > 1:
            dist.all_reduce(packed)  # NaN/inf on any rank makes the sum non-finite
            packed = torch.cat([packed[:-2] / self.world_size, packed[-2:]])
        if cfg.grad_clip is not None:  # returns the norm before clipping
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip)
        else:
            grads = [p.grad for p in self._params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        host = torch.cat([packed, grad_norm.reshape(1).to(packed)]).tolist()
        values_host, stop_flag, signal_flag, norm = host[: len(names)], *host[-3:]
        if signal_flag > 0:
            self._signalled_somewhere = True
        named = dict(zip(names, values_host, strict=True))
        bad = {name: value for name, value in named.items() if not math.isfinite(value)}
        if not bad and not math.isfinite(norm):
            bad = {"grad_norm": norm}
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self.step + 1, bad, self._last_saved_step)
        if self._reached is not None and self.step < cfg.gradient_check_steps:
            self._note_gradients()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self._reached is not None and self.step == cfg.gradient_check_steps:
            self._warn_no_gradient()
        self.ema.update(self.module, self.step)
        return named, lr, norm, stop_flag > 0

    def _note_gradients(self) -> None:
        assert self._reached is not None
        flags = [
            p.grad.ne(0).any() if p.grad is not None else torch.zeros((), dtype=torch.bool)
            for p in self._params
        ]  # one device tensor each: a single transfer below, not one sync per parameter
        self._reached |= torch.stack([f.to(self._reached.device) for f in flags])

    def _warn_no_gradient(self) -> None:
        if not self.is_main or self._reached is None or bool(self._reached.all()):
            return
        hits = self._reached.tolist()
        missing = [n for n, hit in zip(self._param_names, hits, strict=True) if not hit]
        shown = ", ".join(missing[:8]) + (
            f", ... ({len(missing) - 8} more)" if len(missing) > 8 else ""
        )
        warnings.warn(
            f"Trainer: {len(missing)} of {len(self._params)} trainable parameters had no "
            f"non-zero gradient in the first {self.step} steps (a sub-network stuck behind "
            f"zero-initialised layers, or unused): {shown}",
            NoGradientWarning,
            stacklevel=3,
        )

    # -- loop ----------------------------------------------------------------

    def _check_fresh_start(self) -> None:
        if self._start_checked:
            return
        self._start_checked = True
        existing = None
        if self.is_main and not self._resume_called and self.step == 0:
            found = list_checkpoints(self.checkpoint_dir)
            existing = found[-1][0] if found else None
        existing = self._broadcast(existing)
        if existing is not None:
            raise ValueError(
                f"Trainer: {self.checkpoint_dir} already holds checkpoints up to step {existing}; "
                "call trainer.resume() first or use a fresh run_dir"
            )
        if self.is_main and self.step == 0:
            # Rows from an attempt killed before its first checkpoint are not part of this run.
            self._truncate_metrics(0)

    def train(self, until_step: int | None = None) -> None:
        """Train until ``until_step`` (default ``config.max_steps``) steps are done.

        Saves a checkpoint every ``checkpoint_every`` steps and when returning; a
        :meth:`request_stop` also saves and returns. Call on every rank.

        Raises:
            NonFiniteLossError: a loss term or the gradient norm went NaN/inf; the step was
                not applied and nothing was saved for it.
            TrainingInterrupted: a signal arrived under :func:`graceful_stop`; the step in
                progress was finished and saved first.
        """
        cfg = self.config
        target = cfg.max_steps if until_step is None else min(until_step, cfg.max_steps)
        self._check_fresh_start()
        self._signalled_somewhere = False
        _TRAINING.add(self)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # DataLoader workers live for one train() call: closing the stream in `finally`
        # shuts them down promptly (left to the garbage collector, a worker iterator
        # caught in a reference cycle waits 5 s per worker). The sampler position is
        # tracked per consumed batch, so restarting the workers later is exact.
        stream = self._batch_stream()
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            disable=None if (self.is_main and cfg.progress) else True,
            desc="train",
            dynamic_ncols=True,
        )
        sums: dict[str, float] = {}
        count, last_time = 0, time.perf_counter()
        stopped = False
        try:
            while self.step < target and not stopped:
                named, lr, norm, stopped = self._train_step(stream)
                for name, value in {**named, "grad_norm": norm}.items():
                    sums[name] = sums.get(name, 0.0) + value
                count += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == target or stopped:
                    now = time.perf_counter()
                    record: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
                    record |= {name: total / count for name, total in sums.items()}
                    record |= {"lr": lr, "it_per_s": count / max(now - last_time, 1e-9)}
                    self._write_metrics(record)
                    bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{lr:.3g}")
                    sums, count, last_time = {}, 0, now
                if self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.step % cfg.callback_every == 0:
                    for callback in self.callbacks:
                        callback(self, self.step)
            if self._last_saved_step != self.step:
                self.save_checkpoint()
        finally:
            _TRAINING.discard(self)
            stream.close()
            bar.close()
            self._stop_requested = False
        if self._signalled_somewhere or self._stop_signal is not None:
            signum, self._stop_signal = self._stop_signal, None
            newest = list_checkpoints(self.checkpoint_dir) if self.is_main else []
            raise TrainingInterrupted(signum, self.step, newest[-1][1] if newest else None)

    def _write_metrics(self, record: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- checkpoints ---------------------------------------------------------

    def _rng_state(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "numpy": numpy_state(),
            "python": python_state(),
        }

    def _set_rng_state(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and state["cuda"] is not None:
            torch.cuda.set_rng_state(state["cuda"], self.device)
        set_numpy_state(state["numpy"])
        set_python_state(state["python"])

    def checkpoint_config(self) -> dict[str, Any]:
        """The config stored with every checkpoint: trainer settings plus ``run_config``."""
        return {"trainer": dataclasses.asdict(self.config), "run": self.run_config}

    def save_checkpoint(self) -> Path | None:
        """Save the full training state (call on every rank; rank 0 writes).

        Returns:
            The checkpoint directory on rank 0, ``None`` on the other ranks.
        """
        rng: list[Any] = [self._rng_state()]
        if self.world_size > 1:
            rng = [None] * self.world_size
            dist.all_gather_object(rng, self._rng_state())
        path = None
        if self.is_main:
            cfg = self.config
            train_state = {
                "format_version": 1,
                "step": self.step,
                "epoch": self.epoch,
                # Position in the epoch's permutation, so a resume with another
                # world size or batch size lands on the same items.
                "epoch_position": self.epoch_batch * cfg.batch_size * self.world_size,
                "world_size": self.world_size,
                "optimizer": self.optimizer.state_dict(),
                "lr_schedule": {
                    "name": cfg.optimizer.schedule,
                    "warmup_steps": cfg.optimizer.warmup_steps,
                    "next_lr": self.lr,
                },
                "ema": {
                    "decay": self.ema.decay,
                    "every": self.ema.every,
                    "num_updates": self.ema.num_updates,
                },
                "rng": rng,
            }
            path = save_checkpoint(
                self.checkpoint_dir,
                self.step,
                model_state=self.module.state_dict(),
                ema_state=self.ema.state_dict(),
                train_state=train_state,
                config=self.checkpoint_config(),
                keep_last=cfg.keep_last,
            )
        self._last_saved_step = self.step
        self._barrier()
        return path

    def resume(self) -> int | None:
        """Restore the newest complete checkpoint of ``run_dir`` on every rank.

        Incomplete checkpoints (left by a run killed mid-save) are ignored. Continuing a
        resumed run is bit-identical to never having stopped (same device, same world
        size). Call on every rank, before :meth:`train`.

        Returns:
            The restored step, or ``None`` if the run has no checkpoint yet.
        """
        self._resume_called = True
        loaded = self._newest_good_checkpoint() if self.is_main else None
        path = self._broadcast(None if loaded is None else str(loaded[0]))
        if path is None:
            if self.is_main:
                self._truncate_metrics(0)  # rows of an attempt killed before any checkpoint
            self._barrier()
            return None
        path = Path(path)
        model_state, ema_state, state = loaded[1:] if loaded is not None else self._read(path)
        self._check_fits(path, model_state, ema_state)
        self.module.load_state_dict(model_state)
        self.ema.load_state_dict(ema_state, state["ema"]["num_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self._reached = None
        global_batch = self.config.batch_size * self.world_size
        position = int(state["epoch_position"])
        self.epoch_batch = -(-position // global_batch)  # round up: never repeat an item
        if position % global_batch:
            warnings.warn(
                f"resume: epoch position {position} is not a multiple of the global batch "
                f"{global_batch}; skipping to the next full batch",
                stacklevel=2,
            )
        saved_world = int(state["world_size"])
        if saved_world == self.world_size:
            self._set_rng_state(state["rng"][self.rank])
        else:
            warnings.warn(
                f"resume: checkpoint was written with world size {saved_world}, now "
                f"{self.world_size}; RNG streams are reseeded, so the run is not bit-identical",
                stacklevel=2,
            )
            seed_globals(derive_seed(self.config.seed, SEED_GLOBAL, self.rank, self.step))
            self.generator.manual_seed(
                derive_seed(self.config.seed, SEED_GENERATOR, self.rank, self.step)
            )
        self._last_saved_step = self.step
        if self.is_main:
            self._truncate_metrics(self.step)
        self._barrier()
        return self.step

    def _read(self, path: Path) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
        verify_checkpoint(path)
        model_state, config = load_weights(path, device=self.device)
        ema_state, _ = load_weights(path, ema=True, device=self.device)
        state = load_train_state(path)
        missing = [key for key in ("step", "epoch", "epoch_position", "world_size", "optimizer",
                                   "ema", "rng") if key not in state]  # fmt: skip
        if missing:
            raise CheckpointCorruptError(f"{path / 'state.pt'}: missing entries {missing}")
        self._saved_config = config
        return model_state, ema_state, state

    def _newest_good_checkpoint(
        self,
    ) -> tuple[Path, dict[str, Tensor], dict[str, Tensor], dict[str, Any]] | None:
        """The newest checkpoint that passes its checksums and loads, read; warns about skips."""
        # Every step dir, complete or not: one with a size mismatch or no manifest was
        # damaged after its atomic save, and the user should hear that it was passed over.
        candidates = list_checkpoints(self.checkpoint_dir, complete_only=False)
        self.skipped_checkpoints = []
        for _, path in reversed(candidates):
            try:
                read = self._read(path)
            except CheckpointCorruptError as error:
                self.skipped_checkpoints.append((path, str(error)))
                continue
            for skipped, reason in self.skipped_checkpoints:
                warnings.warn(
                    f"resume: skipped damaged checkpoint {skipped.name}: {reason}; "
                    f"resuming from {path.name}",
                    stacklevel=3,
                )
            return (path, *read)
        if self.skipped_checkpoints:
            reasons = "; ".join(f"{p.name}: {why}" for p, why in self.skipped_checkpoints)
            raise CheckpointCorruptError(
                f"resume: every checkpoint in {self.checkpoint_dir} is damaged ({reasons}); "
                "refusing to start over in a run directory that holds checkpoints"
            )
        return None

    def _check_fits(
        self, path: Path, model_state: Mapping[str, Tensor], ema_state: Mapping[str, Tensor]
    ) -> None:
        """Refuse a checkpoint written for another model or frozen config, naming the fields."""
        own = self.module.state_dict()
        tensors = []
        for key in sorted(set(own) | set(model_state) | set(ema_state)):
            if key not in model_state or key not in ema_state:
                tensors.append(f"{key} (not in the checkpoint)")
            elif key not in own:
                tensors.append(f"{key} (not in the model)")
            elif own[key].shape != model_state[key].shape:
                tensors.append(
                    f"{key} (checkpoint {tuple(model_state[key].shape)}, model {tuple(own[key].shape)})"
                )
        saved_run = self._saved_config.get("run")
        frozen = (
            config_differences(saved_run, self.run_config, self.frozen_config_keys)
            if self.frozen_config_keys
            else []
        )
        if not tensors and not frozen:
            return
        fields = frozen or config_differences(saved_run, self.run_config)
        parts = [f"{path} does not match this model"]
        if fields:
            parts.append(f"differing config fields: {', '.join(fields)}")
        if tensors:
            shown = ", ".join(tensors[:5]) + (
                f" and {len(tensors) - 5} more" if len(tensors) > 5 else ""
            )
            parts.append(f"differing tensors: {shown}")
        raise CheckpointMismatchError(
            "; ".join(parts) + "; resume with the saved config or use a new run_dir"
        )

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric records past ``step`` (written after the checkpoint we resume from)."""
        if not self.metrics_path.is_file():
            return

        def keep(line: str) -> bool:
            try:
                return int(json.loads(line).get("step", 0)) <= step
            except (ValueError, AttributeError, TypeError):  # a line cut short by a crash
                return False

        lines = self.metrics_path.read_text().splitlines(keepends=True)
        kept = [line if line.endswith("\n") else line + "\n" for line in lines if keep(line)]
        if kept == lines:
            return
        tmp = self.metrics_path.with_name(f".tmp-metrics-{uuid.uuid4().hex}")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.metrics_path)
