"""Reliability drills for the trainer and its checkpoints; prints the figures of docs/benchmarks.md.

Three drills, each against an independent reference:

1. **Kills.** A tiny training run in a child process is killed with SIGKILL at random
   moments (checkpointing every step, so many kills land inside a checkpoint write), then
   resumed, until it finishes; its final weights, EMA and optimiser state must equal an
   uninterrupted run's bit for bit. Then the stop signals (SIGTERM, SIGINT, SIGUSR1,
   SIGUSR2) under ``graceful_stop``: each must save at the step boundary, exit with a
   one-line message and no traceback, and resume bit-identically.
2. **Corrupt checkpoints.** The newest checkpoint is damaged in one of several ways (bit
   flip, zeroed block, truncation, garbage of the same size, lost manifest); resume must
   fall back to the previous good checkpoint and finish bit-identically.
3. **Hostile files.** Pickles that run code, malformed safetensors headers: every one must
   be refused with a ``CheckpointError`` and no code may run (a marker file stays absent).

Usage::

    uv run python packages/dfm-core/benchmarks/reliability.py [--kills 11] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# ----------------------------------------------------------------------------- the child run

MAX_STEPS = 40


def _build(run_dir: Path):
    from torch import nn
    from torch.utils.data import TensorDataset

    from dfm_core.trainer import OptimizerConfig, Trainer, TrainerConfig

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 4))

        def forward(self, batch, *, generator):
            (x,) = batch
            noise = torch.randn(x.shape, generator=generator, device=generator.device)
            return {"loss": (self.net(x + 0.1 * noise) - x).square().mean()}

    data = TensorDataset(torch.linspace(-1, 1, 256).reshape(64, 4))
    cfg = TrainerConfig(
        max_steps=MAX_STEPS,
        batch_size=8,
        optimizer=OptimizerConfig(lr=1e-2, warmup_steps=2),
        ema_decay=0.9,
        num_workers=0,
        log_every=1,
        checkpoint_every=1,  # every step: many kills land inside a checkpoint write
        keep_last=2,
        progress=False,
        device="cpu",
    )
    return Trainer(Model(), data, cfg, run_dir=run_dir)


def child(run_dir: Path, slow: float) -> int:
    """Train (resuming) under graceful_stop; a stop signal prints one line and exits 128+N."""
    from dfm_core.trainer import TrainingInterrupted, graceful_stop

    torch.set_num_threads(1)
    trainer = _build(run_dir)
    if slow:
        trainer.callbacks.append(lambda t, s: time.sleep(slow))
    try:
        with graceful_stop():
            trainer.resume()
            trainer.train()
    except TrainingInterrupted as stop:
        print(f"dfm: {stop}", file=sys.stderr)
        return stop.exit_code
    _dump_state(trainer, run_dir / "final.pt")
    return 0


def _dump_state(trainer, path: Path) -> None:
    torch.save(
        {
            "model": trainer.model.state_dict(),
            "ema": trainer.ema_model().state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "generator": trainer.generator.get_state(),
            "step": trainer.step,
        },
        path,
    )


def _same(a: Path, b: Path) -> bool:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)

    def eq(u, v) -> bool:
        if isinstance(u, torch.Tensor):
            return isinstance(v, torch.Tensor) and u.dtype == v.dtype and torch.equal(u, v)
        if isinstance(u, dict):
            return isinstance(v, dict) and u.keys() == v.keys() and all(eq(u[k], v[k]) for k in u)
        if isinstance(u, (list, tuple)):
            return len(u) == len(v) and all(eq(p, q) for p, q in zip(u, v, strict=True))
        return u == v

    return eq(x, y)


def _spawn(run_dir: Path, slow: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", str(run_dir), "--slow", str(slow)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _metric_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- drills


def drill_kills(work: Path, reference: Path, kills: int, rng: random.Random) -> dict[str, int]:
    run = work / "killed"
    done, mid_write, startup = 0, 0, None
    for _ in range(kills):
        proc = _spawn(run)
        # Wait for training to make progress, then kill at a random moment.
        start = time.monotonic()
        steps_before = len(_metric_steps(run))
        while proc.poll() is None and len(_metric_steps(run)) <= steps_before:
            time.sleep(0.01)
        startup = startup or time.monotonic() - start
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done += 1
        ckpts = run / "checkpoints"
        if ckpts.is_dir() and any(p.name.startswith(".tmp-") for p in ckpts.iterdir()):
            mid_write += 1
    proc = _spawn(run)
    proc.communicate()
    identical = proc.returncode == 0 and _same(run / "final.pt", reference / "final.pt")
    steps = _metric_steps(run)
    no_dupes = steps == list(range(1, MAX_STEPS + 1))
    return {
        "kills": done,
        "mid_write": mid_write,
        "identical": int(identical),
        "metrics_exact": int(no_dupes),
    }


def drill_signals(work: Path, reference: Path) -> list[dict[str, object]]:
    rows = []
    for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"):
        run = work / name
        proc = _spawn(run, slow=0.02)
        while proc.poll() is None and len(_metric_steps(run)) < 5:
            time.sleep(0.01)
        proc.send_signal(getattr(signal, name))
        _, err = proc.communicate()
        lines = err.strip().splitlines()
        one_line = len(lines) == 1 and lines[0].startswith(f"dfm: stopped by {name} after step")
        saved = int(lines[0].split("after step ")[1].split(";")[0]) if one_line else -1
        resumed = _spawn(run)
        resumed.communicate()
        rows.append(
            {
                "signal": name,
                "exit": proc.returncode,
                "one_line": one_line and "Traceback" not in err,
                "saved_step": saved,
                "identical": resumed.returncode == 0
                and _same(run / "final.pt", reference / "final.pt"),
            }
        )
    return rows


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _zero_block(path: Path) -> None:
    data = bytearray(path.read_bytes())
    n = len(data) // 3
    data[n : n + 64] = bytes(len(data[n : n + 64]))
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


CORRUPTIONS = {"bit flip": _flip, "zeroed block": _zero_block, "truncated": _truncate}
CORRUPTIONS["random bytes, same size"] = _garbage


def drill_corrupt(work: Path, reference: Path) -> list[dict[str, object]]:
    from dfm_core.checkpoint import list_checkpoints

    torch.set_num_threads(1)
    rows = []
    cases = [
        (f, c) for f in ("model.safetensors", "ema.safetensors", "state.pt") for c in CORRUPTIONS
    ]
    cases += [("manifest.json", "deleted"), ("config.json", "bit flip")]
    for index, (file, how) in enumerate(cases):
        run = work / f"corrupt-{index}"
        trainer = _build(run)
        trainer.train(until_step=MAX_STEPS // 2)
        newest = list_checkpoints(run / "checkpoints")[-1][1]
        target = newest / file
        if how == "deleted":
            target.unlink()
        else:
            CORRUPTIONS[how](target)
        resumed = _build(run)
        try:
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step = resumed.resume()
            resumed.train()
            _dump_state(resumed, run / "final.pt")
            outcome = "fell back" if step == MAX_STEPS // 2 - 1 else f"resumed at {step}"
            said = any("skipped damaged checkpoint" in str(w.message) for w in caught)
            identical = _same(run / "final.pt", reference / "final.pt")
        except Exception as error:  # a crash is a failed drill, counted
            outcome, said, identical = f"crashed: {type(error).__name__}", False, False
        rows.append(
            {
                "file": file,
                "damage": how,
                "outcome": outcome,
                "warned": said,
                "identical": identical,
            }
        )
    return rows


class _Exec:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def drill_hostile(work: Path) -> list[dict[str, object]]:
    from dfm_core.checkpoint import CheckpointError, load_train_state, load_weights

    marker = work / "PWNED"
    rows = []
    payloads = {
        "state.pt: exec() via __reduce__": lambda p: torch.save(
            {"step": 1, "x": _Exec(f"open({str(marker)!r}, 'w').write('1')")}, p
        ),
        "state.pt: os.system via __reduce__": lambda p: torch.save(
            {"step": 1, "x": _System(f"touch {marker}")}, p
        ),
        "state.pt: raw pickle protocol 0 (not a zip)": lambda p: p.write_bytes(
            pickle.dumps(_System(f"touch {marker}"), protocol=0)
        ),
        "state.pt: zip holding an exec pickle, manifest rewritten": None,
    }
    for label, make in payloads.items():
        folder = work / f"hostile-{len(rows)}"
        folder.mkdir()
        path = folder / "state.pt"
        if make is None:  # a checkpoint dir whose manifest was updated to match the payload
            trainer = _build(folder / "run")
            trainer.train(until_step=1)
            ckpt = folder / "run" / "checkpoints" / "step_000001"
            torch.save(
                {"step": 1, "x": _Exec(f"open({str(marker)!r}, 'w').write('1')")}, ckpt / "state.pt"
            )
            manifest = json.loads((ckpt / "manifest.json").read_text())
            manifest["files"]["state.pt"] = (ckpt / "state.pt").stat().st_size
            manifest.pop("sha256")
            (ckpt / "manifest.json").write_text(json.dumps(manifest))
            path = ckpt
        else:
            make(path)
        try:
            load_train_state(path)
            refused = False
        except CheckpointError:
            refused = True
        rows.append({"file": label, "refused": refused, "code_ran": marker.exists()})
    headers = {
        "safetensors: header length 2^63": struct.pack("<Q", 2**63) + b"{}",
        "safetensors: header not JSON": struct.pack("<Q", 8) + b"not json",
        "safetensors: offsets past the end": struct.pack("<Q", 64)
        + json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}})
        .encode()
        .ljust(64),
        "safetensors: empty file": b"",
    }
    for label, data in headers.items():
        path = work / f"hostile-{len(rows)}.safetensors"
        path.write_bytes(data)
        try:
            load_weights(path)
            refused = False
        except CheckpointError:
            refused = True
        rows.append({"file": label, "refused": refused, "code_ran": marker.exists()})
    return rows


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kills", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--slow", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child, args.slow)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="dfm-reliability-"))
    started = time.perf_counter()
    try:
        reference = work / "reference"
        proc = _spawn(reference)
        _, err = proc.communicate()
        if proc.returncode != 0:
            print(err, file=sys.stderr)
            return 1
        kills = drill_kills(work, reference, args.kills, rng)
        signals = drill_signals(work, reference)
        corrupt = drill_corrupt(work, reference)
        hostile = drill_hostile(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"# dfm-core reliability drills ({MAX_STEPS}-step run, checkpoint every step)")
    print(
        f"kills (SIGKILL at random moments): {kills['kills']} tried, {kills['mid_write']} inside "
        f"a checkpoint write; resumed run bit-identical: {'yes' if kills['identical'] else 'NO'}; "
        f"metrics.jsonl rows exactly 1..{MAX_STEPS}: {'yes' if kills['metrics_exact'] else 'NO'}"
    )
    ok_signals = sum(bool(r["one_line"] and r["identical"]) for r in signals)
    print(
        f"stop signals: {ok_signals}/{len(signals)} saved at a step boundary, one line, exact resume"
    )
    for r in signals:
        print(
            f"  {r['signal']:<8} exit {r['exit']:>3}  one line: {r['one_line']}  saved step "
            f"{r['saved_step']}  resume bit-identical: {r['identical']}"
        )
    fell_back = sum(r["outcome"] == "fell back" and r["identical"] for r in corrupt)
    print(
        f"corrupt newest checkpoint: {fell_back}/{len(corrupt)} fell back and finished bit-identically"
    )
    for r in corrupt:
        print(
            f"  {r['file']:<18} {r['damage']:<24} {r['outcome']:<12} warned: {r['warned']}  "
            f"identical: {r['identical']}"
        )
    refused = sum(r["refused"] and not r["code_ran"] for r in hostile)
    print(f"hostile files: {refused}/{len(hostile)} refused with no code run")
    for r in hostile:
        print(f"  {r['file']:<58} refused: {r['refused']}  code ran: {r['code_ran']}")
    print(f"({time.perf_counter() - started:.0f} s)")
    good = (
        kills["identical"]
        and kills["metrics_exact"]
        and ok_signals == len(signals)
        and fell_back == len(corrupt)
        and refused == len(hostile)
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
