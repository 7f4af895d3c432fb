"""The stand-in head's (rows x cols) direction grid, its triangulation and its UV unwrap.

Vertices are rays from the head centre c: row i has polar angle theta (0 = straight up), column
j azimuth phi (0 = +z, the face; +pi/2 = +x, the subject's left; the seam is at phi = ±pi, the
back of the head). Rows and columns are spaced by arc length on the head with a density boost
over the face, so the face gets many vertices and a large share of the UV square. A single pole
vertex closes the top; the last row is the open neck boundary.
"""
from __future__ import annotations

import numpy as np


def direction(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit ray directions (..., 3) for polar angle theta (from +y) and azimuth phi (from +z to +x)."""
    theta, phi = np.broadcast_arrays(theta, phi)
    st = np.sin(theta)
    return np.stack([st * np.sin(phi), np.cos(theta), st * np.cos(phi)], axis=-1)


def angles(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `direction` for vectors v (..., 3) -> (theta, phi)."""
    r = np.linalg.norm(v, axis=-1)
    return np.arccos(np.clip(v[..., 1] / r, -1, 1)), np.arctan2(v[..., 0], v[..., 2])


def smooth_window(x: np.ndarray, lo: float, hi: float, soft: float) -> np.ndarray:
    """1 inside [lo, hi], falling smoothly (cosine) to 0 over `soft` outside."""
    a = np.clip((x - (lo - soft)) / soft, 0, 1)
    b = np.clip(((hi + soft) - x) / soft, 0, 1)
    return (0.5 - 0.5 * np.cos(np.pi * a)) * (0.5 - 0.5 * np.cos(np.pi * b))


def density_warp(x: np.ndarray, ds_dx: np.ndarray, boost: np.ndarray, n: int) -> np.ndarray:
    """n+1 samples of x (from x[0] to x[-1]) equally spaced in the boosted arc length ∫ boost ds."""
    w = np.abs(ds_dx) * boost
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(x))])
    return np.interp(np.linspace(0.0, cum[-1], n + 1), cum, x)


def grid_faces(rows: int, cols: int, verts: np.ndarray) -> np.ndarray:
    """Triangles (F,3) of the grid (vertex id = 1 + i*cols + j; vertex 0 = top pole).

    Each quad is split along its shorter diagonal (mirror-symmetric for a symmetric grid);
    orientation: counter-clockwise seen from outside for a head grid (theta down, phi to +x).
    """
    vid = 1 + np.arange(rows * cols).reshape(rows, cols)
    fan = np.stack([np.zeros(cols, np.int64), vid[0], np.roll(vid[0], -1)], 1)
    a, b = vid[:-1], np.roll(vid[:-1], -1, axis=1)  # (i, j), (i, j+1)
    c, d = vid[1:], np.roll(vid[1:], -1, axis=1)  # (i+1, j), (i+1, j+1)
    a, b, c, d = (x.ravel() for x in (a, b, c, d))
    diag_ad = np.linalg.norm(verts[a] - verts[d], axis=1) <= np.linalg.norm(verts[b] - verts[c], axis=1)
    t1 = np.where(diag_ad[:, None], np.stack([a, c, d], 1), np.stack([a, c, b], 1))
    t2 = np.where(diag_ad[:, None], np.stack([a, d, b], 1), np.stack([b, c, d], 1))
    return np.concatenate([fan, t1, t2]).astype(np.int64)


def grid_uv(u_cols: np.ndarray, v_rows: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid unwrap: (uv (T,2), uv_faces (F,3), uv_to_vertex (T,)) for `grid_faces` triangles.

    u_cols (cols+1,) increasing from 0 to 1: u of column j (column 0 appears twice, at u = 0 and
    u = 1: the seam at the back); v_rows (rows,) decreasing to 0: v of row i (the top pole gets one
    UV vertex per fan triangle at v = 1; the neck boundary is the last row).
    """
    rows, cols = len(v_rows), len(u_cols) - 1
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols + 1), indexing="ij")
    grid_uv_ = np.stack([u_cols[jj], v_rows[ii]], -1).reshape(-1, 2)  # (rows*(cols+1), 2)
    grid_v = 1 + ii * cols + (jj % cols)
    pole_uv = np.stack([0.5 * (u_cols[:-1] + u_cols[1:]), np.ones(cols)], 1)
    uv = np.concatenate([pole_uv, grid_uv_])
    to_vertex = np.concatenate([np.zeros(cols, np.int64), grid_v.ravel()])
    # map each face corner to a uv id: column of the corner, unwrapped across the seam
    col = np.where(faces == 0, -1, (faces - 1) % cols)
    row = np.where(faces == 0, -1, (faces - 1) // cols)
    span = col.max(1) - np.where(col < 0, cols, col).min(1)
    wrap = (span > cols // 2)[:, None] & (col == 0)  # quads across the seam use column `cols`
    col = np.where(wrap, cols, col)
    uv_id = cols + row * (cols + 1) + col
    fan = faces[:, 0] == 0
    jfan = (faces[fan, 1] - 1) % cols
    uv_id[fan, 0] = jfan
    uv_faces = uv_id.astype(np.int64)
    return uv.astype(np.float64), uv_faces, to_vertex
