"""Reading and writing the pixel payloads of the real formats, with typed errors.

- RGB images (jpg/png) -> ``uint8 (H, W, 3)``. 16-bit images (``I;16``) are scaled to 8 bits
  (``round(v / 257)``), never clipped; modes with no 8-bit meaning (32-bit float) are refused.
- An image whose header claims more pixels than PIL's decompression-bomb limit
  (``PIL.Image.MAX_IMAGE_PIXELS``) is refused with :class:`CorruptImageError` before decoding.
- CO3D depth PNGs: 16-bit PNGs whose raw uint16 bits are IEEE float16 depths.
- CO3D masks: 8-bit PNGs storing ``P(foreground) * 255``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from dfm_data.errors import CorruptImageError, ImageSizeError, MissingFileError

__all__ = [
    "decode_rgb_bytes",
    "load_depth_png",
    "load_mask_png",
    "load_rgb",
    "resize_plane",
    "save_depth_png",
    "save_mask_png",
    "to_model_image",
]


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _decode(source: Path | io.BytesIO, shown: object, field: str | None) -> Image.Image:
    try:
        img = Image.open(source)
        img.load()
    except Image.DecompressionBombError as e:
        # Raised from the header alone, before any pixel is decoded.
        raise CorruptImageError(
            f"image refused: its header claims more pixels than the decompression-bomb limit "
            f"({Image.MAX_IMAGE_PIXELS} x 2) ({e})",
            path=str(shown),
            field=field,
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot decode image ({e})", path=str(shown), field=field) from e
    return img


def _open(path: Path, field: str | None) -> Image.Image:
    if not path.is_file():
        raise MissingFileError("file does not exist", path=path, field=field)
    return _decode(path, path, field)


def _sixteen_bit(img: Image.Image) -> bool:
    # Older Pillow opens 16-bit PNGs as mode "I"; PNG has no 32-bit integer images.
    return img.mode in _SIXTEEN_BIT or (img.mode == "I" and img.format == "PNG")


def _to_rgb8(img: Image.Image, shown: object, field: str | None) -> np.ndarray:
    """``uint8 (H, W, 3)`` from any 8- or 16-bit mode, scaling (not clipping) 16-bit values."""
    if _sixteen_bit(img):
        raw = np.asarray(img).astype(np.float64)
        grey = np.clip(np.round(raw / 257.0), 0, 255).astype(np.uint8)  # 65535 -> 255
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("I", "F"):
        raise CorruptImageError(
            f"image mode {img.mode} (32-bit {'integer' if img.mode == 'I' else 'float'}) has no "
            "8-bit RGB meaning; expected an 8-bit (RGB, L, P, RGBA...) or 16-bit greyscale image",
            path=str(shown),
            field=field,
        )
    return np.asarray(img.convert("RGB"))


def _check_size(
    img: Image.Image, expected_hw: tuple[int, int] | None, path: object, field: str | None
) -> None:
    if expected_hw is not None and (img.height, img.width) != tuple(expected_hw):
        raise ImageSizeError(
            f"image is {img.height}x{img.width} (HxW), expected {expected_hw[0]}x{expected_hw[1]}",
            path=str(path),
            field=field,
        )


def load_rgb(
    path: str | Path, *, expected_hw: tuple[int, int] | None = None, field: str | None = None
) -> np.ndarray:
    """Loads an RGB image.

    Args:
        path: jpg/png file.
        expected_hw: if given, ``(H, W)`` the image must have.
        field: record field to name in errors.

    Returns:
        ``uint8 (H, W, 3)``.

    Raises:
        MissingFileError, CorruptImageError, ImageSizeError.
    """
    path = Path(path)
    img = _open(path, field)
    _check_size(img, expected_hw, path, field)
    return _to_rgb8(img, path, field)


def decode_rgb_bytes(
    data: bytes,
    *,
    source: str,
    expected_hw: tuple[int, int] | None = None,
    field: str | None = None,
) -> np.ndarray:
    """Decodes encoded image bytes (e.g. JPEG inside a pixelSplat chunk) to ``uint8 (H, W, 3)``."""
    img = _decode(io.BytesIO(data), source, field)
    _check_size(img, expected_hw, source, field)
    return _to_rgb8(img, source, field)


def load_depth_png(
    path: str | Path, *, scale_adjustment: float = 1.0, expected_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Loads a CO3D depth PNG (float16 bits in a 16-bit PNG).

    Returns:
        ``float32 (H, W)`` depth times ``scale_adjustment``; non-finite values set to 0.
    """
    path = Path(path)
    img = _open(path, "depth.path")
    _check_size(img, expected_hw, path, "depth.path")
    if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise CorruptImageError(f"depth PNG has mode {img.mode}, expected 16-bit", path=path)
    raw = np.asarray(img)
    if raw.dtype != np.uint16:
        raw = raw.astype(np.uint16)
    depth = raw.view(np.float16).astype(np.float32) * np.float32(scale_adjustment)
    depth[~np.isfinite(depth)] = 0.0
    return depth


