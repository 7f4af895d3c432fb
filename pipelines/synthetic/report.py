"""Checks and previews of a synthetic capture: MediaPipe detection per |yaw| band, contact sheets.

`detection_report(capture_root)` runs real MediaPipe FaceMesh (flame_fitting.landmarks.detector) on every
view and compares with the ground truth: detection rate per |yaw| band ([0,45], (45,70], (70,90])
and the mean pixel error of the detected landmarks against the ground-truth projections of the
points visible in that view (per view mean, averaged over the detected views of the band). MediaPipe
also "detects" faces in steep profiles with landmarks far off, so `accurate_rate_*` counts only
detections whose mean error is at most ACCURATE_NME of the face size (sqrt of the area of the
ground-truth landmarks' bounding box).
`contact_sheet(capture_root, subject, out_png)` tiles all views of one frame, labelled with the
camera name and yaw.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from flame_fitting.formats.capture import CaptureError, load_capture, read_gt_landmarks, read_image
from flame_fitting.core.fileio import write_png
from flame_fitting.landmarks.detector import band_means, detect_files, rates_by_yaw, yaw_bands

ACCURATE_NME = 0.1  # a detection is accurate when its mean error is at most this fraction of the face size


def _gt_points(root: Path, manifest) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth MediaPipe projections (N,478,2) and visibility (N,478) of each manifest row."""
    cache: dict[str, dict] = {}
    pts, vis = [], []
    for row in manifest.itertuples():
        if row.gt_path not in cache:
            cache[row.gt_path] = read_gt_landmarks(root / row.gt_path)
        g = cache[row.gt_path]
        if row.camera not in g["cameras"]:
            raise CaptureError(f"{root / row.gt_path}: no ground truth for camera {row.camera!r}")
        i = g["cameras"].index(row.camera)
        pts.append(g["p"][i])
        vis.append(g["vis"][i])
    return np.stack(pts), np.stack(vis)


def landmark_errors(detected: np.ndarray, points: np.ndarray, gt: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Per-view mean pixel error (N,) of detections points (N,478,2) against gt (N,478,2) over the
    visible points (N,478); NaN for views not detected or without visible points."""
    d = np.linalg.norm(points - gt, axis=-1)
    ok = visible & np.isfinite(d)
    with np.errstate(invalid="ignore"):
        err = np.where(ok, d, 0.0).sum(1) / ok.sum(1)
    return np.where(detected & (ok.sum(1) > 0), err, np.nan)


def face_size(gt: np.ndarray) -> np.ndarray:
    """(N,) sqrt of the area of the bounding box of each view's ground-truth landmarks gt (N,478,2) (NaN-safe)."""
    lo, hi = np.nanmin(gt, axis=1), np.nanmax(gt, axis=1)
    return np.sqrt(np.prod(hi - lo, axis=1))


def detection_report(capture_root: Path | str, workers: int | None = None, progress: bool = False) -> dict:
    """MediaPipe on every view of a synthetic capture -> {detection_rate_yaw_0_45, ..., accurate_rate_yaw_0_45, ...,
    pixel_error_yaw_0_45, ..., n_views_yaw_0_45, ..., detection_rate, accurate_rate, pixel_error, n_views}.
    Pixel errors are in image pixels; bands without views give None."""
    root = Path(capture_root)
    cap = load_capture(root)
    m = cap.manifest
    for col in ("yaw_deg", "gt_path"):
        if col not in m.columns:
            raise CaptureError(f"{root / 'manifest.parquet'}: no column {col!r}; is this a synthetic capture?")
    res = detect_files([root / p for p in m.path], sizes=list(zip(m.width, m.height)), workers=workers,
                       progress=progress, desc="mediapipe")
    detected = np.array([r.detected for r in res])
    points = np.stack([r.points for r in res])
    gt, vis = _gt_points(root, m)
    err = landmark_errors(detected, points, gt, vis)
    accurate = detected & (err <= ACCURATE_NME * face_size(gt))
    yaw = m.yaw_deg.to_numpy(np.float64)
    out: dict = {}
    for key, rate in rates_by_yaw(detected, yaw).items():
        out[f"detection_rate_{key}"] = rate
    for key, rate in rates_by_yaw(accurate, yaw).items():
        out[f"accurate_rate_{key}"] = rate
    for key, e in band_means(err, yaw).items():
        out[f"pixel_error_{key}"] = e
    out.update({f"n_views_{k}": int(sel.sum()) for k, sel in yaw_bands(yaw).items()})
    out["detection_rate"] = float(detected.mean())
    out["accurate_rate"] = float(accurate.mean())
    out["pixel_error"] = float(np.nanmean(err)) if np.isfinite(err).any() else None
    out["n_views"] = int(len(m))
    return out


def contact_sheet(capture_root: Path | str, subject: str, out_png: Path | str, frame: int | None = None,
                  tile: int = 256) -> Path:
    """PNG grid of all views of `frame` (default: the first) of `subject`, labelled 'camera yaw'. Returns out_png."""
    root, out_png = Path(capture_root), Path(out_png)
    m = load_capture(root, check_files=False).manifest
    rows = m[m.subject == subject]
    if rows.empty:
        raise CaptureError(f"{root / 'manifest.parquet'}: no subject {subject!r}")
    frame = int(rows.frame.min()) if frame is None else int(frame)
    rows = rows[rows.frame == frame].sort_values("camera")
    if rows.empty:
        raise CaptureError(f"{root / 'manifest.parquet'}: subject {subject!r} has no frame {frame}")
    tiles = []
    for row in rows.itertuples():
        img = cv2.resize(read_image(root / row.path), (tile, tile), interpolation=cv2.INTER_AREA)
        label = f"{row.camera} yaw {row.yaw_deg:+.0f}" if hasattr(row, "yaw_deg") else row.camera
        cv2.putText(img, label, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, label, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    cols = int(np.ceil(np.sqrt(len(tiles))))
    n_rows = -(-len(tiles) // cols)
    tiles += [np.zeros_like(tiles[0])] * (n_rows * cols - len(tiles))
    sheet = np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], 1) for r in range(n_rows)], 0)
    return write_png(out_png, sheet)
