"""Points on triangle meshes: barycentric evaluation, ray casting, closest surface points, robust centres.

Pure numpy, float64. A surface point is a (face index, barycentrics) pair; on meshes that share one
topology (FLAME's template and every posed or identity-deformed version of it) the same pair names the
same material point, which is how `flame_fitting.landmarks.calibration` moves detections between a posed
ground-truth mesh and the template.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def template_points(face: np.ndarray, bary: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(face (N,), bary (N,3)) on the mesh verts (V,3) / faces (F,3) -> points (N,3) float64."""
    return (np.asarray(bary, np.float64)[:, :, None] * np.asarray(verts, np.float64)[faces[face]]).sum(1)


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched dot product over the last axis: elementwise products and numpy's sum, in one fixed order (the head
    model's build must give the same bits in every run, docs/lineage.md)."""
    return (np.asarray(a) * np.asarray(b)).sum(-1)


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


def closest_point_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (N,3) of the closest point to p (N,3) on triangles (a, b, c) (N,3 each)."""
    ab, ac, ap = b - a, c - a, p - a
    d00, d01, d11 = (ab * ab).sum(1), (ab * ac).sum(1), (ac * ac).sum(1)
    d20, d21 = (ap * ab).sum(1), (ap * ac).sum(1)
    den = np.maximum(d00 * d11 - d01 * d01, 1e-30)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    bary = np.stack([1 - v - w, v, w], 1)
    inside = (bary >= 0).all(1)
    if inside.all():
        return bary
    best = bary.copy()
    best_d = np.where(inside, 0.0, np.inf)
    corners = (a, b, c)
    for i, j in ((0, 1), (1, 2), (2, 0)):  # clamp to each edge
        e = corners[j] - corners[i]
        t = np.clip(((p - corners[i]) * e).sum(1) / np.maximum((e * e).sum(1), 1e-30), 0, 1)
        q = corners[i] + t[:, None] * e
        d = ((p - q) ** 2).sum(1)
        better = ~inside & (d < best_d)
        cand = np.zeros_like(bary)
        cand[:, i], cand[:, j] = 1 - t, t
        best[better], best_d[better] = cand[better], d[better]
    return best


TIE_M = 1e-12  # distances closer than this (metres) are a tie (closest_points)


def closest_points(points: np.ndarray, verts: np.ndarray, faces: np.ndarray, k: int = 48):
    """Closest surface point of each query: (face_idx (P,) int64, bary (P,3), dist (P,)).

    Candidates are the k triangles with the nearest centroids (enough for dense meshes).
    """
    cent = verts[faces].mean(1)
    _, cand = cKDTree(cent).query(points, k=min(k, len(faces)))
    n, kk = cand.shape
    rep = np.repeat(points, kk, axis=0)
    f = cand.reshape(-1)
    tri = verts[faces[f]]
    bary = closest_point_on_triangles(rep, tri[:, 0], tri[:, 1], tri[:, 2])
    q = (bary[:, :, None] * tri).sum(1)
    d = np.sqrt(((q - rep) ** 2).sum(1)).reshape(n, kk)
    # of the candidates within TIE_M of the nearest, the lowest face index: a landmark on an edge or a vertex shared
    # by several triangles gets the same triangle whatever the last bits of its distances
    tie = d <= d.min(1, keepdims=True) + TIE_M
    best = np.where(tie, cand, np.iinfo(np.int64).max).argmin(1)
    rows = np.arange(n) * kk + best
    return f[rows].astype(np.int64), bary[rows], d[np.arange(n), best]
