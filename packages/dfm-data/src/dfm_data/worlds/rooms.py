"""Rooms world, written in the three RealEstate10k layouts.

Each clip is a camera path through a procedurally generated box room with furniture boxes. The camera
starts near the front wall's opposite side looking at the front wall (``-z``), moves smoothly and turns
by a random yaw of up to ~200°, so late frames look back at the wall behind the first camera.

**Built-in ambiguity.** That back wall (``z = +depth/2``) is painted one colour drawn uniformly from
:attr:`RoomsWorldConfig.palette`. It lies behind the first camera (field of view < 180°), so given
frame 0 every palette colour is equally likely. The drawn index is saved in ``ground_truth.json``.

Written layouts (``OUT`` = the output folder):

- ``OUT/RealEstate10K/{train,test}/<clip>.txt``: the official camera files (URL line, then 19 columns:
  timestamp µs, fx fy cx cy normalised, 0 0, row-major 3×4 world-to-camera).
- ``OUT/dfm/{train,test}/<clip>/<timestamp>.jpg`` + ``OUT/dfm/{train,test}.mat``: the layout DFM's
  loader reads (``.mat`` rows = txt rows, sorted by timestamp).
- ``OUT/pixelsplat/{train,test}/000000.torch, ...`` + ``index.json``: pixelSplat chunks (list of dicts
  with ``url``, ``timestamps``, ``cameras`` (V, 18), ``images`` (JPEG byte tensors), ``key``).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dfm_data.cameras import look_at
from dfm_data.worlds.objects import DEFAULT_PALETTE
from dfm_data.worlds.raycast import box_downsample, camera_rays, intersect_box

__all__ = ["RoomScene", "RoomsWorldConfig", "render_room", "room_camera", "synthesize_rooms"]


@dataclass(frozen=True)
class RoomsWorldConfig:
    """Options of the rooms world."""

    n_clips: int = 10
    """Number of clips (rooms)."""
    n_frames: int = 48
    """Frames per clip."""
    image_size_hw: tuple[int, int] = (360, 640)
    """``(H, W)``; RealEstate10k frames (and DFM's loader) are 640×360."""
    palette: tuple[tuple[float, float, float], ...] = DEFAULT_PALETTE
    """The N hidden back-wall colours; one is drawn uniformly per clip."""
    test_fraction: float = 0.2
    """Fraction of clips in the test split."""
    clips_per_chunk: int = 4
    """Clips per pixelSplat ``.torch`` chunk."""
    supersample: int = 1
    """Sub-samples per pixel side."""
    jpeg_quality: int = 92
    """JPEG quality of frames (files and chunk bytes)."""
    seed: int = 0
    """World seed; the output is a deterministic function of the config."""


@dataclass(frozen=True)
class RoomScene:
    """One room: box ``[-w/2, w/2] × [0, h] × [-d/2, d/2]`` (y up) plus furniture boxes.

    Attributes:
        size: ``(w, h, d)``.
        wall_colours: 6 colours for faces ``-x, +x, floor, ceiling, -z (front), +z (back)``.
        hidden_index: palette index of the back wall colour (``wall_colours[5]``).
        boxes: furniture as ``(lo (3,), hi (3,), colour (3,))``.
        light: unit direction towards the light.
    """

    size: tuple[float, float, float]
    wall_colours: tuple[tuple[float, float, float], ...]
    hidden_index: int
    boxes: tuple[tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]], ...]
    light: tuple[float, float, float]
    path: dict

    @classmethod
    def from_json(cls, d: dict) -> RoomScene:
        """Rebuilds a scene saved with ``dataclasses.asdict``."""

        def tup(x):
            return tuple(tup(v) for v in x) if isinstance(x, list) else x

        return cls(**{k: (v if k == "path" else tup(v)) for k, v in d.items()})


def room_camera(scene: RoomScene, frame: int, n_frames: int) -> np.ndarray:
    """OpenCV c2w of frame ``frame``: a smooth path with yaw growing from 0 to ``path['yaw_deg']``."""
    p = scene.path
    s = frame / max(n_frames - 1, 1)
    _, _, d = scene.size
    x = p["x0"] + p["ax"] * math.sin(math.pi * s)
    z = d / 2 - p["z_margin"] - p["dz"] * s
    y = p["height"] + 0.05 * math.sin(2 * math.pi * s)
    yaw = math.radians(p["yaw_deg"] * s)
    eye = np.array([x, y, z])
    forward = np.array([-math.sin(yaw), -0.05, -math.cos(yaw)])
    return look_at(eye, eye + forward, np.array([0.0, 1.0, 0.0]))


