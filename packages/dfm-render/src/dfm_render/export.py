"""Export sampled scenes: coloured point clouds from rendered depth, meshes by marching cubes, files.

* :func:`fuse_point_cloud` — unprojects every kept pixel of several rendered views,
  ``X = o + z · d`` with the rays of :func:`dfm_render.cameras.rays_from_pixels` (direction
  scaled to camera-z = 1, so ``z`` is the rendered z-depth), and keeps the pixel's colour.
* :func:`voxel_downsample` — one averaged point (and colour) per occupied voxel, to thin the
  millions of points that many views of a scene produce.
* :func:`extract_mesh` — samples a density field on a regular grid over a bounding box (in
  chunks, without gradients) and extracts the ``density = level`` isosurface with PyTorch3D's
  marching cubes (Lorensen & Cline 1987). Vertex colours come from a colour callable evaluated at
  the vertices. PyTorch3D rather than scikit-image because it is already a dependency of
  dfm-render (scikit-image is not) and its C++/CUDA kernel runs on the device the field lives
  on. Faces are wound so that their normals ``(b − a) × (c − a)`` point out of the
  high-density region.
* :func:`write_ply` / :func:`write_obj` — small writers: PLY 1.0 (binary little-endian or
  ASCII) with ``float x y z`` and ``uchar red green blue`` vertex properties (the names
  MeshLab, Open3D and PyTorch3D read), and Wavefront OBJ with the common ``v x y z r g b``
  vertex-colour extension (colours as floats in ``[0, 1]``). ``pytorch3d.io.save_ply`` writes
  no colours, hence these. :func:`save_point_cloud` / :func:`save_mesh` dispatch on the suffix.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dfm_render.cameras import pixel_grid, rays_from_pixels

__all__ = [
    "Mesh",
    "PointCloud",
    "extract_mesh",
    "fuse_point_cloud",
    "save_mesh",
    "save_point_cloud",
    "voxel_downsample",
    "write_obj",
    "write_ply",
]


@dataclass(frozen=True)
class PointCloud:
    """A coloured point cloud.

    Attributes:
        points: ``(N, 3)`` world positions.
        colors: ``(N, 3)`` RGB in ``[0, 1]``.
    """

    points: Tensor
    colors: Tensor


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh with optional per-vertex colours.

    Attributes:
        vertices: ``(V, 3)`` world positions.
        faces: ``(F, 3)`` int64 vertex indices, normals ``(v1 − v0) × (v2 − v0)`` outward.
        colors: ``(V, 3)`` RGB in ``[0, 1]``, or ``None``.
    """

    vertices: Tensor
    faces: Tensor
    colors: Tensor | None = None


# --------------------------------------------------------------------------- point clouds


def _check_views(depth: Tensor, rgb: Tensor, c2w: Tensor, intrinsics: Tensor) -> None:
    if depth.dim() != 3:
        raise ValueError(f"depth must be (V, H, W), got {tuple(depth.shape)}")
    v, h, w = depth.shape
    expected = {"rgb": (v, 3, h, w), "c2w": (v, 4, 4), "intrinsics": (v, 3, 3)}
    for name, value in (("rgb", rgb), ("c2w", c2w), ("intrinsics", intrinsics)):
        if tuple(value.shape) != expected[name]:
            raise ValueError(
                f"{name} must be {expected[name]} to match depth, got {tuple(value.shape)}"
            )


