"""Landmarks of a whole capture: detect and score (the stored format and its reader/writer are in
`flame_fitting.formats.landmarks`), per sequence `<out>/<subject>/<sequence>/` (a work unit re-run only when its
images change, flame_fitting/core/units.py):
    detections.parquet  one row per manifest image: subject, sequence, frame, camera, path,
                        detected, reason, score, box_x0..box_y1, n_faces, multiple_faces, face_choice,
                        face_choice_px
    points.npy          (N,478,2) float32 pixels, row i = row i of detections.parquet, NaN if not detected
Each unit is written to a temporary folder and renamed. `detect_folder` is the `landmarks` stage's work (and `geoface
landmarks`); `geoface fit` uses `detect_capture`.

A view in which MediaPipe finds more than one face is flagged (`multiple_faces`). Which face of each view is the
subject is decided per frame by a consensus over its calibrated views (`flame_fitting.landmarks.faces`):
  face_choice "consistent"    a view with several faces keeps the one that agrees with the head most views agree on
                              (`face_choice_px`: its median landmark reprojection error, pixels)
  face_choice "inconsistent"  no face of the view agrees with the head most of the frame's views agree on (a poster,
                              a second person where the subject was missed): the view is recorded as not detected,
                              reason "inconsistent_face"
  face_choice "largest"       a view with several faces and no head two views agree on: the largest face is kept
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from flame_fitting.core.executor import ExecutorConfig, open_executor
from flame_fitting.core.fileio import check_output_dir, write_json
from flame_fitting.core.params import spec
from flame_fitting.core.unit_keys import Unit, code_digest, unit_key
from flame_fitting.core.units import run_units, write_unit_failures
from flame_fitting.formats.capture import Capture, CaptureError, capture_version, load_capture, read_gt_landmarks
from flame_fitting.formats.landmarks import KEYS, LandmarkSet, write_landmark_files
from flame_fitting.formats.lineage import write_lineage
from flame_fitting.formats.units import capture_unit_hashes, capture_units, unit_capture, unit_payload
from flame_fitting.landmarks.detector import band_means, detect_files, rates_by_yaw, results_to_arrays
from flame_fitting.landmarks.faces import choose_faces

INCONSISTENT = "inconsistent_face"  # the reason of a view whose faces agree with none the frame's views agree on


def detect_capture(cap: Capture, workers: int | None = None, progress: bool = True) -> LandmarkSet:
    """MediaPipe landmarks of every manifest image of `cap` (a `load_capture` Capture) on `workers` processes (None:
    the CPU count) -> LandmarkSet: `table` (one row per image: subject, sequence, frame, camera, detected, reason, …)
    and `points` (N, 478, 2) float32 pixels (centres at +0.5, NaN where not detected); `.for_sequence(subject,
    sequence)` gives {frame: {camera: (478, 2)}}, the observations of `fit_sequence`. Views with several faces keep
    the one `choose_faces` picks."""
    m = cap.manifest.reset_index(drop=True)
    paths = [cap.root / p for p in m.path]
    results = detect_files(paths, sizes=list(zip(m.width.astype(int), m.height.astype(int))), workers=workers,
                           progress=progress)
    choice, choice_px = np.full(len(m), "", object), np.full(len(m), np.nan, np.float32)
    multi = np.array([r.n_faces > 1 for r in results], bool)
    cameras = {}
    for (subject, sequence, _), sel in m.groupby(["subject", "sequence", "frame"]).indices.items():
        cams = cameras.setdefault((subject, sequence), cap.cameras(subject, sequence))
        picked = choose_faces(cams, {m.camera.iat[i]: results[i] for i in sel})
        for i in sel:
            if m.camera.iat[i] in picked:
                k, choice[i], choice_px[i] = picked[m.camera.iat[i]]
                results[i] = results[i].with_face(k) if k >= 0 else results[i].dropped(INCONSISTENT)
    arr = results_to_arrays(results)
    table = m[KEYS + ["path"]].copy()
    table["detected"] = arr["detected"]
    table["reason"] = arr["reason"]
    table["score"] = arr["score"]
    for k, name in enumerate(["box_x0", "box_y0", "box_x1", "box_y1"]):
        table[name] = arr["box"][:, k]
    table["n_faces"] = arr["n_faces"]
    table["multiple_faces"] = multi
    table["face_choice"] = choice.astype(str)
    table["face_choice_px"] = choice_px
    return LandmarkSet(table, arr["points"])


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
            gt = read_gt_landmarks(cap.root / row.gt_path)
            gt_cache = {row.gt_path: gt}  # rows are sorted by frame: keep one frame in memory
        if row.camera not in gt["cameras"]:
            raise CaptureError(f"{cap.root / row.gt_path}: no ground truth for camera {row.camera!r}")
        v = gt["cameras"].index(row.camera)
        vis = gt["vis"][v]
        if vis.any():
            err[i] = float(np.linalg.norm(ls.points[i][vis] - gt["p"][v][vis], axis=1).mean())
    return err


def landmark_metrics(cap: Capture, ls: LandmarkSet, gt_err: np.ndarray | None = None) -> dict:
    """Detection rate overall and per |yaw| band, failure reasons, and pixel error vs ground truth if any
    (`gt_err`: `gt_landmark_errors`, already computed). `ls` has the rows of `cap.manifest`, in its order."""
    if gt_err is None and "yaw_deg" in cap.manifest.columns:
        gt_err = gt_landmark_errors(cap, ls)
    return summaries_metrics(cap.manifest, [table_summary(ls.table)], gt_err)


def table_summary(table: pd.DataFrame) -> dict:
    """What `summaries_metrics` needs of a detection table (a landmarks unit's record carries it, so the stage's
    metrics open no kept sequence's detections.parquet): `detected`, one '0'/'1' per row in row order (the yaw
    bands pair each view with its yaw); `failures` {reason: views} of the undetected rows and, with the
    multiple_faces column, `multiple_faces` (views) and `multiple_faces_choice` {choice: views}, each dict in order
    of first appearance (so that counts merged over units sort as value_counts over the concatenated tables)."""
    det = table.detected.to_numpy(bool)
    out = {"detected": (det.astype(np.uint8) + ord("0")).tobytes().decode("ascii"),
           "failures": dict(Counter(str(v) for v in table.reason[~det].dropna()))}
    if "multiple_faces" in table.columns:
        many = table.multiple_faces.to_numpy(bool)
        out["multiple_faces"] = int(many.sum())
        out["multiple_faces_choice"] = dict(Counter(str(v) for v in table.face_choice[many].dropna()))
    return out


def _merged_counts(counts: list[dict]) -> dict[str, int]:
    """{value: count} summed over `counts` (dicts in order of first appearance), most frequent first, ties in order
    of first appearance: pandas' value_counts of the concatenated values."""
    total = Counter()
    for c in counts:
        total.update(c)
    return dict(total.most_common())  # a stable sort: ties keep their order of first appearance


