"""Fit the head model to every sequence of a capture, write the results, score them.

`fit_one_sequence` is one sequence's work: the `fit` stage and `geoface fit` run it as a work unit per sequence
(flame_fitting/fit/run.py, core/units.py); `fit_capture` runs it over a whole capture in memory (the API). Output
folder layout:
    <out>/<subject>/<sequence>/fit.npz        `SequenceFit.stacked()`: frame (T,), ok (T,), shape (T,S), expr (T,E),
                                              jaw_pose, neck_pose (T,3), eye_pose (T,6), global_orient, transl (T,3),
                                              vertices (T,V,3) world (skipped frames are absent)
    <out>/<subject>/<sequence>/cameras.json   the (refined) cameras, canonical form
    <out>/<subject>/<sequence>/residuals.parquet   per (frame, camera) reprojection statistics
    <out>/<subject>/<sequence>/history.csv    cost per LM iteration
    <out>/<subject>/<sequence>/status.json    per-frame status with reasons (skipped / diverged), notes,
                                              silhouette term summary (used, masks, samples, median px),
                                              overlays written / skipped
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

import base64
import json
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from flame_fitting.core.arrays import load_npz
from flame_fitting.formats.capture import Capture, save_cameras
from flame_fitting.core.fileio import OutputError, check_output_dir, make_temp_dir, mark_output, replace_dir
from flame_fitting.core.readers import cv2_path, image_size
from flame_fitting.fit import FitConfig, SequenceFit, fit_sequence
from flame_fitting.fit.features import feature_refined_cameras, frame_points
from flame_fitting.fit.overlay import overlay_png
from flame_fitting.fit.observations import FitInputError
from flame_fitting.fit.report import FrameStatus
from flame_fitting.head.head_model import HeadModel
from flame_fitting.formats.landmarks import LandmarkSet


def save_sequence_fit(fit: SequenceFit, folder: Path, extra: dict | None = None) -> None:
    """Write one sequence's outputs (module docstring); `extra` entries are added to status.json."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "fit.npz", **fit.stacked())
    save_cameras(folder / "cameras.json", fit.cameras)
    fit.residuals.to_parquet(folder / "residuals.parquet", index=False)
    fit.history.to_csv(folder / "history.csv", index=False)
    if fit.noise is not None:  # the landmark noise model the second solve used (per group σ̂, weight)
        fit.noise.to_csv(folder / "noise_model.csv", index=False)
    status = {"frames": {str(f): {"status": s.status, "reason": s.reason, "note": s.note} for f, s in fit.status.items()},
              "converged": bool(fit.converged), "silhouette": fit.silhouette,
              "points": fit.points,
              "camera_refinement": fit.camera_refinement, **(extra or {})}
    (folder / "status.json").write_text(json.dumps(status, indent=1, default=str))


def gt_vertices(cap: Capture, subject: str, sequence: str, frame: int) -> np.ndarray | None:
    """(V, 3) ground-truth vertices of one frame of a synthetic capture (its gt.npz), None when it has none."""
    m = cap.manifest
    if "gt_path" not in m.columns:
        return None
    sel = m[(m.subject == subject) & (m.sequence == sequence) & (m.frame == frame)]
    if sel.empty or not isinstance(sel.gt_path.iat[0], str):
        return None
    return load_npz(cap.root / sel.gt_path.iat[0], keys=("vertices",))["vertices"]


def gt_vertex_errors(cap: Capture, subject: str, sequence: str, fit: SequenceFit, face_region: np.ndarray | None
                     ) -> list[dict]:
    """Per fitted frame: mean vertex error (mm) against the synthetic ground truth, whole head and face region.
    World-space (pose errors count) — the capture's cameras define the world for both."""
    rows = []
    for f, verts in fit.vertices.items():
        gt = gt_vertices(cap, subject, sequence, f)
        if gt is None or gt.shape != verts.shape:
            continue
        d = np.linalg.norm(verts.astype(np.float64) - gt, axis=1) * 1e3
        rows.append({"subject": subject, "sequence": sequence, "frame": f, "vertex_error_mm": float(d.mean()),
                     "vertex_error_mm_face": float(d[face_region].mean()) if face_region is not None else np.nan})
    return rows


