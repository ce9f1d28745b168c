"""Videos, colour-mapped depth and captioned image grids for sampled scenes.

* :func:`write_video` — mp4 (H.264 through imageio's ffmpeg plugin and the binary shipped by
  ``imageio-ffmpeg``, yuv420p so every player opens it) or gif (Pillow, looping, one
  fast-octree palette per frame).
* :func:`colorize_depth` — depth maps to RGB with a perceptual colormap (default ``"turbo"``),
  normalised by one ``[vmin, vmax]`` for the whole video so colours mean the same depth in
  every frame.
* :func:`image_grid` — tiles with optional captions, for reports.
* :func:`render_frames` — calls a per-camera render function along a trajectory with a
  progress bar (rendering a video is the long loop).
* :class:`ProgressiveRecorder` — a sampler ``callback`` that shows a progress bar over the
  denoising steps and keeps ``x_t`` and the clean estimate ``x0`` of every step, for the
  progressive-sampling animation (:meth:`ProgressiveRecorder.frames`).

Frames are ``(N, H, W, 3)`` arrays or tensors, ``uint8`` or float in ``[0, 1]`` (clipped, then
``round(255 x)``); grayscale ``(N, H, W)`` / ``(N, H, W, 1)`` is replicated to RGB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ProgressiveRecorder",
    "colorize_depth",
    "image_grid",
    "progress",
    "render_frames",
    "to_uint8_frames",
    "write_video",
]

T = TypeVar("T")
VIDEO_SUFFIXES = (".mp4", ".gif")


def progress(
    iterable: Iterable[T], *, desc: str, enabled: bool = True, total: int | None = None
) -> Iterator[T]:
    """``iterable`` wrapped in a tqdm progress bar (or returned as is when ``enabled`` is False)."""
    if not enabled:
        return iter(iterable)
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, desc=desc, total=total, unit="it", leave=False))


def to_uint8_frames(frames: np.ndarray | Tensor) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 numpy frames from uint8 or float-in-[0, 1] frames.

    Args:
        frames: ``(N, H, W, 3)``, ``(N, H, W, 1)`` or ``(N, H, W)``; uint8, or float in ``[0, 1]``
            (values outside are clipped).

    Returns:
        ``(N, H, W, 3)`` uint8 C-contiguous array.
    """
    if isinstance(frames, Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or frames.shape[0] < 1:
        raise ValueError(
            f"frames must be (N >= 1, H, W, 3) (or grayscale (N, H, W)), got {frames.shape}"
        )
    if frames.dtype == np.uint8:
        out = frames
    elif np.issubdtype(frames.dtype, np.floating):
        if not np.isfinite(frames).all():
            raise ValueError("frames contain NaN or inf")
        out = np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {frames.dtype}")
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeats the last row/column where H or W is odd (yuv420p subsamples chroma 2x2)."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray | Tensor,
    *,
    fps: float = 24.0,
    quality: int = 8,
) -> Path:
    """Writes frames to an ``.mp4`` (H.264, yuv420p) or a looping ``.gif``.

    mp4: odd heights/widths are padded by one repeated row/column (the yuv420p chroma grid
    needs even sizes; nothing is resampled). gif: each frame is quantised to its own
    256-colour palette (exact when a frame has at most 256 colours), frame times are stored in
    10 ms units, and Pillow merges consecutive identical frames.

    Args:
        path: output file; the suffix (``.mp4`` or ``.gif``) picks the format. Parent folders
            are created.
        frames: ``(N, H, W, 3)`` uint8 or float in ``[0, 1]`` (see :func:`to_uint8_frames`).
        fps: frames per second.
        quality: mp4 quality 0-10 (imageio's scale; 10 is best), ignored for gif.

    Returns:
        The path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported video extension {suffix!r}; expected one of {VIDEO_SUFFIXES}"
        )
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    data = to_uint8_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        import imageio.v2 as iio2

        writer = iio2.get_writer(
            path,
            format="FFMPEG",
            mode="I",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            quality=quality,
            macro_block_size=1,  # we pad to even sizes ourselves; never let imageio resize
            ffmpeg_log_level="error",
        )
        with writer:
            for frame in _pad_to_even(data):
                writer.append_data(frame)
    else:
        from PIL import Image

        # Fast-octree palettes, no dithering: ~100x faster than Pillow's default median cut on
        # smooth renders, and exact for frames with at most 256 colours.
        images = [
            Image.fromarray(frame).quantize(
                256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
            )
            for frame in data
        ]
        images[0].save(path, save_all=True, append_images=images[1:], duration=1000.0 / fps, loop=0)
    return path


def colorize_depth(
    depth: np.ndarray | Tensor,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "turbo",
    mask: np.ndarray | Tensor | None = None,
    background: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Depth maps to RGB frames through a matplotlib colormap, one normalisation for all frames.

    ``x = clip((depth − vmin) / (vmax − vmin), 0, 1)`` indexes the colormap (near = low end:
    dark blue for turbo/viridis). ``vmin``/``vmax`` default to the min/max over all valid
    pixels of all frames, so a whole video shares one scale.

    Args:
        depth: ``(N, H, W)`` (or ``(H, W)``) depths.
        vmin: depth mapped to the low end of the colormap (default: the minimum).
        vmax: depth mapped to the high end (default: the maximum).
        cmap: a matplotlib colormap name (``"turbo"``, ``"viridis"``, ``"magma"``...).
        mask: optional bool array like ``depth``; pixels outside it, and non-finite depths,
            get ``background``.
        background: RGB uint8 colour of invalid pixels.

    Returns:
        ``(N, H, W, 3)`` (or ``(H, W, 3)``) uint8.
    """
    import matplotlib

    if isinstance(depth, Tensor):
        depth = depth.detach().cpu().numpy()
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim not in (2, 3):
        raise ValueError(f"depth must be (N, H, W) or (H, W), got {depth.shape}")
    valid = np.isfinite(depth)
    if mask is not None:
        mask = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
        if mask.shape != depth.shape or mask.dtype != np.bool_:
            raise ValueError(
                f"mask must be a bool array of shape {depth.shape}, got {mask.dtype} {mask.shape}"
            )
        valid &= mask
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown matplotlib colormap {cmap!r}") from None
    if valid.any():
        lo = float(depth[valid].min()) if vmin is None else float(vmin)
        hi = float(depth[valid].max()) if vmax is None else float(vmax)
    else:
        lo, hi = (0.0 if vmin is None else vmin), (1.0 if vmax is None else vmax)
    if not hi > lo:
        hi = lo + 1e-12  # a constant depth map maps to the low end
    x = np.clip((np.where(valid, depth, lo) - lo) / (hi - lo), 0.0, 1.0)
    lut = np.round(colormap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3)
    rgb = lut[np.round(x * 255).astype(np.int64)]
    rgb[~valid] = np.asarray(background, dtype=np.uint8)
    return rgb


