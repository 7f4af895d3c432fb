"""The landmarks stage's output format: one row per image in `detections.parquet` (KEYS, path, detected,
reason, score, box_*, n_faces, multiple_faces, face_choice, face_choice_px) and the (N, 478, 2) float32
MediaPipe points in `points.npy`, in the table's row order. Light (numpy + pandas): reading landmarks
needs no detector. The landmarks stage writes one such pair per sequence, `<out>/<subject>/<sequence>/` (a work
unit, flame_fitting/core/units.py); `load_landmarks` reads either layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flame_fitting.core.arrays import read_parquet_table
from flame_fitting.core.fileio import make_temp_dir, replace_dir
from flame_fitting.formats.capture import CaptureError

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


def save_landmarks(ls: LandmarkSet, out_dir: Path | str, overwrite: bool = True) -> Path:
    """Write `out_dir` atomically; an existing one is replaced only if geoface wrote it and `overwrite`."""
    out_dir = Path(out_dir)
    tmp = make_temp_dir(out_dir)
    write_landmark_files(ls, tmp)
    replace_dir(tmp, out_dir, overwrite, kind="landmarks")
    return out_dir


def write_landmark_files(ls: LandmarkSet, folder: Path) -> None:
    """detections.parquet + points.npy into `folder` (a temporary folder the caller renames into place)."""
    ls.table.to_parquet(folder / "detections.parquet", index=False)
    np.save(folder / "points.npy", ls.points)


def load_landmarks(out_dir: Path | str) -> LandmarkSet:
    """The landmarks folder the landmarks stage wrote (one pair of files, or one per `<subject>/<sequence>/`
    folder, concatenated in sorted order = manifest order); CaptureError naming the file when it is missing or its
    points do not match its table."""
    out_dir = Path(out_dir)
    folders = landmark_folders(out_dir)
    if folders != [out_dir]:  # the stage's layout: one folder per sequence
        sets = [load_landmarks(f) for f in folders]
        return LandmarkSet(pd.concat([s.table for s in sets], ignore_index=True),
                           np.concatenate([s.points for s in sets]).astype(np.float32, copy=False))
    tpath, ppath = out_dir / "detections.parquet", out_dir / "points.npy"
    for p in (tpath, ppath):
        if not p.is_file():
            raise CaptureError(f"{p}: missing (run the landmarks stage first)")
    table = read_parquet_table(tpath, str(tpath), CaptureError)
    try:
        points = np.load(ppath, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # truncated, not .npy, or an object array (never unpickled)
        raise CaptureError(f"{ppath}: not a readable .npy array ({type(e).__name__}: {e})") from None
    check_landmark_table(table, tpath)
    if points.shape != (len(table), 478, 2) or points.dtype.kind != "f":
        raise CaptureError(f"{ppath}: {points.dtype} points of shape {points.shape}, expected floats of shape "
                           f"{(len(table), 478, 2)} (one row per detection of {tpath.name})")
    points = points.astype(np.float32, copy=False)
    found = points[table["detected"].to_numpy()]
    finite = np.isfinite(found)
    if not finite.any(axis=(1, 2)).all() or (np.abs(found[finite]) > 1e6).any():
        raise CaptureError(f"{ppath}: a detected image has no finite landmark, or landmarks beyond 1e6 px")
    return LandmarkSet(table, points)


def load_landmark_tables(out_dir: Path | str) -> pd.DataFrame:
    """The `detections.parquet` tables of a landmarks folder (per-sequence folders concatenated in sorted order, as
    `load_landmarks`), without the points (those of a dataset the size of NeRSemble's are gigabytes)."""
    tables = []
    for tpath in (f / "detections.parquet" for f in landmark_folders(Path(out_dir))):
        if not tpath.is_file():
            raise CaptureError(f"{tpath}: missing (run the landmarks stage first)")
        tables.append(read_parquet_table(tpath, str(tpath), CaptureError))
        check_landmark_table(tables[-1], tpath)
    return pd.concat(tables, ignore_index=True)


def landmark_folders(out_dir: Path) -> list[Path]:
    """The folders of a landmarks folder that hold a detections.parquet + points.npy pair: its `<subject>/<sequence>/`
    units in sorted (= manifest) order, or `out_dir` itself (a single pair, or nothing yet)."""
    units = sorted(p.parent for p in out_dir.glob("*/*/detections.parquet"))
    return units if units and not (out_dir / "detections.parquet").is_file() else [out_dir]


def check_landmark_table(table: pd.DataFrame, path: Path) -> None:
    """CaptureError naming `path` unless the table has the KEYS and `detected` columns, `detected` is boolean and
    no (subject, sequence, frame, camera) appears twice (one would silently win)."""
    missing = [c for c in KEYS + ["detected"] if c not in table.columns]
    if missing:
        raise CaptureError(f"{path}: missing columns {missing}")
    if table["detected"].dtype != bool:
        raise CaptureError(f"{path}: column 'detected' is {table['detected'].dtype}, expected bool")
    if table.duplicated(KEYS).any():
        d = table[table.duplicated(KEYS)].iloc[0]
        raise CaptureError(f"{path}: two rows for {d.subject}/{d.sequence} frame {d.frame} camera {d.camera}")