def write_overlays(cap: Capture, subject: str, sequence: str, fit: SequenceFit, model: HeadModel, ls: LandmarkSet,
                   out_dir: Path, n_views: int = 4, skipped: list[dict] | None = None) -> list[Path]:
    """PNG overlays (mesh + observed/fitted landmarks) on `n_views` views spread over the first fitted frame.
    A view whose overlay cannot be made (unreadable image, size differing from its camera, write error) is left
    out and recorded in `skipped` as {"subject", "sequence", "frame", "camera", "path", "error"}."""
    if not fit.vertices:
        return []
    frame = min(fit.vertices)
    m = cap.manifest
    rows = m[(m.subject == subject) & (m.sequence == sequence) & (m.frame == frame)].sort_values("camera")
    if "yaw_deg" in rows.columns:
        rows = rows.sort_values("yaw_deg")
    pick = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, min(n_views, len(rows))).round().astype(int))]
    obs = ls.for_sequence(subject, sequence).get(frame, {})
    faces = model.faces.cpu().numpy()
    out = []
    for row in pick.to_dict("records"):
        path = out_dir / f"{subject}_{sequence}_{frame:05d}_{row['camera']}.png"
        try:
            overlay_png(cap.image(row), fit.cameras[row["camera"]], fit.vertices[frame], faces,
                        obs.get(row["camera"]), fit.landmarks_2d(frame, row["camera"]), path)
        except Exception as e:  # noqa: BLE001 - a picture never costs the fit
            if skipped is not None:
                skipped.append({"subject": subject, "sequence": sequence, "frame": int(frame),
                                "camera": row["camera"], "path": str(cap.root / row["path"]),
                                "error": f"{type(e).__name__}: {e}"})
            continue
        out.append(path)
    return out


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
    """Fit one sequence (cfg's silhouette mode resolved), write its files into `folder` (module docstring) and its
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


def view_medians(residuals: pd.DataFrame) -> np.ndarray:
    """(n,) float64: the finite per-(frame, camera) median reprojection errors (px) of a residual table, in its row
    order: what the metrics' `reprojection_px_median` / `_p95` are taken over."""
    v = residuals.median_px.to_numpy(np.float64)
    return v[np.isfinite(v)]


def pack_medians(v: np.ndarray) -> str:
    """`view_medians` as the fit unit's record carries them (so the stage's metrics never re-read a kept sequence's
    residuals.parquet): base64 of little-endian float64, exact. A JSON list of a 150-frame, 16-view sequence's 2,400
    numbers (47 kB) takes 1.2 ms to parse, this string (26 kB) 0.02 ms, and `run_units` parses every unit's key file
    on every run."""
    return base64.b64encode(np.asarray(v, "<f8").tobytes()).decode("ascii")


def unpack_medians(s: str) -> np.ndarray:
    """The array `pack_medians` packed."""
    return np.frombuffer(base64.b64decode(s, validate=True), "<f8")


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


UNDECODABLE = "missing or not a decodable image; view fitted without its silhouette"


