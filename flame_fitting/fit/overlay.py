"""Diagnostic overlay of a fit on one view: mesh wireframe + observed and fitted landmarks (OpenCV drawing).

Front-facing triangles (normal towards the camera) are drawn as a translucent wireframe, observed
landmarks as green dots, fitted landmarks as red dots, each pair joined by a thin yellow line (the
residual). Coordinates are drawn with 2 fractional bits (cv2 `shift`), so sub-pixel errors show.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from flame_fitting.geometry.camera import Camera
from flame_fitting.core.fileio import preview_size, write_png

_SHIFT = 2  # fractional bits of the drawing coordinates
OBS_COLOR, FIT_COLOR, RESIDUAL_COLOR, MESH_COLOR = (40, 220, 40), (235, 40, 40), (250, 220, 0), (90, 170, 255)


def _fixed(uv: np.ndarray) -> np.ndarray:
    return np.round(uv * (1 << _SHIFT)).astype(np.int32)


def draw_overlay(image: np.ndarray, camera: Camera, vertices: np.ndarray, faces: np.ndarray,
                 landmarks_obs: np.ndarray | None, landmarks_fit: np.ndarray | None, mesh_alpha: float = 0.35,
                 radius: int = 2) -> np.ndarray:
    """Return a copy of `image` (H, W, 3) uint8 RGB with the overlay. vertices (V, 3) world; faces (F, 3);
    landmarks_obs / landmarks_fit (N, 2) pixels (NaN rows skipped; when both are given with the same N, rows
    correspond and residual lines are drawn)."""
    img = np.ascontiguousarray(image, dtype=np.uint8).copy()
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"overlay: image must be (H, W, 3) uint8 RGB, got shape {img.shape}")
    if (img.shape[1], img.shape[0]) != (camera.width, camera.height):
        raise ValueError(f"overlay: image is {img.shape[1]}×{img.shape[0]} but camera {camera.name!r} is "
                         f"{camera.width}×{camera.height}")
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    uv, z = camera.project(v)
    tri = v[f]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    to_cam = camera.center.astype(np.float64) - tri.mean(1)
    front = ((normal * to_cam).sum(1) > 0) & np.all(z[f] > 0, 1) & np.all(np.isfinite(uv[f]), (1, 2))
    if front.any():
        layer = img.copy()
        cv2.polylines(layer, list(_fixed(uv[f[front]])), True, MESH_COLOR, 1, cv2.LINE_AA, _SHIFT)
        img = cv2.addWeighted(layer, mesh_alpha, img, 1 - mesh_alpha, 0)
    obs = None if landmarks_obs is None else np.asarray(landmarks_obs, np.float64).reshape(-1, 2)
    fit = None if landmarks_fit is None else np.asarray(landmarks_fit, np.float64).reshape(-1, 2)
    if obs is not None and fit is not None and len(obs) == len(fit):
        ok = np.all(np.isfinite(obs), 1) & np.all(np.isfinite(fit), 1)
        for a, b in zip(_fixed(obs[ok]), _fixed(fit[ok])):
            cv2.line(img, tuple(a), tuple(b), RESIDUAL_COLOR, 1, cv2.LINE_AA, _SHIFT)
    for pts, color in ((obs, OBS_COLOR), (fit, FIT_COLOR)):
        if pts is None:
            continue
        for p in _fixed(pts[np.all(np.isfinite(pts), 1)]):
            cv2.circle(img, tuple(p), radius << _SHIFT, color, -1, cv2.LINE_AA, _SHIFT)
    return img


def overlay_png(image: np.ndarray, camera: Camera, vertices: np.ndarray, faces: np.ndarray,
                landmarks_obs: np.ndarray | None, landmarks_fit: np.ndarray | None, out: Path | str) -> np.ndarray:
    """Draw the overlay (see `draw_overlay`) and write it to `out` as PNG, at most 1024 px on its longer
    side (a 2200×3208 NeRSemble frame gave 3–4 MB per overlay, DVC-tracked for every sequence); returns the RGB
    image as written."""
    img = preview_size(draw_overlay(image, camera, vertices, faces, landmarks_obs, landmarks_fit))
    write_png(out, img)
    return img
