"""The rasteriser's numba kernels: projection, pass 1 (z-buffer on interpolated 1/z) and pass 2
(perspective-correct barycentrics and depth of the winning faces), and the row-band split that keeps
every thread busy.

`flame_fitting/geometry/raster.py` is the API that validates the input and calls them; its docstring
states the conventions they implement (pixel centres, top-left fill rule, near plane, culling, z ties).
`flame_fitting/geometry/raster_ref.py` is the slow numpy reference they are tested against.
Parallel (numba prange) over views × row bands; results do not depend on the thread count.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _edge_setup(ax, ay, bx, by, s):
    """Edge a→b of a triangle of orientation s (±1) -> (ox, oy, ex, ey, tie): the weight
    w = (ex*(py-oy) + ey*ox) - ey*px is > 0 inside (≈ s·E_ab(p)); (ox, oy) is the canonical
    (lexicographically smaller) endpoint and (ex, ey) = ±(b-a) from it, so the triangle on the other
    side of the edge computes exactly -w. tie: whether w == 0 counts as inside (top-left rule on
    the orientation-normalised edge direction s·(b-a), y down)."""
    if ax < bx or (ax == bx and ay < by):
        ox, oy, ex, ey = ax, ay, s * (bx - ax), s * (by - ay)
    else:
        ox, oy, ex, ey = bx, by, -s * (ax - bx), -s * (ay - by)
    ndx = s * (bx - ax)
    ndy = s * (by - ay)
    return ox, oy, ex, ey, ndy < 0.0 or (ndy == 0.0 and ndx > 0.0)


@njit(cache=True, parallel=True, error_model="numpy")
def project_kernel(verts, P, near, xy, z):
    """verts (1|N, V, 3) f64 world, P (N, 3, 4) = K [R|t] -> xy (N, V, 2) pixels (0 if z < near), z (N, V)."""
    for n in prange(P.shape[0]):
        vn = n % verts.shape[0]  # shared (1, V, 3) or per-view verts
        for v in range(verts.shape[1]):
            X, Y, Z = verts[vn, v, 0], verts[vn, v, 1], verts[vn, v, 2]
            cz = P[n, 2, 0] * X + P[n, 2, 1] * Y + P[n, 2, 2] * Z + P[n, 2, 3]
            z[n, v] = cz
            if cz >= near:
                xy[n, v, 0] = (P[n, 0, 0] * X + P[n, 0, 1] * Y + P[n, 0, 2] * Z + P[n, 0, 3]) / cz
                xy[n, v, 1] = (P[n, 1, 0] * X + P[n, 1, 1] * Y + P[n, 1, 2] * Z + P[n, 1, 3]) / cz
            else:
                xy[n, v, 0] = 0.0
                xy[n, v, 1] = 0.0


@njit(cache=True, parallel=True, error_model="numpy")
def zbuffer_kernel(xy, z, iz, faces, near, cull, n_bands, face_id, invz, count, do_count):
    """Pass 1. xy (N,V,2) f64, z and iz = 1/z (N,V) f64, faces (F,3) i64 -> face_id (N,H,W) i32
    (-1 empty), invz (N,H,W) f64 interpolated 1/z of the nearest face (0 empty); if do_count,
    count (N,H,W) i32 += fragments per pixel. Buffers need no initialisation."""
    N, H, W = face_id.shape
    F = faces.shape[0]
    band_h = (H + n_bands - 1) // n_bands
    for task in prange(N * n_bands):
        n = task // n_bands
        r_lo = (task % n_bands) * band_h
        r_hi = min(H, r_lo + band_h) - 1
        fid, bz = face_id[n], invz[n]
        fid[r_lo:r_hi + 1] = -1
        bz[r_lo:r_hi + 1] = 0.0
        for f in range(F):
            i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
            if not (z[n, i0] >= near and z[n, i1] >= near and z[n, i2] >= near):
                continue
            y0, y1, y2 = xy[n, i0, 1], xy[n, i1, 1], xy[n, i2, 1]
            ylo = min(max(min(y0, y1, y2), r_lo - 1.0), r_hi + 2.0)  # clamp before int conversion
            yhi = min(max(max(y0, y1, y2), r_lo - 1.0), r_hi + 2.0)
            rmin = max(r_lo, math.ceil(ylo - 0.5))  # rows whose centre r + 0.5 is in [ylo, yhi]
            rmax = min(r_hi, math.floor(yhi - 0.5))
            if rmin > rmax:
                continue
            x0, x1, x2 = xy[n, i0, 0], xy[n, i1, 0], xy[n, i2, 0]
            xlo = min(max(min(x0, x1, x2), -1.0), W + 1.0)
            xhi = min(max(max(x0, x1, x2), -1.0), W + 1.0)
            cmin = max(0, math.ceil(xlo - 0.5))
            cmax = min(W - 1, math.floor(xhi - 0.5))
            if cmin > cmax:
                continue
            area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
            if not (area != 0.0 and math.isfinite(area)) or (cull and area > 0.0):
                continue
            s = 1.0 if area > 0.0 else -1.0
            ox0, oy0, ex0, ey0, t0 = _edge_setup(x1, y1, x2, y2, s)  # weight of v0
            ox1, oy1, ex1, ey1, t1 = _edge_setup(x2, y2, x0, y0, s)  # weight of v1
            ox2, oy2, ex2, ey2, t2 = _edge_setup(x0, y0, x1, y1, s)  # weight of v2
            inv_area = 1.0 / (s * area)
            c0, c1, c2 = iz[n, i0] * inv_area, iz[n, i1] * inv_area, iz[n, i2] * inv_area
            for r in range(rmin, rmax + 1):
                py = r + 0.5
                b0 = ex0 * (py - oy0) + ey0 * ox0
                b1 = ex1 * (py - oy1) + ey1 * ox1
                b2 = ex2 * (py - oy2) + ey2 * ox2
                px = cmin + 0.5
                for c in range(cmin, cmax + 1):
                    w0 = b0 - ey0 * px
                    w1 = b1 - ey1 * px
                    w2 = b2 - ey2 * px
                    px += 1.0
                    m = min(w0, w1, w2)
                    if m < 0.0 or (m == 0.0 and ((w0 == 0.0 and not t0) or (w1 == 0.0 and not t1)
                                                 or (w2 == 0.0 and not t2))):
                        continue
                    if do_count:
                        count[n, r, c] += 1
                    q = w0 * c0 + w1 * c1 + w2 * c2
                    if q > bz[r, c]:
                        bz[r, c] = q
                        fid[r, c] = f


@njit(cache=True, parallel=True, error_model="numpy")
def resolve_kernel(xy, iz, faces, face_id, bary, depth):
    """Pass 2: perspective-correct barycentrics (N,H,W,3) f32 and depth (N,H,W) f32 of the
    winning faces; bary 0 and depth inf where face_id < 0 (every pixel is written)."""
    N, H, W = face_id.shape
    for task in prange(N * H):
        n = task // H
        r = task % H
        py = r + 0.5
        for c in range(W):
            f = face_id[n, r, c]
            if f < 0:
                bary[n, r, c, 0] = bary[n, r, c, 1] = bary[n, r, c, 2] = 0.0
                depth[n, r, c] = np.inf
                continue
            i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
            x0, y0, x1, y1, x2, y2 = xy[n, i0, 0], xy[n, i0, 1], xy[n, i1, 0], xy[n, i1, 1], xy[n, i2, 0], xy[n, i2, 1]
            px = c + 0.5
            e0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
            e1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
            e2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
            q0, q1, q2 = e0 * iz[n, i0], e1 * iz[n, i1], e2 * iz[n, i2]
            inv = 1.0 / (q0 + q1 + q2)
            bary[n, r, c, 0] = q0 * inv
            bary[n, r, c, 1] = q1 * inv
            bary[n, r, c, 2] = q2 * inv
            depth[n, r, c] = (e0 + e1 + e2) * inv


def n_bands(n_views: int, height: int) -> int:
    """Row bands per view so that views × bands keeps every numba thread busy."""
    threads = numba.get_num_threads()
    if threads == 1 or n_views >= 2 * threads:
        return 1
    return max(1, min(height // 8, -(-4 * threads // n_views)))