def summaries_metrics(manifest: pd.DataFrame, summaries: list[dict], gt_err: np.ndarray | None = None) -> dict:
    """`landmark_metrics` of the units whose `table_summary` are `summaries` (in manifest order; `manifest`: their
    rows, `gt_err`: their views' ground-truth errors, in its order)."""
    det = np.concatenate([np.zeros(0, bool), *(np.frombuffer(s["detected"].encode("ascii"), np.uint8) == ord("1")
                                               for s in summaries)])
    out: dict = {"n_images": int(len(det)), "n_detected": int(det.sum()),
                 "detection_rate": float(det.mean()) if len(det) else None,
                 "failures": _merged_counts([s["failures"] for s in summaries])}
    if summaries and all("multiple_faces" in s for s in summaries):  # views with several faces, the kept one's choice
        out["multiple_faces"] = sum(s["multiple_faces"] for s in summaries)
        out["multiple_faces_choice"] = _merged_counts([s["multiple_faces_choice"] for s in summaries])
    m = manifest.reset_index(drop=True)
    if "yaw_deg" in m.columns:
        yaw = m.yaw_deg.to_numpy(np.float64)
        for key, rate in rates_by_yaw(det, yaw).items():
            out[f"detection_rate_{key}"] = rate
        if gt_err is not None and np.isfinite(gt_err).any():
            out["pixel_error_mean"] = float(np.nanmean(gt_err))
            out.update({f"pixel_error_{k}": v for k, v in band_means(gt_err, yaw).items()})
    return out


