"""MediaPipe FaceMesh landmarks (478 points, refine_landmarks=True, static images) on many images.

Images are decoded and processed in parallel worker processes (each with its own FaceMesh);
one bad image never stops the run: it gets `detected=False` and a `reason`:
  "unreadable"  the file is missing or not a decodable image
  "wrong_size"  its size differs from what the manifest/camera says
  "no_face"     MediaPipe found no face

Coordinates are pixels in geoface's convention (pixel centres at +0.5): MediaPipe's normalised
x, y times width, height. `score` is the face-detection confidence of MediaPipe's short-range
face detector on the same image (0 when none), `box` the landmarks' bounding box (x0, y0, x1, y1).
"""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

N_LANDMARKS = 478

_WORKER: dict = {}


@dataclass
class LandmarkResult:
    detected: bool
    reason: str  # "" when detected
    points: np.ndarray  # (478, 2) float32 pixels, NaN when not detected
    score: float
    box: np.ndarray  # (4,) float32 x0, y0, x1, y1 (NaN when not detected)


def _init_worker() -> None:
    import mediapipe as mpipe

    cv2.setNumThreads(1)
    _WORKER["mesh"] = mpipe.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5)
    _WORKER["det"] = mpipe.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.2)


def _empty(reason: str) -> LandmarkResult:
    nan = np.full((N_LANDMARKS, 2), np.nan, np.float32)
    return LandmarkResult(False, reason, nan, 0.0, np.full(4, np.nan, np.float32))


def detect_rgb(rgb: np.ndarray) -> LandmarkResult:
    """Landmarks of the (largest-confidence) face in an (H,W,3) uint8 RGB image (in this process)."""
    if "mesh" not in _WORKER:
        _init_worker()
    h, w = rgb.shape[:2]
    res = _WORKER["mesh"].process(rgb)
    if not res.multi_face_landmarks:
        return _empty("no_face")
    lm = res.multi_face_landmarks[0].landmark
    pts = np.array([[p.x * w, p.y * h] for p in lm], np.float32)
    det = _WORKER["det"].process(rgb)
    score = max((d.score[0] for d in (det.detections or [])), default=0.0)
    box = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], np.float32)
    return LandmarkResult(True, "", pts, float(score), box)


def _detect_path(args: tuple[str, int | None, int | None]) -> LandmarkResult:
    path, width, height = args
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        return _empty("unreadable")
    if width is not None and (img.shape[1], img.shape[0]) != (width, height):
        return _empty("wrong_size")
    return detect_rgb(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def detect_files(paths: list[str | Path], sizes: list[tuple[int, int]] | None = None, workers: int | None = None,
                 progress: bool = True, desc: str = "landmarks") -> list[LandmarkResult]:
    """Detect landmarks on image files in parallel. `sizes` (width, height) per file are checked if given."""
    from tqdm import tqdm

    jobs = [(str(p), *(sizes[i] if sizes is not None else (None, None))) for i, p in enumerate(paths)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1 or len(jobs) < 8:
        return [_detect_path(j) for j in tqdm(jobs, desc=desc, disable=not progress)]
    ctx = mp.get_context("spawn")  # MediaPipe's threads do not survive fork
    chunk = max(1, min(32, len(jobs) // (4 * workers)))
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        return list(tqdm(pool.imap(_detect_path, jobs, chunksize=chunk), total=len(jobs), desc=desc,
                         disable=not progress))


def results_to_arrays(results: list[LandmarkResult]) -> dict[str, np.ndarray]:
    """Stack results: points (N,478,2), detected (N,), score (N,), box (N,4), reason (N,) str."""
    return {
        "points": np.stack([r.points for r in results]).astype(np.float32),
        "detected": np.array([r.detected for r in results], bool),
        "score": np.array([r.score for r in results], np.float32),
        "box": np.stack([r.box for r in results]).astype(np.float32),
        "reason": np.array([r.reason for r in results]),
    }


YAW_BANDS = ((0, 45), (45, 70), (70, 90))


def yaw_band_key(lo: int, hi: int) -> str:
    return f"yaw_{lo}_{hi}"


def rates_by_yaw(detected: np.ndarray, yaw_deg: np.ndarray) -> dict[str, float | None]:
    """Detection rate per |yaw| band (None for an empty band). Bands: [0,45], (45,70], (70,90]."""
    out = {}
    ay = np.abs(yaw_deg)
    for lo, hi in YAW_BANDS:
        sel = (ay >= lo) & (ay <= hi) if lo == 0 else (ay > lo) & (ay <= hi)
        out[yaw_band_key(lo, hi)] = float(detected[sel].mean()) if sel.any() else None
    return out