@torch.no_grad()
def fuse_point_cloud(
    depth: Tensor,
    rgb: Tensor,
    c2w: Tensor,
    intrinsics: Tensor,
    *,
    opacity: Tensor | None = None,
    min_opacity: float = 0.5,
    mask: Tensor | None = None,
    divide_by_opacity: bool = False,
    max_depth: float | None = None,
) -> PointCloud:
    """Fuses rendered depth and colour of several views into one coloured point cloud.

    Pixel ``(i, j)`` of view ``v`` becomes the point ``o_v + depth[v, i, j] · d_v(i, j)`` where
    ``d`` is the ray through the pixel centre with camera-z component 1 (see
    :mod:`dfm_render.cameras`), so ``depth`` must be z-depth, not distance along the ray.
    A pixel is kept when its depth is finite and positive, ``opacity >= min_opacity`` (if
    given), ``mask`` is true (if given) and ``depth <= max_depth`` (if given).

    Args:
        depth: ``(V, H, W)`` z-depth per pixel.
        rgb: ``(V, 3, H, W)`` colours in ``[0, 1]``.
        c2w: ``(V, 4, 4)`` OpenCV camera-to-world poses.
        intrinsics: ``(V, 3, 3)`` normalised intrinsics.
        opacity: ``(V, H, W)`` accumulated opacity ``Σ w_i`` of each pixel, or ``None``.
        min_opacity: pixels less opaque than this are background and dropped.
        mask: ``(V, H, W)`` bool, ``True`` = keep (e.g. an object mask), or ``None``.
        divide_by_opacity: set when ``depth`` is the volume renderer's expected depth
            ``Σ w_i t_i`` (not normalised by opacity): the depth of the surface is then
            ``depth / opacity``. Needs ``opacity``.
        max_depth: drop pixels deeper than this (e.g. the far plane), or ``None``.

    Returns:
        :class:`PointCloud` with the kept pixels in view-major, row-major order.
    """
    _check_views(depth, rgb, c2w, intrinsics)
    v, h, w = depth.shape
    keep = torch.isfinite(depth)
    if opacity is not None:
        if opacity.shape != depth.shape:
            raise ValueError(
                f"opacity must be (V, H, W) = {tuple(depth.shape)}, got {tuple(opacity.shape)}"
            )
        keep &= opacity >= min_opacity
        if divide_by_opacity:
            depth = depth / opacity.clamp_min(1e-8)
    elif divide_by_opacity:
        raise ValueError("divide_by_opacity=True needs `opacity`")
    keep &= depth > 0
    if mask is not None:
        if mask.shape != depth.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool (V, H, W) = {tuple(depth.shape)} tensor")
        keep &= mask
    if max_depth is not None:
        keep &= depth <= max_depth

    uv = pixel_grid(h, w, device=depth.device, dtype=c2w.dtype).expand(v, h * w, 2)  # (V, HW, 2)
    rays = rays_from_pixels(c2w, intrinsics.to(c2w.dtype), uv)  # (V, HW, 3) each
    z = depth.reshape(v, h * w, 1).to(c2w.dtype)
    points = rays.origins + z * rays.directions  # (V, HW, 3)
    colors = rgb.permute(0, 2, 3, 1).reshape(v, h * w, 3)  # (V, HW, 3), same pixel order
    flat = keep.reshape(v, h * w)
    return PointCloud(points=points[flat], colors=colors[flat].clamp(0, 1))


def voxel_downsample(cloud: PointCloud, voxel_size: float) -> PointCloud:
    """Replaces the points inside each cubic voxel by their mean (colours averaged alike).

    Voxels are the cells ``floor(x / voxel_size)`` of a grid anchored at the world origin.

    Args:
        cloud: the cloud, ``points (N, 3)``, ``colors (N, 3)``.
        voxel_size: edge length of a voxel (> 0, world units).

    Returns:
        :class:`PointCloud` with one point per occupied voxel, voxels in lexicographic order of
        their integer (x, y, z) cell.
    """
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    if len(cloud.points) == 0:
        return cloud
    cells = torch.floor(cloud.points.to(torch.float64) / voxel_size).long()  # (N, 3)
    _, inverse, counts = torch.unique(cells, dim=0, return_inverse=True, return_counts=True)
    m = len(counts)

    def mean(values: Tensor) -> Tensor:
        total = torch.zeros(m, values.shape[1], dtype=torch.float64, device=values.device)
        total.index_add_(0, inverse, values.to(torch.float64))
        return (total / counts[:, None]).to(values.dtype)

    return PointCloud(points=mean(cloud.points), colors=mean(cloud.colors))


# --------------------------------------------------------------------------- meshes


def _grid_axes(bounds: Tensor, resolution: tuple[int, int, int]) -> list[Tensor]:
    """Sample positions along x, y, z: ``resolution[a]`` points from ``bounds[0, a]`` to ``bounds[1, a]``."""
    return [
        torch.linspace(float(bounds[0, a]), float(bounds[1, a]), resolution[a], dtype=torch.float64)
        for a in range(3)
    ]


def _evaluate_in_chunks(
    fn: Callable[[Tensor], Tensor],
    points: Callable[[int, int], Tensor],
    total: int,
    chunk: int,
    out_shape: tuple[int, ...],
    name: str,
    progress: bool,
) -> Tensor:
    results = []
    starts = range(0, total, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"evaluating {name}", unit="chunk")
    for start in starts:
        stop = min(start + chunk, total)
        value = fn(points(start, stop))
        if tuple(value.shape) != (stop - start, *out_shape):
            raise ValueError(
                f"{name}(points (N, 3)) must return {('N', *out_shape)}, got {tuple(value.shape)}"
            )
        results.append(value.detach().to(torch.float32))
    return torch.cat(results)


