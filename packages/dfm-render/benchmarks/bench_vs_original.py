"""dfm-render against the original DFM code, timed in the same run (issue 7 §7).

The issue's figures for the original (``ayushtewari/DFM``) were taken on a quiet machine; on a
shared, loaded machine absolute seconds are not comparable across runs. This script times both
codes in one run, interleaved: for every case it runs ours and the original alternately, each
in a fresh ``python`` process (``--case NAME --impl ours|original``) that builds the model with
random weights, runs one untimed warm-up and ``--repeats`` timed repetitions, and reports the
median time and its own peak resident memory (``ru_maxrss``, weights included). With
``--rounds R`` each implementation runs R processes per case, in alternating order, and the
median is taken over all of their repetitions.

The original is imported from a checkout *outside* this repository (``--original``); nothing of
it is copied here. It is made to run on CPU at run time only: third-party modules it imports but
that one denoising step never uses (wandb, cv2, accelerate, ema_pytorch, torch_efficient_distloss)
and its type-annotation helpers (typeguard, torchtyping, jaxtyping) are stubbed; the
``.cuda()`` of its renderers is a no-op; ``lpips.LPIPS`` (a training loss that would download
VGG weights) is replaced by an empty module while ``GaussianDiffusion`` is built; its hard-coded
DiT-XL/2 sizes are overridden for the reduced config. The only real package it needs beyond the
project's environment is ``einops`` (pure Python), taken from ``--original-deps`` (install it
there with ``uv pip install --no-deps --target DIR einops``), never from the project's venv.

What is timed, per implementation:

* DDIM step: the original's ``GaussianDiffusion.model_predictions`` (the call ``ddim_sample``
  makes per step: DiT on [x_t, O_det], joint field, full-image render with ``renderer``,
  dynamic thresholding, CFG mix when guided) plus the DDIM update; ours:
  ``model.denoiser(condition)(x_t, t)`` as in ``bench_render.py`` (CFG through
  ``dfm_core.guidance.classifier_free_guidance``), the update being negligible.
* Once per sample: the original's ``render_ctxt_from_trgt_cam`` (context DiT features at
  t = 0 and O_det rendered by ``pixelNeRF_joint_coarse``); ours: ``model.condition`` (context
  features, O_det, and the context views' per-view field activations at the target's coarse
  samples, reused by every step).

Also counted in the untimed warm-up (forward hooks): the field-MLP evaluations per rendered ray,
both as points (rows through the field's output layer, after the mean over views) and as
(point, view) pairs (rows through the field's input layer), and the FLOPs of the field MLPs
against the whole call (``torch.utils.flop_counter``).

Cases (reduced = 32², DiT 4×256 patch 2, 512-wide 5-block field, 16 + 16 samples, O_det 16
samples; paper = CO3D preset at 64², DiT-XL/2, 64 + 64 samples; 1 context, batch 1):

    reduced-ddim, reduced-ddim-cfg, reduced-once, paper-ddim, paper-once

``--dtypes fp32 bf16`` times ours once per field precision (``RendererConfig.field_dtype``:
``bf16`` runs the field's matmuls in bfloat16 under autocast, compositing in float32), each in its
own processes next to the original's, and prints one table per precision.

Usage::

    uv pip install --no-deps --target /work/orig-deps einops     # once
    python packages/dfm-render/benchmarks/bench_vs_original.py \\
        --original /work/orig-dfm --original-deps /work/orig-deps --threads 1 \\
        --cases reduced-ddim reduced-ddim-cfg reduced-once --dtypes fp32 bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

CASES = ("reduced-ddim", "reduced-ddim-cfg", "reduced-once", "paper-ddim", "paper-once")
GUIDANCE_SCALE = 2.0
T_STEP = 500  # any t: the cost of a step does not depend on it


# ---- inputs shared by both implementations ---------------------------------------------------
def _ours_config(paper: bool, dtype: str = "fp32"):
    """The same config as bench_render.py (co3d-hydrant preset, reduced or at paper size)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_render import _config

    return _config(paper, dtype)


def _inputs(config):
    """Batch 1, one context, one target view (bench_render's poses and intrinsics)."""
    from bench_render import _batch

    return _batch(config, 1, 1)