def image_grid(
    images: np.ndarray | Tensor | Sequence[np.ndarray | Tensor],
    *,
    ncols: int | None = None,
    captions: Sequence[str] | None = None,
    pad: int = 2,
    pad_value: int = 255,
    caption_height: int = 14,
    scale: int = 1,
) -> np.ndarray:
    """Tiles images into one picture, optionally with a caption strip under each tile.

    Args:
        images: ``(N, H, W, 3)`` (uint8 or float in [0, 1]) or a sequence of ``(H, W, 3)``
            images of one size.
        ncols: tiles per row (default: all in one row).
        captions: one string per image, drawn with Pillow's default bitmap font, or ``None``.
        pad: pixels between tiles and around the grid.
        pad_value: grey level of the padding and caption strips.
        caption_height: height of each caption strip in pixels.
        scale: nearest-neighbour upscaling of every tile (``H, W`` below are the scaled
            sizes), so 32-pixel renders stay visible next to their captions.

    Returns:
        ``(rows · (H + caption + pad) + pad, cols · (W + pad) + pad, 3)`` uint8.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    stacked: np.ndarray | Tensor
    if isinstance(images, (np.ndarray, Tensor)):
        stacked = images
    else:
        if not images:
            raise ValueError("images is empty")
        shapes = {tuple(np.shape(im)) for im in images}
        if len(shapes) != 1:
            raise ValueError(f"images must share one shape, got {sorted(shapes)}")
        stacked = np.stack(
            [im.detach().cpu().numpy() if isinstance(im, Tensor) else im for im in images]
        )
    tiles = to_uint8_frames(stacked)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = tiles.shape
    if captions is not None and len(captions) != n:
        raise ValueError(f"captions must have one entry per image ({n}), got {len(captions)}")
    cols = n if ncols is None else ncols
    if cols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    rows = -(-n // cols)
    cap = caption_height if captions is not None else 0
    cell_h, cell_w = h + cap + pad, w + pad
    grid = np.full((rows * cell_h + pad, cols * cell_w + pad, 3), pad_value, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        y, x = pad + r * cell_h, pad + c * cell_w
        grid[y : y + h, x : x + w] = tiles[k]
    if captions is not None:
        from PIL import Image, ImageDraw

        picture = Image.fromarray(grid)
        draw = ImageDraw.Draw(picture)
        ink = (0, 0, 0) if pad_value > 127 else (255, 255, 255)
        for k, text in enumerate(captions):
            r, c = divmod(k, cols)
            draw.text((pad + c * cell_w + 1, pad + r * cell_h + h + 1), str(text), fill=ink)
        grid = np.asarray(picture)
    return grid


def render_frames(
    render: Callable[[Tensor], T],
    c2w: Tensor,
    *,
    show_progress: bool = True,
    desc: str = "rendering",
) -> list[T]:
    """Calls ``render(c2w[i])`` for every camera of a trajectory, with a progress bar.

    Args:
        render: renders one camera, ``render(c2w (4, 4)) -> frame`` (any type, e.g. an
            ``(H, W, 3)`` tensor or a rendering dataclass).
        c2w: ``(N, 4, 4)`` camera-to-world poses (e.g. from ``dfm_render.trajectories``).
        show_progress: show the bar.
        desc: the bar's label.

    Returns:
        The N results, in order.
    """
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must be (N, 4, 4), got {tuple(c2w.shape)}")
    with torch.no_grad():
        return [
            render(pose) for pose in progress(c2w, desc=desc, enabled=show_progress, total=len(c2w))
        ]


def _add_title(picture: np.ndarray, text: str, height: int, pad_value: int) -> np.ndarray:
    """``picture`` with a ``height``-pixel strip on top holding ``text``."""
    from PIL import Image, ImageDraw

    strip = np.full((height, picture.shape[1], 3), pad_value, dtype=np.uint8)
    out = Image.fromarray(np.concatenate([strip, picture]))
    ink = (0, 0, 0) if pad_value > 127 else (255, 255, 255)
    ImageDraw.Draw(out).text((2, 1), text, fill=ink)
    return np.asarray(out)


class ProgressiveRecorder:
    """Sampler callback: a progress bar, and ``x_t`` / ``x0`` of every denoising step.

    Pass it as ``callback=`` to ``dfm_core.sampling.sample_ddim`` (or any sampler calling
    ``callback(info)`` with ``info.step``, ``info.num_steps``, ``info.t``, ``info.x``,
    ``info.x0``), then write :meth:`frames` with :func:`write_video`. Only the first
    ``max_items`` batch items are kept (as float32 on the CPU), so memory is
    ``steps · max_items · 2`` images.

    Args:
        max_items: batch items kept per step.
        show_progress: show a tqdm bar over the steps.
        value_range: ``(low, high)`` of the images (``(-1, 1)`` inside models, see DESIGN §2),
            mapped to ``[0, 1]`` for display.
        desc: the bar's label.
    """

    def __init__(
        self,
        *,
        max_items: int = 4,
        show_progress: bool = True,
        value_range: tuple[float, float] = (-1.0, 1.0),
        desc: str = "sampling",
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        low, high = value_range
        if not high > low:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
        self.max_items = max_items
        self.show_progress = show_progress
        self.value_range = (float(low), float(high))
        self.desc = desc
        self.num_steps = 0
        self.steps: list[int] = []
        self.times: list[float] = []
        self.noisy: list[Tensor] = []  # each (b, C, H, W) in [0, 1]
        self.clean: list[Tensor] = []
        self._bar: Any = None

    def _to_unit(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"ProgressiveRecorder needs image states (B, 1 or 3, H, W), got {tuple(images.shape)}"
            )
        low, high = self.value_range
        kept = images[: self.max_items].detach().to("cpu", torch.float32)
        return ((kept - low) / (high - low)).clamp(0, 1)

    def __call__(self, info: Any) -> None:
        """Records one step (the sampler's ``StepInfo``)."""
        if self.show_progress:
            if self._bar is None:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=info.num_steps, desc=self.desc, unit="step", leave=False)
            self._bar.update(1)
            if info.step + 1 >= info.num_steps:
                self._bar.close()
                self._bar = None
        self.num_steps = int(info.num_steps)
        self.steps.append(int(info.step))
        self.times.append(float(info.t))
        self.noisy.append(self._to_unit(info.x))
        self.clean.append(self._to_unit(info.x0))

    def frames(self, *, show_noisy: bool = True, scale: int = 1, title: bool = True) -> np.ndarray:
        """One picture per recorded step: a row of ``x_t`` (if ``show_noisy``) over a row of ``x0``.

        Args:
            show_noisy: include the noisy state row.
            scale: nearest-neighbour upscaling of each image (for tiny renders).
            title: a strip on top with ``step k/N  t=...``.

        Returns:
            ``(S, H', W', 3)`` uint8 frames, S = recorded steps.
        """
        if not self.clean:
            raise ValueError("no step recorded: pass the recorder as the sampler's callback first")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        out = []
        for k in range(len(self.clean)):
            rows = [self.noisy[k], self.clean[k]] if show_noisy else [self.clean[k]]
            tiles = torch.cat(rows)  # (rows * b, C, H, W)
            if scale > 1:
                tiles = tiles.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
            grid = image_grid(tiles.permute(0, 2, 3, 1).numpy(), ncols=len(self.clean[k]))
            if title:
                grid = _add_title(
                    grid, f"step {self.steps[k] + 1}/{self.num_steps}  t={self.times[k]:g}", 12, 255
                )
            out.append(grid)
        return np.stack(out)
