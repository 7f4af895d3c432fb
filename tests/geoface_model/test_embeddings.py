"""Plücker rays (SEVA normalisation), timestep and 2D sin-cos embeddings."""
import numpy as np
import pytest
import torch

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from geoface_model.embeddings import normalized_cameras, plucker_rays, sincos_2d, timestep_embedding


def _rig(rng, n=4, S=32):
    K = intrinsics(30.0, 32.0, S / 2 + 0.7, S / 2 - 1.1)
    w2c = []
    for _ in range(n):
        az, el = rng.uniform(-1.5, 1.5), rng.uniform(-0.5, 0.5)
        eye = rng.uniform(2.5, 3.5) * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
        w2c.append(look_at(eye, rng.normal(size=3) * 0.1))
    return np.repeat(K[None], n, 0), np.stack(w2c)


def _rot(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_parity_with_camera_plucker_in_reference_frame():
    """With the world = reference camera frame and camera_scale = ‖centroid‖ (so s = 1), the rays are
    exactly flame_fitting's Camera.plucker(stride) of each camera."""
    rng = np.random.default_rng(0)
    K, w2c = _rig(rng)
    w2c = w2c @ np.linalg.inv(w2c[0])  # reference camera = identity
    centroid = np.mean([Camera(K[i], w2c[i], 32, 32).center for i in range(4)], 0)
    out = plucker_rays(torch.tensor(K)[None], torch.tensor(w2c, dtype=torch.float32)[None], (32, 32), (8, 8),
                       camera_scale=float(np.linalg.norm(centroid)))
    for i in range(4):
        ref = Camera(K[i], w2c[i], 32, 32).plucker(stride=4)  # (8,8,6)
        np.testing.assert_allclose(out[0, i].permute(1, 2, 0).numpy(), ref, atol=2e-5)


def test_invariant_to_world_similarity_and_reference_has_zero_moment():
    rng = np.random.default_rng(1)
    K, w2c = _rig(rng, n=5)
    Q, t, s = _rot(rng), rng.normal(size=3), 3.7  # world' = s Q p + t
    w2c2 = []
    for m in w2c:
        R, c = m[:3, :3].astype(np.float64), -m[:3, :3].T.astype(np.float64) @ m[:3, 3]
        R2, c2 = R @ Q.T, s * Q @ c + t
        w2c2.append(np.block([[R2, (-R2 @ c2)[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]))
    a = plucker_rays(torch.tensor(K)[None], torch.tensor(w2c)[None], (32, 32), (4, 4))
    b = plucker_rays(torch.tensor(K)[None], torch.tensor(np.stack(w2c2), dtype=torch.float32)[None], (32, 32), (4, 4))
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)
    assert a[0, 0, 3:].abs().max() < 1e-6  # reference camera sits at the origin
    rel = normalized_cameras(torch.tensor(w2c)[None])
    np.testing.assert_allclose(rel[0, 0].numpy(), np.eye(4), atol=1e-5)
    assert abs(rel[0, :, :3, 3].mean(0).norm().item() - 2.0) < 1e-4  # SEVA camera_scale


def test_single_view_is_not_rescaled():
    rng = np.random.default_rng(2)
    K, w2c = _rig(rng, n=1)
    out = plucker_rays(torch.tensor(K)[None], torch.tensor(w2c)[None], (32, 32), (2, 2))
    assert torch.isfinite(out).all() and out[0, 0, 3:].abs().max() < 1e-6
    np.testing.assert_allclose(out[0, 0, :3].norm(dim=0).numpy(), 1.0, atol=1e-6)


def test_timestep_and_sincos_embeddings():
    e = timestep_embedding(torch.tensor([0.0, 10.0, 999.0]), 64)
    assert e.shape == (3, 64)
    np.testing.assert_allclose(e[0, :32].numpy(), 1.0)  # cos(0)
    np.testing.assert_allclose(e[0, 32:].numpy(), 0.0)  # sin(0)
    p = sincos_2d(32, 3, 4)
    assert p.shape == (12, 32)
    assert torch.cdist(p, p).add(torch.eye(12) * 1e3).min() > 0.1  # every grid cell distinct
    np.testing.assert_allclose(p[0].numpy(), np.r_[np.zeros(8), np.ones(8), np.zeros(8), np.ones(8)], atol=1e-7)
    np.testing.assert_allclose(p[1, :16].numpy(), p[0, :16].numpy())  # same row -> same row half
    with pytest.raises(ValueError):
        sincos_2d(30, 2, 2)
