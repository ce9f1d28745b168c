"""Objects world, written as a CO3D v2 category.

Each sequence is a procedurally generated object (two stacked spheres with a striped front) resting
on a checkered ground plane, filmed by cameras on an orbit of varying radius and elevation. Frame 0
is the *front view*.

**Built-in ambiguity.** Every sphere's hidden back half — the points whose normal faces away from the
front camera (``n · u < 0`` with ``u`` the unit vector from the sphere centre to the frame-0 camera) —
is painted one colour drawn uniformly from :attr:`ObjectsWorldConfig.palette`. A sphere point is
visible from a camera at ``C`` only if ``n · (C - c) > r > 0``, so no hidden point is visible from the
front view: given frame 0, every palette colour is equally likely, and a correct stochastic model's
samples should show each about ``1/N`` of the time. The drawn index is saved in
``<category>/synthetic_ground_truth.json`` with everything needed to re-render the scene.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from dfm_data.cameras import look_at, opencv_to_pytorch3d
from dfm_data.co3d import dump_jgz
from dfm_data.images import save_depth_png, save_mask_png
from dfm_data.worlds.raycast import box_downsample, camera_rays, intersect_plane, intersect_sphere

__all__ = [
    "DEFAULT_PALETTE",
    "ObjectScene",
    "ObjectsWorldConfig",
    "orbit_camera",
    "render_object_scene",
    "synthesize_objects",
]

DEFAULT_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.85, 0.10, 0.10),  # red
    (0.10, 0.70, 0.15),  # green
    (0.12, 0.25, 0.90),  # blue
    (0.90, 0.80, 0.10),  # yellow
)
GROUND_RADIUS = 30.0
AMBIENT = 0.35


@dataclass(frozen=True)
class ObjectsWorldConfig:
    """Options of the objects world."""

    n_sequences: int = 8
    """Number of sequences (objects) per category."""
    n_frames: int = 48
    """Frames per sequence, evenly spaced over one full orbit (frame 0 = front view)."""
    image_size_hw: tuple[int, int] = (96, 128)
    """``(H, W)`` of every frame; non-square by default so NDC aspect handling is exercised."""
    categories: tuple[str, ...] = ("orb",)
    """Category folder names; each gets its own objects."""
    palette: tuple[tuple[float, float, float], ...] = DEFAULT_PALETTE
    """The N hidden back colours (linear RGB in [0, 1]); one is drawn uniformly per sequence."""
    supersample: int = 2
    """Sub-samples per pixel side for antialiased RGB and soft masks."""
    legacy_every: int = 4
    """Every k-th frame's camera is written in the legacy ``ndc_norm_image_bounds`` format (0: never)."""
    jpeg_quality: int = 95
    """JPEG quality of the frames."""
    seed: int = 0
    """World seed; the output is a deterministic function of the config."""


