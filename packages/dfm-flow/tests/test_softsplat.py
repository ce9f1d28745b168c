"""Splatting against independent oracles: closed forms, exact shifts and a brute-force loop."""

from __future__ import annotations

import math

import pytest
import torch

from dfm_flow.softsplat import (
    ImportanceMetric,
    ImportanceMetricConfig,
    backwarp,
    importance_metric,
    pixel_grid,
    softsplat,
)

F64 = torch.float64


def _brute_force(input, flow, metric, mode, *, eps=1e-7, eps_mode="add", skip=None):
    """Splatting written as the paper states it: a Python loop over source pixels and corners.

    Returns a float64 tensor computed with Python floats and ``math`` only.
    """
    batch, channels, height, width = input.shape
    numerator = [
        [[[0.0] * width for _ in range(height)] for _ in range(channels)] for _ in range(batch)
    ]
    denominator = [[[0.0] * width for _ in range(height)] for _ in range(batch)]
    for b in range(batch):
        z_max = (
            max(float(metric[b, 0, i, j]) for i in range(height) for j in range(width))
            if mode == "soft"
            else 0.0
        )
        for i in range(height):
            for j in range(width):
                if skip is not None and skip[b, i, j]:
                    continue
                x = j + float(flow[b, 0, i, j])
                y = i + float(flow[b, 1, i, j])
                if mode in ("summation", "average"):
                    weight = 1.0
                elif mode == "linear":
                    weight = float(metric[b, 0, i, j])
                else:
                    weight = math.exp(float(metric[b, 0, i, j]) - z_max)
                x0, y0 = math.floor(x), math.floor(y)
                for cx, cy in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                    if not (0 <= cx < width and 0 <= cy < height):
                        continue
                    bilinear = (1 - abs(x - cx)) * (1 - abs(y - cy))
                    denominator[b][cy][cx] += bilinear * weight
                    for c in range(channels):
                        numerator[b][c][cy][cx] += bilinear * weight * float(input[b, c, i, j])
    num = torch.tensor(numerator, dtype=F64)
    if mode == "summation":
        return num
    den = torch.tensor(denominator, dtype=F64).unsqueeze(1)
    if eps_mode == "add":
        den = den + eps
    elif eps_mode == "zero":
        den = torch.where(den == 0, torch.ones_like(den), den)
    else:
        den = den.clamp_min(eps)
    return num / den


def _metric_for(mode, metric):
    if mode == "linear":
        return metric.exp()  # linear splatting wants a positive metric
    return metric if mode == "soft" else None


MODES = ["summation", "average", "linear", "soft"]


