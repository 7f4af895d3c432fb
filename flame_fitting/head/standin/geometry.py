"""Small mesh-geometry helpers for the stand-in head builder (pure numpy/scipy).

Ray casting against a triangle mesh, closest points (from flame_fitting.geometry.surface_points), normals,
signed volume, and smooth fills/extensions of scalar fields on a (rows, cols) grid whose
columns wrap around (the head's azimuth).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from flame_fitting.geometry.meshes import vertex_normals



def ray_mesh_far_hits(origin: np.ndarray, dirs: np.ndarray, verts: np.ndarray, tris: np.ndarray,
                      with_bary: bool = False):
    """Largest hit distance of rays `origin + t * dirs` (dirs (N,3) unit) with a mesh; NaN = no hit.

    origin (3,), verts (V,3), tris (T,3) -> t (N,) float64 (Möller–Trumbore, chunked);
    with_bary: also (triangle (N,) int64, -1 = none; barycentrics (N,3)) of the hits.
    """
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    e1, e2 = b - a, c - a
    s = origin[None] - a  # (T,3)
    out = np.full(len(dirs), np.nan)
    tri_id, bary = np.full(len(dirs), -1, np.int64), np.zeros((len(dirs), 3))
    for lo in range(0, len(dirs), 512):
        d = dirs[lo:lo + 512]  # (n,3)
        p = np.cross(d[:, None], e2[None])  # (n,T,3)
        det = np.einsum("ntk,tk->nt", p, e1)
        ok = np.abs(det) > 1e-14
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        u = np.einsum("ntk,tk->nt", p, s) * inv
        q = np.cross(s, e1)  # (T,3)
        v = np.einsum("nk,tk->nt", d, q) * inv
        t = np.einsum("tk,tk->t", e2, q)[None] * inv
        hit = ok & (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9) & (t > 0)
        tt = np.where(hit, t, -np.inf)
        best = tt.argmax(axis=1)
        rows = np.arange(len(d))
        found = np.isfinite(tt[rows, best])
        out[lo:lo + 512] = np.where(found, tt[rows, best], np.nan)
        tri_id[lo:lo + 512] = np.where(found, best, -1)
        bu, bv = u[rows, best], v[rows, best]
        bary[lo:lo + 512] = np.stack([1 - bu - bv, bu, bv], 1) * found[:, None]
    return (out, tri_id, bary) if with_bary else out


def phong_far_hits(origin: np.ndarray, dirs: np.ndarray, verts: np.ndarray, tris: np.ndarray,
                   alpha: float = 0.75) -> np.ndarray:
    """Like `ray_mesh_far_hits`, but on the Phong-tessellated (smooth) version of the mesh.

    Phong tessellation (Boubekeur & Alexa 2008) curves each flat triangle towards its vertices'
    tangent planes; it interpolates the vertices exactly. The flat hit is moved by the radial
    component of that displacement (exact at vertices, a first-order ray hit elsewhere).
    """
    t, tri_id, bary = ray_mesh_far_hits(origin, dirs, verts, tris, with_bary=True)
    ok = tri_id >= 0
    vn = vertex_normals(verts, tris)
    corner = verts[tris[tri_id[ok]]]  # (n,3,3)
    normal = vn[tris[tri_id[ok]]]
    q = np.einsum("nk,nkd->nd", bary[ok], corner)
    proj = q[:, None] - np.einsum("nkd,nkd->nk", q[:, None] - corner, normal)[..., None] * normal
    smooth = (1 - alpha) * q + alpha * np.einsum("nk,nkd->nd", bary[ok], proj)
    t = t.copy()
    t[ok] += np.einsum("nd,nd->n", smooth - q, dirs[ok])
    return t


def signed_volume(verts: np.ndarray, faces: np.ndarray, ref: np.ndarray | None = None) -> float:
    """Signed volume enclosed w.r.t. point `ref` (default: vertex mean); > 0 = outward normals."""
    ref = verts.mean(0) if ref is None else ref
    a, b, c = verts[faces[:, 0]] - ref, verts[faces[:, 1]] - ref, verts[faces[:, 2]] - ref
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def grid_laplacian(rows: int, cols: int) -> sp.csr_matrix:
    """5-point Laplacian (rows*cols square) on a grid, columns periodic, rows Neumann."""
    idx = np.arange(rows * cols).reshape(rows, cols)
    pairs = [(idx, np.roll(idx, -1, axis=1)), (idx[:-1], idx[1:])]  # right neighbour (wrapping), down
    r = np.concatenate([p.ravel() for p, q in pairs] + [q.ravel() for p, q in pairs])
    c = np.concatenate([q.ravel() for p, q in pairs] + [p.ravel() for p, q in pairs])
    a = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(rows * cols,) * 2)
    return (a - sp.diags(np.asarray(a.sum(1)).ravel())).tocsr()


def grid_fill(values: np.ndarray, known: np.ndarray, decay: float = 0.0, order: int = 2) -> np.ndarray:
    """Smoothly fill a (rows, cols) field where `known` is False (cols periodic).

    Minimises ||L^order u||^2 + decay * ||u||^2 over the unknown cells (order 2 = biharmonic,
    C1 across the boundary of the known set). `decay` > 0 pulls far cells towards 0.
    """
    rows, cols = values.shape
    lap = grid_laplacian(rows, cols)
    op = lap if order == 1 else lap.T @ lap
    a = (op + decay * sp.identity(rows * cols)).tocsr()
    k = known.ravel()
    u = ~k
    x = values.ravel().astype(np.float64).copy()
    rhs = -a[u][:, k] @ x[k]
    x[u] = spsolve(a[u][:, u].tocsc(), rhs)
    return x.reshape(rows, cols)



def mesh_laplacian(faces: np.ndarray, n_verts: int) -> sp.csr_matrix:
    """Uniform graph Laplacian (V,V) of a triangle mesh (A - D: rows sum to 0)."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    a = sp.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_verts, n_verts))
    a.data[:] = 1.0  # duplicate edges count once
    return (a - sp.diags(np.asarray(a.sum(1)).ravel())).tocsr()


def harmonic(values: np.ndarray, fixed: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Harmonic interpolation (V,) on the mesh: `values` kept where `fixed`, Laplace elsewhere."""
    lap = mesh_laplacian(faces, len(values))
    x = values.astype(np.float64).copy()
    free = ~fixed
    x[free] = spsolve(lap[free][:, free].tocsc(), -lap[free][:, fixed] @ x[fixed])
    return x

