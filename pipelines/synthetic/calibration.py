"""Calibrate a head model's MediaPipe landmark embedding on rendered calibration subjects.

Renders captures of the head model with the synthetic generator (seed `CalibrationConfig.seed`, disjoint
from the captures to be fitted), detects MediaPipe landmarks on them, and runs the calibration maths of
`flame_fitting.landmarks.calibration` (lift + refine), writing the calibrated embedding beside the original.
It lives here, above the geometry packages, because it needs the generator. Used by the `head_model` stage.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import mediapipe
import numpy as np

from flame_fitting.formats.capture import load_capture
from flame_fitting.head.flame_io import load_flame_folder
from flame_fitting.head.flame_pickle import load_model_arrays
from flame_fitting.landmarks.calibration import (CalibrationConfig, calibrate_embedding, collect, contour_ids,
                                                 write_calibrated_embedding)
from flame_fitting.landmarks.capture import detect_capture
from pipelines.synthetic.config import SyntheticConfig
from pipelines.synthetic.generate import generate


def calibrate_head_model(folder: Path | str, cfg: CalibrationConfig | None = None, progress: bool = False,
                         work_dir: Path | str | None = None) -> dict:
    """Render the calibration captures of the head model at `folder` (temporary folder under `work_dir`), detect
    MediaPipe landmarks, calibrate (lift + refine) and write the embedding beside the original. Returns the
    provenance written to CALIBRATION_JSON plus the run times (render_s, detect_s, total_s), which the file
    leaves out so that the same inputs give the same bytes."""
    cfg, folder, t0 = cfg or CalibrationConfig(), Path(folder), time.perf_counter()
    info = load_flame_folder(folder)  # the ORIGINAL embedding: the generator textures through it
    emb, faces = info.mediapipe, np.asarray(info.template.faces, np.int64)
    verts_t = load_model_arrays(info.model_file)["v_template"].astype(np.float64)
    syn = SyntheticConfig(subjects=cfg.subjects, frames=cfg.frames, cameras=cfg.cameras, resolution=cfg.resolution,
                          seed=cfg.seed)
    with tempfile.TemporaryDirectory(prefix="geoface_lmkcal_", dir=work_dir) as tmp:
        summary = generate(folder, Path(tmp) / "cap", syn, progress=progress)
        t_render = time.perf_counter() - t0
        cap = load_capture(Path(tmp) / "cap")
        ls = detect_capture(cap, workers=cfg.workers or None, progress=progress)
        t_detect = time.perf_counter() - t0 - t_render
        samples, frames, stats = collect(cap, ls, verts_t, faces, emb.landmark_indices, cfg)
    keep = np.isin(emb.landmark_indices, contour_ids()) & cfg.keep_contour
    res = calibrate_embedding(samples, frames, verts_t, faces, emb.face_idx, emb.bary, keep, cfg)
    moved = res.calibrated
    prov = {"detector": f"mediapipe {mediapipe.__version__} FaceMesh (refine_landmarks, static images; "
                        "flame_fitting.landmarks.detector)", "generator": "pipelines.synthetic",
            "texture_photo": cap.info.get("texture_photo"), "config": asdict(cfg), "synthetic_config": asdict(syn),
            "n_subjects": int(summary["n_subjects"]), "n_frames": int(summary["n_frames"]), **stats,
            "n_landmarks": int(len(moved)), "n_calibrated": int(moved.sum()),
            "n_kept_contour": int(keep.sum()),
            "n_kept_few_samples": int((~moved & (res.n_samples < cfg.min_samples)).sum()),
            "samples_per_landmark_median": float(np.median(res.n_samples)),
            "mean_shift_mm": round(float(res.shift_mm[moved].mean()), 4) if moved.any() else 0.0,
            "max_shift_mm": round(float(res.shift_mm.max()), 4),
            "sample_spread_mm_median": round(float(np.nanmedian(res.spread_mm)), 4)}
    write_calibrated_embedding(folder, res, emb.landmark_indices, prov)  # no run times in the folder (same bytes)
    return {**prov, "render_s": round(t_render, 2), "detect_s": round(t_detect, 2),
            "total_s": round(time.perf_counter() - t0, 2)}
