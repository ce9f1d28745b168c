"""Camera conversion against PyTorch3D's own projection and a hand-derived case."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch3d.renderer as pytorch3d_renderer
import torch

from dfm_data.cameras import (
    c2w_from_w2c,
    centre_square_crop,
    check_c2w,
    crop_intrinsics,
    look_at,
    normalise_intrinsics,
    opencv_to_pytorch3d,
    pytorch3d_to_opencv,
    relative_to_first,
    unnormalise_intrinsics,
)
from dfm_data.errors import BadCameraError


def _project_opencv(R_cv, t_cv, K, pts):
    cam = pts @ R_cv.T + t_cv
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:3]


def _random_camera(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    T = np.array([rng.normal() * 0.3, rng.normal() * 0.3, rng.uniform(4, 6)])
    focal = rng.uniform(1.0, 3.0, 2)
    pp = rng.uniform(-0.2, 0.2, 2)
    return R, T, focal, pp


def _points_in_front(rng, R, T, n=64):
    # Points in the PyTorch3D camera frame (z in [2, 8]) mapped back to the world.
    cam = np.stack([rng.uniform(-1, 1, n), rng.uniform(-1, 1, n), rng.uniform(2, 8, n)], -1)
    return (cam - T) @ R.T  # X_cam = X @ R + T  =>  X = (X_cam - T) @ R^T


@pytest.mark.parametrize("hw", [(48, 80), (90, 60), (64, 64)])
def test_isotropic_matches_pytorch3d_projection(hw):
    rng = np.random.default_rng(hw[0] * 1000 + hw[1])
    for _ in range(5):
        R, T, focal, pp = _random_camera(rng)
        pts = _points_in_front(rng, R, T)
        cams = pytorch3d_renderer.PerspectiveCameras(
            focal_length=torch.tensor(focal[None], dtype=torch.float32),
            principal_point=torch.tensor(pp[None], dtype=torch.float32),
            R=torch.tensor(R[None], dtype=torch.float32),
            T=torch.tensor(T[None], dtype=torch.float32),
            in_ndc=True,
            image_size=torch.tensor([hw]),
        )
        ref = (
            cams.transform_points_screen(
                torch.tensor(pts[None], dtype=torch.float32), image_size=torch.tensor([hw])
            )[0, :, :2]
            .double()
            .numpy()
        )
        R_cv, t_cv, K = pytorch3d_to_opencv(R, T, focal, pp, hw, "ndc_isotropic")
        ours = _project_opencv(R_cv, t_cv, K, pts)
        assert np.abs(ours - ref).max() < 1e-2  # sub-pixel (float32 reference)


def test_legacy_matches_pytorch3d_after_isotropic_rescale():
    # Legacy per-axis NDC equals isotropic NDC with focal and principal point scaled by wh / min(wh).
    hw = (60, 100)
    rng = np.random.default_rng(3)
    R, T, focal, pp = _random_camera(rng)
    wh = np.array([hw[1], hw[0]], dtype=np.float64)
    s = wh / wh.min()
    pts = _points_in_front(rng, R, T)
    cams = pytorch3d_renderer.PerspectiveCameras(
        focal_length=torch.tensor((focal * s)[None], dtype=torch.float32),
        principal_point=torch.tensor((pp * s)[None], dtype=torch.float32),
        R=torch.tensor(R[None], dtype=torch.float32),
        T=torch.tensor(T[None], dtype=torch.float32),
        in_ndc=True,
        image_size=torch.tensor([hw]),
    )
    ref = (
        cams.transform_points_screen(
            torch.tensor(pts[None], dtype=torch.float32), image_size=torch.tensor([hw])
        )[0, :, :2]
        .double()
        .numpy()
    )
    R_cv, t_cv, K = pytorch3d_to_opencv(R, T, focal, pp, hw, "ndc_norm_image_bounds")
    assert np.abs(_project_opencv(R_cv, t_cv, K, pts) - ref).max() < 1e-2


def test_matches_pytorch3d_opencv_conversion():
    from pytorch3d.utils import opencv_from_cameras_projection

    hw = (48, 80)
    rng = np.random.default_rng(7)
    R, T, focal, pp = _random_camera(rng)
    cams = pytorch3d_renderer.PerspectiveCameras(
        focal_length=torch.tensor(focal[None]),
        principal_point=torch.tensor(pp[None]),
        R=torch.tensor(R[None]),
        T=torch.tensor(T[None]),
        in_ndc=True,
    )
    R_ref, t_ref, K_ref = (
        x[0].double().numpy() for x in opencv_from_cameras_projection(cams, torch.tensor([hw]))
    )
    R_cv, t_cv, K = pytorch3d_to_opencv(R, T, focal, pp, hw)
    np.testing.assert_allclose(R_cv, R_ref, atol=1e-5)
    np.testing.assert_allclose(t_cv, t_ref, atol=1e-5)
    np.testing.assert_allclose(K, K_ref, atol=1e-4)


def test_hand_derived_case():
    # Identity rotation, camera 5 units from the origin, isotropic focal 2 on a 100x200 (HxW) image.
    R_cv, t_cv, K = pytorch3d_to_opencv(
        np.eye(3), np.array([0.0, 0.0, 5.0]), (2.0, 2.0), (0.0, 0.0), (100, 200)
    )
    np.testing.assert_allclose(K, [[100, 0, 100], [0, 100, 50], [0, 0, 1]])
    np.testing.assert_allclose(R_cv, np.diag([-1.0, -1.0, 1.0]))
    # PyTorch3D +X is image-left: world point (1, 0, 0) lands 1/5 * 100 px left of the centre.
    np.testing.assert_allclose(
        _project_opencv(R_cv, t_cv, K, np.array([[1.0, 0, 0]])), [[80.0, 50.0]]
    )
    c2w = c2w_from_w2c(R_cv, t_cv)
    np.testing.assert_allclose(c2w[:3, 3], [0, 0, -5])
    # Legacy: per-axis half sizes (100, 50).
    _, _, K_legacy = pytorch3d_to_opencv(
        np.eye(3), np.zeros(3), (2.0, 2.0), (0.5, 0.0), (100, 200), "ndc_norm_image_bounds"
    )
    np.testing.assert_allclose(K_legacy, [[200, 0, 50], [0, 100, 50], [0, 0, 1]])


@pytest.mark.parametrize("fmt", ["ndc_isotropic", "ndc_norm_image_bounds"])
def test_opencv_pytorch3d_round_trip(fmt):
    c2w = look_at(np.array([3.0, 2.0, 5.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    K = np.array([[70.0, 0, 33.0], [0, 72.0, 21.0], [0, 0, 1]])
    vp = opencv_to_pytorch3d(c2w, K, (40, 64), fmt)
    R_cv, t_cv, K2 = pytorch3d_to_opencv(
        np.array(vp["R"]),
        np.array(vp["T"]),
        vp["focal_length"],
        vp["principal_point"],
        (40, 64),
        fmt,
    )
    np.testing.assert_allclose(c2w_from_w2c(R_cv, t_cv), c2w, atol=1e-12)
    np.testing.assert_allclose(K2, K, atol=1e-12)


def test_crop_then_resize_keeps_projection():
    # A point's normalised coordinates in the crop equal its pixel position minus the crop offset.
    K_norm = normalise_intrinsics(np.array([[50.0, 0, 41.0], [0, 52.0, 23.0], [0, 0, 1]]), (48, 80))
    top, left, side = centre_square_crop(48, 80)
    assert (top, left, side) == (0, 16, 48)
    K_crop = crop_intrinsics(K_norm, (48, 80), (top, left, side, side))
    X = np.array([0.3, -0.2, 2.0])
    full = unnormalise_intrinsics(K_norm, (48, 80)) @ X
    crop = unnormalise_intrinsics(K_crop, (side, side)) @ X
    np.testing.assert_allclose(crop[:2] / crop[2], full[:2] / full[2] - [left, top])
    # Normalised K is resolution independent: at 16x16 the point sits at the same fraction.
    small = unnormalise_intrinsics(K_crop, (16, 16)) @ X
    np.testing.assert_allclose(small[:2] / small[2] / 16, crop[:2] / crop[2] / side)


def test_check_c2w_rejects_bad_poses():
    good = look_at(np.array([1.0, 1.0, 1.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    check_c2w(good, path="x", field="f")
    bad = good.copy()
    bad[0, 0] = np.nan
    with pytest.raises(BadCameraError, match="non-finite"):
        check_c2w(bad, path="x", field="f")
    mirror = good @ np.diag([-1.0, 1, 1, 1])
    with pytest.raises(BadCameraError, match=r"x \[f\]"):
        check_c2w(mirror, path="x", field="f")


def test_relative_to_first():
    c2w = torch.stack(
        [
            torch.from_numpy(look_at(np.array([i, 1.0, 3.0]), np.zeros(3), np.array([0, 1.0, 0])))
            for i in range(3)
        ]
    )
    rel = relative_to_first(c2w)
    torch.testing.assert_close(rel[0], torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(c2w[0] @ rel, c2w)