@dataclass(frozen=True)
class ObjectScene:
    """Everything needed to render one sequence's object exactly.

    Attributes:
        centres: ``(S, 3)`` sphere centres (world, y up, ground at ``y = 0``).
        radii: ``(S,)`` sphere radii.
        front_colour: ``(3,)`` base colour of the visible front.
        stripe_frequency: stripes per turn on the front.
        hidden_index: index of the hidden back colour in the palette.
        hidden_colour: ``(3,)`` the hidden back colour.
        front_camera: ``(3,)`` the frame-0 camera centre defining the hidden halves.
        ground_colours: ``(2, 3)`` checker colours of the ground.
        light: ``(3,)`` unit direction towards the light.
    """

    centres: tuple[tuple[float, float, float], ...]
    radii: tuple[float, ...]
    front_colour: tuple[float, float, float]
    stripe_frequency: int
    hidden_index: int
    hidden_colour: tuple[float, float, float]
    front_camera: tuple[float, float, float]
    ground_colours: tuple[tuple[float, float, float], ...]
    light: tuple[float, float, float]

    @property
    def look_target(self) -> np.ndarray:
        """The point every camera of the orbit looks at (the object's middle)."""
        top = max(c[1] + r for c, r in zip(self.centres, self.radii, strict=True))
        return np.array([0.0, 0.5 * top, 0.0])

    def to_json(self) -> dict:
        """JSON-serialisable dict (inverse: ``ObjectScene(**d)`` after tuple conversion)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ObjectScene:
        """Rebuilds a scene saved by :meth:`to_json`."""

        def tup(x):
            return tuple(tup(v) for v in x) if isinstance(x, list) else x

        return cls(**{k: tup(v) for k, v in d.items()})


def orbit_camera(
    frame: int, n_frames: int, target: np.ndarray, radius: float, elevation_deg: float
) -> np.ndarray:
    """OpenCV c2w of orbit frame ``frame``: azimuth ``2π·frame/n`` (0 = in front, +z side).

    Radius varies by ±15 % and elevation by ±8° along the orbit.
    """
    phase = 2.0 * math.pi * frame / n_frames
    r = radius * (1.0 + 0.15 * math.sin(2.0 * phase))
    el = math.radians(elevation_deg + 8.0 * math.sin(phase))
    eye = target + r * np.array(
        [math.sin(phase) * math.cos(el), math.sin(el), math.cos(phase) * math.cos(el)]
    )
    return look_at(eye, target, np.array([0.0, 1.0, 0.0]))


def _random_scene(
    rng: np.random.Generator, config: ObjectsWorldConfig
) -> tuple[ObjectScene, float, float]:
    r_body = float(rng.uniform(0.8, 1.2))
    r_head = float(rng.uniform(0.45, 0.65)) * r_body
    centres = ((0.0, r_body, 0.0), (0.0, 2.0 * r_body + 0.75 * r_head, 0.0))
    hidden = int(rng.integers(len(config.palette)))
    grey = float(rng.uniform(0.75, 0.95))
    front = (grey, grey * float(rng.uniform(0.9, 1.0)), grey * float(rng.uniform(0.85, 1.0)))
    radius = float(rng.uniform(6.0, 8.0))
    elevation = float(rng.uniform(15.0, 30.0))
    g0 = rng.uniform(0.35, 0.55, 3)
    g1 = g0 * 0.6
    light = np.array([rng.uniform(-0.6, 0.6), 1.0, rng.uniform(0.2, 0.8)])
    light /= np.linalg.norm(light)
    tmp = ObjectScene(
        centres=centres,
        radii=(r_body, r_head),
        front_colour=front,
        stripe_frequency=int(rng.integers(3, 7)),
        hidden_index=hidden,
        hidden_colour=tuple(config.palette[hidden]),
        front_camera=(0.0, 0.0, 0.0),
        ground_colours=(tuple(g0.tolist()), tuple(g1.tolist())),
        light=tuple(light.tolist()),
    )
    eye = orbit_camera(0, config.n_frames, tmp.look_target, radius, elevation)[:3, 3]
    scene = ObjectScene(**{**asdict(tmp), "front_camera": tuple(eye.tolist())})
    scene = ObjectScene.from_json(scene.to_json())
    return scene, radius, elevation


def _cast(scene: ObjectScene, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit over all primitives: ``t (...)`` and ``id (...)`` (-1 sky, 0 ground, 1+s sphere s)."""
    up = np.array([0.0, 1.0, 0.0])
    t_ground = intersect_plane(o, d, up, 0.0)
    p = o + np.where(np.isfinite(t_ground), t_ground, 0.0)[..., None] * d
    t_ground = np.where(np.hypot(p[..., 0], p[..., 2]) <= GROUND_RADIUS, t_ground, np.inf)
    ts = [t_ground] + [
        intersect_sphere(o, d, np.asarray(c), r)
        for c, r in zip(scene.centres, scene.radii, strict=True)
    ]
    stack = np.stack(ts, axis=-1)
    ident = stack.argmin(-1)
    t = stack.min(-1)
    ident = np.where(np.isfinite(t), ident, -1)
    return t, ident


