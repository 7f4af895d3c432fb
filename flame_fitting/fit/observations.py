"""Input checking and packing for the fitter: cameras, per-frame per-view landmarks, confidences.

Observations come as `{frame: {camera: points}}` with `points` a (478, 2) pixel array in
MediaPipe's order (NaN rows where missing) or any object with `.points` (478, 2) and
`.detected` (e.g. `landmarks.LandmarkResult`; `detected=False` = no detection in that view).
Only the head model's embedded subset (`mp_landmark_indices`) is used. Non-finite points are
masked (never fixed); distorted cameras get their observations undistorted once here, so the
fitter works with ideal pinhole projections and reports errors in undistorted pixels.
Bad cameras (non-finite, non-positive focal, non-rigid pose) and malformed arrays raise
`FitInputError` naming the camera / frame; a frame with fewer than `min_views` views with
detections is skipped and recorded, not an error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flame_fitting.core.errors import GeofaceError
from flame_fitting.geometry.camera import Camera
from flame_fitting.head.landmarks_embed import N_MEDIAPIPE

MIN_POINTS_PER_VIEW = 3  # a view "has a detection" when at least this many embedded landmarks are finite


class FitInputError(GeofaceError, ValueError):
    """Cameras or observations the fitter refuses (names the camera / frame)."""


@dataclass
class PackedObservations:
    frames: list[int]       # F fitted frames (sorted), each seen by >= min_views views
    cam_names: list[str]    # C cameras (the order of every camera axis)
    uv: np.ndarray          # (F, C, L, 2) float64 undistorted pixels, 0 where invalid
    valid: np.ndarray       # (F, C, L) bool
    conf: np.ndarray        # (F, C, L) float64 confidence (0 where invalid)
    skipped: dict[int, str]  # frame -> reason it is not fitted


def check_cameras(cameras: dict[str, Camera]) -> None:
    """Refuse degenerate cameras with a clear message (the Camera class checks this too, but
    arrays can be edited after construction)."""
    if not cameras:
        raise FitInputError("fit: no cameras given")
    for name, cam in cameras.items():
        if not isinstance(cam, Camera):
            raise FitInputError(f"fit: camera {name!r} is a {type(cam).__name__}, not a flame_fitting.geometry.camera.Camera")
        K, w2c = np.asarray(cam.K, np.float64), np.asarray(cam.world_to_cam, np.float64)
        if not (np.all(np.isfinite(K)) and np.all(np.isfinite(w2c))):
            raise FitInputError(f"fit: camera {name!r} has non-finite K or world_to_cam")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise FitInputError(f"fit: camera {name!r} has a non-positive focal length (fx={K[0, 0]}, fy={K[1, 1]})")
        R = w2c[:3, :3]
        if np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(R) <= 0:
            raise FitInputError(f"fit: camera {name!r} world_to_cam is not a rigid transform")


def _points(value, frame: int, cam: str) -> np.ndarray:
    """One view's observation -> (478, 2) float64 with NaN rows for missing points."""
    if hasattr(value, "points") and hasattr(value, "detected"):
        if not value.detected:
            return np.full((N_MEDIAPIPE, 2), np.nan)
        value = value.points
    pts = np.asarray(value, dtype=np.float64)
    if pts.shape != (N_MEDIAPIPE, 2):
        raise FitInputError(f"fit: frame {frame} camera {cam!r}: landmarks must be ({N_MEDIAPIPE}, 2) pixels in "
                            f"MediaPipe order, got shape {pts.shape}")
    return pts


def undistort_px(cam: Camera, uv: np.ndarray) -> np.ndarray:
    """(N, 2) distorted pixels -> ideal-pinhole pixels of the same K (NaN rows stay NaN)."""
    if cam.dist is None:
        return uv
    out = np.full_like(uv, np.nan)
    ok = np.all(np.isfinite(uv), 1)
    if ok.any():
        xn = cam.normalized(uv[ok])
        out[ok] = xn @ cam.K[:2, :2].astype(np.float64).T + cam.K[:2, 2]
    return out


def pack_observations(cameras: dict[str, Camera], observations: dict, landmark_indices: np.ndarray,
                      confidences: dict | None = None, min_views: int = 2) -> PackedObservations:
    """Validate and stack observations of the embedded landmarks (indices (L,) into MediaPipe's 478)."""
    check_cameras(cameras)
    names = sorted(cameras)
    idx = np.asarray(landmark_indices, np.int64)
    L, C = len(idx), len(names)
    kept, uvs, valids, confs, skipped = [], [], [], [], {}
    for frame in sorted(observations):
        views = observations[frame]
        if not isinstance(views, dict):
            raise FitInputError(f"fit: observations[{frame}] must be a dict camera -> (478, 2) landmarks")
        unknown = sorted(set(views) - set(names))
        if unknown:
            raise FitInputError(f"fit: frame {frame}: landmarks for unknown camera(s) {unknown}; cameras: {names}")
        uv = np.zeros((C, L, 2))
        valid = np.zeros((C, L), bool)
        conf = np.zeros((C, L))
        for c, name in enumerate(names):
            if name not in views:
                continue
            pts = undistort_px(cameras[name], _points(views[name], frame, name)[idx])
            w = np.ones(L)
            if confidences is not None and name in confidences.get(frame, {}):
                cw = np.asarray(confidences[frame][name], np.float64).reshape(-1)
                if cw.shape != (N_MEDIAPIPE,):
                    raise FitInputError(f"fit: frame {frame} camera {name!r}: confidence must be ({N_MEDIAPIPE},), "
                                        f"got {cw.shape}")
                w = np.where(np.isfinite(cw), np.clip(cw, 0, None), 0.0)[idx]
            ok = np.all(np.isfinite(pts), 1) & (w > 0)
            if ok.sum() < MIN_POINTS_PER_VIEW:
                continue
            uv[c, ok], valid[c], conf[c, ok] = pts[ok], ok, w[ok]
        n_views = int((valid.sum(1) >= MIN_POINTS_PER_VIEW).sum())
        if n_views < min_views:
            skipped[int(frame)] = f"only {n_views} view(s) with detections (need {min_views})"
            continue
        kept.append(int(frame))
        uvs.append(uv)
        valids.append(valid)
        confs.append(conf)
    shape = (len(kept), C, L)
    return PackedObservations(
        frames=kept, cam_names=names,
        uv=np.stack(uvs) if kept else np.zeros(shape + (2,)), valid=np.stack(valids) if kept else np.zeros(shape, bool),
        conf=np.stack(confs) if kept else np.zeros(shape), skipped=skipped)