def _random_room(rng: np.random.Generator, config: RoomsWorldConfig) -> RoomScene:
    w, h, d = float(rng.uniform(5, 7)), float(rng.uniform(2.6, 3.2)), float(rng.uniform(6, 8))
    hidden = int(rng.integers(len(config.palette)))
    walls = [tuple(rng.uniform(0.45, 0.75, 3).tolist()) for _ in range(5)]
    walls.append(tuple(config.palette[hidden]))
    boxes = []
    for _ in range(int(rng.integers(2, 5))):
        bw, bh, bd = rng.uniform(0.4, 1.2), rng.uniform(0.3, 1.2), rng.uniform(0.4, 1.2)
        cx = rng.uniform(-w / 2 + bw, w / 2 - bw)
        cz = rng.uniform(-d / 2 + bd, -0.5)  # in the front half, away from the camera start
        boxes.append(
            (
                (float(cx - bw / 2), 0.0, float(cz - bd / 2)),
                (float(cx + bw / 2), float(bh), float(cz + bd / 2)),
                tuple(rng.uniform(0.1, 0.9, 3).tolist()),
            )
        )
    light = np.array([0.3, 1.0, 0.5])
    light /= np.linalg.norm(light)
    path = {
        "x0": float(rng.uniform(-0.5, 0.5)),
        "ax": float(rng.uniform(-0.8, 0.8)),
        "z_margin": 0.6,
        "dz": float(rng.uniform(1.0, 2.5)),
        "height": float(rng.uniform(1.4, 1.7)),
        "yaw_deg": float(rng.uniform(120, 200) * rng.choice([-1, 1])),
    }
    return RoomScene(
        size=(w, h, d),
        wall_colours=tuple(walls),
        hidden_index=hidden,
        boxes=tuple(boxes),
        light=tuple(light.tolist()),
        path=path,
    )


