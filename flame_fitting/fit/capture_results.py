"""What the capture-level fit writes per sequence, and the scores and metrics taken from it.

`save_sequence_fit` writes one sequence's folder:
    <out>/<subject>/<sequence>/fit.npz        `SequenceFit.stacked()`: frame (T,), ok (T,), shape (T,S), expr (T,E),
                                              jaw_pose, neck_pose (T,3), eye_pose (T,6), global_orient, transl (T,3),
                                              vertices (T,V,3) world (skipped frames are absent)
    <out>/<subject>/<sequence>/cameras.json   the (refined) cameras, canonical form
    <out>/<subject>/<sequence>/residuals.parquet   per (frame, camera) reprojection statistics
    <out>/<subject>/<sequence>/history.csv    cost per LM iteration
    <out>/<subject>/<sequence>/status.json    per-frame status with reasons (skipped / diverged), notes,
                                              silhouette term summary (used, masks, samples, median px),
                                              overlays written / skipped
`write_overlays` draws the preview pictures; `gt_vertex_errors` scores a fit against a synthetic capture's ground
truth; `view_medians` / `pack_medians` / `unpack_medians` carry the reprojection errors in a fit unit's record, and
`summarise` sums the records into the fit metrics. The orchestration that calls them is `capture.py`.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd

from flame_fitting.core.arrays import load_npz
from flame_fitting.core.fileio import atomic_write, write_csv, write_text
from flame_fitting.formats.capture import Capture, save_cameras
from flame_fitting.fit import SequenceFit
from flame_fitting.fit.overlay import overlay_png
from flame_fitting.head.head_model import HeadModel
from flame_fitting.formats.landmarks import LandmarkSet


def save_sequence_fit(fit: SequenceFit, folder: Path, extra: dict | None = None) -> None:
    """Write one sequence's outputs (module docstring); `extra` entries are added to status.json."""
    folder.mkdir(parents=True, exist_ok=True)
    # each file atomically (core/fileio.py), as the bytes pandas / numpy / json wrote before (the fit's DVC hashes)
    stacked = fit.stacked()
    atomic_write(folder / "fit.npz", lambda fh: np.savez(fh, **stacked))
    save_cameras(folder / "cameras.json", fit.cameras)
    atomic_write(folder / "residuals.parquet", lambda fh: fit.residuals.to_parquet(fh, index=False))
    write_csv(folder / "history.csv", fit.history)
    if fit.noise is not None:  # the landmark noise model the second solve used (per group σ̂, weight)
        write_csv(folder / "noise_model.csv", fit.noise)
    status = {"frames": {str(f): {"status": s.status, "reason": s.reason, "note": s.note} for f, s in fit.status.items()},
              "converged": bool(fit.converged), "silhouette": fit.silhouette,
              "points": fit.points,
              "camera_refinement": fit.camera_refinement, **(extra or {})}
    write_text(folder / "status.json", json.dumps(status, indent=1, default=str))


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