def units_metrics(cap: Capture, records: dict[str, dict]) -> dict:
    """`summaries_metrics` of the units whose records (`detect_unit`'s, {"subject/sequence": record}) are in
    `records`, from the records alone (no kept sequence's detections.parquet is opened). Each unit's views are its
    sequence's manifest rows in manifest order (`Capture.sequence_rows`, grouped once), so its detections and errors
    meet their own rows' yaws even where the manifest interleaves sequences; the units in the order of their first
    row (the manifest's, not the key strings': 'a-b/x' < 'a/x'). One pass over the manifest, by sequence: the rows
    were taken by a Python loop over every row (tests/flame_fitting/test_landmark_metrics.py keeps it as the
    reference; benchmarks/landmark_metrics.py times both)."""
    rows = cap.sequence_rows
    done = sorted((k for k in rows if f"{k[0]}/{k[1]}" in records), key=lambda k: rows[k][0])
    ok = cap.manifest.iloc[np.concatenate([rows[k] for k in done]) if done else []].reset_index(drop=True)
    summaries = [records[f"{s}/{q}"] for s, q in done]
    err = np.concatenate([np.zeros(0), *(np.asarray(r["gt_error_px"], np.float64) for r in summaries)])
    return summaries_metrics(ok, summaries, err.astype(np.float32))


@dataclass
class LandmarksParams:
    workers: int = spec(2, "threads decoding and running FaceMesh (one graph each; the calling thread is one)", lo=1, hi=256)


def detect_folder(captures: Path | str, out: Path | str, cfg: LandmarksParams, metrics_path: Path | str | None = None,
                  overwrite: bool = True, executor: ExecutorConfig | None = None) -> dict:
    """The `landmarks` stage's work (also `geoface landmarks`): detect the images of the canonical capture at
    `captures` whose sequence changed since the last run (all of them the first time) into the landmark folder `out`
    (an existing one only if geoface wrote it and `overwrite`), one unit per sequence on `executor`; return (and
    write) the metrics of `landmark_metrics` over every sequence, plus the units run / kept / removed / failed
    (failed units are listed in `<out>/failures.json`)."""
    check_output_dir(out, [captures], overwrite, kind="landmarks")
    cap = load_capture(captures, check_files=False)  # each unit checks its own images (unit_capture)
    code = code_digest(*(ROOT / r for r in ROOMS))
    # `workers` is not in the key: the thread count changes no byte of a result (test_landmarks.py), so changing it
    # re-runs nothing (it re-ran every sequence)
    params = {k: v for k, v in asdict(cfg).items() if k != "workers"}
    units = [Unit(u.subject, u.sequence, unit_key("landmarks", capture=capture_unit_hashes(cap, u.subject, u.sequence),
                                                  params=params, code=code)) for u in capture_units(cap)]
    with open_executor(executor or ExecutorConfig(workers=1)) as ex:
        run = run_units(ex, partial(detect_unit, str(cap.root), cfg), units, out, "landmarks", inputs=[captures],
                        source=captures, payload=partial(unit_payload, cap))
    write_unit_failures(Path(out) / "failures.json", run)
    metrics = {"captures_version": capture_version(captures), **units_metrics(cap, run.records), **run.summary()}
    write_lineage(out, captures_version=metrics["captures_version"])  # the fit checks it is given this capture
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics


ROOT = Path(__file__).resolve().parents[1]  # flame_fitting/
ROOMS = ("__init__.py", "core", "geometry", "formats", "landmarks")  # the code a landmark unit's result depends on


def detect_unit(captures: str, cfg: LandmarksParams, unit: Unit, tmp: Path, extras: Path | None) -> tuple[dict, list]:
    """One landmarks unit (runs in a worker): detect one sequence's images into `tmp`; the record keeps what the
    stage's metrics need: the ground-truth errors (None where unknown) and the table's `table_summary`."""
    sub = unit_capture(captures, unit)
    ls = detect_capture(sub, workers=cfg.workers, progress=False)
    write_landmark_files(ls, tmp)
    err = gt_landmark_errors(sub, ls)
    return {"n_images": len(ls.table), "gt_error_px": [None if not np.isfinite(e) else float(e) for e in err],
            **table_summary(ls.table)}, []
