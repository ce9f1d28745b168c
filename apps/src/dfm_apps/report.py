"""A self-contained ``report.html``: images embedded as base64, no external assets."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dfm_apps import plots

__all__ = ["format_scores", "render_demo", "render_page", "render_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 12px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }
.note { color: #555; }
video { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
"""

_ROWS = (
    ("DFM", "dfm", "dfm_ratio"),
    ("regression baseline", "baseline", "baseline_ratio"),
    ("noise floor (exact vs exact)", "noise_floor", None),
)


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}x"


def format_scores(scores: Mapping[str, float]) -> str:
    """The score table as fixed-width text (printed by the CLI).

    The projection application's scores (energy distances) get their table; any other
    application's scores are listed one per line.
    """
    if not all(key in scores for _, key, _ in _ROWS):
        return "\n".join(
            f"{key:<40}{value:.4g}" if isinstance(value, float) else f"{key:<40}{value}"
            for key, value in scores.items()
        )
    lines = [f"{'':<30}{'energy distance':>17}{'/ noise floor':>15}"]
    for label, key, ratio in _ROWS:
        shown = _ratio(scores[ratio]) if ratio else "1.0x"
        lines.append(f"{label:<30}{scores[key]:>17.4g}{shown:>15}")
    return "\n".join(lines)


def _image(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def render_report(
    *,
    title: str,
    summary: str,
    scores: Mapping[str, float],
    images: Mapping[str, Path],
    config_yaml: str,
    metrics: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> str:
    """The report's HTML.

    Args:
        title: page heading.
        summary: one paragraph saying what was run and how it is scored.
        scores: ``dfm``, ``baseline``, ``noise_floor``, ``dfm_ratio``, ``baseline_ratio``.
        images: caption -> PNG file, embedded in order.
        config_yaml: the resolved config.
        metrics: run name -> ``metrics.jsonl`` records, drawn as loss curves.
    """
    rows = []
    for label, key, ratio in _ROWS:
        shown = _ratio(scores[ratio]) if ratio else "1.0x"
        rows.append(
            f"<tr><td>{html.escape(label)}</td><td>{scores[key]:.4g}</td><td>{shown}</td></tr>"
        )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(summary)}</p>",
        "<h2>Scores</h2>",
        "<table><tr><th>samples</th><th>energy distance</th><th>/ noise floor</th></tr>",
        *rows,
        "</table>",
        '<p class="note">A perfect sampler scores about 1x the noise floor; the baseline '
        "returns one answer per context, so it cannot match a multi-modal posterior.</p>",
    ]
    for name, path in images.items():
        parts += [f"<h2>{html.escape(name)}</h2>", _image(Path(path).read_bytes(), name)]
    if metrics and any(metrics.values()):
        parts += ["<h2>training loss</h2>", _image(plots.plot_losses(metrics), "training loss")]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts += [
        "<h2>config</h2>",
        f"<pre>{html.escape(config_yaml)}</pre>",
        f'<p class="note">written {stamp}</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def render_page(
    *,
    title: str,
    summary: str,
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]],
    images: Mapping[str, Path],
    videos: Mapping[str, Path],
    config_yaml: str,
    base: Path,
    metrics: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    commands: Sequence[str] = (),
) -> str:
    """A report for any application: tables, embedded images, linked videos, the config.

    Images are embedded (base64); videos are referenced relative to ``base`` (the folder the
    report is written to), so the page works offline next to its files.

    Args:
        title: page heading.
        summary: one paragraph saying what was run and how it is scored.
        tables: (caption, header cells, rows of cells).
        images: caption -> PNG file.
        videos: caption -> mp4 file under ``base``.
        config_yaml: the resolved config.
        base: the report's folder.
        metrics: run name -> ``metrics.jsonl`` records, drawn as loss curves.
        commands: shell commands that reproduce the page.
    """
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(summary)}</p>",
    ]
    for caption, header, rows in tables:
        parts.append(f"<h2>{html.escape(caption)}</h2><table><tr>")
        parts += [f"<th>{html.escape(cell)}</th>" for cell in header]
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    for name, path in images.items():
        parts += [f"<h2>{html.escape(name)}</h2>", _image(Path(path).read_bytes(), name)]
    for name, path in videos.items():
        source = html.escape(Path(path).relative_to(base).as_posix())
        parts += [
            f"<h3>{html.escape(name)}</h3>",
            f'<video controls loop muted src="{source}"></video>',
        ]
    if metrics and any(metrics.values()):
        parts += ["<h2>training loss</h2>", _image(plots.plot_losses(metrics), "training loss")]
    if commands:
        parts += ["<h2>reproduce</h2>", f"<pre>{html.escape(chr(10).join(commands))}</pre>"]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts += [
        "<h2>config</h2>",
        f"<pre>{html.escape(config_yaml)}</pre>",
        f'<p class="note">written {stamp}</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _section_html(section: Any, base: Path, anchor: str) -> list[str]:
    parts = [f'<h2 id="{html.escape(anchor)}">{html.escape(section.title)}</h2>']
    parts.append(f"<p>{html.escape(section.summary)}</p>")
    for caption, header, rows in section.tables:
        parts.append(f"<h3>{html.escape(caption)}</h3><table><tr>")
        parts += [f"<th>{html.escape(cell)}</th>" for cell in header]
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    for name, path in section.images.items():
        parts += [f"<h3>{html.escape(name)}</h3>", _image(Path(path).read_bytes(), name)]
    for name, path in section.videos.items():
        source = html.escape(Path(path).relative_to(base).as_posix())
        parts += [
            f"<h3>{html.escape(name)}</h3>",
            f'<video controls loop muted src="{source}"></video>',
        ]
    parts.append(f"<pre>{html.escape(section.command)}</pre>")
    return parts


def render_demo(
    *,
    sections: Mapping[str, Any],
    missing: Mapping[str, str],
    base: Path,
    command: str,
) -> str:
    """``dfm demo``'s report: one section per application, a summary table on top.

    Args:
        sections: application name -> its ``DemoSection`` (files under ``base``).
        missing: application name -> why it did not run (weights not shipped, an error).
        base: the report's folder (videos are linked relative to it).
        command: the command that reproduces the whole page.
    """
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>DFM demo</title><style>{_STYLE}</style></head><body>",
        "<h1>DFM demo: diffusion with forward models, on shipped weights</h1>",
        "<p>Each application samples a signal that is only ever observed through a known "
        "forward model (Tewari, Yin et al., NeurIPS 2023), from weights trained on this "
        "project's synthetic worlds (see each package's MODEL_CARD.md).</p>",
        "<table><tr><th>application</th><th>headline figures</th><th>seconds</th></tr>",
    ]
    for name, section in sections.items():
        figures = ", ".join(f"{key} {_figure(value)}" for key, value in section.scores.items())
        parts.append(
            f'<tr><td><a href="#{html.escape(name)}">{html.escape(name)}</a></td>'
            f"<td>{html.escape(figures)}</td><td>{section.seconds:.0f}</td></tr>"
        )
    for name, why in missing.items():
        parts.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(why)}</td><td></td></tr>")
    parts.append("</table>")
    parts += ["<h2>reproduce</h2>", f"<pre>{html.escape(command)}</pre>"]
    for name, section in sections.items():
        parts += _section_html(section, base, name)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts += [f'<p class="note">written {stamp}</p>', "</body></html>"]
    return "\n".join(parts) + "\n"


def _figure(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
