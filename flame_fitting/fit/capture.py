"""Fit the head model to every sequence of a capture, write the results, score them.

`fit_one_sequence` is one sequence's work: the `fit` stage and `geoface fit` run it as a work unit per sequence
(flame_fitting/fit/run.py, core/units.py); `fit_capture` runs it over a whole capture in memory (the API). The files
it writes (`<out>/<subject>/<sequence>/`: fit.npz, cameras.json, residuals.parquet, history.csv, status.json) and the
metrics summed from its records are in `capture_results.py`; the capture's masks are read by `capture_masks.py`.
Every frame of the capture gets a status: a frame in which no view has landmarks is "skipped" with reason
"no_landmarks" (the note lists each view's landmark failure), counted in `frames_skipped`.
Masks (`mask_path` in the manifest) are loaded when cfg.silhouette_weight > 0; silhouette_mode "auto" is resolved
from the capture's source (`resolve_silhouette_mode`); the metrics record the weight, the mode and how many
sequences were fitted with silhouettes.
A sequence whose fit raises is recorded in `<out>/failures.json` and the others go on. An overlay picture that
cannot be made (unreadable image, wrong size, write error) is recorded in `<out>/overlays_skipped.json` and in the
sequence's status.json (`overlays_skipped` in the metrics); the fit itself is kept.
"""
from __future__ import annotations

import json
import traceback
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from flame_fitting.core.arrays import load_npz
from flame_fitting.formats.capture import Capture
from flame_fitting.core.fileio import check_output_dir, make_temp_dir, mark_output, replace_dir
from flame_fitting.fit import FitConfig, SequenceFit, fit_sequence
from flame_fitting.fit.capture_masks import load_masks
from flame_fitting.fit.capture_results import (gt_vertex_errors, pack_medians, save_sequence_fit, summarise,
                                               view_medians, write_overlays)
from flame_fitting.fit.features import feature_refined_cameras, frame_points
from flame_fitting.fit.observations import FitInputError
from flame_fitting.fit.report import FrameStatus
from flame_fitting.head.head_model import HeadModel
from flame_fitting.formats.landmarks import LandmarkSet


def no_landmark_status(cap: Capture, ls: LandmarkSet, subject: str, sequence: str, fitted: dict[int, FrameStatus]
                       ) -> dict[int, FrameStatus]:
    """"skipped" / "no_landmarks" status of every capture frame of the sequence that `fitted` lacks (no view of it
    has landmarks, so the fitter never saw it); the note says why each view has none."""
    t = ls.table
    out = {}
    for f in cap.frames(subject, sequence):
        if f in fitted:
            continue
        rows = t[(t.subject == subject) & (t.sequence == sequence) & (t.frame == f)]
        why = Counter(r if r else "not used" for r in rows.reason[~rows.detected.to_numpy(bool)])
        note = ("no view detected a face: " + ", ".join(f"{k} ×{n}" for k, n in sorted(why.items())) if len(rows)
                else "the landmark set has no record of this frame (run the landmarks stage again)")
        out[int(f)] = FrameStatus(int(f), "skipped", "no_landmarks", note)
    return out


def fit_capture_sequence(cap: Capture, ls: LandmarkSet, model: HeadModel, cfg: FitConfig, subject: str, sequence: str,
                         cameras: dict | None = None, masks_skipped: list[dict] | None = None) -> SequenceFit:
    """`fit_sequence` of one sequence with what the capture adds: its masks (the silhouette term; the features'
    region) and, with `refine_cameras` and `camera_features`, the rig refined from its images first (features.py;
    `SequenceFit.camera_refinement` is then the feature solve's report, or the landmark solve's with the feature
    report under "features" when the images gave too few tracks). cameras: the calibration to start from (default:
    the capture's)."""
    want_masks = cfg.silhouette_weight > 0 or (cfg.refine_cameras and cfg.camera_features)
    masks = load_masks(cap, subject, sequence, masks_skipped) if want_masks else None
    given = cap.cameras(subject, sequence) if cameras is None else cameras
    cams, fit_cfg, features = feature_refined_cameras(cap, subject, sequence, given, masks, cfg)
    sil_masks = masks if cfg.silhouette_weight > 0 else None
    points = (frame_points(cap, subject, sequence, cams, cfg)
              if cfg.points_weight > 0 and (cfg.points_with_masks or not (sil_masks and any(sil_masks.values())))
              else None)
    fit = fit_sequence(model, cams, ls.for_sequence(subject, sequence), fit_cfg, progress=False,
                       masks=sil_masks, points=points, subject=subject, sequence=sequence)
    if features is not None:
        fit.camera_refinement = features if features["usable"] else {**(fit.camera_refinement or {}),
                                                                      "features": features}
    return fit


