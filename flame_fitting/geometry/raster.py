"""CPU triangle rasteriser (numba): per-pixel face id, perspective-correct barycentrics, depth.

Screen space from OpenCV cameras (`rasterize`, or `rasterize_screen` for already projected
vertices) and UV space (`rasterize_uv`, for baking textures / UV position maps), plus
`interpolate` to turn (face id, barycentrics) into per-pixel attributes.
`flame_fitting/geometry/raster_ref.py` is the slow numpy reference the kernels are tested against.

Conventions: pixel (row i, col j) is sampled at its centre (x=j+0.5, y=i+0.5).
- Fill rule: a pixel centre is inside a triangle when all three edge functions are > 0, or
  = 0 on a "top" or "left" edge (orientation-normalised, y down). Every edge function is
  evaluated from a canonical endpoint order (lexicographic (x, y)), so two triangles sharing
  an edge compute exactly opposite values: shared edges are covered exactly once.
- Near plane: a triangle with any vertex at camera z < `near` (or NaN) is skipped, not clipped.
- Degenerate (zero screen area) triangles are skipped. Both orientations are rasterised
  unless `cull_backfaces=True`, which drops triangles that are clockwise on screen seen from the
  camera, i.e. back faces of a mesh whose faces are counter-clockwise seen from outside (OBJ/FLAME).
- Z test on interpolated 1/z, strict: on exact depth ties the lower face index wins.
Parallel (numba prange) over views × row bands; results do not depend on the thread count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from flame_fitting.core.errors import GeofaceError


class RasterError(GeofaceError, ValueError):
    """Bad input to the rasteriser."""


@dataclass(frozen=True)
class Fragments:
    """Rasteriser output for N views of H×W pixels."""

    face_id: np.ndarray  # (N, H, W) int32, -1 where empty
    bary: np.ndarray  # (N, H, W, 3) float32, perspective-correct, 0 where empty
    depth: np.ndarray  # (N, H, W) float32 camera z, inf where empty


# ----------------------------------------------------------------------------- kernels
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
def _project_kernel(verts, P, near, xy, z):
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
def _zbuffer_kernel(xy, z, iz, faces, near, cull, n_bands, face_id, invz, count, do_count):
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
def _resolve_kernel(xy, iz, faces, face_id, bary, depth):
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


# ----------------------------------------------------------------------------- validation
def _check_faces(faces, n_verts: int, what: str) -> np.ndarray:
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise RasterError(f"raster.{what}: faces must be an (F, 3) integer array, got {faces.dtype} {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= n_verts):
        raise RasterError(f"raster.{what}: face indices must be in [0, {n_verts}), got [{faces.min()}, {faces.max()}]")
    return np.ascontiguousarray(faces, dtype=np.int64)


def _check_size(width: int, height: int, what: str) -> None:
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise RasterError(f"raster.{what}: image size must be positive integers, got {width}×{height}")


def _n_bands(n_views: int, height: int) -> int:
    """Row bands per view so that views × bands keeps every numba thread busy."""
    threads = numba.get_num_threads()
    if threads == 1 or n_views >= 2 * threads:
        return 1
    return max(1, min(height // 8, -(-4 * threads // n_views)))


# ----------------------------------------------------------------------------- public API
def _raster(xy, z, faces, width, height, near, cull) -> Fragments:
    """Both passes on validated, contiguous float64 xy (N,V,2), z (N,V) and int64 faces (F,3)."""
    N, H, W = xy.shape[0], int(height), int(width)
    with np.errstate(divide="ignore"):
        iz = 1.0 / z
    face_id = np.empty((N, H, W), np.int32)
    # Pass 1's float64 z-buffer lives in bary's memory (8 of its 12 bytes per pixel): pass 2 reads
    # only face_id, so overwriting it is safe, and fresh pages are costly (page faults).
    buf = np.empty(3 * N * H * W + 1, np.float32)
    bary = buf[:3 * N * H * W].reshape(N, H, W, 3)
    invz = buf[:2 * N * H * W].view(np.float64).reshape(N, H, W)
    _zbuffer_kernel(xy, z, iz, faces, float(near), bool(cull), _n_bands(N, H), face_id, invz,
                    np.zeros((1, 1, 1), np.int32), False)
    depth = np.empty((N, H, W), np.float32)
    _resolve_kernel(xy, iz, faces, face_id, bary, depth)
    return Fragments(face_id=face_id, bary=bary, depth=depth)


def rasterize_screen(xy: np.ndarray, z: np.ndarray, faces: np.ndarray, width: int, height: int,
                     near: float = 1e-3, cull_backfaces: bool = False) -> Fragments:
    """Rasterise already projected vertices.

    xy: (N, V, 2) pixel coordinates (x right, y down); z: (N, V) camera depth; faces: (F, 3) int.
    Vertices with z < near may have any (even non-finite) xy: their triangles are skipped.
    """
    xy = np.ascontiguousarray(xy, dtype=np.float64)
    z = np.ascontiguousarray(z, dtype=np.float64)
    if xy.ndim != 3 or xy.shape[2] != 2 or z.shape != xy.shape[:2]:
        raise RasterError(f"raster.rasterize_screen: need xy (N, V, 2) and z (N, V), got {xy.shape} and {z.shape}")
    _check_size(width, height, "rasterize_screen")
    if not near > 0:
        raise RasterError(f"raster.rasterize_screen: near must be > 0, got {near}")
    if np.isnan(z).any():
        raise RasterError("raster.rasterize_screen: z contains NaN")
    if (~np.isfinite(xy).all(-1) & (z >= near)).any():
        raise RasterError("raster.rasterize_screen: xy is not finite for vertices in front of the near plane")
    faces = _check_faces(faces, xy.shape[1], "rasterize_screen")
    return _raster(xy, z, faces, width, height, near, cull_backfaces)


def project(verts: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray, near: float = 1e-3):
    """OpenCV projection. verts (V,3) | (N,V,3), K (N,3,3), world_to_cam (N,4,4)
    -> xy (N,V,2) float64 pixels (0 for vertices with z < near), z (N,V) float64 camera depth."""
    verts = np.asarray(verts, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    w2c = np.asarray(world_to_cam, dtype=np.float64)
    if K.ndim != 3 or K.shape[1:] != (3, 3) or w2c.shape != (K.shape[0], 4, 4):
        raise RasterError(f"raster.project: need K (N, 3, 3) and world_to_cam (N, 4, 4), got {K.shape} and {w2c.shape}")
    N = K.shape[0]
    if not (verts.ndim == 2 or (verts.ndim == 3 and verts.shape[0] == N)) or verts.shape[-1] != 3:
        raise RasterError(f"raster.project: verts must be (V, 3) or ({N}, V, 3), got {verts.shape}")
    if not (np.isfinite(verts).all() and np.isfinite(K).all() and np.isfinite(w2c).all()):
        raise RasterError("raster.project: verts, K or world_to_cam contain NaN or inf")
    if not np.array_equal(K[:, 2], np.broadcast_to([0.0, 0.0, 1.0], (N, 3))):
        raise RasterError(f"raster.project: K must have last row [0, 0, 1] (OpenCV), got {K[:, 2].tolist()}")
    P = K @ w2c[:, :3]  # (N, 3, 4); its last row is exactly [R_z | t_z]
    V = verts.shape[-2]
    xy, z = np.empty((N, V, 2)), np.empty((N, V))
    _project_kernel(np.ascontiguousarray(verts.reshape(-1, V, 3)), np.ascontiguousarray(P), float(near), xy, z)
    return xy, z


def rasterize(verts: np.ndarray, faces: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray, width: int,
              height: int, near: float = 1e-3, cull_backfaces: bool = False) -> Fragments:
    """Rasterise a mesh into N OpenCV cameras.

    verts: (V, 3) world, shared by all views, or (N, V, 3) per view; faces: (F, 3) int;
    K: (N, 3, 3); world_to_cam: (N, 4, 4); image width × height. See the module docstring for
    the fill rule, near plane and culling. Returns Fragments with (N, H, W[, 3]) arrays.
    """
    _check_size(width, height, "rasterize")
    if not near > 0:
        raise RasterError(f"raster.rasterize: near must be > 0, got {near}")
    xy, z = project(verts, K, world_to_cam, near)
    return _raster(xy, z, _check_faces(faces, xy.shape[1], "rasterize"), width, height, near, cull_backfaces)


def _uv_to_texels(uv: np.ndarray, uv_faces: np.ndarray, resolution: int, what: str):
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise RasterError(f"raster.{what}: uv must be (T, 2), got {uv.shape}")
    if not (np.isfinite(uv).all() and uv.min(initial=0.0) >= 0.0 and uv.max(initial=0.0) <= 1.0):
        raise RasterError(f"raster.{what}: uv must be finite and in [0, 1], got range [{uv.min()}, {uv.max()}]")
    _check_size(resolution, resolution, what)
    R = int(resolution)
    xy = np.stack([uv[:, 0] * R, (1.0 - uv[:, 1]) * R], axis=-1)[None]  # texel (r, c) centre at (c+.5, r+.5)
    return xy, np.ones((1, uv.shape[0])), _check_faces(uv_faces, uv.shape[0], what), R


def rasterize_uv(uv: np.ndarray, uv_faces: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise a UV layout. uv (T, 2) in [0, 1], uv_faces (F, 3) -> face_id (R, R) int32 (-1 empty),
    bary (R, R, 3) float32 (affine in UV). Texel (row r, col c) centre: u=(c+0.5)/R, v=1-(r+0.5)/R.
    Where charts overlap the lower face index wins (see `uv_overlap_fraction`)."""
    xy, z, faces, R = _uv_to_texels(uv, uv_faces, resolution, "rasterize_uv")
    frags = _raster(xy, z, faces, R, R, 0.5, False)
    return frags.face_id[0], frags.bary[0]


