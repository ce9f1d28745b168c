"""Speed and peak memory of softmax splatting against a straightforward ``index_add_`` version.

Both run in the same invocation on the same inputs (batch 4 x 3 x 256 x 448 by default):
forward, and forward + backward (gradients for input, flow and metric). Times are the
median of ``--repeats`` runs after two warm-ups, the implementations interleaved. Peak memory is measured in a fresh
subprocess per (implementation, pass): on CPU the peak resident size (``VmHWM``, reset just
before the call) over the resident size with the inputs allocated (Linux only), on CUDA ``torch.cuda.max_memory_allocated`` over the same baseline.

    python packages/dfm-flow/benchmarks/bench_softsplat.py [--device cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch import Tensor

from dfm_flow.softsplat import softsplat


def reference_softsplat(input: Tensor, flow: Tensor, metric: Tensor) -> Tensor:
    """Softmax splatting the obvious way: one masked ``index_add`` per corner, autograd for the rest.

    Mirrors the reference CUDA kernel's arithmetic (exp(Z) without a shift, eps added).
    """
    batch, channels, height, width = input.shape
    weight = metric.exp()
    data = torch.cat([input * weight, weight], dim=1)  # (B, C + 1, H, W)
    rows = data.permute(0, 2, 3, 1).reshape(-1, channels + 1)  # (B H W, C + 1)
    gx = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width)
    gy = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1)
    x = (gx + flow[:, 0]).reshape(-1)
    y = (gy + flow[:, 1]).reshape(-1)
    base = torch.arange(batch, device=flow.device).repeat_interleave(height * width) * (
        height * width
    )
    x0, y0 = torch.floor(x), torch.floor(y)
    out = rows.new_zeros(batch * height * width, channels + 1)
    for cx, cy in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        bilinear = (1 - (x - cx).abs()) * (1 - (y - cy).abs())
        inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
        index = base + cy.long() * width + cx.long()
        out = out.index_add(0, index[inside], rows[inside] * bilinear[inside].unsqueeze(1))
    out = out.view(batch, height, width, channels + 1).permute(0, 3, 1, 2)
    return out[:, :-1] / (out[:, -1:] + 1e-7)


IMPLEMENTATIONS = {
    "dfm_flow.softsplat": lambda a, f, z: softsplat(a, f, z, "soft"),
    "index_add reference": reference_softsplat,
}


def make_inputs(shape: tuple[int, ...], device: str, requires_grad: bool) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = shape
    input = torch.rand(b, c, h, w, generator=gen)
    flow = 8.0 * torch.randn(b, 2, h, w, generator=gen)
    metric = (-20.0 * torch.rand(b, 1, h, w, generator=gen)).clamp(-20, 20)
    grad = torch.randn(b, c, h, w, generator=gen)
    tensors = [t.to(device) for t in (input, flow, metric, grad)]
    for t in tensors[:3]:
        t.requires_grad_(requires_grad)
    return tuple(tensors)


def run_once(name: str, tensors: tuple[Tensor, ...], backward: bool) -> None:
    input, flow, metric, grad = tensors
    out = IMPLEMENTATIONS[name](input, flow, metric)
    if backward:
        out.backward(grad)
        for t in (input, flow, metric):
            t.grad = None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_all(backward: bool, shape: tuple[int, ...], device: str, repeats: int) -> dict[str, float]:
    """Median time of every implementation; runs are interleaved (A, B, A, B...) so that a
    change in machine load during the measurement hits both alike."""
    inputs = {name: make_inputs(shape, device, backward) for name in IMPLEMENTATIONS}
    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    with torch.set_grad_enabled(backward):
        for _ in range(2):  # warm-up (allocator, thread pool)
            for name in IMPLEMENTATIONS:
                run_once(name, inputs[name], backward)
        sync(device)
        for _ in range(repeats):
            for name in IMPLEMENTATIONS:
                start = time.perf_counter()
                run_once(name, inputs[name], backward)
                sync(device)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_child(
    name: str, backward: bool, shape: tuple[int, ...], device: str, threads: int
) -> None:
    """Runs in a fresh process: prints the extra peak memory (bytes) of one call."""
    torch.set_num_threads(threads)
    tensors = make_inputs(shape, device, backward)
    if device.startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
        with torch.set_grad_enabled(backward):
            run_once(name, tensors, backward)
        sync(device)
        extra = torch.cuda.max_memory_allocated() - before
    else:
        # Reset the peak-RSS mark (Linux >= 4.0) so the imports' transient peak does not hide
        # the call's; then peak (VmHWM) minus the resident size before the call.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        with torch.set_grad_enabled(backward):
            run_once(name, tensors, backward)
        extra = (_status_kib("VmHWM") - before) * 1024
    print(json.dumps({"extra_bytes": extra}))


def peak_memory(
    name: str, backward: bool, shape: tuple[int, ...], device: str, threads: int
) -> int:
    code = (
        "import sys, json; sys.argv = ['x']; "
        f"import importlib.util as u; s = u.spec_from_file_location('b', {__file__!r}); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); "
        f"m.peak_memory_child({name!r}, {backward!r}, {shape!r}, {device!r}, {threads!r})"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shape", default="4,3,256,448", help="B,C,H,W")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))

    # Both implementations agree before anything is timed.
    # (With max Z = 0 per sample, so that both apply the add-epsilon at the same scale.)
    a, f, z, _ = make_inputs((2, 3, 32, 40), args.device, False)
    z = z - z.amax(dim=(1, 2, 3), keepdim=True)
    ours = IMPLEMENTATIONS["dfm_flow.softsplat"](a, f, z)
    ref = IMPLEMENTATIONS["index_add reference"](a, f, z)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=2e-4)

    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU, {args.threads} threads"
    )
    print(
        f"# softmax splatting {shape}, float32, {device_name}, torch {torch.__version__}, {platform.machine()}"
    )
    print(
        f"# median of {args.repeats} after 2 warm-ups, interleaved; peak = extra memory of one call in a fresh process"
    )
    print("| implementation | forward ms | fwd+bwd ms | forward peak MiB | fwd+bwd peak MiB |")
    print("|---|---|---|---|---|")
    forward = time_all(False, shape, args.device, args.repeats)
    both = time_all(True, shape, args.device, args.repeats)
    results = {}
    for name in IMPLEMENTATIONS:
        mem_fwd = peak_memory(name, False, shape, args.device, args.threads) / 2**20
        mem_both = peak_memory(name, True, shape, args.device, args.threads) / 2**20
        results[name] = (forward[name], both[name], mem_fwd, mem_both)
        print(
            f"| {name} | {forward[name] * 1e3:.1f} | {both[name] * 1e3:.1f} | {mem_fwd:.0f} | {mem_both:.0f} |"
        )
    ours, ref = results["dfm_flow.softsplat"], results["index_add reference"]
    print(
        f"# speed-up: forward {ref[0] / ours[0]:.2f}x, fwd+bwd {ref[1] / ours[1]:.2f}x; "
        f"peak memory ratio (ours/ref): forward {ours[2] / max(ref[2], 1e-9):.2f}, "
        f"fwd+bwd {ours[3] / max(ref[3], 1e-9):.2f}"
    )


if __name__ == "__main__":
    main()