def render_object_scene(
    scene: ObjectScene,
    c2w: np.ndarray,
    K: np.ndarray,
    height: int,
    width: int,
    supersample: int = 1,
) -> dict[str, np.ndarray]:
    """Renders one view exactly (analytic ray casting, Lambert shading, hard shadows).

    Args:
        scene: the object.
        c2w: ``(4, 4)`` OpenCV camera-to-world.
        K: ``(3, 3)`` intrinsics in pixels.
        height, width: image size.
        supersample: sub-samples per pixel side (RGB, mask and hidden fraction are box-averaged).

    Returns:
        dict with ``rgb (H, W, 3)`` in [0, 1], ``mask (H, W)`` foreground fraction, ``hidden (H, W)``
        fraction of the pixel showing a hidden back half, and ``depth (H, W)`` z-depth at pixel
        centres (0 where the ray hits the sky).
    """
    o, d = camera_rays(c2w, K, height, width, supersample)
    t, ident = _cast(scene, o, d)
    p = o + np.where(np.isfinite(t), t, 0.0)[..., None] * d
    light = np.asarray(scene.light)
    rgb = np.zeros(p.shape)
    normal = np.zeros(p.shape)
    hidden = np.zeros(t.shape, dtype=bool)

    # Sky: vertical gradient.
    dn = d / np.linalg.norm(d, axis=-1, keepdims=True)
    sky = ident < 0
    rgb[sky] = np.array([0.55, 0.7, 0.9]) + 0.3 * dn[sky][:, 1:2] * np.array([-0.2, -0.1, 0.1])

    ground = ident == 0
    normal[ground] = (0.0, 1.0, 0.0)
    checker = (np.floor(p[..., 0] / 0.5) + np.floor(p[..., 2] / 0.5)).astype(np.int64) % 2
    gcols = np.asarray(scene.ground_colours)
    rgb[ground] = gcols[checker[ground]]

    for s, (c, r) in enumerate(zip(scene.centres, scene.radii, strict=True)):
        sel = ident == s + 1
        c = np.asarray(c)
        n = (p[sel] - c) / r
        normal[sel] = n
        u = np.asarray(scene.front_camera) - c
        u /= np.linalg.norm(u)
        back = n @ u < 0.0
        hidden[sel] = back
        azimuth = np.arctan2(n[:, 0], n[:, 2])
        stripe = np.sin(scene.stripe_frequency * azimuth + 3.0 * n[:, 1]) > 0
        front = np.asarray(scene.front_colour) * np.where(stripe, 1.0, 0.55)[:, None]
        rgb[sel] = np.where(back[:, None], np.asarray(scene.hidden_colour), front)

    # Lambert + hard shadows towards the light.
    lit_surface = ident >= 0
    ps = p[lit_surface] + 1e-6 * normal[lit_surface]
    t_shadow, _ = _cast(scene, ps, np.broadcast_to(light, ps.shape))
    in_shadow = np.isfinite(t_shadow)
    cos = np.clip(normal[lit_surface] @ light, 0.0, None) * ~in_shadow
    rgb[lit_surface] *= (AMBIENT + (1.0 - AMBIENT) * cos)[:, None]

    s = supersample
    out = {
        "rgb": np.clip(box_downsample(rgb, s), 0.0, 1.0),
        "mask": box_downsample((ident >= 1).astype(np.float64), s),
        "hidden": box_downsample(hidden.astype(np.float64), s),
    }
    o1, d1 = camera_rays(c2w, K, height, width, 1)
    t1, _ = _cast(scene, o1, d1)
    out["depth"] = np.where(np.isfinite(t1), t1, 0.0)
    return out