# ---- the original code, made importable on CPU -----------------------------------------------
class _Subscriptable:
    """Stand-in for annotation-only generics (torchtyping.TensorType, jaxtyping.Float)."""

    def __class_getitem__(cls, item):
        return cls


def _stub(name: str, **attrs) -> None:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module


def _import_original(root: Path, deps: Path | None):
    """Import the original's ``PixelNeRFModelCond`` and ``GaussianDiffusion`` (see module doc)."""
    if not (root / "PixelNeRF" / "pixelnerf_model_cond.py").is_file():
        raise FileNotFoundError(
            f"--original {root}: expected a checkout of ayushtewari/DFM "
            "(PixelNeRF/pixelnerf_model_cond.py not found)"
        )
    if deps is not None:
        sys.path.insert(0, str(deps))
    try:
        import einops  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "the original code needs einops: `uv pip install --no-deps --target DIR einops` "
            "and pass --original-deps DIR"
        ) from err
    sys.path.insert(0, str(root))

    def unused(*args, **kwargs):
        raise RuntimeError("stubbed: not used by a denoising step")

    _stub("wandb")
    _stub("cv2")
    _stub("ema_pytorch", EMA=unused)
    _stub("accelerate", Accelerator=unused, DistributedDataParallelKwargs=unused)
    _stub("torch_efficient_distloss", **dict.fromkeys(
        ("eff_distloss", "eff_distloss_native", "flatten_eff_distloss"), unused))  # fmt: skip
    _stub("typeguard", typechecked=lambda fn: fn)
    _stub("torchtyping", TensorType=_Subscriptable)
    _stub("jaxtyping", Float=_Subscriptable)

    from denoising_diffusion_pytorch import denoising_diffusion_pytorch as ddp
    from PixelNeRF import pixelnerf_model_cond, renderer

    renderer.VolumeRenderer.cuda = lambda self, *a, **k: self  # its renderers call .cuda()
    return pixelnerf_model_cond, ddp


def _build_original(paper: bool, config, root: Path, deps: Path | None, chunk: int, guided: bool):
    import torch
    from torch import nn

    cond_module, ddp = _import_original(root, deps)
    if not paper:  # the original hard-codes DiT-XL/2 (28 x 1152, 16 heads)
        enc = config.encoder
        dit = cond_module.DiT

        def reduced_dit(**kwargs):
            kwargs.update(depth=enc.depth, hidden_size=enc.hidden_size, num_heads=enc.num_heads)
            return dit(**kwargs)

        cond_module.DiT = reduced_dit
    r = config.renderer
    settings = {  # train_3D_diffusion.get_train_settings("co3d_3ctxt") at our sample counts
        "n_coarse": r.num_coarse,
        "n_fine": r.num_fine,
        "n_coarse_coarse": config.det_samples,
        "n_coarse_fine": 0,
        "num_pixels": chunk,  # full-image render chunk (co3d_results.py: 32**2)
        "n_feats_out": config.det_features,
        "sampling": "patch",
        "self_condition": False,
        "cnn_refine": False,
        "lindisp": False,
    }
    model = cond_module.PixelNeRFModelCond(
        near=config.near,
        far=config.far,
        model="dit",
        background_color=torch.zeros(3),  # CO3D: black
        viz_type="interpolation",
        mode="cond",
        feats_cond=True,
        use_high_res_feats=True,
        render_settings=settings,
        use_viewdir=False,
        image_size=config.image_size,
        use_abs_pose=True,
    )
    lpips_cls = ddp.lpips.LPIPS
    ddp.lpips.LPIPS = lambda *a, **k: nn.Module()  # training loss only; would download VGG
    try:
        diffusion = ddp.GaussianDiffusion(
            model,
            image_size=config.image_size,
            timesteps=1000,
            sampling_timesteps=50,
            loss_type="l2",
            objective="pred_x0",
            beta_schedule="cosine",
            use_guidance=guided,
            guidance_scale=GUIDANCE_SCALE if guided else 1.0,
        )
    finally:
        ddp.lpips.LPIPS = lpips_cls
    return diffusion


