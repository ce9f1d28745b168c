"""Export: analytic spheres through point-cloud fusion and marching cubes; files read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch3d.io import IO, load_obj

from dfm_render.export import (
    Mesh,
    PointCloud,
    extract_mesh,
    fuse_point_cloud,
    save_mesh,
    save_point_cloud,
    voxel_downsample,
    write_obj,
    write_ply,
)
from dfm_render.trajectories import orbit_poses

CENTRE = np.array([0.2, -0.1, 0.3])
RADIUS = 0.8


def sphere_views(height: int, width: int, views: int):
    """Exact z-depth of a sphere seen by orbit cameras, by ray-sphere intersection in numpy.

    Rays go through pixel centres (j + 0.5, i + 0.5) with the pixel-space K; the camera-space
    direction has z = 1, so the root t of |o + t d - c|^2 = r^2 is the z-depth.
    """
    c2w = orbit_poses(torch.tensor(CENTRE), 2.5, views, elevation=20.0, dtype=torch.float64)
    k_norm = torch.tensor([[0.8, 0.0, 0.5], [0.0, 0.9, 0.45], [0.0, 0.0, 1.0]], dtype=torch.float64)
    k_px = np.diag([width, height, 1.0]) @ k_norm.numpy()
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pix = np.stack([jj, ii, np.ones_like(jj)], axis=-1)  # (H, W, 3)
    d_cam = pix @ np.linalg.inv(k_px).T  # (H, W, 3), z = 1
    depth = np.full((views, height, width), np.inf)
    hit_points = np.zeros((views, height, width, 3))
    for v in range(views):
        pose = c2w[v].numpy()
        d = d_cam @ pose[:3, :3].T
        o = pose[:3, 3]
        oc = o - CENTRE
        a = (d * d).sum(-1)
        b = 2 * (d @ oc)
        c = oc @ oc - RADIUS**2
        disc = b * b - 4 * a * c
        hit = disc > 0
        t = (-b - np.sqrt(np.where(hit, disc, 0))) / (2 * a)
        depth[v][hit] = t[hit]
        hit_points[v] = o + t[..., None] * d
    return c2w, k_norm.expand(views, 3, 3), torch.tensor(depth), hit_points


def normal_colour(points: np.ndarray) -> np.ndarray:
    """Colour = (unit normal + 1) / 2 at sphere points: ties each colour to its own point."""
    return ((points - CENTRE) / RADIUS + 1) / 2


def test_point_cloud_from_exact_sphere_depth_lies_on_the_sphere() -> None:
    views, h, w = 3, 12, 16
    c2w, intrinsics, depth, hit_points = sphere_views(h, w, views)
    hit = torch.isfinite(depth)
    assert 0.1 < hit.double().mean() < 0.9  # the sphere and the background both appear
    rgb = torch.tensor(normal_colour(hit_points)).permute(0, 3, 1, 2).clamp(0, 1)  # (V, 3, H, W)
    opacity = hit.double()
    depth_rendered = torch.where(hit, depth, torch.zeros_like(depth))  # background depth 0
    cloud = fuse_point_cloud(depth_rendered, rgb, c2w, intrinsics, opacity=opacity)
    assert cloud.points.shape == (int(hit.sum()), 3)
    dist = (cloud.points - torch.tensor(CENTRE)).norm(dim=-1)
    torch.testing.assert_close(dist, torch.full_like(dist, RADIUS), atol=1e-9, rtol=0)
    # Each point carries its own pixel's colour.
    torch.testing.assert_close(cloud.colors, torch.tensor(normal_colour(cloud.points.numpy())))
    torch.testing.assert_close(
        cloud.points, torch.tensor(hit_points[hit.numpy()]), atol=1e-9, rtol=0
    )

    # float32 inputs, mask instead of opacity, and the renderer's un-normalised expected depth.
    half = 0.5 * opacity
    cloud32 = fuse_point_cloud(
        (depth_rendered * half).float(),
        rgb.float(),
        c2w.float(),
        intrinsics.float(),
        opacity=half.float(),
        min_opacity=0.25,
        divide_by_opacity=True,
    )
    dist32 = (cloud32.points.double() - torch.tensor(CENTRE)).norm(dim=-1)
    assert (dist32 - RADIUS).abs().max() < 1e-5
    masked = fuse_point_cloud(depth, rgb, c2w, intrinsics, mask=hit & (torch.arange(w) < w // 2))
    assert len(masked.points) == int((hit & (torch.arange(w) < w // 2)).sum())
    far = fuse_point_cloud(depth, rgb, c2w, intrinsics, max_depth=2.0)
    assert len(far.points) == int((depth <= 2.0).sum()) > 0


def test_point_cloud_rejects_mismatched_inputs() -> None:
    depth = torch.ones(2, 4, 5)
    with pytest.raises(ValueError, match=r"rgb must be \(2, 3, 4, 5\)"):
        fuse_point_cloud(
            depth,
            torch.ones(2, 3, 5, 4),
            torch.eye(4).expand(2, 4, 4),
            torch.eye(3).expand(2, 3, 3),
        )
    with pytest.raises(ValueError, match="needs `opacity`"):
        fuse_point_cloud(
            depth,
            torch.ones(2, 3, 4, 5),
            torch.eye(4).expand(2, 4, 4),
            torch.eye(3).expand(2, 3, 3),
            divide_by_opacity=True,
        )


def sphere_density(points: torch.Tensor) -> torch.Tensor:
    """A smooth field, 10 at the surface, larger inside."""
    return 10.0 + 20.0 * (RADIUS - (points - torch.tensor(CENTRE, dtype=points.dtype)).norm(dim=-1))


def sphere_colour(points: torch.Tensor) -> torch.Tensor:
    return torch.tensor(normal_colour(points.double().numpy())).clamp(0, 1)


BOUNDS = ((-1.0, -1.2, -0.7), (1.3, 1.0, 1.2))  # off-centre box, different extent per axis
RES = (24, 20, 17)  # different resolution per axis: catches any axis-order mix-up


def test_mesh_of_a_sphere_has_vertices_on_the_sphere() -> None:
    mesh = extract_mesh(sphere_density, BOUNDS, RES, level=10.0, colour=sphere_colour, chunk=1000)
    assert len(mesh.vertices) > 100 and mesh.faces.shape[1] == 3
    voxel = (torch.tensor(BOUNDS[1]) - torch.tensor(BOUNDS[0])) / (torch.tensor(RES) - 1)
    dist = (mesh.vertices.double() - torch.tensor(CENTRE)).norm(dim=-1)
    # Within a voxel (the finest axis); for this smooth field the error is far smaller.
    assert (dist - RADIUS).abs().max() < voxel.min() * 0.25
    # The mesh covers the whole sphere: vertices reach its extremes along each axis.
    for a in range(3):
        assert mesh.vertices[:, a].max() > CENTRE[a] + RADIUS - voxel[a]
        assert mesh.vertices[:, a].min() < CENTRE[a] - RADIUS + voxel[a]
    # Outward faces: normals point away from the centre.
    a, b, c = (mesh.vertices[mesh.faces[:, k]].double() for k in range(3))
    normals = torch.linalg.cross(b - a, c - a)
    assert ((normals * ((a + b + c) / 3 - torch.tensor(CENTRE))).sum(-1) > 0).all()
    torch.testing.assert_close(mesh.colors, sphere_colour(mesh.vertices).float())
    # Chunking does not change the result.
    whole = extract_mesh(sphere_density, BOUNDS, RES, level=10.0, chunk=10**6)
    assert torch.equal(whole.vertices, mesh.vertices) and torch.equal(whole.faces, mesh.faces)


def test_mesh_edge_cases() -> None:
    empty = extract_mesh(sphere_density, BOUNDS, 5, level=1e6, colour=sphere_colour)
    assert empty.vertices.shape == (0, 3) and empty.faces.shape == (0, 3)
    with pytest.raises(ValueError, match="bounds"):
        extract_mesh(sphere_density, ((0, 0, 0), (1, -1, 1)), 5, level=0.0)
    with pytest.raises(ValueError, match="resolution"):
        extract_mesh(sphere_density, BOUNDS, 1, level=0.0)
    with pytest.raises(ValueError, match=r"density\(points \(N, 3\)\) must return"):
        extract_mesh(lambda p: p, BOUNDS, 4, level=0.0)


def read_ascii_ply(path: Path) -> tuple[list[str], list[list[float]]]:
    lines = path.read_text().splitlines()
    end = lines.index("end_header")
    return lines[: end + 1], [[float(x) for x in line.split()] for line in lines[end + 1 :]]


def small_mesh() -> Mesh:
    g = torch.Generator().manual_seed(0)
    vertices = torch.randn(5, 3, generator=g)
    colors = torch.tensor(
        [[0, 0, 0], [1, 0.5, 0.25], [0.2, 0.4, 0.6], [1, 1, 1], [0.01, 0.99, 0.5]]
    )
    return Mesh(vertices, torch.tensor([[0, 1, 2], [0, 2, 3], [1, 3, 4]]), colors)


@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip_through_pytorch3d(tmp_path: Path, binary: bool) -> None:
    mesh = small_mesh()
    path = write_ply(
        tmp_path / "m.ply", mesh.vertices, colors=mesh.colors, faces=mesh.faces, binary=binary
    )
    loaded = IO().load_mesh(path, include_textures=True)
    assert torch.equal(loaded.verts_packed(), mesh.vertices)
    assert torch.equal(loaded.faces_packed(), mesh.faces)
    colors = loaded.textures.verts_features_packed()
    torch.testing.assert_close(colors, (mesh.colors * 255).round() / 255, atol=1e-6, rtol=0)
    cloud = IO().load_pointcloud(write_ply(tmp_path / "c.ply", mesh.vertices, colors=mesh.colors))
    assert torch.equal(cloud.points_packed(), mesh.vertices)
    torch.testing.assert_close(
        cloud.features_packed(), (mesh.colors * 255).round() / 255, atol=1e-6, rtol=0
    )


def test_ascii_ply_parsed_by_hand(tmp_path: Path) -> None:
    mesh = small_mesh()
    header, rows = read_ascii_ply(
        write_ply(
            tmp_path / "m.ply", mesh.vertices, colors=mesh.colors, faces=mesh.faces, binary=False
        )
    )
    assert (
        "element vertex 5" in header
        and "property uchar red" in header
        and "element face 3" in header
    )
    verts = torch.tensor([r[:3] for r in rows[:5]], dtype=torch.float32)
    assert torch.equal(verts, mesh.vertices)
    assert [r[3:] for r in rows[:5]] == (mesh.colors * 255).round().tolist()
    assert [r for r in rows[5:]] == [[3.0, *f] for f in mesh.faces.tolist()]


def test_obj_round_trip(tmp_path: Path) -> None:
    mesh = small_mesh()
    path = save_mesh(tmp_path / "sub" / "m.obj", mesh)
    lines = path.read_text().splitlines()
    v = torch.tensor(
        [[float(x) for x in line.split()[1:]] for line in lines if line.startswith("v ")]
    )
    f = torch.tensor(
        [[int(x) for x in line.split()[1:]] for line in lines if line.startswith("f ")]
    )
    assert torch.equal(v[:, :3].float(), mesh.vertices)  # %.9g round-trips float32
    torch.testing.assert_close(v[:, 3:], mesh.colors, atol=1e-7, rtol=0)
    assert torch.equal(f - 1, mesh.faces)
    # pytorch3d reads the geometry of the same file.
    verts, faces, _ = load_obj(path, load_textures=False)
    torch.testing.assert_close(verts, mesh.vertices, atol=1e-7, rtol=0)
    assert torch.equal(faces.verts_idx, mesh.faces)


def test_save_dispatch_and_validation(tmp_path: Path) -> None:
    mesh = small_mesh()
    cloud = PointCloud(mesh.vertices, mesh.colors)
    assert IO().load_pointcloud(
        save_point_cloud(tmp_path / "p.ply", cloud)
    ).points_packed().shape == (5, 3)
    with pytest.raises(ValueError, match=r"unsupported extension '\.xyz'"):
        save_point_cloud(tmp_path / "p.xyz", cloud)
    with pytest.raises(ValueError, match="faces index vertices"):
        write_obj(tmp_path / "bad.obj", mesh.vertices, faces=mesh.faces + 3)
    with pytest.raises(ValueError, match=r"colors must be \(N, 3\)"):
        write_ply(tmp_path / "bad.ply", mesh.vertices, colors=mesh.colors[:2])


def test_voxel_downsample_matches_a_dictionary_loop() -> None:
    g = torch.Generator().manual_seed(3)
    points = torch.rand(1000, 3, generator=g, dtype=torch.float64) * 2 - 1
    colors = torch.rand(1000, 3, generator=g, dtype=torch.float64)
    out = voxel_downsample(PointCloud(points, colors), 0.5)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(points.tolist()):
        groups.setdefault(tuple(int(np.floor(c / 0.5)) for c in p), []).append(i)
    keys = sorted(groups)
    assert len(out.points) == len(keys) == 64  # [-1, 1)^3 in cells of 0.5
    for k, key in enumerate(keys):
        members = torch.tensor(groups[key])
        torch.testing.assert_close(out.points[k], points[members].mean(0))
        torch.testing.assert_close(out.colors[k], colors[members].mean(0))
    with pytest.raises(ValueError, match="voxel_size"):
        voxel_downsample(PointCloud(points, colors), 0.0)
