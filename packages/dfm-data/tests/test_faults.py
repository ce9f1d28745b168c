"""Faults injected into dataset roots, one at a time: each is a typed error, follows the
raise/skip policy, and the validator reports what the loader rejects."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import write_co3d_category
from PIL import Image

from dfm_data import validate
from dfm_data.cli import main
from dfm_data.co3d import load_jgz, parse_frame_annotation, sequence_scale
from dfm_data.errors import (
    BadAnnotationError,
    BadCameraError,
    CorruptImageError,
    DatasetError,
    EmptySubsetError,
)
from dfm_data.images import load_mask_png, load_rgb
from dfm_data.realestate10k import RealEstate10kConfig
from dfm_data.sampling import FrameSamplingConfig
from dfm_data.seeding import make_dataloader
from dfm_data.vimeo90k import Vimeo90KConfig
from dfm_data.worlds.motion import MotionWorldConfig, synthesize_motion
from dfm_data.worlds.rooms import RoomsWorldConfig, synthesize_rooms

VIMEO_HW = (16, 24)
ROOMS_HW = (18, 32)


@pytest.fixture(scope="module")
def vimeo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vimeo")
    synthesize_motion(
        root,
        MotionWorldConfig(n_sequences=6, image_size_hw=VIMEO_HW, supersample=1, seed=3),
        progress=False,
    )
    return root


@pytest.fixture(scope="module")
def rooms_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rooms")
    synthesize_rooms(
        root,
        RoomsWorldConfig(n_clips=3, n_frames=5, image_size_hw=ROOMS_HW, seed=4),
        progress=False,
    )
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(root, out)
    return out


def write_bomb_png(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A valid tiny PNG whose header (IHDR) claims ``width x height`` pixels."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    # Signature (8) + chunk length (4) + b"IHDR" (4); then width, height, ...; CRC after 13 bytes.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def _vimeo(root: Path, **kw) -> Vimeo90KConfig:
    return Vimeo90KConfig(root=str(root), expected_size_hw=VIMEO_HW, **kw)


# ----------------------------------------------------------------------------- images


def test_decompression_bomb_is_a_typed_error_everywhere(vimeo_root: Path, tmp_path: Path) -> None:
    root = _copy(vimeo_root, tmp_path)
    clips = _vimeo(root).build().clips
    bomb = root / "sequences" / clips[1] / "im2.png"
    write_bomb_png(bomb)
    with pytest.raises(CorruptImageError, match="decompression-bomb") as info:
        load_rgb(bomb)
    assert info.value.path == str(bomb)
    with pytest.raises(CorruptImageError, match=str(bomb)):
        _vimeo(root).build()[1]
    skip = _vimeo(root, on_error="skip").build()
    assert skip[1].index.item() == 1  # replaced by the next good clip
    assert dict(skip.skipped.counts) == {"CorruptImageError": 1}
    report = validate.validate_vimeo(root, progress=False, expected_size_hw=VIMEO_HW)
    assert not report.ok and report.problems.counts["CorruptImageError"] == 1
    assert str(bomb) in str(report.problems.first)


def test_sixteen_bit_images_are_scaled_not_saturated(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 1000], [32768, 51000, 65279, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode in ("I;16", "I")
    rgb = load_rgb(tmp_path / "grey16.png")
    expected = np.floor(values.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)  # 65535 -> 255
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], expected)
    assert len(np.unique(rgb[..., 0])) == len(np.unique(expected))  # 8-bit today: 3 levels
    mask = load_mask_png(tmp_path / "grey16.png")
    np.testing.assert_allclose(mask, values / 65535.0, rtol=0, atol=1e-7)
    # 32-bit float has no 8-bit meaning: refused, typed, naming the file.
    Image.fromarray(np.ones((2, 2), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(CorruptImageError, match=r"float\.tiff.*mode F"):
        load_rgb(tmp_path / "float.tiff")


# ----------------------------------------------------------------------------- skip counts


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skips_in_workers_reach_the_main_process_once(
    vimeo_root: Path, tmp_path: Path, num_workers: int
) -> None:
    root = _copy(vimeo_root, tmp_path)
    ds = _vimeo(root, on_error="skip").build()
    (root / "sequences" / ds.clips[2] / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    for epoch in range(2):  # the bad clip is met every epoch, counted once
        loader = make_dataloader(ds, 2, seed=0, epoch=epoch, num_workers=num_workers, shuffle=False)
        batches = list(loader)
        assert sum(b.index.shape[0] for b in batches) == len(ds)
    assert ds.skipped.total == 1
    assert dict(ds.skipped.counts) == {"CorruptImageError": 1}
    assert "im1.png" in str(ds.skipped.first)


# ----------------------------------------------------------------------------- lists and cameras


def test_camera_file_without_rows_follows_the_policy(rooms_root: Path, tmp_path: Path) -> None:
    root = _copy(rooms_root, tmp_path)
    cfg = {"root": str(root / "dfm"), "layout": "txt", "expected_size_hw": ROOMS_HW}
    before = RealEstate10kConfig(**cfg).build().clips
    txt = sorted((root / "RealEstate10K" / "train").glob("*.txt"))[0]
    txt.write_text(txt.read_text().splitlines()[0] + "\n")  # the URL line only
    with pytest.raises(BadAnnotationError, match=rf"{txt.name} \[line 2\]: .*no camera rows"):
        RealEstate10kConfig(**cfg).build()
    skip = RealEstate10kConfig(**cfg, on_error="skip").build()
    assert skip.clips == [clip for clip in before if clip != txt.stem]
    assert dict(skip.skipped.counts) == {"BadAnnotationError": 1}


def test_malformed_vimeo_line_follows_the_policy(vimeo_root: Path, tmp_path: Path) -> None:
    root = _copy(vimeo_root, tmp_path)
    good = (root / "tri_trainlist.txt").read_text().split()
    (root / "tri_trainlist.txt").write_text("\n".join([good[0], "../../etc/passwd", *good[1:]]))
    with pytest.raises(BadAnnotationError, match=r"\[line 2\]"):
        _vimeo(root).build()
    skip = _vimeo(root, on_error="skip").build()
    assert skip.clips == good
    assert dict(skip.skipped.counts) == {"BadAnnotationError": 1}
    report = validate.validate_vimeo(root, progress=False, expected_size_hw=VIMEO_HW)
    assert report.problems.counts["BadAnnotationError"] == 1 and not report.ok


def test_when_every_clip_is_bad_the_first_real_cause_is_named(
    vimeo_root: Path, rooms_root: Path, tmp_path: Path
) -> None:
    root = _copy(vimeo_root, tmp_path / "v")
    (root / "tri_trainlist.txt").write_text("bad line\n")
    with pytest.raises(
        EmptySubsetError, match=r"first problem: .*line 1.*expected '<folder>/<clip>'"
    ):
        _vimeo(root, on_error="skip").build()
    rooms = _copy(rooms_root, tmp_path / "r")
    with pytest.raises(
        EmptySubsetError, match=r"every item has a bad.*first problem: .*expected 9x9"
    ):
        RealEstate10kConfig(
            root=str(rooms / "dfm"), layout="mat", expected_size_hw=(9, 9), on_error="skip"
        ).build()[0]


# ----------------------------------------------------------------------------- validator == loader


def test_validator_rejects_the_loaders_frame_size(rooms_root: Path) -> None:
    for size, ok in ((ROOMS_HW, True), ((360, 640), False), (None, True)):
        report = validate.validate_re10k(
            rooms_root / "dfm", "mat", progress=False, expected_size_hw=size
        )
        assert report.ok is ok
        loader = RealEstate10kConfig(
            root=str(rooms_root / "dfm"),
            layout="mat",
            expected_size_hw=size,
            sampling=FrameSamplingConfig(num_context=1, num_target=1, min_gap=1, max_gap=2),
        ).build()
        if ok:
            loader[0]
        else:
            with pytest.raises(DatasetError):
                loader[0]
            assert report.problems.counts["ImageSizeError"] == report.counts["frames"] > 0


def _co3d(tmp_path: Path) -> Path:
    root = tmp_path / "co3d"
    eyes = [(3.0, 0.5, 0.0), (0.0, 0.5, 3.0), (-3.0, 0.5, 0.0)]
    write_co3d_category(root, "toy", {"s1": [{"eye": e} for e in eyes]})
    return root


@pytest.mark.parametrize(
    ("fault", "error", "where"),
    [
        ({"train": "not a list"}, "BadAnnotationError", "[train]: expected a list, got str"),
        ({"train": [], "val": []}, "EmptySubsetError", "[train]: split lists no frame"),
        ({"val": []}, "EmptySubsetError", "has no 'train' split"),
        ({"train": [["s1", 0]]}, "BadAnnotationError", "[train[0]]: expected [sequence_name"),
        ([1, 2], "BadAnnotationError", "expected an object with train/val/test"),
    ],
)
def test_validator_checks_set_lists_like_the_loader(
    tmp_path: Path, fault: object, error: str, where: str
) -> None:
    root = _co3d(tmp_path)
    path = root / "toy" / "set_lists" / "set_lists_fewview_dev.json"
    assert validate.validate_co3d(root, progress=False).ok
    path.write_text(json.dumps(fault))
    report = validate.validate_co3d(root, progress=False)  # no TypeError
    assert not report.ok and report.problems.counts[error] >= 1
    assert where in str(report.problems.first)
    from dfm_data.co3d import CO3DConfig

    with pytest.raises(DatasetError):  # the loader refuses the same root
        CO3DConfig(root=str(root), categories=("toy",)).build()


def test_validator_requires_the_subset_and_parses_sequence_records(tmp_path: Path) -> None:
    root = _co3d(tmp_path)
    report = validate.validate_co3d(root, progress=False, subset_name="manyview_dev_0")
    assert not report.ok and "set list 'manyview_dev_0' does not exist" in str(
        report.problems.first
    )
    with gzip.open(root / "toy" / "sequence_annotations.jgz", "wt") as f:
        json.dump([{"sequence_name": "s1", "category": "toy", "viewpoint_quality_score": "x"}], f)
    report = validate.validate_co3d(root, progress=False)
    assert report.problems.counts["BadAnnotationError"] == 1
    assert "sequences[0]" in str(report.problems.first)


def test_validator_rejects_an_empty_vimeo_list(vimeo_root: Path, tmp_path: Path) -> None:
    root = _copy(vimeo_root, tmp_path)
    (root / "tri_testlist.txt").write_text("\n")
    report = validate.validate_vimeo(root, progress=False, expected_size_hw=VIMEO_HW)
    assert report.problems.counts["EmptySubsetError"] == 1
    assert "tri_testlist.txt" in str(report.problems.first)
    with pytest.raises(EmptySubsetError):
        _vimeo(root, split="test").build()


def test_validator_crash_has_its_own_exit_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], vimeo_root: Path
) -> None:
    def crash(*args, **kwargs):
        raise TypeError("'int' object is not iterable")

    monkeypatch.setattr(validate, "validate_vimeo", crash)
    assert main(["validate", "vimeo", str(vimeo_root), "--quiet"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"dfm data validate: validator crashed on {vimeo_root}: TypeError: "
        "'int' object is not iterable"
    ]


# ----------------------------------------------------------------------------- CO3D specifics


def test_principal_point_errors_name_the_principal_point(tmp_path: Path) -> None:
    root = _co3d(tmp_path)
    path = root / "toy" / "frame_annotations.jgz"
    records = load_jgz(path)
    records[1]["viewpoint"]["principal_point"] = [1e6, 0.0]
    with pytest.raises(BadCameraError) as info:
        parse_frame_annotation(records[1], source=path, index=1)
    assert info.value.field == "frames[1].viewpoint.principal_point"
    records[1]["viewpoint"]["focal_length"] = [-1.0, 2.0]
    with pytest.raises(BadCameraError) as info:
        parse_frame_annotation(records[1], source=path, index=1)
    assert info.value.field == "frames[1].viewpoint.focal_length"


def test_depth_and_mask_at_another_size_are_resized(tmp_path: Path) -> None:
    """Half-size depth/mask files give the same scale as full-size ones (block-constant maps).

    Each map is constant on 2x2 blocks, so nearest-neighbour upsampling of its half-size
    version restores it exactly: the oracle is the full-size result.
    """
    h, w = 12, 16
    yy, xx = np.mgrid[0:h, 0:w]
    depth = (1.0 + ((yy // 2) % 3) + 0.5 * ((xx // 2) % 4)).astype(np.float32)
    mask = (((yy // 2) + (xx // 2)) % 2).astype(np.float32)
    eyes = [(3.0, 0.5, 0.0), (0.0, 0.5, 3.0)]
    full, half = tmp_path / "full", tmp_path / "half"
    for root in (full, half):
        write_co3d_category(
            root, "toy", {"s1": [{"eye": e, "depth": depth, "mask": mask} for e in eyes]}, hw=(h, w)
        )
    for png in (half / "toy" / "s1" / "depths").glob("*.png"):
        bits = np.asarray(depth[::2, ::2], dtype=np.float16).view(np.uint16)
        Image.fromarray(np.ascontiguousarray(bits)).save(png)
    for png in (half / "toy" / "s1" / "masks").glob("*.png"):
        Image.fromarray((mask[::2, ::2] * 255).astype(np.uint8)).save(png)

    def scale(root: Path) -> float | None:
        path = root / "toy" / "frame_annotations.jgz"
        frames = [
            parse_frame_annotation(r, source=path, index=i) for i, r in enumerate(load_jgz(path))
        ]
        return sequence_scale(root, frames)

    reference = float(np.median(depth[mask > 0.4]))
    assert scale(full) == pytest.approx(reference, abs=1e-3)
    assert scale(half) == pytest.approx(scale(full), abs=1e-6)
    assert validate.validate_co3d(half, progress=False).ok