def _original_inputs(batch, config):
    """The original's batch dict from our batch (same images, poses and intrinsics)."""
    import torch

    size = config.image_size
    grid = torch.linspace(0, 1, size)  # geometry.get_opencv_pixel_coordinates: align-corners grid
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    x_pix = torch.stack([xx, yy], dim=-1).reshape(1, size * size, 2)
    ctx = batch.context.params
    return {
        "ctxt_rgb": batch.context.observation,
        "ctxt_c2w": ctx.c2w,
        "trgt_c2w": batch.target_params.c2w[:, None],
        "intrinsics": ctx.intrinsics[:, 0],
        "x_pix": x_pix,
        "ctxt_abs_camera_poses": ctx.absolute_c2w,
        "trgt_abs_camera_poses": batch.target_params.absolute_c2w[:, None],
    }


# ---- counting field-MLP work -------------------------------------------------------------------
class FieldCounter:
    """Rows through the field MLPs' first and last layers and the FLOPs of their layers.

    Args:
        fields: {name: (mlp module, input layer, output layer)}.
    """

    def __init__(self, fields: dict) -> None:
        from torch import nn

        self.pairs = 0
        self.points = 0
        self.flops = 0
        self.per_field: dict[str, int] = dict.fromkeys(fields, 0)
        self._handles = []
        for name, (mlp, first, last) in fields.items():
            self._handles.append(first.register_forward_hook(self._rows("pairs")))
            self._handles.append(last.register_forward_hook(self._rows("points", name)))
            for module in mlp.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    self._handles.append(module.register_forward_hook(self._flops))

    def _rows(self, kind: str, name: str | None = None):
        def hook(module, args, output):
            rows = output.shape[:-1].numel()  # Linear layers: (..., features)
            setattr(self, kind, getattr(self, kind) + rows)
            if name is not None:
                self.per_field[name] += rows

        return hook

    def _flops(self, module, args, output) -> None:
        from torch import nn

        if isinstance(module, nn.Linear):
            self.flops += 2 * module.in_features * module.out_features * output.shape[:-1].numel()
        else:  # Conv2d, NCHW
            k = module.kernel_size[0] * module.kernel_size[1]
            per_out = 2 * k * module.in_channels // module.groups
            self.flops += per_out * output.numel()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _field_modules(impl: str, model) -> dict:
    if impl == "original":
        m = model.model
        out = {}
        for field in ("pixelNeRF_joint", "pixelNeRF_joint_coarse"):
            for mlp_name in ("mlp", "mlp_fine"):
                mlp = getattr(getattr(m, field), mlp_name)
                head = mlp.lin_out if mlp.d_out == 4 else mlp.lin_out_feats
                out[f"{field}.{mlp_name}"] = (mlp, mlp.lin_in, head)
        return out
    p = model.predictor
    return {
        name: (mlp, mlp.lin_pos, mlp.lin_out)
        for name, mlp in (("field", p.field), ("det_field", p.det_field))
    }