@torch.no_grad()
def extract_mesh(
    density: Callable[[Tensor], Tensor],
    bounds: Tensor | tuple[tuple[float, float, float], tuple[float, float, float]],
    resolution: int | tuple[int, int, int],
    *,
    level: float,
    colour: Callable[[Tensor], Tensor] | None = None,
    chunk: int = 65536,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> Mesh:
    """Isosurface ``density(x) = level`` of a field by marching cubes, with vertex colours.

    The field is sampled at the ``Rx × Ry × Rz`` corners of a regular grid spanning ``bounds``
    (both ends included, voxel size ``(max − min) / (R − 1)`` per axis); marching cubes places
    vertices on voxel edges by linear interpolation of the samples, so for a smooth field they
    lie within a voxel of the true surface. The inside of the surface is where
    ``density > level``.

    Args:
        density: ``density(points (N, 3)) -> (N,)``, world points in, density out (called on
            chunks of at most ``chunk`` points, inside ``torch.no_grad()``).
        bounds: ``(2, 3)`` box ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]``.
        resolution: grid points per axis (``>= 2``), one int or ``(Rx, Ry, Rz)``.
        level: the isovalue (e.g. a density at which a ray would be mostly opaque per voxel).
        colour: ``colour(points (N, 3)) -> (N, 3)`` RGB in ``[0, 1]`` at the vertices, or ``None``.
        chunk: points per field evaluation (bounds memory).
        device: where the points are created and the fields evaluated (default CPU).
        dtype: floating dtype of the points passed to the callables.
        progress: show a progress bar over the chunks.

    Returns:
        :class:`Mesh` in world coordinates (float32); empty (``(0, 3)`` vertices and faces) when
        the field never crosses ``level`` inside the box.
    """
    box = torch.as_tensor(bounds, dtype=torch.float64)
    if box.shape != (2, 3) or not torch.isfinite(box).all() or not (box[1] > box[0]).all():
        raise ValueError(
            f"bounds must be a finite (2, 3) [min, max] box with max > min, got {bounds!r}"
        )
    res = (resolution,) * 3 if isinstance(resolution, int) else tuple(resolution)
    if len(res) != 3 or not all(isinstance(r, int) and r >= 2 for r in res):
        raise ValueError(f"resolution must be an int >= 2 or three of them, got {resolution!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    axes = [a.to(device) for a in _grid_axes(box, res)]
    rx, ry, rz = res
    total = rx * ry * rz

    def grid_points(start: int, stop: int) -> Tensor:
        # Flat index over the (z, y, x) volume, x fastest: marching cubes reads vol[z, y, x].
        flat = torch.arange(start, stop, device=device)
        ix, iy, iz = flat % rx, (flat // rx) % ry, flat // (rx * ry)
        return torch.stack([axes[0][ix], axes[1][iy], axes[2][iz]], dim=-1).to(dtype)

    values = _evaluate_in_chunks(density, grid_points, total, chunk, (), "density", progress)
    volume = values.view(rz, ry, rx)  # (D, H, W) = (z, y, x)

    from pytorch3d.ops.marching_cubes import marching_cubes

    verts_list, faces_list = marching_cubes(volume[None], float(level), return_local_coords=False)
    if len(faces_list[0]) == 0:
        empty = torch.zeros(0, 3)
        return Mesh(empty, empty.long(), None if colour is None else empty)
    index = verts_list[0].to(torch.float64)  # (V, 3) grid coordinates (x, y, z) in [0, R - 1]
    step = (box[1] - box[0]).to(device) / (
        torch.tensor(res, dtype=torch.float64, device=device) - 1
    )
    vertices = (box[0].to(device) + index * step).to(torch.float32)
    # PyTorch3D winds faces with normals towards increasing values; flip so they face outward.
    faces = faces_list[0][:, [0, 2, 1]].long()
    colors = None
    if colour is not None:
        colors = _evaluate_in_chunks(
            colour,
            lambda a, b: vertices[a:b].to(dtype),
            len(vertices),
            chunk,
            (3,),
            "colour",
            False,
        ).clamp(0, 1)
    return Mesh(vertices=vertices, faces=faces, colors=colors)


# --------------------------------------------------------------------------- writers


def _check_geometry(vertices: Tensor, colors: Tensor | None, faces: Tensor | None) -> None:
    if vertices.dim() != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (N, 3), got {tuple(vertices.shape)}")
    if colors is not None and colors.shape != vertices.shape:
        raise ValueError(
            f"colors must be (N, 3) = {tuple(vertices.shape)}, got {tuple(colors.shape)}"
        )
    if faces is not None:
        if faces.dim() != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
        if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise ValueError(f"faces index vertices outside [0, {len(vertices) - 1}]")


def _to_uint8(colors: Tensor) -> np.ndarray:
    return (colors.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def write_ply(
    path: str | os.PathLike[str],
    vertices: Tensor,
    *,
    colors: Tensor | None = None,
    faces: Tensor | None = None,
    binary: bool = True,
) -> Path:
    """Writes a PLY 1.0 file: vertices (float32), optional colours (uchar) and triangles.

    Args:
        path: output file (parent folders are created).
        vertices: ``(N, 3)`` positions.
        colors: ``(N, 3)`` RGB in ``[0, 1]`` (stored as ``round(255 c)``), or ``None``.
        faces: ``(F, 3)`` vertex indices (stored as ``list uchar int``), or ``None``.
        binary: ``binary_little_endian`` (default) or ``ascii``.

    Returns:
        The path written.
    """
    _check_geometry(vertices, colors, faces)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(vertices)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vert = np.empty(n, dtype=fields)
    xyz = vertices.detach().cpu().numpy().astype(np.float32)
    vert["x"], vert["y"], vert["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if colors is not None:
        rgb = _to_uint8(colors)
        vert["red"], vert["green"], vert["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]

    header = [
        "ply",
        f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
        "comment dfm-render",
    ]
    header += [f"element vertex {n}", "property float x", "property float y", "property float z"]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    tri = None if faces is None else faces.detach().cpu().numpy().astype(np.int32)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            f.write(vert.tobytes())
            if tri is not None:
                face = np.empty(len(tri), dtype=[("n", "u1"), ("i", "<i4", (3,))])
                face["n"], face["i"] = 3, tri
                f.write(face.tobytes())
        else:
            # repr-precision floats: the ASCII file round-trips the float32 values exactly.
            lines = [
                " ".join(
                    [*(repr(float(c)) for c in xyz[k])]
                    + ([str(int(c)) for c in rgb[k]] if colors is not None else [])
                )
                for k in range(n)
            ]
            if tri is not None:
                lines += [f"3 {a} {b} {c}" for a, b, c in tri]
            f.write(("\n".join(lines) + ("\n" if lines else "")).encode("ascii"))
    return path


def write_obj(
    path: str | os.PathLike[str],
    vertices: Tensor,
    *,
    colors: Tensor | None = None,
    faces: Tensor | None = None,
) -> Path:
    """Writes a Wavefront OBJ: ``v x y z [r g b]`` lines (colours as floats in [0, 1]), 1-based ``f``.

    Args:
        path: output file (parent folders are created).
        vertices: ``(N, 3)`` positions.
        colors: ``(N, 3)`` RGB in ``[0, 1]``, or ``None``.
        faces: ``(F, 3)`` vertex indices (0-based here; written 1-based), or ``None``.

    Returns:
        The path written.
    """
    _check_geometry(vertices, colors, faces)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = vertices.detach().cpu().to(torch.float64).numpy()
    if colors is not None:
        data = np.concatenate(
            [data, colors.detach().cpu().to(torch.float64).clamp(0, 1).numpy()], 1
        )
    with open(path, "w") as f:
        f.write("# dfm-render\n")
        # %.9g round-trips float32 positions exactly.
        np.savetxt(f, data, fmt="v" + " %.9g" * data.shape[1])
        if faces is not None:
            np.savetxt(f, faces.detach().cpu().numpy() + 1, fmt="f %d %d %d")
    return path


def _writer(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".ply":
        return write_ply
    if suffix == ".obj":
        return write_obj
    raise ValueError(f"{path}: unsupported extension {suffix!r}; expected '.ply' or '.obj'")


def save_point_cloud(path: str | os.PathLike[str], cloud: PointCloud) -> Path:
    """Writes a :class:`PointCloud` to ``.ply`` (binary) or ``.obj`` (vertices only)."""
    path = Path(path)
    return _writer(path)(path, cloud.points, colors=cloud.colors)


def save_mesh(path: str | os.PathLike[str], mesh: Mesh) -> Path:
    """Writes a :class:`Mesh` with its vertex colours to ``.ply`` (binary) or ``.obj``."""
    path = Path(path)
    return _writer(path)(path, mesh.vertices, colors=mesh.colors, faces=mesh.faces)
