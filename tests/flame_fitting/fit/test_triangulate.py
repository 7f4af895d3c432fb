"""Initialisation maths: robust triangulation, Umeyama similarity, rotations."""
import numpy as np
import pytest
import torch

from flame_fitting.fit.init import normalized
from flame_fitting.fit.so3 import angle_deg, left_jacobian, log_np, rodrigues, rodrigues_np
from flame_fitting.fit.synthetic import arc_cameras
from flame_fitting.fit.triangulate import triangulate_robust
from flame_fitting.geometry.rigid import umeyama


def _setup(n_points=60, seed=0):
    rng = np.random.default_rng(seed)
    cams = list(arc_cameras(10, np.zeros(3), 1.0, yaw_deg=(-70, 70), pitch_deg=(-10, 10)).values())
    X = rng.uniform(-0.08, 0.08, (n_points, 3))
    uv = np.stack([c.project(X)[0] for c in cams]).astype(np.float64)
    K = np.stack([c.K for c in cams]).astype(np.float64)
    R = np.stack([c.R for c in cams]).astype(np.float64)
    t = np.stack([c.t for c in cams]).astype(np.float64)
    return rng, X, uv, K, R, t


def _tri(uv, K, R, t, valid, **kw):
    return triangulate_robust(R, t, 0.5 * (K[:, 0, 0] + K[:, 1, 1]), normalized(K, uv), valid, **kw)


def test_exact_projections_are_recovered():
    _, X, uv, K, R, t = _setup()
    res = _tri(uv, K, R, t, np.ones(uv.shape[:2], bool))
    assert res.ok.all() and res.inliers.all()
    assert np.abs(res.points - X).max() < 1e-5  # float32 projections
    assert np.nanmax(res.error_px) < 0.01


def test_outlier_views_and_missing_points():
    rng, X, uv, K, R, t = _setup(seed=1)
    valid = np.ones(uv.shape[:2], bool)
    bad = rng.random(uv.shape[:2]) < 0.3                       # 30% of (view, point) observations are garbage
    uv[bad] += rng.uniform(40, 150, (bad.sum(), 2)) * rng.choice([-1, 1], (bad.sum(), 2))
    valid[:, :5] = False                                       # points seen nowhere
    valid[1:, 5:8] = False                                     # points seen once
    uv += rng.normal(0, 0.5, uv.shape)
    res = _tri(uv, K, R, t, valid, threshold_px=8.0, max_pairs=45)
    assert not res.ok[:8].any() and np.isnan(res.points[:8]).all()
    assert res.ok[8:].all()
    assert np.abs(res.points[8:] - X[8:]).max() < 2e-3
    assert not (res.inliers & bad).any()                       # garbage never counts as inlier


@pytest.mark.parametrize("weighted", [False, True])
def test_umeyama_recovers_a_similarity(weighted):
    rng = np.random.default_rng(2)
    src = rng.normal(size=(40, 3))
    R = rodrigues_np(np.array([0.3, -1.1, 0.7]))
    dst = 1.7 * src @ R.T + np.array([0.2, -3.0, 1.0])
    w = None
    if weighted:
        w = rng.uniform(0.1, 1.0, 40)
        w[:5] = 0.0
        dst[:5] += 10.0                                        # zero weight: ignored
    s, R_, t_ = umeyama(src, dst, w)
    assert s == pytest.approx(1.7, abs=1e-9)
    assert angle_deg(R_ @ R.T) < 1e-7
    np.testing.assert_allclose(t_, [0.2, -3.0, 1.0], atol=1e-9)
    s1, R1, _ = umeyama(src, dst if not weighted else 1.7 * src @ R.T, with_scale=False)
    assert s1 == 1.0 and angle_deg(R1 @ R.T) < 1e-7
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(src[:2], dst[:2])


def test_rotations():
    rng = np.random.default_rng(3)
    for w in [np.zeros(3), np.array([1e-9, 0, 0]), rng.normal(size=3), np.array([0, 0, 3.1])]:
        R = rodrigues_np(w)
        assert np.abs(R @ R.T - np.eye(3)).max() < 1e-12
        np.testing.assert_allclose(rodrigues_np(log_np(R)), R, atol=1e-9)
    # left Jacobian: Exp(w + δ) ≈ Exp(J_l δ) Exp(w)
    w = torch.tensor([0.4, -0.2, 0.9], dtype=torch.float64)
    d = 1e-6 * torch.tensor([0.3, 0.5, -0.7], dtype=torch.float64)
    lhs = rodrigues(w + d)
    rhs = rodrigues(left_jacobian(w) @ d) @ rodrigues(w)
    assert (lhs - rhs).abs().max() < 1e-11
    # derivative of Rodrigues is finite at exactly zero
    z = torch.zeros(3, dtype=torch.float64)
    J = torch.func.jacfwd(rodrigues)(z)
    assert torch.isfinite(J).all()
