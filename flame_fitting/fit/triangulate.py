"""Robust multi-view triangulation of landmarks: the initialiser (with `geometry.rigid.umeyama`).

`triangulate_robust` works on every landmark at once (numpy, vectorised): for each of up to
`max_pairs` view pairs it triangulates with the linear (DLT, inhomogeneous) method, scores the
point in all views MSAC-style (Σ min(err², thr²)), keeps the best pair's inliers, re-triangulates
on them and polishes with a few Gauss-Newton steps on the reprojection error, then recomputes
the inliers. Errors are measured in pixels as focal × normalised-image distance (pinhole;
observations are undistorted upstream).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass
class Triangulation:
    points: np.ndarray   # (N, 3) world, NaN where not ok
    ok: np.ndarray       # (N,) bool: at least 2 inlier views with positive depth
    inliers: np.ndarray  # (V, N) bool
    error_px: np.ndarray  # (N,) RMS reprojection error over the inliers (NaN where not ok)


def _view_normal_equations(R: np.ndarray, t: np.ndarray, xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-view DLT normal equations. R (V,3,3), t (V,3), xn (V,N,2) -> AᵀA (V,N,3,3), Aᵀb (V,N,3).

    Each view gives rows (x r3 - r1)·X = t1 - x t3 and (y r3 - r2)·X = t2 - y t3 (inhomogeneous DLT)."""
    A = xn[..., :, None] * R[:, None, 2:3, :] - R[:, None, :2, :]                # (V, N, 2, 3)
    b = t[:, None, :2] - xn * t[:, None, 2:3]                                     # (V, N, 2)
    return np.matmul(A.transpose(0, 1, 3, 2), A), (A * b[..., None]).sum(2)


