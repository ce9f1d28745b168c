"""Fixtures generated at test time in the exact on-disk formats (nothing binary is committed)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfm_data.cameras import look_at, opencv_to_pytorch3d
from dfm_data.worlds import ObjectsWorldConfig, synthesize_objects

TINY_OBJECTS = ObjectsWorldConfig(
    n_sequences=4, n_frames=8, image_size_hw=(24, 32), supersample=1, seed=5
)


@pytest.fixture(scope="session")
def objects_root(tmp_path_factory) -> Path:
    """A tiny objects world in CO3D v2 layout (read-only for tests: copy before corrupting)."""
    root = tmp_path_factory.mktemp("objects")
    synthesize_objects(root, TINY_OBJECTS, progress=False)
    return root


def write_co3d_category(
    root: Path,
    category: str,
    sequences: dict[str, list[dict]],
    *,
    hw: tuple[int, int] = (12, 16),
    quality: dict[str, float] | None = None,
) -> None:
    """Writes a hand-made CO3D v2 category straight from the format description (gzip JSON lists,
    float16-bit depth PNGs, 8-bit masks), independently of the world writer.

    ``sequences``: name -> frames, each ``{"eye": (3,), "depth": float or (H, W), "mask": float or (H, W),
    "format": "ndc_isotropic" | "legacy"}``.
    """
    h, w = hw
    K = np.array([[20.0, 0, w / 2], [0, 20.0, h / 2], [0, 0, 1]])
    frames, seqs, train = [], [], []
    for name, specs in sequences.items():
        d = root / category / name
        for sub in ("images", "depths", "masks"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for i, spec in enumerate(specs):
            stem = f"frame{i + 1:06d}"
            rel = f"{category}/{name}"
            rgb = np.full((h, w, 3), 40 + 20 * i, dtype=np.uint8)
            Image.fromarray(rgb).save(d / "images" / f"{stem}.jpg")
            depth = np.broadcast_to(np.asarray(spec.get("depth", 1.0), dtype=np.float16), (h, w))
            Image.fromarray(np.ascontiguousarray(depth).view(np.uint16)).save(
                d / "depths" / f"{stem}.jpg.geometric.png"
            )
            mask = np.broadcast_to(np.asarray(spec.get("mask", 1.0)), (h, w))
            Image.fromarray(np.round(mask * 255).astype(np.uint8)).save(d / "masks" / f"{stem}.png")
            c2w = look_at(
                np.asarray(spec["eye"], dtype=float), np.zeros(3), np.array([0.0, 1.0, 0.0])
            )
            fmt = spec.get("format", "ndc_isotropic")
            vp = opencv_to_pytorch3d(
                c2w, K, hw, "ndc_norm_image_bounds" if fmt == "legacy" else fmt
            )
            if fmt == "legacy":
                del vp["intrinsics_format"]
            frames.append(
                {
                    "sequence_name": name,
                    "frame_number": i,
                    "frame_timestamp": float(i),
                    "image": {"path": f"{rel}/images/{stem}.jpg", "size": [h, w]},
                    "depth": {
                        "path": f"{rel}/depths/{stem}.jpg.geometric.png",
                        "scale_adjustment": 1.0,
                    },
                    "mask": {"path": f"{rel}/masks/{stem}.png"},
                    "viewpoint": vp,
                }
            )
            train.append([name, i, f"{rel}/images/{stem}.jpg"])
        seqs.append(
            {
                "sequence_name": name,
                "category": category,
                "viewpoint_quality_score": (quality or {}).get(name, 0.5),
            }
        )
    cat = root / category
    cat.mkdir(parents=True, exist_ok=True)
    with gzip.open(cat / "frame_annotations.jgz", "wt", encoding="utf8") as f:
        json.dump(frames, f)
    with gzip.open(cat / "sequence_annotations.jgz", "wt", encoding="utf8") as f:
        json.dump(seqs, f)
    (cat / "set_lists").mkdir(exist_ok=True)
    (cat / "set_lists" / "set_lists_fewview_dev.json").write_text(
        json.dumps({"train": train, "val": [], "test": []})
    )