# ---- one case in this process ------------------------------------------------------------------
def run_case(
    name: str,
    impl: str,
    repeats: int,
    original: Path | None,
    deps: Path | None,
    chunk: int,
    dtype: str = "fp32",
) -> dict:
    """Measure one case of one implementation in this process (call in a fresh process)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    paper = name.startswith("paper")
    guided = name.endswith("-cfg")
    config = _ours_config(paper, dtype if impl == "ours" else "fp32")
    batch = _inputs(config)
    size = config.image_size
    x = torch.randn(1, 3, size, size)

    if impl == "ours":
        from dfm_core.guidance import classifier_free_guidance

        model = config.build().eval()
        if name.endswith("-once"):

            def work() -> None:
                model.condition(batch.context, batch.target_params)

        else:
            condition = model.condition(batch.context, batch.target_params)
            if guided:
                null = model.condition(batch.context, batch.target_params, drop=True)
                denoiser = classifier_free_guidance(model.denoise, condition, null, GUIDANCE_SCALE)
            else:
                denoiser = model.denoiser(condition)
            t = torch.full((1,), float(T_STEP))

            def work() -> None:
                denoiser(x, t)

    else:
        if original is None:
            raise ValueError("--original: required for --impl original")
        model = _build_original(paper, config, original, deps, chunk, guided).eval()
        inp = _original_inputs(batch, config)

        def once(rgb):
            return model.model.render_ctxt_from_trgt_cam(
                ctxt_rgb=rgb,
                intrinsics=inp["intrinsics"],
                xy_pix=inp["x_pix"],
                ctxt_c2w=inp["ctxt_c2w"],
                trgt_c2w=inp["trgt_c2w"],
                render_cond=True,
                ctxt_abs_camera_poses=inp["ctxt_abs_camera_poses"],
            )

        if name.endswith("-once"):

            def work() -> None:
                once(inp["ctxt_rgb"])

        else:  # ddim_sample: O_det and context features once, then one step
            _, inp["trgt_rgbd"], inp["clean_ctxt_feats"] = once(inp["ctxt_rgb"])
            inp["uncond_trgt_rgbd"] = inp["uncond_clean_ctxt_feats"] = None
            if guided:
                _, inp["uncond_trgt_rgbd"], inp["uncond_clean_ctxt_feats"] = once(
                    inp["ctxt_rgb"] * 0.0
                )
            inp["noisy_trgt_rgb"] = x
            t = torch.full((1,), T_STEP, dtype=torch.long)
            alpha_next = model.alphas_cumprod[T_STEP - 20]

            def work() -> None:
                pred = model.model_predictions(
                    inp, t, None, clip_x_start=True, guidance_scale=model.guidance_scale
                )
                c = (1 - alpha_next).sqrt()  # eta = 0
                pred.pred_x_start * alpha_next.sqrt() + c * pred.pred_noise

    parameters = sum(p.numel() for p in model.parameters())
    # Warm-up, counted: field-MLP rows and FLOPs (hooks), all FLOPs (flop counter).
    counter = FieldCounter(_field_modules(impl, model))
    flop_mode = FlopCounterMode(display=False)
    with flop_mode:
        work()
    counter.remove()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    rays = size * size  # batch 1, one full target image (O_det or the denoised view)
    return {
        "case": name,
        "impl": impl,
        "dtype": dtype if impl == "ours" else "fp32",
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,  # kB -> GB
        "threads": torch.get_num_threads(),
        "parameters_m": parameters / 1e6,
        "points_per_ray": counter.points / rays,
        "pairs_per_ray": counter.pairs / rays,
        "points_per_ray_by_field": {k: v / rays for k, v in counter.per_field.items()},
        "field_gflops": counter.flops / 1e9,
        "total_gflops": flop_mode.get_total_flops() / 1e9,
    }


# ---- driver ------------------------------------------------------------------------------------
def _run_child(args, case: str, impl: str, dtype: str = "fp32") -> dict | str:
    cmd = [sys.executable, __file__, "--case", case, "--impl", impl, "--dtype", dtype]
    cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    cmd += ["--original-chunk", str(args.original_chunk)]
    if args.original:
        cmd += ["--original", str(args.original)]
    if args.original_deps:
        cmd += ["--original-deps", str(args.original_deps)]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["?"])[-1]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    print(f"# {json.dumps(result)}", flush=True)
    return result


def _merge(results: list[dict]) -> dict:
    merged = dict(results[0])
    merged["times_s"] = [t for r in results for t in r["times_s"]]
    merged["median_s"] = statistics.median(merged["times_s"])
    merged["peak_gb"] = max(r["peak_gb"] for r in results)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", type=Path, default=os.environ.get("DFM_ORIGINAL_CODE"),
                        help="checkout of ayushtewari/DFM (default: $DFM_ORIGINAL_CODE)")  # fmt: skip
    parser.add_argument("--original-deps", type=Path, default=os.environ.get("DFM_ORIGINAL_DEPS"),
                        help="directory holding einops for the original (pip --target)")  # fmt: skip
    parser.add_argument("--original-chunk", type=int, default=1024,
                        help="rays per chunk of the original's full renders (co3d_results.py: 1024)")  # fmt: skip
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="processes per implementation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=("ours", "original"), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                        help="field precisions to time ours at (one table each)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        result = run_case(
            args.case, args.impl, args.repeats, args.original, args.original_deps,
            args.original_chunk, args.dtype,
        )  # fmt: skip
        print(json.dumps(result))
        return 0
    if args.original is None:
        print("bench_vs_original: skipped, no checkout of the original code "
              "(pass --original DIR or set DFM_ORIGINAL_CODE)")  # fmt: skip
        return 0
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be >= 1")

    print(f"# threads {args.threads}, {args.repeats} timed repeats after 1 warm-up per process, "
          f"{args.rounds} process(es) per implementation and case, alternating; "
          f"ours at field precision(s) {' '.join(args.dtypes)}")  # fmt: skip
    print(f"# load average before: {os.getloadavg()}", flush=True)
    rows = []
    for case in args.cases:
        labels = [*(f"ours-{d}" for d in args.dtypes), "original"]
        runs: dict[str, list] = {label: [] for label in labels}
        for k in range(args.rounds):
            for label in labels if k % 2 == 0 else labels[::-1]:
                impl, _, dtype = label.partition("-")
                runs[label].append(_run_child(args, case, impl, dtype or "fp32"))
        rows.append((case, runs))
    print(f"# load average after: {os.getloadavg()}")
    for dtype in args.dtypes:
        print(f"\n## ours with field precision {dtype}")
        _tables(
            [(case, {"ours": r[f"ours-{dtype}"], "original": r["original"]}) for case, r in rows]
        )
    if len(args.dtypes) > 1:
        print("\n| case | " + " | ".join(f"ours {d} s" for d in args.dtypes) + " | ratio |")
        print("|---|" + "---:|" * (len(args.dtypes) + 1))
        for case, runs in rows:
            if any(isinstance(r, str) for rs in runs.values() for r in rs):
                continue
            med = [_merge(runs[f"ours-{d}"])["median_s"] for d in args.dtypes]
            cells = " | ".join(f"{m:.2f}" for m in med)
            print(f"| {case} | {cells} | {args.dtypes[0]} / {args.dtypes[-1]}: "
                  f"**{med[0] / med[-1]:.2f}x** |")  # fmt: skip
    return 0


def _tables(rows: list) -> None:
    """The ours-vs-original tables for one field precision of ours."""
    print()
    print("| case | original s | ours s | speed-up | original GB | ours GB | "
          "original / ours params (M) | field points per ray, original / ours | "
          "(point, view) pairs per ray, original / ours | field share of FLOPs, original / ours |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case, runs in rows:
        failed = [f"{impl}: {r}" for impl, rs in runs.items() for r in rs if isinstance(r, str)]
        if failed:
            print(f"| {case} | failed: {'; '.join(failed)} |" + " |" * 9)
            continue
        o, u = _merge(runs["original"]), _merge(runs["ours"])

        def share(r):
            return f"{100 * r['field_gflops'] / max(r['total_gflops'], 1e-12):.0f} %"

        print(
            f"| {case} | {o['median_s']:.2f} | {u['median_s']:.2f} | "
            f"**{o['median_s'] / u['median_s']:.2f}x** | {o['peak_gb']:.2f} | {u['peak_gb']:.2f} | "
            f"{o['parameters_m']:.0f} / {u['parameters_m']:.0f} | "
            f"{o['points_per_ray']:.0f} / {u['points_per_ray']:.0f} | "
            f"{o['pairs_per_ray']:.0f} / {u['pairs_per_ray']:.0f} | {share(o)} / {share(u)} |"
        )
    print()
    print("| case | GFLOPs original (field) | GFLOPs ours (field) |")
    print("|---|---:|---:|")
    for case, runs in rows:
        if any(isinstance(r, str) for rs in runs.values() for r in rs):
            continue
        o, u = runs["original"][0], runs["ours"][0]
        print(f"| {case} | {o['total_gflops']:.1f} ({o['field_gflops']:.1f}) | "
              f"{u['total_gflops']:.1f} ({u['field_gflops']:.1f}) |")  # fmt: skip
    # A whole 50-step sample (no CFG): once-per-sample work + 50 denoising steps.
    medians = {
        (case, impl): _merge(rs)["median_s"]
        for case, runs in rows
        for impl, rs in runs.items()
        if not any(isinstance(r, str) for r in rs)
    }
    for config in ("reduced", "paper"):
        keys = [
            (f"{config}-{kind}", impl) for kind in ("once", "ddim") for impl in ("original", "ours")
        ]
        if all(key in medians for key in keys):
            total = {
                impl: medians[(f"{config}-once", impl)] + 50 * medians[(f"{config}-ddim", impl)]
                for impl in ("original", "ours")
            }
            print(f"# {config}: 50-step sample (once + 50 steps) original {total['original']:.0f} s, "
                  f"ours {total['ours']:.0f} s, {total['original'] / total['ours']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