def _random_inputs(seed, batch=2, channels=3, height=5, width=6, scale=2.0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    input = torch.randn(batch, channels, height, width, generator=gen, dtype=dtype)
    flow = scale * torch.randn(batch, 2, height, width, generator=gen, dtype=dtype)
    metric = torch.randn(batch, 1, height, width, generator=gen, dtype=dtype)
    return input, flow, metric


# ---- oracles -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["average", "linear", "soft"])
@pytest.mark.parametrize("eps_mode", ["add", "zero", "clip"])
def test_zero_flow_is_identity(mode, eps_mode):
    input, _, metric = _random_inputs(0)
    out = softsplat(
        input, torch.zeros_like(input[:, :2]), _metric_for(mode, metric), mode, eps_mode=eps_mode
    )
    # "add" biases by eps / den with den >= exp(min Z - max Z) for softmax.
    tol = 1e-14 if eps_mode == "zero" else 1e-5
    torch.testing.assert_close(out, input, atol=tol, rtol=tol)


def test_zero_flow_summation_is_identity():
    input, _, _ = _random_inputs(1)
    assert torch.equal(softsplat(input, torch.zeros_like(input[:, :2]), mode="summation"), input)


@pytest.mark.parametrize("shift", [(2, -1), (-3, 0), (0, 4), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_integer_flow_is_an_exact_shift(shift, dtype):
    dx, dy = shift
    input, _, _ = _random_inputs(2, height=6, width=7, dtype=dtype)
    flow = torch.zeros_like(input[:, :2])
    flow[:, 0], flow[:, 1] = dx, dy
    out = softsplat(input, flow, mode="summation")
    expected = torch.zeros_like(input)
    h, w = input.shape[-2:]
    # Target (i + dy, j + dx) receives source (i, j); the rest are holes.
    expected[:, :, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = input[
        :, :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    assert torch.equal(out, expected)
    average = softsplat(input, flow, mode="average", eps_mode="zero")
    assert torch.equal(average, expected)


def test_summation_conserves_the_mass_that_lands_inside():
    gen = torch.Generator().manual_seed(3)
    batch, channels, height, width = 2, 3, 8, 9
    input = torch.rand(batch, channels, height, width, generator=gen, dtype=F64)
    grid = pixel_grid(height, width, dtype=F64) - 0.5  # index coordinates of every pixel
    # Half the pixels land anywhere fully inside [0, W-1] x [0, H-1]; the others fully outside.
    land_x = torch.rand(batch, height, width, generator=gen, dtype=F64) * (width - 1)
    land_y = torch.rand(batch, height, width, generator=gen, dtype=F64) * (height - 1)
    inside = torch.rand(batch, height, width, generator=gen) < 0.5
    land_x = torch.where(
        inside, land_x, -1.5 - torch.rand(batch, height, width, generator=gen, dtype=F64)
    )
    flow = torch.stack([land_x - grid[0], land_y - grid[1]], dim=1)
    out = softsplat(input, flow, mode="summation")
    expected = (input * inside.unsqueeze(1)).sum(dim=(2, 3))
    torch.testing.assert_close(out.sum(dim=(2, 3)), expected, rtol=1e-12, atol=1e-12)


def test_softmax_is_invariant_to_a_constant_in_z_but_linear_is_not():
    input, flow, metric = _random_inputs(4, height=8, width=8, scale=3.0)
    soft = softsplat(input, flow, metric, "soft")
    soft_shifted = softsplat(input, flow, metric + 7.0, "soft")
    torch.testing.assert_close(soft_shifted, soft, rtol=1e-12, atol=1e-12)
    positive = metric.exp()
    linear = softsplat(input, flow, positive, "linear", eps_mode="zero")
    linear_shifted = softsplat(input, flow, positive + 7.0, "linear", eps_mode="zero")
    assert (linear_shifted - linear).abs().max() > 0.05


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_very_negative_alpha_makes_softmax_a_z_buffer(dtype):
    # Two pixels land on the same target; Z = alpha * depth with alpha very negative.
    height, width = 4, 5
    input = torch.zeros(1, 3, height, width, dtype=dtype)
    input[0, :, 1, 1] = torch.tensor([1.0, 0.0, 0.0])  # near, depth 1
    input[0, :, 1, 3] = torch.tensor([0.0, 1.0, 0.0])  # far, depth 2
    depth = torch.full((1, 1, height, width), 2.0, dtype=dtype)
    depth[0, 0, 1, 1] = 1.0
    flow = torch.zeros(1, 2, height, width, dtype=dtype)
    flow[0, 0, 1, 1], flow[0, 0, 1, 3] = 1.0, -1.0  # both land on (1, 2)
    flow[0, 0, 1, 2] = 100.0  # the pixel that was there leaves the image
    out = {alpha: softsplat(input, flow, alpha * depth, "soft") for alpha in (-50.0, -1e-3)}
    torch.testing.assert_close(out[-50.0][0, :, 1, 2], input[0, :, 1, 1], atol=1e-6, rtol=0)
    # alpha -> 0 is average splatting: the two colours blend half and half.
    torch.testing.assert_close(
        out[-1e-3][0, :, 1, 2], torch.tensor([0.5, 0.5, 0.0], dtype=dtype), atol=1e-3, rtol=0
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [5, 6])
@pytest.mark.parametrize("eps_mode", ["add", "zero"])
def test_agrees_with_a_brute_force_loop(mode, seed, eps_mode):
    input, flow, metric = _random_inputs(seed, scale=2.5)
    # Some landings exactly on pixel centres, exactly on borders (half-integers in index
    # units), on the last row/column and outside the image.
    flow[0, :, 0, 0] = torch.tensor([2.0, 1.0], dtype=F64)
    flow[0, :, 0, 1] = torch.tensor([0.5, 0.5], dtype=F64)
    flow[0, :, 2, 2] = torch.tensor([-2.5, 1.5], dtype=F64)
    flow[0, :, 4, 5] = torch.tensor([0.0, -0.5], dtype=F64)
    flow[1, :, 3, 3] = torch.tensor([2.5, 0.0], dtype=F64)  # lands on x = 5.5, half inside
    flow[1, :, 1, 1] = torch.tensor([-1.0, -1.0], dtype=F64)  # corner (0, 0) exactly
    flow[1, :, 2, 4] = torch.tensor([10.0, 0.3], dtype=F64)  # far outside
    flow[1, :, 0, 2] = torch.tensor([-2.999, -0.2], dtype=F64)  # x = -0.999, a sliver inside
    metric_in = _metric_for(mode, metric)
    out = softsplat(input, flow, metric_in, mode, eps_mode=eps_mode)
    expected = _brute_force(input, flow, metric_in, mode, eps_mode=eps_mode)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_float32_agrees_with_float64():
    input, flow, metric = _random_inputs(7, height=16, width=16, scale=4.0)
    out64 = softsplat(input, flow, metric, "soft")
    out32 = softsplat(input.float(), flow.float(), metric.float(), "soft")
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, atol=1e-4, rtol=1e-4)


def test_half_precision_computes_in_float32():
    input, flow, metric = _random_inputs(8, dtype=torch.float32)
    out = softsplat(input.half(), flow.half(), metric.bfloat16(), "soft")
    assert out.dtype == torch.float32


# ---- gradients -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_input_flow_metric(mode):
    input, flow, metric = _random_inputs(9, batch=2, channels=2, height=4, width=5)
    input.requires_grad_(True)
    flow.requires_grad_(True)
    if mode in ("linear", "soft"):
        metric.requires_grad_(True)

        def fn(a, f, z):
            return softsplat(a, f, _metric_for(mode, z), mode)

        assert torch.autograd.gradcheck(fn, (input, flow, metric))
    else:
        assert torch.autograd.gradcheck(lambda a, f: softsplat(a, f, None, mode), (input, flow))


def test_gradient_of_flow_alone_and_of_input_alone():
    input, flow, metric = _random_inputs(10, batch=1, channels=2, height=4, width=4)
    flow.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: softsplat(input, f, metric, "soft"), (flow,))
    input.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: softsplat(a, flow.detach(), metric, "soft"), (input,))


# ---- non-finite values and bad input -------------------------------------------------


@pytest.mark.parametrize("name", ["flow", "metric"])
def test_non_finite_values_raise_naming_the_argument(name):
    input, flow, metric = _random_inputs(11)
    (flow if name == "flow" else metric)[0, 0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=rf"^{name}: 1 pixel\(s\) have non-finite"):
        softsplat(input, flow, metric, "soft")


@pytest.mark.parametrize("mode", MODES)
def test_drop_non_finite_pixels_matches_skipping_them(mode):
    input, flow, metric = _random_inputs(12)
    flow[0, 1, 1, 2] = float("inf")
    flow[1, 0, 3, 3] = float("nan")
    metric[1, 0, 0, 4] = float("nan")
    skip = torch.zeros(2, 5, 6, dtype=torch.bool)
    skip[0, 1, 2] = skip[1, 3, 3] = True
    metric_in = _metric_for(mode, metric)
    if mode in ("linear", "soft"):
        skip[1, 0, 4] = True
    input.requires_grad_(True)
    out = softsplat(input, flow, metric_in, mode, nonfinite="drop")
    clean_metric = None if metric_in is None else torch.where(skip.unsqueeze(1), -1e9, metric_in)
    expected = _brute_force(input.detach(), flow, clean_metric, mode, skip=skip)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert torch.isfinite(input.grad).all()
    assert (input.grad[skip.unsqueeze(1).expand_as(input)] == 0).all()


def _bad_calls():
    x = torch.zeros(2, 3, 4, 5)
    f = torch.zeros(2, 2, 4, 5)
    z = torch.zeros(2, 1, 4, 5)
    return [
        ((x, torch.zeros(2, 3, 4, 5), z, "soft"), {}, r"^flow: expected shape \(2, 2, 4, 5\)"),
        ((x, torch.zeros(1, 2, 4, 5), z, "soft"), {}, r"^flow: expected shape \(2, 2, 4, 5\)"),
        ((x, torch.zeros(2, 2, 4, 6), z, "soft"), {}, r"^flow: expected shape"),
        ((x, torch.zeros(2, 2, 4), z, "soft"), {}, r"^flow: expected shape \(B, C, H, W\)"),
        ((x, f, torch.zeros(2, 2, 4, 5), "soft"), {}, r"^metric: expected shape \(2, 1, 4, 5\)"),
        ((x, f, torch.zeros(2, 4, 5), "soft"), {}, r"^metric: expected shape"),
        ((x, f, None, "soft"), {}, r"^metric: mode 'soft' needs a metric"),
        ((x, f, z, "average"), {}, r"^metric: mode 'average' takes no metric"),
        ((x, f, z, "bogus"), {}, r"^mode: expected one of"),
        ((x, f, z, "soft"), {"eps_mode": "bogus"}, r"^eps_mode: expected one of"),
        ((x, f, z, "soft"), {"nonfinite": "ignore"}, r"^nonfinite: expected"),
        ((x, f, z, "soft"), {"eps": 0.0}, r"^eps: expected > 0"),
        ((x[0], f, z, "soft"), {}, r"^input: expected shape \(B, C, H, W\)"),
        ((x.long(), f, z, "soft"), {}, r"^input: expected a floating-point tensor"),
        (([1.0], f, z, "soft"), {}, r"^input: expected a torch.Tensor"),
    ]


@pytest.mark.parametrize("args, kwargs, message", _bad_calls())
def test_bad_input_raises_a_value_error_naming_the_argument(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        softsplat(*args, **kwargs)


def test_reference_mode_names_are_aliases():
    input, flow, metric = _random_inputs(13)
    assert torch.equal(
        softsplat(input, flow, metric, "softmax"), softsplat(input, flow, metric, "soft")
    )
    assert torch.equal(
        softsplat(input, flow, None, "sum"), softsplat(input, flow, None, "summation")
    )
    assert torch.equal(softsplat(input, flow, None, "avg"), softsplat(input, flow, None, "average"))


# ---- backward warping and the importance metric --------------------------------------


def test_backwarp_integer_flow_samples_the_shifted_pixel():
    input, _, _ = _random_inputs(14, height=5, width=6)
    flow = torch.zeros_like(input[:, :2])
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    out = backwarp(input, flow)
    # out(i, j) = input(i - 1, j + 2) where that exists, 0 (zeros padding) elsewhere.
    expected = torch.zeros_like(input)
    expected[:, :, 1:, :-2] = input[:, :, :-1, 2:]
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_backwarp_undoes_splatting_for_a_constant_subpixel_flow():
    # A constant flow moves every pixel by the same amount: splatting by F and backwarping
    # the result by F gives back the input in the interior (both are bilinear in 1-D along
    # each axis for integer-plus-half shifts: here use a shift whose bilinear blurs agree).
    input, _, _ = _random_inputs(15, height=8, width=8)
    flow = torch.zeros_like(input[:, :2])
    flow[:, 0] = 3.0
    warped = softsplat(input, flow, None, "average", eps_mode="zero")
    restored = backwarp(warped, flow)
    torch.testing.assert_close(restored[..., :5], input[..., :5], atol=1e-12, rtol=0)


def test_importance_metric_is_alpha_times_brightness_constancy_error_clipped():
    gen = torch.Generator().manual_seed(16)
    image0 = torch.rand(2, 3, 6, 7, generator=gen, dtype=F64)
    image1 = torch.rand(2, 3, 6, 7, generator=gen, dtype=F64)
    flow = torch.zeros(2, 2, 6, 7, dtype=F64)
    error = (image0 - image1).abs().mean(dim=1, keepdim=True)
    torch.testing.assert_close(importance_metric(image0, image1, flow, alpha=-3.0), -3.0 * error)
    clipped = importance_metric(image0, image1, flow, alpha=-100.0, clip=20.0)
    torch.testing.assert_close(clipped, (-100.0 * error).clamp(-20.0, 20.0))
    module = ImportanceMetricConfig(alpha=-3.0).build()
    assert isinstance(module, ImportanceMetric) and module.alpha.requires_grad
    z = module(image0.float(), image1.float(), flow.float())
    z.sum().backward()
    torch.testing.assert_close(module.alpha.grad, error.float().sum(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"^image1: expected shape"):
        importance_metric(image0, image1[:, :2], flow)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_cpu(mode):
    input, flow, metric = _random_inputs(17, height=16, width=20, scale=3.0, dtype=torch.float32)
    metric_in = _metric_for(mode, metric)
    cpu = softsplat(input, flow, metric_in, mode)
    cuda = softsplat(
        input.cuda(), flow.cuda(), None if metric_in is None else metric_in.cuda(), mode
    )
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-5, rtol=1e-5)


def test_gradcheck_with_dropped_pixels():
    input, flow, metric = _random_inputs(18, batch=1, channels=2, height=4, width=5)
    flow[0, 0, 1, 1] = float("nan")  # dropped source pixel (not a gradcheck input)
    input.requires_grad_(True)
    metric.requires_grad_(True)

    def fn(a, z):
        return softsplat(a, flow, z, "soft", nonfinite="drop")

    assert torch.autograd.gradcheck(fn, (input, metric))
    out = fn(input, metric)
    out.sum().backward()
    # The dropped pixel influences nothing, so its input and metric gradients are 0.
    assert (input.grad[0, :, 1, 1] == 0).all() and metric.grad[0, 0, 1, 1] == 0
