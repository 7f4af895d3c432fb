"""Slow, obvious numpy reference of `flame_fitting/geometry/raster.py` (used only in tests).

Same maths as the numba kernels: loop over views and triangles, vectorised over the pixels
of each triangle's bounding box; canonical-order edge functions with the top-left tie rule,
strict z test on interpolated 1/z (lower face index wins ties), then perspective-correct
barycentrics of the winning faces.
"""
from __future__ import annotations

import numpy as np

from flame_fitting.geometry.raster import Fragments


def _edge_weight(a, b, s, px, py):
    """Inside-positive edge function of edge a→b (orientation s = ±1) at pixel centres, evaluated from
    the lexicographically smaller endpoint o so that the neighbour across the edge gets exactly -w,
    and whether w == 0 counts as inside (top-left rule, y down)."""
    o, e = (a, s * (b - a)) if (a[0] < b[0] or (a[0] == b[0] and a[1] < b[1])) else (b, -s * (a - b))
    n = s * (b - a)
    tie = n[1] < 0 or (n[1] == 0 and n[0] > 0)
    return (e[0] * (py - o[1]) + e[1] * o[0]) - e[1] * px, tie


def rasterize_screen_ref(xy, z, faces, width, height, near=1e-3, cull_backfaces=False) -> Fragments:
    """xy (N,V,2) pixels, z (N,V) camera depth, faces (F,3) -> Fragments (N,H,W[,3])."""
    xy, z, faces = np.asarray(xy, np.float64), np.asarray(z, np.float64), np.asarray(faces, np.int64)
    N = xy.shape[0]
    face_id = np.full((N, height, width), -1, np.int32)
    best = np.zeros((N, height, width))  # interpolated 1/z of the nearest face so far
    for n in range(N):
        for f, tri in enumerate(faces):
            p, zz = xy[n, tri], z[n, tri]
            if not np.all(zz >= near):
                continue
            area = (p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[2, 0] - p[0, 0]) * (p[1, 1] - p[0, 1])
            if area == 0 or (cull_backfaces and area > 0):
                continue
            c0, c1 = max(0, int(np.ceil(p[:, 0].min() - 0.5))), min(width - 1, int(np.floor(p[:, 0].max() - 0.5)))
            r0, r1 = max(0, int(np.ceil(p[:, 1].min() - 0.5))), min(height - 1, int(np.floor(p[:, 1].max() - 0.5)))
            if c0 > c1 or r0 > r1:
                continue
            rows, cols = np.mgrid[r0:r1 + 1, c0:c1 + 1]
            px, py = cols + 0.5, rows + 0.5
            s = 1.0 if area > 0 else -1.0
            inside = np.ones(px.shape, bool)
            w = []
            for i, j in ((1, 2), (2, 0), (0, 1)):  # edge opposite vertex 0, 1, 2
                wk, tie = _edge_weight(p[i], p[j], s, px, py)
                inside &= (wk > 0) | ((wk == 0) & tie)
                w.append(wk)
            c = (1.0 / zz) * (1.0 / (s * area))  # w0 + w1 + w2 = |area|: q is the interpolated 1/z
            q = w[0] * c[0] + w[1] * c[1] + w[2] * c[2]
            win = inside & (q > best[n, rows, cols])
            best[n, rows[win], cols[win]] = q[win]
            face_id[n, rows[win], cols[win]] = f
    bary = np.zeros((N, height, width, 3), np.float32)
    depth = np.full((N, height, width), np.inf, np.float32)
    n, r, c = np.nonzero(face_id >= 0)
    tri = faces[face_id[n, r, c]]  # (M,3)
    p, zz = xy[n[:, None], tri], z[n[:, None], tri]  # (M,3,2), (M,3)
    px, py = c + 0.5, r + 0.5
    e = np.stack([(p[:, j, 0] - p[:, i, 0]) * (py - p[:, i, 1]) - (p[:, j, 1] - p[:, i, 1]) * (px - p[:, i, 0])
                  for i, j in ((1, 2), (2, 0), (0, 1))], axis=-1)
    qv = e * (1.0 / zz)
    inv = 1.0 / (qv[:, 0] + qv[:, 1] + qv[:, 2])
    bary[n, r, c] = qv * inv[:, None]
    depth[n, r, c] = (e[:, 0] + e[:, 1] + e[:, 2]) * inv
    return Fragments(face_id=face_id, bary=bary, depth=depth)


def rasterize_ref(verts, faces, K, world_to_cam, width, height, near=1e-3, cull_backfaces=False) -> Fragments:
    """verts (V,3)|(N,V,3) world, K (N,3,3), world_to_cam (N,4,4) -> Fragments."""
    P = np.asarray(K, np.float64) @ np.asarray(world_to_cam, np.float64)[:, :3]  # (N, 3, 4) = K [R|t]
    X = np.broadcast_to(np.asarray(verts, np.float64), (P.shape[0],) + np.shape(verts)[-2:])  # (N, V, 3)
    h = [P[:, i, None, 0] * X[..., 0] + P[:, i, None, 1] * X[..., 1] + P[:, i, None, 2] * X[..., 2] + P[:, i, None, 3]
         for i in range(3)]  # homogeneous pixel coordinates, each (N, V)
    z = h[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = np.stack([h[0] / z, h[1] / z], axis=-1)
    xy[z < near] = 0.0
    return rasterize_screen_ref(xy, z, faces, width, height, near, cull_backfaces)


def rasterize_uv_ref(uv, uv_faces, resolution):
    """uv (T,2) in [0,1], uv_faces (F,3) -> face_id (R,R) int32, bary (R,R,3) float32."""
    uv = np.asarray(uv, np.float64)
    xy = np.stack([uv[:, 0] * resolution, (1.0 - uv[:, 1]) * resolution], -1)[None]
    frags = rasterize_screen_ref(xy, np.ones((1, len(uv))), uv_faces, resolution, resolution, near=0.5)
    return frags.face_id[0], frags.bary[0]