class FrameMasks(Mapping):
    """{camera: (H, W) uint8 mask} of one frame, each decoded from its file when it is asked for, so a sequence's
    masks are never all in memory at once (113 MB a frame at NeRSemble's 16 × 2200×3208; a 200-frame sequence held
    them all before). `get` of a file that does not decode gives None (that view has no silhouette term), recorded
    once in `skipped`."""

    def __init__(self, paths: dict[str, Path], skipped: list[dict] | None):
        self._paths, self._skipped, self._bad = paths, skipped, set()

    def __getitem__(self, camera: str) -> np.ndarray:
        import cv2

        path = self._paths[camera]  # KeyError: no mask for this view
        try:  # the header's size was checked against the camera's (load_masks)
            img = None if camera in self._bad else cv2.imread(cv2_path(path), cv2.IMREAD_GRAYSCALE)
        except OutputError:  # a name OpenCV would crash on (not UTF-8)
            img = None
        if img is None:
            if camera not in self._bad and self._skipped is not None:
                self._skipped.append({"path": str(path), "error": UNDECODABLE})
            self._bad.add(camera)
            raise KeyError(camera)
        return img

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def load_masks(cap: Capture, subject: str, sequence: str, skipped: list[dict] | None = None
               ) -> dict[int, FrameMasks] | None:
    """{frame: {camera: (H, W) uint8 mask}} of the capture's `mask_path` column (rows without one are absent), each
    mask decoded when it is used (`FrameMasks`), None when the capture has no masks for this sequence. A mask whose
    header is unreadable, or whose size is not its camera's, is left out (that view simply has no silhouette term)
    and recorded in `skipped` as {"path", "error"}; so is one that does not decode when it is used."""
    m = cap.manifest
    if "mask_path" not in m.columns:
        return None
    rows = m[(m.subject == subject) & (m.sequence == sequence)]
    cams = cap.cameras(subject, sequence)
    paths: dict[int, dict[str, Path]] = {}
    for r in rows.itertuples():
        if not isinstance(r.mask_path, str) or not r.mask_path:
            continue
        path = cap.root / r.mask_path
        size = image_size(path) if path.is_file() else None  # the header only: no pixels decoded here
        if size is None:
            if skipped is not None:
                skipped.append({"path": str(path), "error": UNDECODABLE})
            continue
        cam = cams.get(r.camera)
        if cam is not None and size != (cam.width, cam.height):
            if skipped is not None:
                skipped.append({"path": str(path), "error": f"mask is {size[0]}×{size[1]} but camera "
                                f"{r.camera!r} is {cam.width}×{cam.height}; view fitted without its silhouette"})
            continue
        paths.setdefault(int(r.frame), {})[r.camera] = path
    return {f: FrameMasks(p, skipped) for f, p in paths.items()} or None


def embedding_used(model: HeadModel, cfg: FitConfig) -> str:
    """Which MediaPipe embedding `fit_sequence` fits `model` with under `cfg`: "calibrated" | "original"."""
    return "calibrated" if cfg.calibrated_embedding and model.has_calibrated_embedding else "original"


def summarise(median_px, errors, failures, histories, timings, statuses) -> dict:
    """The fit metrics of the sequences' records: median_px, per sequence its views' median reprojection errors
    (`view_medians`); errors, statuses: the records' entries; histories: cost tables (the first is kept); timings:
    (total_s, frames fitted) per sequence (NaN: not fitted now)."""
    per_view = np.concatenate([np.zeros(0), *median_px])
    st = pd.DataFrame(statuses, columns=["subject", "sequence", "frame", "status", "reason"])
    total_s = sum(t for t, _ in timings if np.isfinite(t))  # the sequences fitted now (kept ones have no time)
    n_frames = sum(n for t, n in timings if np.isfinite(t))
    metrics = {
        "n_sequences": len(timings) + len(failures), "failed_sequences": len(failures),
        "frames_ok": int((st.status == "ok").sum()), "frames_skipped": int((st.status == "skipped").sum()),
        "frames_skipped_no_landmarks": int(((st.status == "skipped") & (st.reason == "no_landmarks")).sum()),
        "frames_diverged": int((st.status == "diverged").sum()),
        "reprojection_px_median": float(np.median(per_view)) if per_view.size else None,
        "reprojection_px_p95": float(np.percentile(per_view, 95)) if per_view.size else None,
        "s_per_frame": float(total_s / n_frames) if n_frames else None,
    }
    if errors:
        e = pd.DataFrame(errors)
        metrics["vertex_error_mm"] = float(e.vertex_error_mm.mean())
        if e.vertex_error_mm_face.notna().any():
            metrics["vertex_error_mm_face"] = float(e.vertex_error_mm_face.mean())
    metrics["_status"] = st
    metrics["_history"] = histories[0] if histories else pd.DataFrame()
    metrics["_failures"] = failures
    return metrics
