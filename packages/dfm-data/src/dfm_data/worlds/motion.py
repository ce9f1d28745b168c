"""Motion world, written in the Vimeo-90K layout.

Each clip is a static procedural background with a few sprites (discs and squares) moving at
constant velocity. Every sprite's velocity is drawn **uniformly and independently** from a known
discrete set: ``directions_deg × speeds_px``. From the first frame alone the motion is therefore
ambiguous with a known distribution — a correct stochastic motion model's samples should spread over
the set, a deterministic one visibly averages. The drawn motions (and all that is needed to re-render
exactly) are saved in ``<root>/motion_ground_truth.json``.

Layout: ``<root>/sequences/<5 digits>/<4 digits>/im1.png .. imN.png`` and
``tri_trainlist.txt``/``tri_testlist.txt`` (triplets) or ``sep_*`` (septuplets), with a trailing
blank line as in the official lists.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from dfm_data.worlds.raycast import box_downsample

__all__ = [
    "MotionWorldConfig",
    "clip_path",
    "motion_flow",
    "render_motion_frame",
    "synthesize_motion",
]


@dataclass(frozen=True)
class MotionWorldConfig:
    """Options of the motion world."""

    n_sequences: int = 32
    """Number of clips."""
    layout: Literal["triplet", "septuplet"] = "triplet"
    """3 frames per clip (``tri_*`` lists) or 7 (``sep_*`` lists)."""
    image_size_hw: tuple[int, int] = (256, 448)
    """``(H, W)``; Vimeo-90K frames are 256×448."""
    n_sprites: int = 3
    """Sprites per clip."""
    directions_deg: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
    """Possible motion directions (image axes: 0° = right, 90° = down)."""
    speeds: tuple[float, ...] = (0.03, 0.06)
    """Possible speeds, in units of the image's short side per frame."""
    test_fraction: float = 0.2
    """Fraction of clips listed in the test list."""
    supersample: int = 2
    """Sub-samples per pixel side (antialiased sprite edges)."""
    seed: int = 0
    """World seed; the output is a deterministic function of the config."""

    @property
    def n_frames(self) -> int:
        """Frames per clip (3 or 7)."""
        return 3 if self.layout == "triplet" else 7


def _background(h: int, w: int, s: int, params: dict) -> np.ndarray:
    y, x = np.meshgrid((np.arange(h * s) + 0.5) / s, (np.arange(w * s) + 0.5) / s, indexing="ij")
    img = np.zeros((h * s, w * s, 3)) + np.asarray(params["base"])
    for fx, fy, ph, amp in params["waves"]:
        img += np.sin(2 * math.pi * (fx * x / w + fy * y / h) + ph)[..., None] * np.asarray(amp)
    return img


def render_motion_frame(
    clip: dict, frame: int, height: int, width: int, supersample: int = 1
) -> np.ndarray:
    """Renders frame ``frame`` (0-based) of a clip saved in the ground truth.

    Returns:
        ``(H, W, 3)`` float RGB in ``[0, 1]``.
    """
    s = supersample
    img = _background(height, width, s, clip["background"])
    y, x = np.meshgrid(
        (np.arange(height * s) + 0.5) / s, (np.arange(width * s) + 0.5) / s, indexing="ij"
    )
    for sp in clip["sprites"]:
        cx = sp["centre_im1"][0] + frame * sp["velocity_px"][0]
        cy = sp["centre_im1"][1] + frame * sp["velocity_px"][1]
        r = sp["radius"]
        if sp["shape"] == "disc":
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        else:
            inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
        stripes = np.sin((x - cx) * 0.6) > 0
        colour = np.asarray(sp["colour"]) * np.where(stripes, 1.0, 0.7)[..., None]
        img = np.where(inside[..., None], colour, img)
    return np.clip(box_downsample(img, s), 0.0, 1.0)