def save_depth_png(path: str | Path, depth: np.ndarray) -> None:
    """Writes ``float (H, W)`` depth as a CO3D depth PNG (float16 bits, 16-bit grayscale)."""
    bits = np.ascontiguousarray(np.asarray(depth, dtype=np.float16)).view(np.uint16)
    Image.fromarray(bits).save(path)


def load_mask_png(path: str | Path, *, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Loads a CO3D foreground mask PNG. Returns ``float32 (H, W)`` probabilities in ``[0, 1]``."""
    path = Path(path)
    img = _open(path, "mask.path")
    _check_size(img, expected_hw, path, "mask.path")
    if _sixteen_bit(img):  # 16-bit masks: P(fg) * 65535
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode in ("I", "F"):
        raise CorruptImageError(
            f"mask PNG has mode {img.mode}, expected 8- or 16-bit greyscale",
            path=path,
            field="mask.path",
        )
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def save_mask_png(path: str | Path, prob: np.ndarray) -> None:
    """Writes ``float (H, W)`` probabilities in ``[0, 1]`` as an 8-bit mask PNG."""
    Image.fromarray(np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)).save(path)


def resize_plane(plane: np.ndarray, size_hw: tuple[int, int], *, nearest: bool) -> np.ndarray:
    """Resizes a ``float32 (H, W)`` depth map or mask to ``size_hw``.

    Real CO3D v2 depth maps and masks may be stored at another size than their image;
    PyTorch3D's loader rescales them to the image, nearest-neighbour for depth (so no
    depth is invented across an edge) and bilinear for mask probabilities. Same here.
    """
    if plane.shape == tuple(size_hw):
        return plane
    h, w = size_hw
    mode = Image.NEAREST if nearest else Image.BILINEAR
    out = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).resize((w, h), mode)
    return np.asarray(out, dtype=np.float32)


def to_model_image(image: np.ndarray, size_hw: tuple[int, int] | None = None) -> Tensor:
    """``uint8 (H, W, 3)`` -> ``float32 (3, H', W')`` in ``[-1, 1]``, resized if ``size_hw`` differs.

    The resize is PIL's antialiased bilinear on float32 channels (the same triangle filter as
    ``interpolate(mode="bilinear", antialias=True, align_corners=False)``, agreeing to ~1e-4). It runs
    outside torch's intra-op thread pool, which on a busy machine made per-frame torch ops ~10x slower.
    """
    f = np.asarray(image, dtype=np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
    if size_hw is not None and tuple(size_hw) != f.shape[:2]:
        h, w = size_hw
        f = np.stack(
            [
                np.asarray(Image.fromarray(f[..., c]).resize((w, h), Image.BILINEAR))
                for c in range(f.shape[2])
            ],
            axis=-1,
        )
        np.clip(f, -1.0, 1.0, out=f)
    return torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1)))