def _intrinsics(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    f = 0.5 * min(height, width) / math.tan(math.radians(rng.uniform(22.0, 28.0)))
    cx = width / 2.0 + rng.uniform(-0.02, 0.02) * width
    cy = height / 2.0 + rng.uniform(-0.02, 0.02) * height
    return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def _split(names: list[str]) -> dict[str, list[str]]:
    k = max(1, len(names) // 5) if len(names) >= 3 else 0
    return {
        "train": names[: len(names) - 2 * k],
        "val": names[len(names) - 2 * k : len(names) - k],
        "test": names[len(names) - k :],
    }


def synthesize_objects(
    root: str | Path, config: ObjectsWorldConfig = ObjectsWorldConfig(), *, progress: bool = True
) -> dict[str, dict]:
    """Writes the objects world under ``root`` in the CO3D v2 layout.

    Layout: ``root/category_to_subset_name_list.json``; per category ``frame_annotations.jgz``,
    ``sequence_annotations.jgz``, ``set_lists/set_lists_fewview_dev.json``,
    ``eval_batches/eval_batches_fewview_dev.json``, ``synthetic_ground_truth.json`` and per sequence
    ``images/frameXXXXXX.jpg``, ``masks/frameXXXXXX.png``, ``depths/frameXXXXXX.jpg.geometric.png``,
    ``depth_masks/frameXXXXXX.png``. File numbers are ``frame_number + 1`` (as in CO3D).

    Args:
        root: output folder (created).
        config: world options.
        progress: show a tqdm bar over frames.

    Returns:
        category -> the ground-truth dict written to ``synthetic_ground_truth.json``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    h, w = config.image_size_hw
    nf = config.n_frames
    bar = tqdm(
        total=len(config.categories) * config.n_sequences * nf,
        desc="objects world",
        unit="frame",
        disable=not progress,
    )
    truths: dict[str, dict] = {}
    for ci, category in enumerate(config.categories):
        frames, sequences, names = [], [], []
        truth: dict = {
            "world": "objects",
            "config": json.loads(json.dumps(asdict(config))),
            "hidden_attribute": "index into palette of the back-half colour of every sphere",
            "palette": [list(c) for c in config.palette],
            "sequences": {},
        }
        for si in range(config.n_sequences):
            rng = np.random.default_rng([config.seed, ci, si])
            name = f"{100 + si}_{int(rng.integers(10000, 99999))}_{int(rng.integers(10000, 99999))}"
            names.append(name)
            scene, radius, elevation = _random_scene(rng, config)
            K = _intrinsics(rng, h, w)
            seq_dir = root / category / name
            for sub in ("images", "masks", "depths", "depth_masks"):
                (seq_dir / sub).mkdir(parents=True, exist_ok=True)
            for f in range(nf):
                c2w = orbit_camera(f, nf, scene.look_target, radius, elevation)
                out = render_object_scene(scene, c2w, K, h, w, config.supersample)
                stem = f"frame{f + 1:06d}"
                rel = f"{category}/{name}"
                Image.fromarray(np.round(out["rgb"] * 255).astype(np.uint8)).save(
                    seq_dir / "images" / f"{stem}.jpg", quality=config.jpeg_quality
                )
                save_mask_png(seq_dir / "masks" / f"{stem}.png", out["mask"])
                save_depth_png(seq_dir / "depths" / f"{stem}.jpg.geometric.png", out["depth"])
                Image.fromarray(out["depth"] > 0).save(seq_dir / "depth_masks" / f"{stem}.png")
                legacy = (
                    config.legacy_every > 0 and f % config.legacy_every == config.legacy_every - 1
                )
                viewpoint = opencv_to_pytorch3d(
                    c2w, K, (h, w), "ndc_norm_image_bounds" if legacy else "ndc_isotropic"
                )
                if legacy:
                    del viewpoint["intrinsics_format"]  # legacy files carry no key
                frames.append(
                    {
                        "sequence_name": name,
                        "frame_number": f,
                        "frame_timestamp": f / 30.0,
                        "image": {"path": f"{rel}/images/{stem}.jpg", "size": [h, w]},
                        "depth": {
                            "path": f"{rel}/depths/{stem}.jpg.geometric.png",
                            "scale_adjustment": 1.0,
                            "mask_path": f"{rel}/depth_masks/{stem}.png",
                        },
                        "mask": {
                            "path": f"{rel}/masks/{stem}.png",
                            "mass": float(out["mask"].sum()),
                        },
                        "viewpoint": viewpoint,
                        "meta": {},
                    }
                )
                bar.update(1)
            sequences.append(
                {
                    "sequence_name": name,
                    "category": category,
                    "video": {"path": f"{category}/{name}/video.mp4", "length": nf / 30.0},
                    "point_cloud": None,
                    "viewpoint_quality_score": float(rng.uniform(0.1, 1.0)),
                }
            )
            truth["sequences"][name] = {
                "hidden_index": scene.hidden_index,
                "scene": scene.to_json(),
                "orbit": {"radius": radius, "elevation_deg": elevation, "n_frames": nf},
                "intrinsics_px": K.tolist(),
                "image_size_hw": [h, w],
            }
        cat_dir = root / category
        dump_jgz(cat_dir / "frame_annotations.jgz", frames)
        dump_jgz(cat_dir / "sequence_annotations.jgz", sequences)
        split = _split(names)
        by_seq: dict[str, list] = {}
        for fr in frames:
            by_seq.setdefault(fr["sequence_name"], []).append(
                [fr["sequence_name"], fr["frame_number"], fr["image"]["path"]]
            )
        set_lists = {part: [e for n in seqs for e in by_seq[n]] for part, seqs in split.items()}
        (cat_dir / "set_lists").mkdir(exist_ok=True)
        (cat_dir / "set_lists" / "set_lists_fewview_dev.json").write_text(json.dumps(set_lists))
        # Eval batch per test sequence: target = the view opposite the front, source = the front view.
        eval_batches = [[by_seq[n][nf // 2], by_seq[n][0]] for n in split["test"]]
        (cat_dir / "eval_batches").mkdir(exist_ok=True)
        (cat_dir / "eval_batches" / "eval_batches_fewview_dev.json").write_text(
            json.dumps(eval_batches)
        )
        (cat_dir / "synthetic_ground_truth.json").write_text(json.dumps(truth, indent=1))
        truths[category] = truth
    bar.close()
    (root / "category_to_subset_name_list.json").write_text(
        json.dumps({c: ["fewview_dev"] for c in config.categories})
    )
    return truths
