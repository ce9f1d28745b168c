"""RealEstate10k loader (txt, mat, pixelSplat torch layouts) and the rooms world."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dfm_data.errors import (
    BadAnnotationError,
    BadCameraError,
    CorruptImageError,
    EmptySubsetError,
    ImageSizeError,
    MissingFileError,
)
from dfm_data.realestate10k import RealEstate10kConfig, parse_camera_txt
from dfm_data.sampling import FrameSamplingConfig
from dfm_data.worlds.rooms import (
    RoomScene,
    RoomsWorldConfig,
    render_room,
    room_camera,
    synthesize_rooms,
)

HW = (18, 32)
SAMPLING = FrameSamplingConfig(num_context=2, num_target=1, num_novel=1, min_gap=1, max_gap=2)
LAYOUTS = {"mat": "dfm", "txt": "dfm", "torch": "pixelsplat"}


@pytest.fixture(scope="module")
def rooms_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rooms")
    synthesize_rooms(
        root,
        RoomsWorldConfig(n_clips=4, n_frames=6, image_size_hw=HW, clips_per_chunk=2, seed=1),
        progress=False,
    )
    return root


def _ds(root, layout, **kw):
    base = dict(
        root=str(root / LAYOUTS[layout]),
        layout=layout,
        image_size=8,
        sampling=SAMPLING,
        expected_size_hw=HW,
    )
    base.update(kw)
    return RealEstate10kConfig(**base).build()


def test_layouts_on_disk(rooms_root):
    txts = sorted((rooms_root / "RealEstate10K" / "train").glob("*.txt"))
    assert len(txts) == 3
    lines = txts[0].read_text().splitlines()
    assert lines[0].startswith("https://www.youtube.com/watch?v=")
    cols = lines[1].split()
    assert (
        len(cols) == 19
        and cols[3] == "0.5"
        and cols[4] == "0.5"
        and float(cols[5]) == 0 == float(cols[6])
    )
    clip = txts[0].stem
    assert len(clip) == 16 and all(c in "0123456789abcdef" for c in clip)
    jpgs = sorted((rooms_root / "dfm" / "train" / clip).glob("*.jpg"))
    assert [int(p.stem) for p in jpgs] == [int(line.split()[0]) for line in lines[1:]]
    from scipy.io import loadmat

    mat = loadmat(rooms_root / "dfm" / "train.mat")
    assert mat[clip].shape == (6, 19)
    index = json.loads((rooms_root / "pixelsplat" / "train" / "index.json").read_text())
    assert set(index) == {t.stem for t in txts} and set(index.values()) == {
        "000000.torch",
        "000001.torch",
    }
    chunk = torch.load(rooms_root / "pixelsplat" / "train" / "000000.torch", weights_only=True)
    ex = chunk[0]
    assert ex["cameras"].shape == (6, 18) and ex["timestamps"].dtype == torch.int64
    assert (
        ex["images"][0].dtype == torch.uint8 and bytes(ex["images"][0][:2].tolist()) == b"\xff\xd8"
    )


@pytest.mark.parametrize("layout", ["txt", "mat", "torch"])
def test_three_layouts_agree(rooms_root, layout):
    ref = _ds(rooms_root, "mat")
    ds = _ds(rooms_root, layout)
    assert ds.clips == ref.clips and len(ds) == 3
    a, b = ds[1], ref[1]
    torch.testing.assert_close(a.context.images, b.context.images)
    torch.testing.assert_close(a.target.c2w, b.target.c2w)
    torch.testing.assert_close(a.world_from_context, b.world_from_context)
    assert a.context.images.shape == (1, 2, 3, 8, 8)
    torch.testing.assert_close(a.context.c2w[0, 0], torch.eye(4), atol=1e-5, rtol=0)


def test_cameras_are_the_world_path_and_crop_intrinsics(rooms_root):
    truth = json.loads((rooms_root / "ground_truth.json").read_text())
    ds = _ds(
        rooms_root,
        "txt",
        sampling=FrameSamplingConfig(num_novel=0, min_gap=0, max_gap=0, flip_probability=0),
    )
    for i, clip in enumerate(ds.clips):
        scene = RoomScene.from_json(truth["clips"][clip]["scene"])
        b = ds[i]
        f = b.context.frame_index[0, 0].item()
        np.testing.assert_allclose(
            b.world_from_context[0].numpy(), room_camera(scene, f, 6), atol=1e-5
        )
        _, rows = parse_camera_txt(
            (rooms_root / "RealEstate10K" / "train" / f"{clip}.txt").read_text(), source="x"
        )
        fx, fy = rows[f][1][:2]
        # DFM: centre square crop of W x H keeps fy and cx = cy = 0.5, and multiplies fx by W / H.
        K = b.context.intrinsics[0, 0].double().numpy()
        np.testing.assert_allclose(
            K, [[fx * HW[1] / (2 * (HW[0] // 2)), 0, 0.5], [0, fy, 0.5], [0, 0, 1]], atol=1e-6
        )


def test_hidden_back_wall(rooms_root):
    truth = json.loads((rooms_root / "ground_truth.json").read_text())
    palette = np.asarray(truth["palette"])
    for clip, t in truth["clips"].items():
        scene = RoomScene.from_json(t["scene"])
        rows = parse_camera_txt(
            (rooms_root / "RealEstate10K" / t["split"] / f"{clip}.txt").read_text(), source="x"
        )[1]
        fx, fy = rows[0][1][:2]
        K = np.array([[fx * HW[1], 0, HW[1] / 2], [0, fy * HW[0], HW[0] / 2], [0, 0, 1]])
        assert render_room(scene, room_camera(scene, 0, 6), K, *HW)["hidden"].max() == 0
        last = render_room(scene, room_camera(scene, 5, 6), K, *HW)
        seen = last["hidden"] == 1
        assert seen.sum() > 5
        chroma = last["rgb"][seen] / last["rgb"][seen].sum(-1, keepdims=True)
        pal = palette / palette.sum(1, keepdims=True)
        nearest = np.abs(chroma[:, None] - pal[None]).sum(-1).argmin(-1)
        assert (nearest == t["hidden_index"]).mean() > 0.95


def test_bad_input(rooms_root, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(rooms_root, root)
    with pytest.raises(ImageSizeError, match="expected 360x640"):
        _ds(root, "mat", expected_size_hw=(360, 640))[0]
    with pytest.raises(MissingFileError, match=r"val\.mat|pose file"):
        _ds(root, "mat", pose_file=str(root / "dfm" / "val.mat"))
    # A NaN pose in one txt file names the file and the frame.
    txt = sorted((root / "RealEstate10K" / "train").glob("*.txt"))[0]
    lines = txt.read_text().splitlines()
    cols = lines[2].split()
    cols[8] = "nan"
    lines[2] = " ".join(cols)
    txt.write_text("\n".join(lines))
    with pytest.raises(BadCameraError, match=txt.stem):
        _ds(root, "txt")
    lines[2] = "1 2 3"
    txt.write_text("\n".join(lines))
    with pytest.raises(BadAnnotationError, match="line 3"):
        _ds(root, "txt")
    ds = _ds(root, "txt", on_error="skip")
    assert len(ds) == 3 and ds.skipped.counts["BadAnnotationError"] == 1
    # A missing frame.
    clip_dir = root / "dfm" / "train" / ds.clips[0]
    victim = sorted(clip_dir.glob("*.jpg"))[0]
    victim.unlink()
    with pytest.raises(MissingFileError, match=victim.stem):
        _ds(root, "mat")
    # Corrupt JPEG bytes inside a pixelSplat chunk.
    chunk_path = root / "pixelsplat" / "train" / "000000.torch"
    chunk = torch.load(chunk_path, weights_only=True)
    for ex in chunk:
        ex["images"] = [torch.tensor(list(b"not a jpeg"), dtype=torch.uint8) for _ in ex["images"]]
    torch.save(chunk, chunk_path)
    ds = _ds(root, "torch")
    key = next(k for k in ds.clips if ds.urls[k] == chunk[0]["url"])
    with pytest.raises(CorruptImageError, match=r"000000\.torch"):
        ds[ds.clips.index(key)]
    # Empty split.
    (root / "pixelsplat" / "train" / "index.json").write_text("{}")
    with pytest.raises(EmptySubsetError):
        _ds(root, "torch")


def test_frames_match_saved_jpg(rooms_root):
    ds = _ds(
        rooms_root,
        "mat",
        image_size=HW[0],
        sampling=FrameSamplingConfig(num_novel=0, min_gap=0, max_gap=0, flip_probability=0),
    )
    b = ds[0]
    f = b.context.frame_index[0, 0].item()
    path = sorted(
        (rooms_root / "dfm" / "train" / ds.clips[0]).glob("*.jpg"), key=lambda p: int(p.stem)
    )[f]
    rgb = np.asarray(Image.open(path), dtype=np.float32)
    left = (HW[1] - HW[0]) // 2
    ref = torch.from_numpy(rgb[:, left : left + HW[0]]).permute(2, 0, 1) / 127.5 - 1
    torch.testing.assert_close(b.context.images[0, 0], ref)


def test_views_at_chosen_frames_match_the_sampled_item(rooms_root):
    from dfm_data.sampling import sample_view_indices
    from dfm_data.seeding import item_rng

    ds = _ds(rooms_root, "txt")
    item = ds[1]
    n = len(ds._frames[ds.clips[1]])
    ctx, tgt, nov = sample_view_indices(n, SAMPLING, item_rng(ds.config.seed, 0, 1))
    chosen = ds.views_at(1, ctx, tgt, nov)
    for field in ("context", "target", "novel"):
        a, b = getattr(item, field), getattr(chosen, field)
        assert torch.equal(a.images, b.images) and torch.equal(a.c2w, b.c2w)
        assert torch.equal(a.frame_index, b.frame_index)
    pair = ds.views_at(1, [0], [n - 1])
    assert pair.context.frame_index.tolist() == [[0]] and pair.novel.images.shape[1] == 0
    with pytest.raises(IndexError, match="outside clip"):
        ds.views_at(1, [0], [n])
