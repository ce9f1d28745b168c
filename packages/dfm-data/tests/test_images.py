"""Pixel payloads: CO3D depth/mask PNG encodings, image conversion and resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dfm_data.errors import CorruptImageError, ImageSizeError, MissingFileError
from dfm_data.images import (
    load_depth_png,
    load_mask_png,
    load_rgb,
    save_depth_png,
    save_mask_png,
    to_model_image,
)


def test_depth_png_is_float16_bits(tmp_path):
    depth = np.array([[0.0, 1.5, 7.25], [65504.0, np.inf, 3.0]], dtype=np.float32)
    save_depth_png(tmp_path / "d.png", depth)
    raw = np.asarray(Image.open(tmp_path / "d.png"))
    assert raw.dtype == np.uint16 and raw[0, 1] == np.float16(1.5).view(np.uint16)
    out = load_depth_png(tmp_path / "d.png", scale_adjustment=2.0)
    np.testing.assert_array_equal(out, [[0, 3, 14.5], [131008, 0, 6]])  # inf -> 0


def test_mask_png(tmp_path):
    save_mask_png(tmp_path / "m.png", np.array([[0.0, 0.5, 1.0]]))
    np.testing.assert_allclose(load_mask_png(tmp_path / "m.png"), [[0, 128 / 255, 1]])
    with pytest.raises(ImageSizeError):
        load_mask_png(tmp_path / "m.png", expected_hw=(2, 3))


def test_to_model_image_matches_torch_antialias():
    rgb = np.random.default_rng(0).integers(0, 256, (45, 45, 3), dtype=np.uint8)
    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 127.5 - 1
    ref = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)[0]
    out = to_model_image(rgb, (16, 16))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref.clamp(-1, 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(to_model_image(rgb), x[0])


def test_load_errors(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        load_rgb(tmp_path / "none.jpg")
    Image.new("RGB", (8, 4)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError) as e:
        load_rgb(tmp_path / "t.jpg", field="image.path")
    assert e.value.path == str(tmp_path / "t.jpg") and e.value.field == "image.path"
    with pytest.raises(ImageSizeError, match="4x8"):
        load_rgb(tmp_path / "a.jpg", expected_hw=(8, 4))
    Image.new("L", (4, 4)).save(tmp_path / "d8.png")
    with pytest.raises(CorruptImageError, match="16-bit"):
        load_depth_png(tmp_path / "d8.png")
