"""Camera conventions: projection/unprojection round trips, rays, Plücker, resize/crop, errors."""
import numpy as np
import pytest
import torch

from flame_fitting.geometry.camera import (Camera, CameraError, intrinsics, invert_rigid, look_at, project_points,
                                  stack_cameras)


def make_cam(dist=None, w=640, h=480):
    w2c = look_at(eye=[0.3, -0.1, 1.0], target=[0, 0, 0])
    return Camera(K=intrinsics(800, 780, 330.5, 241.25), world_to_cam=w2c, width=w, height=h, dist=dist, name="c0")


def test_look_at_is_opencv():
    cam = Camera(K=intrinsics(100, 100, 50, 50), world_to_cam=look_at([0, 0, 2], [0, 0, 0]), width=100, height=100)
    # a point above the target (world +y) appears above the principal point (smaller image y)
    uv, z = cam.project(np.array([[0, 0.1, 0], [0.1, 0, 0]]))
    assert z[0] == pytest.approx(2.0)
    assert uv[0, 1] < 50 and uv[0, 0] == pytest.approx(50)
    # camera at +z looking towards -z with y up: world +x is image right (the head's frame seen from the front)
    assert uv[1, 0] > 50
    np.testing.assert_allclose(cam.center, [0, 0, 2], atol=1e-6)


@pytest.mark.parametrize("dist", [None, [0.1, -0.05, 0.001, -0.002, 0.01]])
def test_project_unproject_roundtrip(dist):
    cam = make_cam(dist)
    rng = np.random.default_rng(0)
    pts = rng.normal(scale=0.1, size=(200, 3)).astype(np.float32)
    uv, z = cam.project(pts)
    back = cam.unproject(uv, z)
    np.testing.assert_allclose(back, pts, atol=2e-5)


def test_pixel_centre_convention():
    cam = make_cam()
    o, d = cam.rays()
    # the ray through pixel (row 0, col 0) projects back to (0.5, 0.5)
    uv, _ = cam.project(o[0, 0][None] + 0.7 * d[0, 0][None])
    np.testing.assert_allclose(uv[0], [0.5, 0.5], atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-5)


def test_plucker_moment_is_invariant_along_ray():
    cam = make_cam()
    p = cam.plucker(stride=8)
    assert p.shape == (60, 80, 6)
    o, d = cam.rays(stride=8)
    # moment computed from another point on the same ray is identical
    m2 = np.cross(o + 0.37 * d, d)
    np.testing.assert_allclose(p[..., 3:], m2, atol=1e-5)
    np.testing.assert_allclose((p[..., :3] * p[..., 3:]).sum(-1), 0, atol=1e-5)


def test_resize_and_crop_keep_projection_consistent():
    cam = make_cam()
    pts = np.array([[0.01, 0.02, 0.0], [-0.05, 0.03, 0.02]], np.float32)
    uv, _ = cam.project(pts)
    half = cam.resized(320, 240)
    uv_half, _ = half.project(pts)
    np.testing.assert_allclose(uv_half, uv / 2, atol=1e-4)  # pixel-centre consistent: edges scale
    crop = cam.cropped(100, 50, 300, 200)
    uv_crop, _ = crop.project(pts)
    np.testing.assert_allclose(uv_crop, uv - [100, 50], atol=1e-4)
    assert (crop.width, crop.height) == (300, 200)


def test_torch_projection_matches_numpy():
    cams = [make_cam(), make_cam().with_pose(look_at([-0.5, 0.2, 0.8], [0, 0, 0]))]
    K, w2c = stack_cameras(cams)
    pts = np.random.default_rng(1).normal(scale=0.1, size=(2, 10, 3)).astype(np.float32)
    uv_t, z_t = project_points(torch.from_numpy(pts), torch.from_numpy(K), torch.from_numpy(w2c))
    for i, c in enumerate(cams):
        uv, z = c.project(pts[i])
        np.testing.assert_allclose(uv_t[i].numpy(), uv, atol=1e-3)
        np.testing.assert_allclose(z_t[i].numpy(), z, atol=1e-6)


def test_dict_roundtrip_and_inverse():
    cam = make_cam([0.1, 0.0, 0.0, 0.0])
    back = Camera.from_dict(cam.to_dict(), name="c0")
    np.testing.assert_array_equal(back.K, cam.K)
    np.testing.assert_array_equal(back.world_to_cam, cam.world_to_cam)
    np.testing.assert_allclose(invert_rigid(cam.world_to_cam) @ cam.world_to_cam, np.eye(4), atol=1e-6)


@pytest.mark.parametrize("bad,msg", [
    (dict(world_to_cam=np.diag([2.0, 1, 1, 1])), "not a rotation"),
    (dict(world_to_cam=np.diag([-1.0, 1, 1, 1])), "not a rotation"),
    (dict(K=np.zeros((3, 3))), "K must be"),
    (dict(K=np.eye(2)), "expected shape"),
    (dict(width=0), "positive"),
    (dict(K=np.full((3, 3), np.nan)), "NaN"),
])
def test_bad_cameras_are_refused(bad, msg):
    args = dict(K=intrinsics(100, 100, 50, 50), world_to_cam=np.eye(4), width=100, height=100, name="bad")
    args.update(bad)
    with pytest.raises(CameraError, match=msg):
        Camera(**args)
