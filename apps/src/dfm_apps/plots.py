"""Pictures of projection-problem runs: posterior samples, denoising trajectories, losses.

Built on ``matplotlib.figure.Figure`` with the Agg canvas directly, never ``pyplot``:
no global backend or figure state, so plotting works headless and inside tests.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from dfm_core.metrics import energy_distance

__all__ = ["plot_losses", "plot_samples", "plot_trajectory"]

_EXACT = {"color": "tab:blue", "s": 7, "alpha": 0.35, "linewidths": 0}
_DFM = {"color": "tab:orange", "s": 7, "alpha": 0.6, "linewidths": 0}
_BASELINE = {"color": "tab:red", "marker": "X", "s": 110, "edgecolors": "white", "linewidths": 1.0}
_SIGNAL = {"color": "black", "marker": "*", "s": 110, "edgecolors": "white", "linewidths": 0.8}
_PRIOR = {"color": "0.8", "s": 3, "alpha": 0.5, "linewidths": 0}


class _View:
    """Maps R^d to the 2-D plane of a panel: identity for d = 2, else a PCA plane.

    The PCA plane is that of the exact posterior samples of the panel's context (their
    two principal directions, centred at their mean).
    """

    def __init__(self, exact: Tensor) -> None:
        self.dim = exact.shape[-1]
        if self.dim == 2:
            self.center = torch.zeros(2, dtype=exact.dtype)
            self.basis = torch.eye(2, dtype=exact.dtype)
            return
        self.center = exact.mean(dim=0)
        _, _, vh = torch.linalg.svd(exact - self.center, full_matrices=False)
        self.basis = vh[:2]  # (2, d)

    def __call__(self, points: Tensor) -> Tensor:
        """(..., d) -> (..., 2)."""
        return (points - self.center) @ self.basis.T

    @property
    def labels(self) -> tuple[str, str]:
        if self.dim == 2:
            return "$S_1$", "$S_2$"
        return "PC 1 of exact posterior", "PC 2"


def _context_line(ax: Any, obs: Tensor, params: Tensor, limit: float) -> None:
    """Draw {S : phi S = O} for d = 2, k = 1: the line the context constrains S to."""
    phi = params[0] / params[0].norm()
    foot = phi * obs[0] / params[0].norm()
    direction = torch.stack([-phi[1], phi[0]])
    ends = torch.stack([foot - 3 * limit * direction, foot + 3 * limit * direction])
    ax.plot(
        ends[:, 0],
        ends[:, 1],
        color="0.35",
        lw=0.9,
        ls="--",
        zorder=1,
        label="context: $\\phi S = O$",
    )


def _limit(points: Sequence[Tensor]) -> float:
    """Half-width of a square window holding nearly all points (robust to outliers)."""
    flat = torch.cat([p.reshape(-1, 2) for p in points]).abs().amax(dim=-1)
    return 1.15 * float(torch.quantile(flat, 0.99))


def _save(fig: Figure, path: Path | None, dpi: int = 110) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    data = buffer.getvalue()
    if path is not None:
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data


def plot_samples(
    samples: Mapping[str, Tensor],
    path: Path | None,
    *,
    num_panels: int = 4,
    title: str = "",
    prior: Tensor | None = None,
) -> bytes:
    """One panel per context: exact posterior samples, DFM samples, baseline, true signal.

    Args:
        samples: output of ``posterior_samples``: ``signal`` (M, d), ``exact``, ``dfm``,
            ``baseline`` (M, n, d), ``context_obs`` (M, k), ``context_params`` (M, k, d).
        path: PNG file to write (None: only return the bytes).
        num_panels: contexts to draw (the first ones).
        title: figure title.
        prior: optional prior samples (P, d) drawn faintly (2-D only).

    Returns:
        The PNG bytes.
    """
    exact = samples["exact"]
    num = max(1, min(num_panels, exact.shape[0]))
    dim = exact.shape[-1]
    cols = min(num, 4)
    rows = math.ceil(num / cols)
    fig = Figure(figsize=(3.3 * cols, 3.5 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    shared_limit = None
    if dim == 2:
        shared_limit = _limit([exact[:num], samples["signal"][:num]])
    for i in range(num):
        ax = axes[i]
        view = _View(exact[i])
        drawn_exact = view(exact[i])
        if dim == 2 and prior is not None:
            ax.scatter(prior[:, 0], prior[:, 1], zorder=0, label="prior", **_PRIOR)
        if dim == 2 and samples["context_obs"].shape[-1] == 1:
            _context_line(
                ax, samples["context_obs"][i], samples["context_params"][i], shared_limit or 3.0
            )
        ax.scatter(
            drawn_exact[:, 0], drawn_exact[:, 1], zorder=2, label="exact posterior", **_EXACT
        )
        parts = []
        if "dfm" in samples:
            drawn = view(samples["dfm"][i])
            ax.scatter(drawn[:, 0], drawn[:, 1], zorder=3, label="DFM samples", **_DFM)
            parts.append(f"DFM {energy_distance(samples['dfm'][i], exact[i]).item():.3g}")
        if "baseline" in samples:
            point = view(samples["baseline"][i, 0])
            ax.scatter(point[0], point[1], zorder=4, label="baseline", **_BASELINE)
            parts.append(f"base {energy_distance(samples['baseline'][i], exact[i]).item():.3g}")
        truth = view(samples["signal"][i])
        ax.scatter(truth[0], truth[1], zorder=5, label="hidden signal", **_SIGNAL)
        limit = shared_limit if shared_limit is not None else _limit([drawn_exact, truth[None]])
        ax.set_xlim(-limit, limit) if dim == 2 else None
        ax.set_ylim(-limit, limit) if dim == 2 else None
        ax.set_aspect("equal", adjustable="datalim" if dim != 2 else "box")
        ax.set_title(f"context {i}: ED " + ", ".join(parts), fontsize=8)
        xlabel, ylabel = view.labels
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[num:]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=len(labels),
        fontsize=8,
        frameon=False,
        markerscale=1.5,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def plot_trajectory(
    trajectory: Sequence[tuple[float, Tensor]],
    samples: Mapping[str, Tensor],
    path: Path | None,
    *,
    num_panels: int = 6,
    sampler: str = "",
) -> bytes:
    """The sampler's signal estimates at a few steps, for context 0, over the exact posterior.

    Args:
        trajectory: ``[(t, signals (n, d)), ...]`` from ``denoising_trajectory``.
        samples: ``posterior_samples`` output (context 0 is the one sampled).
        path: PNG file to write (None: only return the bytes).
        num_panels: steps to show, evenly spaced, always including the last.
    """
    total = len(trajectory)
    count = min(num_panels, total)
    picks = sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})
    exact = samples["exact"][0]
    view = _View(exact)
    drawn_exact = view(exact)
    dim = exact.shape[-1]
    limit = _limit([drawn_exact, *(view(trajectory[i][1]) for i in picks)])
    fig = Figure(figsize=(2.6 * len(picks), 3.0))
    axes = fig.subplots(1, len(picks), squeeze=False).ravel()
    for ax, index in zip(axes, picks, strict=True):
        t, signals = trajectory[index]
        if dim == 2 and samples["context_obs"].shape[-1] == 1:
            _context_line(ax, samples["context_obs"][0], samples["context_params"][0], limit)
        ax.scatter(drawn_exact[:, 0], drawn_exact[:, 1], zorder=2, **_EXACT)
        drawn = view(signals)
        ax.scatter(drawn[:, 0], drawn[:, 1], zorder=3, **_DFM)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_title(f"step {index + 1}/{total}, t={t:.0f}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(
        f"{sampler} trajectory: signal estimates $\\hat S$ (orange) over exact posterior samples (blue)",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, path)


def plot_losses(
    metrics: Mapping[str, Sequence[Mapping[str, Any]]], path: Path | None = None
) -> bytes:
    """Training loss curves, one line per run (``metrics.jsonl`` records)."""
    fig = Figure(figsize=(6.0, 3.0))
    ax = fig.subplots()
    for name, records in metrics.items():
        steps = [r["step"] for r in records if "loss" in r]
        losses = [r["loss"] for r in records if "loss" in r]
        if steps:
            ax.plot(steps, losses, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over log interval)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
