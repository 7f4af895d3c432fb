"""Landmarks of a whole capture: detect, store, load, score.

Stored as a folder:
    detections.parquet  one row per manifest image: subject, sequence, frame, camera, path,
                        detected, reason, score, box_x0..box_y1
    points.npy          (N,478,2) float32 pixels, row i = row i of detections.parquet, NaN if not detected
Written to a temporary folder and renamed. Used by the `landmarks` stage and `geoface fit`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flame_fitting.capture import Capture, CaptureError
from flame_fitting.fileio import make_temp_dir, replace_dir
from flame_fitting.landmarks import YAW_BANDS, detect_files, rates_by_yaw, results_to_arrays, yaw_band_key

KEYS = ["subject", "sequence", "frame", "camera"]


@dataclass
class LandmarkSet:
    table: pd.DataFrame  # one row per image (KEYS, path, detected, reason, score, box_*)
    points: np.ndarray  # (N,478,2) float32

    def for_sequence(self, subject: str, sequence: str) -> dict[int, dict[str, np.ndarray]]:
        """{frame: {camera: (478,2)}} of the detected images of one sequence."""
        t = self.table
        sel = np.nonzero(((t.subject == subject) & (t.sequence == sequence) & t.detected).to_numpy())[0]
        out: dict[int, dict[str, np.ndarray]] = {}
        for i in sel:
            out.setdefault(int(t.frame.iat[i]), {})[str(t.camera.iat[i])] = self.points[i]
        return out


def detect_capture(cap: Capture, workers: int | None = None, progress: bool = True) -> LandmarkSet:
    m = cap.manifest
    paths = [cap.root / p for p in m.path]
    results = detect_files(paths, sizes=list(zip(m.width.astype(int), m.height.astype(int))), workers=workers,
                           progress=progress)
    arr = results_to_arrays(results)
    table = m[KEYS + ["path"]].copy().reset_index(drop=True)
    table["detected"] = arr["detected"]
    table["reason"] = arr["reason"]
    table["score"] = arr["score"]
    for k, name in enumerate(["box_x0", "box_y0", "box_x1", "box_y1"]):
        table[name] = arr["box"][:, k]
    return LandmarkSet(table, arr["points"])


def save_landmarks(ls: LandmarkSet, out_dir: Path | str, overwrite: bool = True) -> Path:
    """Write `out_dir` atomically; an existing one is replaced only if geoface wrote it and `overwrite`."""
    out_dir = Path(out_dir)
    tmp = make_temp_dir(out_dir)
    ls.table.to_parquet(tmp / "detections.parquet", index=False)
    np.save(tmp / "points.npy", ls.points)
    replace_dir(tmp, out_dir, overwrite)
    return out_dir


def load_landmarks(out_dir: Path | str) -> LandmarkSet:
    out_dir = Path(out_dir)
    try:
        table = pd.read_parquet(out_dir / "detections.parquet")
        points = np.load(out_dir / "points.npy")
    except FileNotFoundError as e:
        raise CaptureError(f"{e.filename}: missing (run the landmarks stage first)") from None
    if points.shape != (len(table), 478, 2):
        raise CaptureError(f"{out_dir / 'points.npy'}: shape {points.shape} does not match {len(table)} detections")
    return LandmarkSet(table, points)


def gt_landmark_errors(cap: Capture, ls: LandmarkSet) -> np.ndarray:
    """Per image mean pixel error of detected landmarks vs the synthetic ground truth (visible points only);
    NaN where not detected or no ground truth. (N,) float32."""
    err = np.full(len(ls.table), np.nan, np.float32)
    if "gt_path" not in cap.manifest.columns:
        return err
    gt_cache: dict[str, dict] = {}
    m = cap.manifest.reset_index(drop=True)
    for i, row in enumerate(m.itertuples()):
        if not ls.table.detected.iat[i] or not isinstance(row.gt_path, str):
            continue
        gt = gt_cache.get(row.gt_path)
        if gt is None:
            with np.load(cap.root / row.gt_path) as z:
                gt = {"cameras": list(z["cameras"]), "p": z["lmk_mp_2d"], "vis": z["lmk_mp_visible"]}
            gt_cache = {row.gt_path: gt}  # rows are sorted by frame: keep one frame in memory
        v = gt["cameras"].index(row.camera)
        vis = gt["vis"][v]
        if vis.any():
            err[i] = float(np.linalg.norm(ls.points[i][vis] - gt["p"][v][vis], axis=1).mean())
    return err


def landmark_metrics(cap: Capture, ls: LandmarkSet) -> dict:
    """Detection rate overall and per |yaw| band, failure reasons, and pixel error vs ground truth if any."""
    det = ls.table.detected.to_numpy()
    out: dict = {"n_images": int(len(det)), "n_detected": int(det.sum()),
                 "detection_rate": float(det.mean()) if len(det) else 0.0,
                 "failures": {str(k): int(v) for k, v in ls.table.reason[~det].value_counts().items()}}
    m = cap.manifest.reset_index(drop=True)
    if "yaw_deg" in m.columns:
        yaw = m.yaw_deg.to_numpy(np.float64)
        for key, rate in rates_by_yaw(det, yaw).items():
            out[f"detection_rate_{key}"] = rate
        err = gt_landmark_errors(cap, ls)
        if np.isfinite(err).any():
            out["pixel_error_mean"] = float(np.nanmean(err))
            ay = np.abs(yaw)
            for lo, hi in YAW_BANDS:
                sel = ((ay >= lo) if lo == 0 else (ay > lo)) & (ay <= hi) & np.isfinite(err)
                out[f"pixel_error_{yaw_band_key(lo, hi)}"] = float(err[sel].mean()) if sel.any() else None
    return out
