"""Train the offline demo generator: a small StyleGAN2 on :func:`procedural_faces`.

    python -m dfm_gan.demo --out packages/dfm-gan/weights/demo32 --minutes 40 --threads 1

Writes ``<out>.safetensors`` + ``<out>.json`` (the EMA generator, as official ``G_ema``) and
``<out>.log.jsonl`` (losses). The run is a pure function of ``--seed`` and the number of
steps taken (``--minutes`` stops it at a wall-clock budget; the step count is recorded).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from dfm_gan.inversion import (
    InversionDataset,
    collate_inversion,
    inversion_config,
    load_inversion_model,
    save_inversion_model,
)
from dfm_gan.networks import Generator, generator_config
from dfm_gan.training import (
    Discriminator,
    GanLossConfig,
    GanTrainState,
    gan_train_step,
    procedural_faces,
)
from dfm_gan.weights import load_generator, save_generator

__all__ = ["train_demo_generator", "train_demo_inversion", "update_ema"]


@torch.no_grad()
def update_ema(ema: Generator, model: Generator, beta: float) -> None:
    """``ema <- beta * ema + (1 - beta) * model`` for parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p.detach(), 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def train_demo_generator(
    out: str | Path,
    *,
    preset: str = "demo32",
    batch_size: int = 16,
    max_steps: int = 100_000,
    minutes: float = 40.0,
    lr: float = 2e-3,
    ema_kimg: float = 2.0,
    seed: int = 0,
) -> dict[str, float]:
    """Train a generator preset on procedural faces and save its EMA copy.

    Args:
        out: output path stem.
        preset: a key of ``GENERATOR_PRESETS``.
        batch_size: images per step.
        max_steps: stop after this many steps...
        minutes: ...or after this wall-clock budget, whichever comes first.
        lr: Adam learning rate of G and D.
        ema_kimg: EMA half-life in thousands of images (ramped up as in StyleGAN2-ADA:
            at most 5 % of the images seen so far).
        seed: seeds the networks, the data and the latents.

    Returns:
        Summary: steps, images seen, wall time, final losses.
    """
    torch.manual_seed(seed)
    cfg = generator_config(preset)
    G = cfg.build().train()
    D = Discriminator(
        cfg.img_resolution, channel_base=cfg.channel_base, channel_max=cfg.channel_max
    )
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    state = GanTrainState.create(G, D, lr=lr)
    rng = torch.Generator().manual_seed(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log.jsonl")
    start = time.perf_counter()
    losses: dict[str, float] = {}
    with log_path.open("w") as log:
        while state.step < max_steps and time.perf_counter() - start < minutes * 60:
            reals = procedural_faces(batch_size, cfg.img_resolution, generator=rng)
            losses = gan_train_step(state, reals, config=GanLossConfig(), generator=rng)
            seen = state.step * batch_size
            half_life = min(ema_kimg * 1000, 0.05 * seen)
            update_ema(G_ema, G, 0.5 ** (batch_size / max(half_life, 1e-8)))
            if state.step % 50 == 0:
                record = {
                    "step": state.step,
                    "time_s": round(time.perf_counter() - start, 1),
                    **losses,
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
            if state.step % 500 == 0:  # snapshot, so an interrupted run still leaves weights
                save_generator(
                    G_ema, out, extra={"preset": preset, "steps": state.step, "partial": True}
                )
    wall = time.perf_counter() - start
    summary = {
        "steps": state.step,
        "images": state.step * batch_size,
        "wall_s": round(wall, 1),
        **losses,
    }
    extra = {
        "trained_on": "dfm_gan.procedural_faces",
        "preset": preset,
        "batch_size": batch_size,
        "lr": lr,
        "ema_kimg": ema_kimg,
        "seed": seed,
        **summary,
    }
    save_generator(G_ema, out, extra=extra)
    return summary


def _train_loop(
    model: torch.nn.Module,
    loss_fn,
    data: InversionDataset,
    *,
    batch_size: int,
    lr: float,
    minutes: float,
    max_steps: int,
    seed: int,
    log,
    name: str,
) -> tuple[torch.nn.Module, int]:
    """AdamW with a 100-step warm-up, grad-norm clip 1, EMA 0.99 of the trainable module."""
    trainable = model.predictor
    ema = copy.deepcopy(trainable).eval().requires_grad_(False)
    params = [p for p in trainable.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = torch.Generator().manual_seed(seed)
    start, step = time.perf_counter(), 0
    model.train()
    while step < max_steps and time.perf_counter() - start < minutes * 60:
        items = [data[(step * batch_size + i) % len(data)] for i in range(batch_size)]
        terms = loss_fn(collate_inversion(items), rng)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), trainable.parameters(), strict=True):
                p_ema.lerp_(p, 0.01)
        step += 1
        if step % 25 == 0:
            record = {"model": name, "step": step, "time_s": round(time.perf_counter() - start, 1)}
            record.update({k: round(float(v.detach()), 5) for k, v in terms.items()})
            log.write(json.dumps(record) + "\n")
            log.flush()
    trainable.load_state_dict(ema.state_dict())
    return model, step


def train_demo_inversion(
    generator_path: str | Path,
    out_dir: str | Path,
    *,
    preset: str = "gan-demo",
    batch_size: int = 8,
    lr: float = 3e-4,
    minutes: float = 30.0,
    regressor_minutes: float = 10.0,
    max_steps: int = 100_000,
    seed: int = 0,
    init_from: str | Path | None = None,
) -> dict[str, float]:
    """Train the inversion DFM model and the deterministic regressor baseline on the demo GAN.

    ``init_from``: continue from a saved inversion model's predictor weights (the data then
    continue with fresh seeds, ``seed`` should differ from the first run's).

    Writes ``inversion.safetensors`` and ``regressor.safetensors`` (predictor weights, config
    in the metadata; ``generator_path`` stored by file name, resolved next to them) and
    ``inversion.log.jsonl``.
    """
    from dfm_gan.quality import LatentRegressor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    G = load_generator(generator_path)
    cfg = inversion_config(preset, generator_path=Path(generator_path).name)
    model = cfg.build(generator=G)
    if init_from is not None:
        previous, _ = load_inversion_model(init_from, generator=G)
        model.predictor.load_state_dict(previous.predictor.state_dict())
    data = InversionDataset(G, cfg, num=10**7, seed=seed)
    summary: dict[str, float] = {}
    with (out_dir / "inversion.log.jsonl").open("w") as log:
        model, steps = _train_loop(
            model,
            lambda batch, rng: model(batch, generator=rng),
            data,
            batch_size=batch_size,
            lr=lr,
            minutes=minutes,
            max_steps=max_steps,
            seed=seed,
            log=log,
            name="dfm",
        )
        summary["dfm_steps"] = steps
        save_inversion_model(
            model,
            cfg,
            out_dir / "inversion.safetensors",
            dtype=torch.float16,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
        )
        torch.manual_seed(seed + 1)
        regressor = LatentRegressor(cfg.build(generator=G))
        regressor, steps = _train_loop(
            regressor,
            lambda batch, rng: regressor(batch),
            data,
            batch_size=batch_size,
            lr=lr,
            minutes=regressor_minutes,
            max_steps=max_steps,
            seed=seed + 1,
            log=log,
            name="regressor",
        )
        summary["regressor_steps"] = steps
        holder = cfg.build(generator=G)
        holder.predictor.load_state_dict(regressor.predictor.state_dict())
        save_inversion_model(
            holder,
            cfg,
            out_dir / "regressor.safetensors",
            dtype=torch.float16,
            steps=steps,
            kind="regressor",
        )
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output path stem (writes .safetensors/.json)")
    parser.add_argument(
        "--inversion",
        metavar="GENERATOR",
        help="train the inversion model + regressor on this generator instead; --out is a directory",
    )
    parser.add_argument("--regressor-minutes", type=float, default=10.0)
    parser.add_argument("--init-from", help="continue the inversion model from these weights")
    parser.add_argument("--preset", default="demo32")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.inversion:
        result = train_demo_inversion(
            args.inversion,
            args.out,
            batch_size=args.batch_size,
            lr=args.lr,
            minutes=args.minutes,
            regressor_minutes=args.regressor_minutes,
            max_steps=args.max_steps,
            seed=args.seed,
            init_from=args.init_from,
        )
        print(json.dumps(result))
        return
    summary = train_demo_generator(
        args.out,
        preset=args.preset,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        minutes=args.minutes,
        lr=args.lr,
        seed=args.seed,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
