"""Points on triangle meshes: barycentric evaluation, ray casting, closest surface points, robust centres.

Pure numpy, float64. A surface point is a (face index, barycentrics) pair; on meshes that share one
topology (FLAME's template and every posed or identity-deformed version of it) the same pair names the
same material point, which is how `flame_fitting.landmark_calibration` moves detections between a posed
ground-truth mesh and the template.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def template_points(face: np.ndarray, bary: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(face (N,), bary (N,3)) on the mesh verts (V,3) / faces (F,3) -> points (N,3) float64."""
    return np.einsum("nk,nkd->nd", np.asarray(bary, np.float64), np.asarray(verts, np.float64)[faces[face]])


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched dot product over the last axis."""
    return np.einsum("...d,...d->...", a, b)


def ray_triangles(o: np.ndarray, d: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Möller–Trumbore: rays o + t d (o (3,) or (..., 3), d (..., 3)) against the planes of triangles tri
    (..., 3 corners, 3) -> barycentrics (..., 3) of the hit (outside [0, 1] when the ray misses the triangle
    itself; NaN for rays parallel to the plane) and the ray parameter t (...,)."""
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    e1, e2, s = b - a, c - a, o - a
    p, q = np.cross(d, e2), np.cross(s, e1)
    with np.errstate(divide="ignore", invalid="ignore"):
        det = dot(e1, p)
        u, v, t = dot(s, p) / det, dot(d, q) / det, dot(e2, q) / det
    return np.stack([1 - u - v, u, v], -1), t


def geometric_median(x: np.ndarray, iters: int = 100, eps: float = 1e-9) -> np.ndarray:
    """Weiszfeld's geometric median of points x (N,3) (robust to a minority of outliers) -> (3,)."""
    x = np.asarray(x, np.float64)
    m = np.median(x, 0)
    for _ in range(iters):
        dist = np.maximum(np.linalg.norm(x - m, axis=1), eps)
        new = (x / dist[:, None]).sum(0) / (1 / dist).sum()
        if np.linalg.norm(new - m) < eps:
            return new
        m = new
    return m


def closest_point_bary(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentrics (..., 3) of the closest point to p (..., 3) on triangles tri (..., 3 corners, 3): the
    projection onto the plane when it is inside, else the closest point on the nearest edge."""
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    n = np.cross(b - a, c - a)
    nn = np.maximum(dot(n, n), 1e-30)
    v, w = dot(np.cross(p - a, c - a), n) / nn, dot(np.cross(b - a, p - a), n) / nn
    cands = [np.stack([1 - v - w, v, w], -1)]
    for i, j in ((0, 1), (1, 2), (2, 0)):
        e = tri[..., j, :] - tri[..., i, :]
        s = np.clip(dot(p - tri[..., i, :], e) / np.maximum(dot(e, e), 1e-30), 0, 1)
        bc = np.zeros(s.shape + (3,))
        bc[..., i], bc[..., j] = 1 - s, s
        cands.append(bc)
    cb = np.stack(cands, -2)                                                # (..., 4, 3)
    dist = np.linalg.norm(np.einsum("...ck,...kd->...cd", cb, tri) - p[..., None, :], axis=-1)
    dist[..., 0] = np.where((v >= 0) & (w >= 0) & (v + w <= 1), dist[..., 0], np.inf)
    return np.take_along_axis(cb, dist.argmin(-1)[..., None, None], -2)[..., 0, :]


def closest_points(points: np.ndarray, verts: np.ndarray, faces: np.ndarray, k: int = 32
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Closest surface points of the mesh verts (V,3) / faces (F,3) to points (P,3), searched among the k faces
    with the nearest centroids -> face (P,) int64, bary (P,3) float64."""
    v, p = np.asarray(verts, np.float64), np.asarray(points, np.float64).reshape(-1, 3)
    k = min(k, len(faces))
    cand = cKDTree(v[faces].mean(1)).query(p, k)[1].reshape(len(p), k)
    tri = v[faces[cand]]                                                    # (P, k, 3, 3)
    bc = closest_point_bary(np.repeat(p[:, None], k, 1), tri)
    best = np.linalg.norm(np.einsum("pkc,pkcd->pkd", bc, tri) - p[:, None], axis=-1).argmin(1)
    n = np.arange(len(p))
    return cand[n, best].astype(np.int64), bc[n, best]
