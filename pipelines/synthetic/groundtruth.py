"""Ground truth of a synthetic frame (docs/contracts.md "Synthetic ground truth").

`landmarks_2d` projects embedded landmarks into every view with a self-occlusion flag: a landmark
is visible when it projects onto a pixel the head covers, its camera depth is at most the rendered
depth at that pixel plus a tolerance, and its triangle faces the camera (so a landmark right on
the silhouette whose pixel centre misses the head counts as not visible). `mediapipe_order` scatters the
embedded landmarks into MediaPipe's 478 slots (NaN / not visible for points the model does not
embed). `raster_arrays` turns the renderer's fragments into the stored pixel→surface map, and
`write_npz` writes an npz with a chosen deflate level (numpy's savez_compressed is fixed at 6,
about 1.5× slower for the same size here).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from flame_fitting.geometry.camera import Camera
from flame_fitting.geometry.meshes import face_normals
from flame_fitting.geometry.raster import Fragments

N_MEDIAPIPE = 478


def landmarks_2d(points: np.ndarray, face_idx: np.ndarray, verts: np.ndarray, faces: np.ndarray,
                 cams: list[Camera], depth: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """points (L,3) world landmarks on faces face_idx (L,) of the mesh verts (V,3) / faces (F,3);
    depth (N,H,W) rendered camera depth (inf where empty) -> uv (N,L,2) float32, visible (N,L) bool."""
    n_views, h, w = depth.shape
    normals = face_normals(verts, faces[face_idx])  # (L,3)
    uv_all = np.empty((n_views, len(points), 2), np.float32)
    vis_all = np.zeros((n_views, len(points)), bool)
    for i, cam in enumerate(cams):
        uv, z = cam.project(points)
        uv_all[i] = uv
        col = np.floor(uv[:, 0]).astype(np.int64)
        row = np.floor(uv[:, 1]).astype(np.int64)
        inside = (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        rendered = np.full(len(points), -np.inf, np.float32)
        rendered[inside] = depth[i, row[inside], col[inside]]  # inf on background: not visible below
        inside &= np.isfinite(rendered)
        facing = np.einsum("lk,lk->l", normals, cam.center[None].astype(np.float64) - points) > 0
        vis_all[i] = inside & (z <= rendered + tol) & facing
    return uv_all, vis_all


def mediapipe_order(uv: np.ndarray, visible: np.ndarray, landmark_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uv (N,L,2), visible (N,L) in embedding order -> (N,478,2) float32 (NaN where not embedded), (N,478) bool."""
    n = uv.shape[0]
    out = np.full((n, N_MEDIAPIPE, 2), np.nan, np.float32)
    vis = np.zeros((n, N_MEDIAPIPE), bool)
    out[:, landmark_indices] = uv
    vis[:, landmark_indices] = visible
    return out, vis


def raster_arrays(frags: Fragments) -> dict[str, np.ndarray]:
    """The stored pixel→surface map: face_id (N,H,W) int32 (-1 background), bary (N,H,W,3) float16,
    depth (N,H,W) float16 camera z (0 background)."""
    depth = frags.depth.copy()
    depth[frags.face_id < 0] = 0.0
    return {"face_id": frags.face_id.astype(np.int32, copy=False), "bary": frags.bary.astype(np.float16),
            "depth": depth.astype(np.float16)}


def write_npz(path: Path, arrays: dict[str, np.ndarray], compresslevel: int | None = 1) -> None:
    """np.load-compatible .npz; deflate at `compresslevel` (None = stored, uncompressed)."""
    mode = zipfile.ZIP_STORED if compresslevel is None else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compression=mode, compresslevel=compresslevel) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def write_raster(path: Path, frags: Fragments) -> None:
    """gt_raster.npz of one frame (deflate level 1: the barycentrics are nearly incompressible)."""
    write_npz(path, raster_arrays(frags), 1)