def _solve3(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched 3×3 solves by the adjugate: A (..., 3, 3), b (..., 3) -> (..., 3); NaN where (near-)singular."""
    c0 = np.cross(A[..., 1, :], A[..., 2, :])
    c1 = np.cross(A[..., 2, :], A[..., 0, :])
    c2 = np.cross(A[..., 0, :], A[..., 1, :])
    det = (A[..., 0, :] * c0).sum(-1)
    scale = np.abs(A).max((-1, -2)) ** 3
    with np.errstate(divide="ignore", invalid="ignore"):
        # A⁻¹ = adj(A) / det with adj(A) = [c0 | c1 | c2] (columns)
        x = (c0 * b[..., :1] + c1 * b[..., 1:2] + c2 * b[..., 2:3]) / det[..., None]
    return np.where((np.abs(det) > 1e-15 * scale)[..., None], x, np.nan)


def _errors_px(R, t, f, xn, valid, X):
    """Reprojection errors (V, ..., N) in pixels of points X (..., N, 3) (inf where invalid, behind the camera
    or non-finite); xn (V, N, 2), valid (V, N)."""
    lead = X.shape[:-1]
    pc = np.matmul(X.reshape(1, -1, 3), R.transpose(0, 2, 1)) + t[:, None]       # (V, M, 3)
    pc = pc.reshape((len(R),) + lead + (3,))
    z = pc[..., 2]
    exp = (slice(None),) + (None,) * (len(lead) - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = pc[..., :2] / z[..., None] - xn[exp]
        err = f.reshape((-1,) + (1,) * len(lead)) * np.sqrt(d[..., 0] ** 2 + d[..., 1] ** 2)
    return np.where(valid[exp] & (z > 1e-6) & np.isfinite(err), err, np.inf)


def _gauss_newton(R, t, xn, w, X, iters: int) -> np.ndarray:
    """Polish points X (N,3) on the weighted normalised reprojection error; w (V, N)."""
    for _ in range(iters):
        pc = np.matmul(X[None], R.transpose(0, 2, 1)) + t[:, None]                # (V, N, 3)
        z = pc[..., 2]
        zs = np.where(np.abs(z) > 1e-9, z, 1e-9)
        xy = pc[..., :2] / zs[..., None]
        r = xy - xn                                                               # (V, N, 2)
        # d(xy)/dX = (R[:2] - xy R[2]) / z   (V, N, 2, 3)
        Jx = (R[:, None, :2, :] - xy[..., None] * R[:, None, 2:3, :]) / zs[..., None, None]
        ww = np.where(z > 1e-6, w, 0.0)[..., None, None]
        H = (ww * np.matmul(Jx.transpose(0, 1, 3, 2), Jx)).sum(0) + 1e-12 * np.eye(3)
        g = (ww[..., 0] * (Jx * r[..., None]).sum(2)).sum(0)
        step = _solve3(H, -g)
        X = np.where(np.isfinite(step), X + step, X)
    return X


def triangulate_robust(R: np.ndarray, t: np.ndarray, f: np.ndarray, xn: np.ndarray, valid: np.ndarray,
                       threshold_px: float = 12.0, max_pairs: int = 12, seed: int = 0, gn_iters: int = 2
                       ) -> Triangulation:
    """RANSAC over view pairs + DLT + Gauss-Newton, for N points seen by V calibrated views.

    R (V,3,3), t (V,3) world->camera; f (V,) focal in pixels (error scale); xn (V,N,2) normalised
    undistorted image coordinates; valid (V,N) bool. All pairs of views with detections are tried when
    there are at most `max_pairs`, else a random subset (seeded).
    """
    V, N = valid.shape
    xn = np.where(valid[..., None], xn, 0.0)
    AtA, Atb = _view_normal_equations(R, t, xn)
    seen = np.flatnonzero(valid.sum(1) >= 2)                                     # views with detections
    pairs = np.array(list(itertools.combinations(seen, 2)), np.int64).reshape(-1, 2)
    if len(pairs) > max_pairs:
        pairs = pairs[np.sort(np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False))]
    if not len(pairs):
        return Triangulation(points=np.full((N, 3), np.nan), ok=np.zeros(N, bool), inliers=np.zeros((V, N), bool),
                             error_px=np.full(N, np.nan))
    i, j = pairs[:, 0], pairs[:, 1]
    both = valid[i] & valid[j]                                                    # (P, N)
    X = _solve3(AtA[i] + AtA[j], Atb[i] + Atb[j])                                 # (P, N, 3)
    X = np.where(both[..., None], X, np.nan)
    err = _errors_px(R, t, f, xn, valid, np.nan_to_num(X))                        # (V, P, N)
    ar, cols = np.arange(len(pairs))[:, None], np.arange(N)[None]
    pair_ok = both & np.isfinite(err[i[:, None], ar, cols]) & np.isfinite(err[j[:, None], ar, cols])
    thr2 = threshold_px ** 2
    score = np.where(np.isfinite(err), np.minimum(err ** 2, thr2), 0.0).sum(0)   # MSAC, (P, N)
    score = np.where(pair_ok, score, np.inf)
    best = np.argmin(score, 0)
    found = np.isfinite(score[best, np.arange(N)])
    best_X = np.where(found[:, None], X[best, np.arange(N)], 0.0)
    inl = (err[:, best, np.arange(N)] < threshold_px) & found
    for _ in range(2):  # re-fit on the inliers, then re-select them
        w = inl.astype(np.float64)
        Xr = _gauss_newton(R, t, xn, w, _solve3((w[..., None, None] * AtA).sum(0), (w[..., None] * Atb).sum(0)),
                           gn_iters)
        Xr = np.where(np.isfinite(Xr), Xr, best_X)
        err_r = _errors_px(R, t, f, xn, valid, Xr)
        inl = (err_r < threshold_px) & found
    ok = found & (inl.sum(0) >= 2) & np.all(np.isfinite(Xr), 1)
    rms = np.sqrt(np.where(inl, err_r ** 2, 0).sum(0) / np.maximum(inl.sum(0), 1))
    return Triangulation(points=np.where(ok[:, None], Xr, np.nan), ok=ok, inliers=inl & ok,
                         error_px=np.where(ok, rms, np.nan))
