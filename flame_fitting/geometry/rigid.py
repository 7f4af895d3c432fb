"""Closed-form rigid and similarity alignment of two point sets (Umeyama 1991; Kabsch without scale).

The sums over points are numpy's elementwise products and sums, in one fixed order, not BLAS matrix products,
whose last bits change with BLAS's thread count: a unit's recorded residual must be the same whichever process
(main or pool, 2 or 1 BLAS threads) ran it (docs/lineage.md)."""
from __future__ import annotations

import numpy as np


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = True
            ) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ≈ s R src + t. src, dst (N,3); weights (N,) >= 0 -> s, R (3,3), t (3,)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or w.shape != (len(src),):
        raise ValueError(f"umeyama: src and dst must both be (N, 3) with weights (N,), got {src.shape}, {dst.shape}, "
                         f"{w.shape}")
    if (w > 0).sum() < 3:
        raise ValueError(f"umeyama: need at least 3 weighted points, got {(w > 0).sum()}")
    w = w / w.sum()
    mu_s, mu_d = (w[:, None] * src).sum(0), (w[:, None] * dst).sum(0)
    a, b = src - mu_s, dst - mu_d
    cov = ((b * w[:, None])[:, :, None] * a[:, None, :]).sum(0)                   # Σ w (dst)(src)ᵀ
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    var_s = (w * (a ** 2).sum(1)).sum()
    s = float(np.trace(np.diag(S) @ D) / var_s) if with_scale else 1.0
    return s, R, mu_d - s * R @ mu_s


def rigid_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares rotation + translation with dst ≈ src @ R.T + t (Kabsch). src, dst (V, 3) finite
    -> R (3, 3) float64, t (3,) float64, max residual (units of the points)."""
    a, b = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("rigid_fit: points contain NaN/inf")
    _, R, t = umeyama(a, b, with_scale=False)
    moved = (a[:, None, :] * R[None]).sum(-1) + t                                # a @ R.T + t, fixed order
    return R, t, float(np.linalg.norm(moved - b, axis=1).max())