def render_room(
    scene: RoomScene, c2w: np.ndarray, K: np.ndarray, height: int, width: int, supersample: int = 1
) -> dict[str, np.ndarray]:
    """Renders one view exactly.

    Returns:
        dict with ``rgb (H, W, 3)`` in [0, 1] and ``hidden (H, W)`` fraction of the pixel showing the back wall.
    """
    o, dirs = camera_rays(c2w, K, height, width, supersample)
    w, h, d = scene.size
    lo, hi = np.array([-w / 2, 0.0, -d / 2]), np.array([w / 2, h, d / 2])
    t, axis = intersect_box(o, dirs, lo, hi, inside=True)
    p = o + t[..., None] * dirs
    # Face index: axis*2 + (hit the max side).
    side = np.take_along_axis(p, axis[..., None], -1)[..., 0] > np.take(((lo + hi) / 2), axis)
    face = axis * 2 + side
    colours = np.asarray(scene.wall_colours)[face]
    normals = np.zeros(p.shape)
    np.put_along_axis(normals, axis[..., None], np.where(side, -1.0, 1.0)[..., None], -1)
    # Wall panels: darker bands for texture (on all faces, in world coordinates).
    bands = (np.floor(p[..., 0] * 2) + np.floor(p[..., 1] * 2) + np.floor(p[..., 2] * 2)) % 2
    colours = colours * np.where(bands > 0, 1.0, 0.85)[..., None]
    hidden = face == 5
    for blo, bhi, bcol in scene.boxes:
        tb, baxis = intersect_box(o, dirs, np.asarray(blo), np.asarray(bhi))
        closer = tb < t
        t = np.where(closer, tb, t)
        pb = o + tb[..., None] * dirs
        bside = np.take_along_axis(pb, baxis[..., None], -1)[..., 0] > np.take(
            (np.asarray(blo) + np.asarray(bhi)) / 2, baxis
        )
        bn = np.zeros(p.shape)
        np.put_along_axis(bn, baxis[..., None], np.where(bside, 1.0, -1.0)[..., None], -1)
        colours = np.where(closer[..., None], np.asarray(bcol), colours)
        normals = np.where(closer[..., None], bn, normals)
        hidden &= ~closer
    shade = 0.55 + 0.45 * np.clip(normals @ np.asarray(scene.light), 0, None)
    rgb = np.clip(colours * shade[..., None], 0, 1)
    s = supersample
    return {"rgb": box_downsample(rgb, s), "hidden": box_downsample(hidden.astype(np.float64), s)}


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def synthesize_rooms(
    root: str | Path, config: RoomsWorldConfig = RoomsWorldConfig(), *, progress: bool = True
) -> dict:
    """Writes the rooms world under ``root`` in the three RealEstate10k layouts (see module docstring).

    Returns:
        The ground-truth dict written to ``root/ground_truth.json``.
    """
    from scipy.io import savemat

    root = Path(root)
    h, w = config.image_size_hw
    n_test = round(config.test_fraction * config.n_clips)
    if config.n_clips > 1:
        n_test = min(max(n_test, 1), config.n_clips - 1)
    truth: dict = {
        "world": "rooms",
        "config": json.loads(json.dumps(asdict(config))),
        "hidden_attribute": "index into palette of the back wall (z = +depth/2) colour",
        "palette": [list(c) for c in config.palette],
        "clips": {},
    }
    mats: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    chunks: dict[str, list[dict]] = {"train": [], "test": []}
    bar = tqdm(
        total=config.n_clips * config.n_frames,
        desc="rooms world",
        unit="frame",
        disable=not progress,
    )
    for ci in range(config.n_clips):
        rng = np.random.default_rng([config.seed, ci])
        split = "train" if ci < config.n_clips - n_test else "test"
        clip = "".join(rng.choice(list("0123456789abcdef"), 16))
        scene = _random_room(rng, config)
        fov_x = math.radians(rng.uniform(55, 70))
        fx = 0.5 / math.tan(fov_x / 2)  # normalised by W
        fy = fx * w / h  # square pixels
        K = np.array([[fx * w, 0, 0.5 * w], [0, fy * h, 0.5 * h], [0, 0, 1]])
        t0 = int(rng.integers(1_000_000, 90_000_000))
        url = "https://www.youtube.com/watch?v=" + "".join(
            rng.choice(list("abcdefghijkABCDEFG0123456789_-"), 11)
        )
        rows, jpgs = [], []
        frame_dir = root / "dfm" / split / clip
        frame_dir.mkdir(parents=True, exist_ok=True)
        for f in range(config.n_frames):
            ts = t0 + round(f * 1_000_000 / 29.97)
            c2w = room_camera(scene, f, config.n_frames)
            w2c = np.linalg.inv(c2w)
            rows.append([ts, fx, fy, 0.5, 0.5, 0.0, 0.0, *w2c[:3].reshape(-1).tolist()])
            data = _jpeg(
                render_room(scene, c2w, K, h, w, config.supersample)["rgb"], config.jpeg_quality
            )
            (frame_dir / f"{ts}.jpg").write_bytes(data)
            jpgs.append(data)
            bar.update(1)
        txt_dir = root / "RealEstate10K" / split
        txt_dir.mkdir(parents=True, exist_ok=True)
        lines = [url] + [" ".join([str(r[0])] + [repr(float(v)) for v in r[1:]]) for r in rows]
        (txt_dir / f"{clip}.txt").write_text("\n".join(lines) + "\n")
        table = np.asarray(rows, dtype=np.float64)
        mats[split][clip] = table
        chunks[split].append(
            {
                "url": url,
                "timestamps": torch.tensor(table[:, 0].astype(np.int64)),
                "cameras": torch.tensor(table[:, 1:], dtype=torch.float32),
                "images": [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpgs],
                "key": clip,
            }
        )
        truth["clips"][clip] = {
            "split": split,
            "hidden_index": scene.hidden_index,
            "scene": asdict(scene),
        }
    bar.close()
    for split in ("train", "test"):
        savemat(root / "dfm" / f"{split}.mat", mats[split])
        out = root / "pixelsplat" / split
        out.mkdir(parents=True, exist_ok=True)
        index = {}
        for k in range(0, len(chunks[split]), config.clips_per_chunk):
            name = f"{k // config.clips_per_chunk:06d}.torch"
            part = chunks[split][k : k + config.clips_per_chunk]
            torch.save(part, out / name)
            index.update({c["key"]: name for c in part})
        (out / "index.json").write_text(json.dumps(index))
    (root / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    return truth