def uv_overlap_fraction(uv: np.ndarray, uv_faces: np.ndarray, resolution: int) -> float:
    """Fraction of covered texels claimed by ≥ 2 faces (0.0 for a non-overlapping layout)."""
    xy, z, faces, R = _uv_to_texels(uv, uv_faces, resolution, "uv_overlap_fraction")
    count = np.zeros((1, R, R), np.int32)
    _zbuffer_kernel(xy, z, z, faces, 0.5, False, _n_bands(1, R), np.empty((1, R, R), np.int32),
                    np.empty((1, R, R)), count, True)
    covered = int((count >= 1).sum())
    return float((count >= 2).sum()) / covered if covered else 0.0


def interpolate(attr: np.ndarray, faces: np.ndarray, face_id: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Per-pixel attributes: attr (V, C) float, faces (F, 3), face_id (...) int, bary (..., 3)
    -> (..., C) in attr's float precision (at least float32), zeros where face_id < 0."""
    attr = np.asarray(attr)
    if attr.ndim != 2 or not np.issubdtype(attr.dtype, np.floating):
        raise RasterError(f"raster.interpolate: attr must be a (V, C) float array, got {attr.dtype} {attr.shape}")
    faces = _check_faces(faces, attr.shape[0], "interpolate")
    face_id = np.asarray(face_id)
    bary = np.asarray(bary)
    if bary.shape != face_id.shape + (3,):
        raise RasterError(f"raster.interpolate: bary must be face_id.shape + (3,), got {bary.shape} for {face_id.shape}")
    if face_id.size and face_id.max() >= faces.shape[0]:
        raise RasterError(f"raster.interpolate: face_id {face_id.max()} out of range for {faces.shape[0]} faces")
    dtype = np.result_type(attr.dtype, np.float32)
    out = np.zeros(face_id.shape + (attr.shape[1],), dtype)
    hit = face_id >= 0
    tri = attr[faces[face_id[hit]]].astype(dtype)  # (M, 3, C)
    out[hit] = np.einsum("mk,mkc->mc", bary[hit].astype(dtype), tri)
    return out
