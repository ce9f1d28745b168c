"""Faults injected into dataset roots: how each loader and validator answers; prints a tally.

Synthesizes a tiny world per format (CO3D v2, RealEstate10k mat/txt/pixelSplat, Vimeo-90K),
then for each fault copies the root, applies the fault and runs

* the loader with ``on_error="raise"`` (build, then every item): **typed** (a
  ``DatasetError`` naming the file), **untyped** (any other exception) or **silent**;
* the loader with ``on_error="skip"``: **counted** (``dataset.skipped.total > 0`` or a
  typed error when nothing usable is left), **untyped**, or **silent**;
* the validator: **reported** (problems found), **crashed**, or **silent**.

A few changes are *benign* (a 16-bit greyscale frame, a CO3D mask stored at half size):
they must load without error, and are listed apart.

Usage::

    uv run python packages/dfm-data/benchmarks/faults.py
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.io import loadmat, savemat

from dfm_data import validate
from dfm_data.co3d import CO3DConfig
from dfm_data.errors import DatasetError
from dfm_data.realestate10k import RealEstate10kConfig
from dfm_data.sampling import FrameSamplingConfig
from dfm_data.vimeo90k import Vimeo90KConfig
from dfm_data.worlds.motion import MotionWorldConfig, synthesize_motion
from dfm_data.worlds.objects import ObjectsWorldConfig, synthesize_objects
from dfm_data.worlds.rooms import RoomsWorldConfig, synthesize_rooms

SAMPLING = FrameSamplingConfig(num_context=1, num_target=1, num_novel=1, min_gap=1, max_gap=2)
OBJ_HW, ROOM_HW, VIMEO_HW = (24, 32), (18, 32), (16, 24)


# ----------------------------------------------------------------------------- fault helpers


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.glob(pattern))[0]


def _co3d_train(root: Path, kind: str) -> Path:
    """The image/depth/mask file of the first frame the ``train`` split lists (one the loader reads)."""
    train = json.loads((root / "orb/set_lists/set_lists_fewview_dev.json").read_text())["train"]
    image = train[0][2]
    with gzip.open(root / "orb/frame_annotations.jgz", "rt") as f:
        record = next(r for r in json.load(f) if r["image"]["path"] == image)
    return (
        root
        / {"image": record["image"], "depth": record["depth"], "mask": record["mask"]}[kind]["path"]
    )


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _bomb(path: Path) -> None:
    """A tiny PNG whose header claims 20000x20000 pixels (PIL's decompression-bomb check)."""
    Image.new("RGB", (1, 1)).save(path, format="PNG")
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def _resize(path: Path) -> None:
    img = Image.open(path)
    img.resize((img.width // 2, img.height // 2)).save(path, format=img.format)


def _sixteen_bit(path: Path) -> None:
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(path, format="PNG")


def _float_image(path: Path) -> None:
    Image.fromarray(np.ones((8, 8), np.float32)).save(path, format="TIFF")


def _edit_jgz(path: Path, edit: Callable[[list], None]) -> None:
    with gzip.open(path, "rt") as f:
        records = json.load(f)
    edit(records)
    with gzip.open(path, "wt") as f:
        json.dump(records, f)


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    out = edit(data)
    path.write_text(json.dumps(data if out is None else out))


def _set_viewpoint(key: str, value: object) -> Callable[[list], None]:
    def edit(records: list) -> None:
        records[1]["viewpoint"][key] = value

    return edit


def _edit_mat(path: Path, edit: Callable[[dict], None]) -> None:
    mat = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    edit(mat)
    savemat(path, mat)


def _nan_camera(mat: dict) -> None:
    key = sorted(mat)[0]
    mat[key] = mat[key].astype(np.float64)
    mat[key][1, 7] = np.nan


def _empty_camera_rows(mat: dict) -> None:
    key = sorted(mat)[0]
    mat[key] = np.zeros((0, 19))


CO3D: dict[str, Callable[[Path], None]] = {
    "truncated jpg": lambda r: _truncate(_co3d_train(r, "image")),
    "not an image": lambda r: _co3d_train(r, "image").write_bytes(b"hello"),
    "decompression-bomb header": lambda r: _bomb(_co3d_train(r, "image")),
    "32-bit float image": lambda r: _float_image(_co3d_train(r, "image")),
    "image deleted": lambda r: _co3d_train(r, "image").unlink(),
    "image at another size": lambda r: _resize(_co3d_train(r, "image")),
    "NaN rotation": lambda r: _edit_jgz(
        r / "orb/frame_annotations.jgz", _set_viewpoint("R", [[float("nan")] * 3] * 3)
    ),
    "negative focal length": lambda r: _edit_jgz(
        r / "orb/frame_annotations.jgz", _set_viewpoint("focal_length", [-1.0, 1.0])
    ),
    "principal point 1e6": lambda r: _edit_jgz(
        r / "orb/frame_annotations.jgz", _set_viewpoint("principal_point", [1e6, 0.0])
    ),
    "frame record without viewpoint": lambda r: _edit_jgz(
        r / "orb/frame_annotations.jgz", lambda recs: recs[1].pop("viewpoint")
    ),
    "annotations not gzip": lambda r: (r / "orb/frame_annotations.jgz").write_bytes(b"{}"),
    "sequence record with text score": lambda r: _edit_jgz(
        r / "orb/sequence_annotations.jgz",
        lambda recs: recs[0].update(viewpoint_quality_score="high"),
    ),
    "set list split not a list": lambda r: _edit_json(
        r / "orb/set_lists/set_lists_fewview_dev.json", lambda d: d.update(train="x")
    ),
    "set list train split empty": lambda r: _edit_json(
        r / "orb/set_lists/set_lists_fewview_dev.json", lambda d: d.update(train=[])
    ),
    "set list deleted": lambda r: (r / "orb/set_lists/set_lists_fewview_dev.json").unlink(),
    "mask corrupt": lambda r: _co3d_train(r, "mask").write_bytes(b"not a png"),
    "depth map corrupt": lambda r: _truncate(_co3d_train(r, "depth")),
}
CO3D_BENIGN: dict[str, Callable[[Path], None]] = {
    "mask at half size": lambda r: [_resize(p) for p in r.glob("orb/*/masks/*.png")],
    "depth at half size": lambda r: [_resize(p) for p in r.glob("orb/*/depths/*.png")],
}

RE10K_MAT: dict[str, Callable[[Path], None]] = {
    "truncated jpg": lambda r: _truncate(_first(r, "dfm/train/*/*.jpg")),
    "decompression-bomb header": lambda r: _bomb(_first(r, "dfm/train/*/*.jpg")),
    "frame at another size": lambda r: _resize(_first(r, "dfm/train/*/*.jpg")),
    "frame deleted": lambda r: _first(r, "dfm/train/*/*.jpg").unlink(),
    "NaN camera": lambda r: _edit_mat(r / "dfm/train.mat", _nan_camera),
    "clip with no camera rows": lambda r: _edit_mat(r / "dfm/train.mat", _empty_camera_rows),
    "pose file not a .mat": lambda r: (r / "dfm/train.mat").write_bytes(b"MATLAB 5.0 junk"),
}
RE10K_TXT: dict[str, Callable[[Path], None]] = {
    "camera file with no rows": lambda r: _first(r, "RealEstate10K/train/*.txt").write_text(
        "https://www.youtube.com/watch?v=x\n"
    ),
    "row with 18 columns": lambda r: _drop_column(_first(r, "RealEstate10K/train/*.txt")),
    "empty camera file": lambda r: _first(r, "RealEstate10K/train/*.txt").write_text(""),
}
RE10K_TORCH: dict[str, Callable[[Path], None]] = {
    "chunk not a torch file": lambda r: _first(r, "pixelsplat/train/*.torch").write_bytes(b"xx"),
    "index.json not JSON": lambda r: (r / "pixelsplat/train/index.json").write_text("{oops"),
    "jpeg bytes in chunk corrupt": lambda r: _corrupt_chunk(_first(r, "pixelsplat/train/*.torch")),
}
VIMEO: dict[str, Callable[[Path], None]] = {
    "truncated png": lambda r: _truncate(_first(r, "sequences/*/*/im2.png")),
    "decompression-bomb header": lambda r: _bomb(_first(r, "sequences/*/*/im2.png")),
    "32-bit float image": lambda r: _float_image(_first(r, "sequences/*/*/im1.png")),
    "frame at another size": lambda r: _resize(_first(r, "sequences/*/*/im3.png")),
    "frame deleted": lambda r: _first(r, "sequences/*/*/im3.png").unlink(),
    "malformed list line": lambda r: (r / "tri_trainlist.txt").write_text(
        "../../etc/passwd\n" + (r / "tri_trainlist.txt").read_text()
    ),
    "empty list": lambda r: (r / "tri_trainlist.txt").write_text("\n"),
    "list deleted": lambda r: (r / "tri_trainlist.txt").unlink(),
}
VIMEO_BENIGN: dict[str, Callable[[Path], None]] = {
    "16-bit greyscale frame": lambda r: _sixteen_bit(_first(r, "sequences/*/*/im1.png")),
}


def _drop_column(path: Path) -> None:
    lines = path.read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:-1])
    path.write_text("\n".join(lines) + "\n")


def _corrupt_chunk(path: Path) -> None:
    chunk = torch.load(path, weights_only=True)
    chunk[0]["images"][0] = torch.tensor(list(b"not a jpeg"), dtype=torch.uint8)
    torch.save(chunk, path)


# ----------------------------------------------------------------------------- running


EPOCHS = 16
"""Loaders read only the frames an item samples: enough epochs that every frame is read."""


def _load_all(build: Callable[[], object]) -> int:
    ds = build()
    for epoch in range(EPOCHS):
        ds.set_epoch(epoch)  # type: ignore[attr-defined]
        for i in range(len(ds)):  # type: ignore[arg-type]
            ds[i]  # type: ignore[index]
    return ds.skipped.total  # type: ignore[attr-defined]


def _classify_raise(build: Callable[[], object]) -> str:
    try:
        _load_all(build)
    except DatasetError:
        return "typed"
    except Exception as error:
        return f"untyped ({type(error).__name__})"
    return "silent"


def _classify_skip(build: Callable[[], object]) -> str:
    try:
        skipped = _load_all(build)
    except DatasetError:
        return "counted"  # nothing usable left: a typed error naming the first cause
    except Exception as error:
        return f"untyped ({type(error).__name__})"
    return "counted" if skipped else "silent"


def _classify_validator(check: Callable[[Path], validate.ValidationReport], root: Path) -> str:
    try:
        report = check(root)
    except Exception as error:
        return f"crashed ({type(error).__name__})"
    return "silent" if report.ok else "reported"


def _suites(worlds: Path):
    objects, rooms, motion = worlds / "objects", worlds / "rooms", worlds / "motion"

    def co3d(root: Path, on_error: str):
        return CO3DConfig(
            root=str(root),
            categories=("orb",),
            image_size=16,
            sampling=SAMPLING,
            on_error=on_error,
            # Per root and mode, never copied into a fault case: a scale cache computed
            # before the damage would hide a corrupt depth map or mask.
            scale_cache_dir=str(root / f"scale-cache-{on_error}"),
        ).build

    def re10k(layout: str):
        sub = {"mat": "dfm", "txt": "dfm", "torch": "pixelsplat"}[layout]

        def make(root: Path, on_error: str):
            return RealEstate10kConfig(
                root=str(root / sub),
                layout=layout,
                image_size=16,
                sampling=SAMPLING,
                expected_size_hw=ROOM_HW,
                on_error=on_error,
            ).build

        def check(root: Path):
            return validate.validate_re10k(
                root / sub, layout, progress=False, expected_size_hw=ROOM_HW
            )

        return make, check

    def vimeo(root: Path, on_error: str):
        return Vimeo90KConfig(
            root=str(root), expected_size_hw=VIMEO_HW, on_error=on_error, hflip_probability=0.0
        ).build

    co3d_check = lambda root: validate.validate_co3d(  # noqa: E731
        root, progress=False, subset_name="fewview_dev"
    )
    vimeo_check = lambda root: validate.validate_vimeo(  # noqa: E731
        root, progress=False, expected_size_hw=VIMEO_HW
    )
    yield "CO3D v2", objects, CO3D, CO3D_BENIGN, co3d, co3d_check
    for layout, faults in (("mat", RE10K_MAT), ("txt", RE10K_TXT), ("torch", RE10K_TORCH)):
        make, check = re10k(layout)
        yield f"RealEstate10k ({layout})", rooms, faults, {}, make, check
    yield "Vimeo-90K", motion, VIMEO, VIMEO_BENIGN, vimeo, vimeo_check


def main() -> int:
    torch.set_num_threads(1)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="dfm-faults-"))
    tally: dict[str, Counter] = {"raise": Counter(), "skip": Counter(), "validate": Counter()}
    benign_ok = benign_total = 0
    rows = []
    try:
        worlds = work / "worlds"
        synthesize_objects(
            worlds / "objects",
            ObjectsWorldConfig(n_sequences=4, n_frames=8, image_size_hw=OBJ_HW, supersample=1),
            progress=False,
        )
        synthesize_rooms(
            worlds / "rooms",
            RoomsWorldConfig(n_clips=3, n_frames=6, image_size_hw=ROOM_HW, clips_per_chunk=2),
            progress=False,
        )
        synthesize_motion(
            worlds / "motion",
            MotionWorldConfig(n_sequences=4, image_size_hw=VIMEO_HW, supersample=1),
            progress=False,
        )
        for name, clean, faults, benign, make, check in _suites(worlds):
            assert _classify_raise(make(clean, "raise")) == "silent", f"{name}: clean root fails"
            assert _classify_validator(check, clean) == "silent", f"{name}: clean invalid"
            for fault, apply in {**faults, **benign}.items():
                root = work / "case"
                shutil.rmtree(root, ignore_errors=True)
                shutil.copytree(clean, root, ignore=shutil.ignore_patterns("scale-cache-*"))
                apply(root)
                got = {
                    "raise": _classify_raise(make(root, "raise")),
                    "skip": _classify_skip(make(root, "skip")),
                    "validate": _classify_validator(check, root),
                }
                if fault in benign:
                    benign_total += 1
                    benign_ok += got["raise"] == "silent" and got["validate"] == "silent"
                    rows.append((name, f"{fault} (benign)", got))
                    continue
                for key, value in got.items():
                    tally[key][value.split(" ")[0]] += 1
                rows.append((name, fault, got))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("# dfm-data: faults injected into dataset roots")
    print(f"{'dataset':<22}{'fault':<34}{'raise mode':<22}{'skip mode':<22}validator")
    for name, fault, got in rows:
        print(f"{name:<22}{fault:<34}{got['raise']:<22}{got['skip']:<22}{got['validate']}")
    n = sum(tally["raise"].values())
    print(
        f"loaders, raise mode: {tally['raise']['typed']}/{n} typed, "
        f"{tally['raise']['untyped']} untyped, {tally['raise']['silent']} silent"
    )
    print(
        f"loaders, skip mode: {tally['skip']['counted']}/{n} counted or typed, "
        f"{tally['skip']['untyped']} untyped, {tally['skip']['silent']} silent"
    )
    print(
        f"validator: {tally['validate']['reported']}/{n} reported, "
        f"{tally['validate']['crashed']} crashed, {tally['validate']['silent']} silent"
    )
    print(f"benign changes loaded without error: {benign_ok}/{benign_total}")
    print(f"({time.perf_counter() - started:.0f} s)")
    perfect = (
        tally["raise"]["typed"] == n
        and tally["skip"]["counted"] == n
        and tally["validate"]["reported"] == n
        and benign_ok == benign_total
    )
    return 0 if perfect else 1


if __name__ == "__main__":
    sys.exit(main())