def fit_one_sequence(cap: Capture, ls: LandmarkSet, model: HeadModel, cfg: FitConfig, subject: str, sequence: str,
                     folder: Path, overlay_dir: Path | None, face_region: np.ndarray | None) -> dict:
    """Fit one sequence (cfg's silhouette mode resolved), write its files into `folder` (capture_results.py) and its
    overlays into `overlay_dir` (None: none); raises when the fit does. Returns the JSON record the capture's
    metrics are summed from: errors (gt vertex errors), median_px (`pack_medians`), statuses, n_fit, silhouette_used,
    masks_skipped, overlays_skipped, overlays (file names written) and `timing` (the fit's run times: returned, never
    written with the results, so a sequence's folder is the same bytes in every run)."""
    masks_skipped, overlays_skipped = [], []
    fit = fit_capture_sequence(cap, ls, model, cfg, subject, sequence, masks_skipped=masks_skipped)
    fit.status = dict(sorted({**fit.status, **no_landmark_status(cap, ls, subject, sequence, fit.status)}.items()))
    if all(s.status == "skipped" for s in fit.status.values()):  # nothing to hand to the uv stage: a failed unit
        why = sorted({s.note or s.reason for s in fit.status.values()})
        raise FitInputError(f"{subject}/{sequence}: no frame could be fitted ({'; '.join(why)[:400]})")
    overlays, written = {}, []
    if overlay_dir is not None:
        try:
            written = write_overlays(cap, subject, sequence, fit, model, ls, overlay_dir, skipped=overlays_skipped)
        except Exception as e:  # noqa: BLE001 - a picture never costs the fit
            overlays_skipped.append({"subject": subject, "sequence": sequence, "error": f"{type(e).__name__}: {e}"})
        overlays = {"overlays": [p.name for p in written], "overlays_skipped": overlays_skipped}
    save_sequence_fit(fit, folder, overlays)
    return {"errors": gt_vertex_errors(cap, subject, sequence, fit, face_region),
            "median_px": pack_medians(view_medians(fit.residuals)),
            "statuses": [{"subject": subject, "sequence": sequence, "frame": f, "status": s.status, "reason": s.reason}
                         for f, s in fit.status.items()],
            "n_fit": sum(s.status != "skipped" for s in fit.status.values()),
            "timing": {k: float(v) for k, v in fit.timing.items()},
            "silhouette_used": int(bool(fit.silhouette and fit.silhouette.get("used"))),
            "masks_skipped": masks_skipped, "overlays_skipped": overlays_skipped, "overlays": [p.name for p in written]}


def face_region_of(model: HeadModel) -> np.ndarray | None:
    """The stand-in's face-region vertex mask (standin_extras.npz), None for other head models."""
    extras = Path(model.folder) / "standin_extras.npz" if getattr(model, "folder", None) else None
    if extras is None or not extras.is_file():
        return None
    return load_npz(extras, keys=("face_region",))["face_region"]


def fit_capture(cap: Capture, ls: LandmarkSet, model: HeadModel, cfg: FitConfig, out: Path,
                overlay_dir: Path | None = None, progress: bool = True, overwrite: bool = True) -> dict:
    """Fit every sequence; write `out` atomically (an existing `out` is replaced only if geoface wrote it and
    `overwrite`); return metrics (+ tables under private keys)."""
    out = Path(out)
    check_output_dir(out, [cap.root], overwrite, kind="fit")
    tmp = make_temp_dir(out)
    face_region = face_region_of(model)
    residuals, errors, failures, histories, timings, statuses = [], [], [], [], [], []
    sil_used, masks_skipped, overlays_skipped = 0, [], []
    cfg = resolve_silhouette_mode(cfg, cap)
    seqs = cap.sequences()
    for subject, sequence in tqdm(seqs, desc="fit", disable=not progress):
        try:
            rec = fit_one_sequence(cap, ls, model, cfg, subject, sequence, tmp / subject / sequence, overlay_dir,
                                   face_region)
        except Exception as e:  # one bad sequence is recorded, never fatal for the others
            failures.append({"subject": subject, "sequence": sequence, "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc(limit=3)})
            continue
        masks_skipped += rec["masks_skipped"]
        overlays_skipped += rec["overlays_skipped"]
        residuals.append(pd.read_parquet(tmp / subject / sequence / "residuals.parquet").assign(subject=subject,
                                                                                               sequence=sequence))
        histories.append(pd.read_csv(tmp / subject / sequence / "history.csv").assign(subject=subject,
                                                                                     sequence=sequence))
        errors += rec["errors"]
        sil_used += rec["silhouette_used"]
        timings.append((rec["timing"].get("total_s", np.nan), rec["n_fit"]))
        statuses += rec["statuses"]
    (tmp / "failures.json").write_text(json.dumps(failures, indent=1))
    if overlays_skipped:
        (tmp / "overlays_skipped.json").write_text(json.dumps(overlays_skipped, indent=1))
    if masks_skipped:
        (tmp / "masks_skipped.json").write_text(json.dumps(masks_skipped, indent=1))
    replace_dir(tmp, out, overwrite, kind="fit")
    if overlay_dir is not None:
        mark_output(overlay_dir, "fit previews")
    metrics = summarise([view_medians(r) for r in residuals], errors, failures, histories, timings, statuses)
    metrics["_residuals"] = (pd.concat(residuals, ignore_index=True) if residuals
                             else pd.DataFrame(columns=["median_px"]))
    metrics["mediapipe_embedding"] = embedding_used(model, cfg)
    metrics["silhouette_weight"] = float(cfg.silhouette_weight)
    metrics["silhouette_mode"] = cfg.silhouette_mode
    metrics["silhouette_sequences"] = int(sil_used)  # sequences fitted with the silhouette term (masks found)
    metrics["masks_skipped"] = len(masks_skipped)     # unreadable masks (listed in <out>/masks_skipped.json)
    metrics["overlays_skipped"] = len(overlays_skipped)  # overlay pictures not made (<out>/overlays_skipped.json)
    return metrics


def resolve_silhouette_mode(cfg: FitConfig, cap: Capture) -> FitConfig:
    """cfg with silhouette_mode "auto" resolved: synthetic captures' masks are renders of the head model itself
    (two_sided), every other source's masks also cover hair / neck / shoulders (inside: one-sided)."""
    if cfg.silhouette_mode != "auto":
        return cfg
    return replace(cfg, silhouette_mode="two_sided" if cap.info.get("source") == "synthetic" else "inside")


def embedding_used(model: HeadModel, cfg: FitConfig) -> str:
    """Which MediaPipe embedding `fit_sequence` fits `model` with under `cfg`: "calibrated" | "original"."""
    return "calibrated" if cfg.calibrated_embedding and model.has_calibrated_embedding else "original"
