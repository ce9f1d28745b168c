"""Speed, memory and time breakdown of sampling 3D scenes at the objects-demo config (issue 8 §6).

What a user of the demo model waits for, on CPU: one one-shot sample (DDIM 50 steps; also K = 4
samples in one batched call, and the demo's DPM-Solver++(2M) 15 steps), one 360-degree
autoregressive sample (6 generated views 60 degrees apart, DDIM 50 each, every generated view
joining the context of the next: the original's CO3D procedure), and a 64-frame turntable video
of one sampled scene (32^2 renders of the joint field over the context and generated views).

Random weights (the cost does not depend on their values); random 32^2 input images; cameras
on a circle of radius 10 around the object, as the objects world's after the loader's scaling.
The sampling and rendering functions are the ones ``dfm`` runs (``dfm_apps.scenes``), so this
benchmark needs the workspace's ``apps`` package (``nox -s bench`` installs every member).

Every case runs in a fresh ``python`` process (``--case NAME``): it builds the model, runs an
untimed warm-up (a 2-step sample, or a 2-frame render), then the timed work once. Reported:

* wall time of the work (``time.perf_counter``);
* peak memory: the process's peak resident set size (``resource.getrusage(RUSAGE_SELF)
  .ru_maxrss``; includes Python, torch and the weights), and the resident set size just before
  the timed work (``/proc/self/statm``), whose difference bounds what the work itself adds;
* where the time goes, by exclusive wall time of the functions that do the work (wrapped with
  timers in this process only): the image encoder (conv stems + DiT), the field's pixel
  features (projection + bilinear sampling of the feature maps), the field MLP (positional
  encoding + residual blocks + heads), compositing and ray sampling (``composite``,
  ``sample_pdf``, ``merge_samples``, ``sample_along_rays``), and the rest (sampler
  arithmetic, ray generation, gathers, Python).

Usage::

    python packages/dfm-render/benchmarks/bench_scene_sampling.py              # every case, 1 thread
    python packages/dfm-render/benchmarks/bench_scene_sampling.py --cases video-64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

CASES = {
    "oneshot-ddim50": "one-shot sample, K = 1, DDIM 50 (context encoding + 50 denoiser steps)",
    "oneshot-ddim50-k4": "one-shot, K = 4 samples in one batched call, DDIM 50",
    "oneshot-dpmpp15-k4": "one-shot, K = 4, DPM-Solver++(2M) 15 steps (the demo's setting)",
    "autoregressive-6": "360 degrees: 6 generated views 60 degrees apart, DDIM 50 each",
    "video-64": "64-frame turntable of one sampled scene (32^2, context + target view field)",
}

CATEGORIES = ("encoder", "pixel features", "field MLP", "compositing + ray sampling")


class ExclusiveTimers:
    """Wall time per category, exclusive of nested timed calls (a stack of child totals)."""

    def __init__(self) -> None:
        self.exclusive: dict[str, float] = defaultdict(float)
        self._children: list[float] = []

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            self._children.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                children = self._children.pop()
                self.exclusive[name] += elapsed - children
                if self._children:
                    self._children[-1] += elapsed

        return timed

    def reset(self) -> None:
        self.exclusive.clear()


def _install_timers() -> ExclusiveTimers:
    """Wrap the functions of each category (module attributes, so every caller sees them)."""
    from dfm_render import encoder, field, renderer

    timers = ExclusiveTimers()
    encoder.ImageEncoder.forward = timers.wrap("encoder", encoder.ImageEncoder.forward)
    for method in ("forward", "per_view"):
        original = getattr(field.RadianceFieldMLP, method)
        setattr(field.RadianceFieldMLP, method, timers.wrap("field MLP", original))
    for name in ("project_points", "sample_pixel_features"):
        setattr(field, name, timers.wrap("pixel features", getattr(field, name)))
    for name in ("composite", "sample_pdf", "merge_samples", "sample_along_rays"):
        setattr(renderer, name, timers.wrap("compositing + ray sampling", getattr(renderer, name)))
    return timers


def _pose(angle: float):
    """Camera ``angle`` radians around the object at (0, 0, 10), looking at it (OpenCV axes);
    angle 0 is the identity (the context camera)."""
    import torch

    c2w = torch.eye(4)
    c, s = math.cos(angle), math.sin(angle)
    c2w[:3, :3] = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
    c2w[:3, 3] = torch.tensor([10 * s, 0.0, 10 * (1 - c)])
    return c2w


def _batch(config):
    import torch

    from dfm_render import make_scene_batch

    g = torch.Generator().manual_seed(0)
    size = config.image_size
    k = torch.tensor([[1.2, 0.0, 0.5], [0.0, 1.2, 0.5], [0.0, 0.0, 1.0]])
    return make_scene_batch(
        context_images=torch.rand(1, 1, 3, size, size, generator=g) * 2 - 1,
        context_c2w=_pose(0.0)[None, None],
        context_intrinsics=k[None, None],
        target_image=torch.zeros(1, 3, size, size),
        target_c2w=_pose(math.pi)[None],  # the back
        target_intrinsics=k[None],
        near=torch.full((1,), config.near),
        far=torch.full((1,), config.far),
        patch_size=None,
    )


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def run_case(name: str) -> dict:
    """Measure one case in this process (call in a fresh process)."""
    import torch

    from dfm_apps import scenes
    from dfm_render import VolumeRenderer, scene_config

    torch.manual_seed(0)
    config = scene_config("objects-demo")
    model = config.build().eval()
    batch = _batch(config)
    timers = _install_timers()
    renderer = VolumeRenderer(config.renderer).eval()

    def oneshot(k: int, sampler: str, steps: int) -> Any:
        seeds = list(range(k))
        return scenes.sample_scenes(
            model, batch, num_samples=k, seeds=seeds, steps=steps, sampler=sampler
        )

    if name.startswith("oneshot"):
        k = 4 if name.endswith("-k4") else 1
        sampler, steps = ("dpmpp_2m", 15) if "dpmpp" in name else ("ddim", 50)

        def warm() -> None:
            oneshot(k, sampler, 2)

        def work() -> None:
            oneshot(k, sampler, steps)

    elif name == "autoregressive-6":
        k_norm = batch.target_params.intrinsics
        targets = [(_pose(math.radians(60 * (i + 1)))[None], k_norm) for i in range(6)]

        def warm() -> None:
            scenes.sample_autoregressive(model, batch, targets[:1], seed=0, steps=2)

        def work() -> None:
            scenes.sample_autoregressive(model, batch, targets, seed=0, steps=50)

    elif name == "video-64":
        scene = oneshot(1, "ddim", 2).signal
        angles = [2 * math.pi * f / 64 for f in range(64)]
        c2w = torch.stack([_pose(a) for a in angles])[None]  # (1, 64, 4, 4)
        intrinsics = batch.target_params.intrinsics[:, None].expand(1, 64, 3, 3)

        def warm() -> None:
            scenes.render_at(
                renderer,
                scene,
                scenes.camera_like(batch.target_params, c2w[:, :2], intrinsics[:, :2]),
            )

        def work() -> None:
            scenes.render_at(
                renderer, scene, scenes.camera_like(batch.target_params, c2w, intrinsics)
            )

    else:
        raise ValueError(f"--case: expected one of {sorted(CASES)}, got {name!r}")

    warm()
    timers.reset()
    rss_before = _rss_gb()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB -> GB
    breakdown = {c: timers.exclusive.get(c, 0.0) for c in CATEGORIES}
    breakdown["other"] = seconds - sum(breakdown.values())
    return {
        "case": name,
        "seconds": seconds,
        "peak_rss_gb": peak_gb,
        "rss_before_gb": rss_before,
        "breakdown_s": breakdown,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", help="run one case in this process and print JSON")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="cases to run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(args.case)))
        return 0
    print(f"# machine load before: {os.getloadavg()}, threads {args.threads}")
    header = ["case", "wall s", "peak RSS GB", "RSS before GB", *CATEGORIES, "other"]
    print("| " + " | ".join(header) + " |")
    print("|---" + "|---:" * (len(header) - 1) + "|")
    for name in args.cases:
        cmd = [sys.executable, __file__, "--case", name, "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"| {name} | failed: {last} |", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        parts = [
            f"{r['breakdown_s'][c]:.1f} ({100 * r['breakdown_s'][c] / r['seconds']:.0f}%)"
            for c in (*CATEGORIES, "other")
        ]
        cells = [
            name,
            f"{r['seconds']:.1f}",
            f"{r['peak_rss_gb']:.2f}",
            f"{r['rss_before_gb']:.2f}",
        ]
        print("| " + " | ".join(cells + parts) + " |", flush=True)
    print(f"# machine load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
