"""CPU triangle rasteriser (numba): per-pixel face id, perspective-correct barycentrics, depth.

Screen space from OpenCV cameras (`rasterize`, or `rasterize_screen` for already projected
vertices) and UV space (`rasterize_uv`, for baking textures / UV position maps), plus
`interpolate` to turn (face id, barycentrics) into per-pixel attributes.
This module validates the input and runs the numba kernels of `flame_fitting/geometry/raster_kernels.py`;
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

from dataclasses import dataclass

import numpy as np

from flame_fitting.core.errors import GeofaceError
from flame_fitting.geometry.raster_kernels import n_bands, project_kernel, resolve_kernel, zbuffer_kernel


class RasterError(GeofaceError, ValueError):
    """Bad input to the rasteriser."""


@dataclass(frozen=True)
class Fragments:
    """Rasteriser output for N views of H×W pixels."""

    face_id: np.ndarray  # (N, H, W) int32, -1 where empty
    bary: np.ndarray  # (N, H, W, 3) float32, perspective-correct, 0 where empty
    depth: np.ndarray  # (N, H, W) float32 camera z, inf where empty


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
    zbuffer_kernel(xy, z, iz, faces, float(near), bool(cull), n_bands(N, H), face_id, invz,
                   np.zeros((1, 1, 1), np.int32), False)
    depth = np.empty((N, H, W), np.float32)
    resolve_kernel(xy, iz, faces, face_id, bary, depth)
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
    project_kernel(np.ascontiguousarray(verts.reshape(-1, V, 3)), np.ascontiguousarray(P), float(near), xy, z)
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
    zbuffer_kernel(xy, z, z, faces, 0.5, False, n_bands(1, R), np.empty((1, R, R), np.int32),
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