def motion_flow(clip: dict, height: int, width: int) -> np.ndarray:
    """Ground-truth forward flow of frame 1 (pixel centres; topmost sprite wins; background 0).

    Returns:
        ``(2, H, W)`` float: channel 0 = x (right), channel 1 = y (down), in pixels per frame.
    """
    flow = np.zeros((2, height, width))
    y, x = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    for sp in clip["sprites"]:
        cx, cy = sp["centre_im1"]
        r = sp["radius"]
        if sp["shape"] == "disc":
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        else:
            inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
        flow[0][inside] = sp["velocity_px"][0]
        flow[1][inside] = sp["velocity_px"][1]
    return flow


def _random_clip(rng: np.random.Generator, config: MotionWorldConfig) -> dict:
    h, w = config.image_size_hw
    short = min(h, w)
    waves = [
        (
            float(rng.uniform(0.5, 3)),
            float(rng.uniform(0.5, 3)),
            float(rng.uniform(0, 2 * math.pi)),
            rng.uniform(0.03, 0.1, 3).tolist(),
        )
        for _ in range(3)
    ]
    background = {"base": rng.uniform(0.3, 0.6, 3).tolist(), "waves": waves}
    sprites = []
    for _ in range(config.n_sprites):
        d = int(rng.integers(len(config.directions_deg)))
        v = int(rng.integers(len(config.speeds)))
        angle = math.radians(config.directions_deg[d])
        speed = config.speeds[v] * short
        radius = float(rng.uniform(0.06, 0.12) * short)
        travel = speed * (config.n_frames - 1) + radius
        cx = float(rng.uniform(travel, w - travel)) if w > 2 * travel else w / 2
        cy = float(rng.uniform(travel, h - travel)) if h > 2 * travel else h / 2
        sprites.append(
            {
                "shape": "disc" if rng.random() < 0.5 else "square",
                "radius": radius,
                "colour": rng.uniform(0.1, 1.0, 3).tolist(),
                "centre_im1": [cx, cy],
                "direction_index": d,
                "speed_index": v,
                "velocity_px": [speed * math.cos(angle), speed * math.sin(angle)],
            }
        )
    return {"background": background, "sprites": sprites}


def clip_path(i: int) -> str:
    """Vimeo-style relative clip path of clip ``i``: ``"00001/0001"``, 8 clips per folder."""
    return f"{i // 8 + 1:05d}/{i % 8 + 1:04d}"


def synthesize_motion(
    root: str | Path, config: MotionWorldConfig = MotionWorldConfig(), *, progress: bool = True
) -> dict:
    """Writes the motion world under ``root`` in the Vimeo-90K layout.

    Returns:
        The ground-truth dict written to ``motion_ground_truth.json``.
    """
    root = Path(root)
    h, w = config.image_size_hw
    truth: dict = {
        "world": "motion",
        "config": json.loads(json.dumps(asdict(config))),
        "hidden_attribute": "per sprite: direction_index into directions_deg, speed_index into speeds",
        "directions_deg": list(config.directions_deg),
        "speeds_px": [s * min(h, w) for s in config.speeds],
        "clips": {},
    }
    names = []
    for i in tqdm(
        range(config.n_sequences), desc="motion world", unit="clip", disable=not progress
    ):
        rng = np.random.default_rng([config.seed, i])
        clip = _random_clip(rng, config)
        name = clip_path(i)
        folder = root / "sequences" / name
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(config.n_frames):
            rgb = render_motion_frame(clip, f, h, w, config.supersample)
            Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(folder / f"im{f + 1}.png")
        truth["clips"][name] = clip
        names.append(name)
    n_test = round(config.test_fraction * len(names))
    if len(names) > 1:
        n_test = min(max(n_test, 1), len(names) - 1)
    prefix = "tri" if config.layout == "triplet" else "sep"
    (root / f"{prefix}_trainlist.txt").write_text("\n".join(names[: len(names) - n_test]) + "\n\n")
    (root / f"{prefix}_testlist.txt").write_text("\n".join(names[len(names) - n_test :]) + "\n\n")
    (root / "motion_ground_truth.json").write_text(json.dumps(truth, indent=1))
    return truth
