"""The canonical capture format: every capture source (synthetic, NeRSemble, RenderMe-360,
COLMAP, transforms.json, folder) writes this, every later stage reads only this.

Layout (see docs/capture_format.md):
    <root>/capture.json                         format marker, source, version_id (capture_version.py), free-form info
    <root>/manifest.parquet                     one row per image (MANIFEST_COLUMNS, plus optional extras)
    <root>/<subject>/<sequence>/cameras.json    {"convention": "opencv", "units": "m", "cameras": {name: Camera.to_dict()}}
    <root>/<subject>/<sequence>/<frame:05d>/<camera>.png
    <root>/<subject>/<sequence>/<frame:05d>/masks/<camera>.png   (optional)

`CaptureWriter` writes into a temporary sibling directory and renames it into place on `close()`,
so an interrupted run never leaves a half-written capture. `load_capture` validates (capture_checks.py): manifest,
cameras, and every image file's real size (read from its header only, `image_size`) against its camera.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from flame_fitting.core.arrays import load_npz, read_parquet_table
from flame_fitting.core.names import name_key, name_problem, terminal_safe
from flame_fitting.geometry.camera import Camera
from flame_fitting.core import readers
from flame_fitting.core.fileio import check_output_dir, make_temp_dir, replace_dir, sha256_file, write_image, write_json

from .capture_checks import (CaptureError, check_image_files, check_manifest_cameras, check_manifest_paths,
                             check_manifest_twins, check_twin, json_type, load_cameras, read_json_object)
from .capture_order import in_canonical_order
from .capture_splits import check_image_split, check_sequence_splits, check_split_values
from .capture_version import CaptureIndex, make_index, masks_without_hash

FORMAT = "geoface-capture"
VERSION = 1
MANIFEST_COLUMNS = ["subject", "sequence", "frame", "camera", "path", "width", "height", "sha256", "split", "source"]


def frame_dir(subject: str, sequence: str, frame: int) -> str:
    return f"{subject}/{sequence}/{int(frame):05d}"


def read_image(path: Path) -> np.ndarray:
    """(H,W,3) uint8 RGB; raises CaptureError naming the file if it is missing or unreadable."""
    return readers.read_image(path, error=CaptureError)


def read_gt_landmarks(path: Path) -> dict:
    """The MediaPipe ground truth in a synthetic capture's gt.npz (manifest column gt_path): {"cameras": names,
    "p": (C, 478, 2) projections, "vis": (C, 478) visibility}; CaptureError naming the file when it is missing,
    unreadable (truncated, object arrays) or lacks them."""
    z = load_npz(path, CaptureError, keys=("cameras", "lmk_mp_2d", "lmk_mp_visible"))
    return {"cameras": [str(c) for c in z["cameras"].ravel()], "p": z["lmk_mp_2d"], "vis": z["lmk_mp_visible"]}


class CaptureWriter:
    """Writes a capture atomically: `with CaptureWriter(root, source="synthetic") as w: ...`.

    `root` is checked before anything is written (fileio.check_output_dir): it must not equal or contain one of
    `inputs`, and an existing non-empty `root` is replaced only if geoface wrote it and `overwrite` is set. Refused
    before they are written: names load_capture refuses as twins (capture_checks.check_manifest_twins: a subject's or
    sequence's at set_cameras, a camera's at add_image), an image of another split than its sequence's images."""

    def __init__(self, root: Path | str, source: str, info: dict | None = None, image_ext: str = ".png",
                 overwrite: bool = True, inputs: tuple = ()):
        self.root = Path(root)
        self.overwrite, self.inputs = overwrite, tuple(inputs)
        check_output_dir(self.root, self.inputs, overwrite, kind="capture")
        self.tmp = make_temp_dir(self.root)
        self.source, self.info, self.ext = source, dict(info or {}), image_ext
        self.rows: list[dict] = []
        self._cameras: dict[tuple[str, str], dict[str, Camera]] = {}
        self._folded: dict[tuple, str] = {}  # the twin rule's keys (core.names.name_key) -> the name written as it
        self._splits: dict[tuple[str, str], str] = {}  # (subject, sequence) -> the split of its images

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def work_dir(self) -> Path:
        """Where files go while writing (use for extra outputs that belong inside the capture)."""
        return self.tmp

    def set_cameras(self, subject: str, sequence: str, cameras: dict[str, Camera]) -> None:
        for what, value in [("subject", subject), ("sequence", sequence)] + [("camera", c) for c in cameras]:
            why = name_problem(value)
            if why:  # a reader's names come from the source's files: one of them cannot be a folder or file name
                raise CaptureError(f"{subject}/{sequence}: {what} {value!r} {why}")
        path = self.tmp / subject / sequence / "cameras.json"
        where = self.root / subject / sequence / "cameras.json"
        check_twin(self._folded, "subject", subject, (name_key(subject),), where, (), "folder")
        check_twin(self._folded, "sequence", sequence, (subject, name_key(sequence)), where, (subject,), "folder")
        self._cameras[(subject, sequence)] = dict(cameras)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_cameras(path, cameras)

    def add_image(self, subject: str, sequence: str, frame: int, camera: str, rgb: np.ndarray, split: str = "train",
                  mask: np.ndarray | None = None, **extra) -> dict:
        """Store one image (H,W,3) uint8 RGB (+ optional (H,W) uint8 mask). Returns its manifest row."""
        cams = self._cameras.get((subject, sequence))
        if cams is None or camera not in cams:
            raise CaptureError(f"{subject}/{sequence}: no camera {camera!r} set before adding its image")
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise CaptureError(f"{subject}/{sequence}/{frame}/{camera}: image must be (H,W,3) uint8, got {rgb.shape} {rgb.dtype}")
        cam = cams[camera]
        if rgb.shape[:2] != (cam.height, cam.width):
            raise CaptureError(
                f"{subject}/{sequence}/{frame}/{camera}: image is {rgb.shape[1]}×{rgb.shape[0]}, camera says {cam.width}×{cam.height}")
        rel = f"{frame_dir(subject, sequence, frame)}/{camera}{self.ext}"
        check_image_split(self._splits, subject, sequence, split, self.root / rel)
        check_twin(self._folded, "camera", camera, (subject, sequence, name_key(camera)), self.root / rel, (subject, sequence))
        write_image(self.tmp / rel, rgb)
        row = dict(subject=subject, sequence=sequence, frame=int(frame), camera=camera, path=rel,
                   width=cam.width, height=cam.height, sha256=sha256_file(self.tmp / rel), split=split,
                   source=self.source, **extra)
        if mask is not None:
            mrel = f"{frame_dir(subject, sequence, frame)}/masks/{camera}.png"
            write_image(self.tmp / mrel, mask)
            row["mask_path"] = mrel
            row["mask_sha256"] = sha256_file(self.tmp / mrel)
        self.rows.append(row)
        return row

    def close(self) -> Path:
        if not self.rows:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise CaptureError(f"{self.root}: no images were added, nothing to write")
        df = pd.DataFrame(self.rows)
        df = df.sort_values(["subject", "sequence", "frame", "camera"]).reset_index(drop=True)
        df.to_parquet(self.tmp / "manifest.parquet", index=False)
        cams = {k: json.loads((self.tmp / k[0] / k[1] / "cameras.json").read_text())["cameras"]
                for k in df.groupby(["subject", "sequence"]).groups}
        meta = {"format": FORMAT, "version": VERSION, "source": self.source, "n_images": len(df),
                "version_id": make_index(str(self.root), df, cams).version, **self.info}
        (self.tmp / "capture.json").write_text(json.dumps(meta, indent=2, default=str))
        replace_dir(self.tmp, self.root, self.overwrite, self.inputs, kind="capture")
        return self.root


def save_cameras(path: Path, cameras: dict[str, Camera]) -> None:
    data = {"convention": "opencv", "units": "m", "cameras": {n: c.to_dict() for n, c in cameras.items()}}
    write_json(path, data, indent=1)


@dataclass
class Capture:
    """A validated capture on disk: `manifest` one row per image; `cameras(subject, sequence)` {name: Camera}."""

    root: Path
    manifest: pd.DataFrame
    info: dict

    def cameras(self, subject: str, sequence: str) -> dict[str, Camera]:
        return load_cameras(self.root / subject / sequence / "cameras.json")

    def image(self, row) -> np.ndarray:
        """(H,W,3) uint8 RGB of a manifest row."""
        return read_image(self.root / row["path"])

    def sequences(self) -> list[tuple[str, str]]:
        return list(self.manifest.groupby(["subject", "sequence"]).groups.keys())

    @functools.cached_property
    def sequence_rows(self) -> dict[tuple[str, str], np.ndarray]:
        """(subject, sequence) -> the positions of its rows in `manifest`, ascending (manifest order): grouped once
        per capture (the manifest is not replaced once loaded), so taking every sequence's rows costs one pass over
        the manifest, not one per sequence (`formats.units.unit_manifest`)."""
        return self.manifest.groupby(["subject", "sequence"], observed=True).indices

    def frames(self, subject: str, sequence: str) -> list[int]:
        return sorted(self.manifest.frame.iloc[self.sequence_rows.get((subject, sequence), [])].unique().tolist())


def load_capture(root: Path | str, check_files: bool = True, check_hashes: bool = False) -> Capture:
    """Open and validate a capture, its manifest rows in canonical order whatever the file's (capture_order.py).
    Raises CaptureError naming the offending file. check_files: every image exists and its header's size is its
    camera's (an image whose header cannot be read is left to the stages, which record it as unreadable and go on)."""
    root = Path(root)
    try:  # OpenCV's binding crashes the process on such a path (readers.cv2_path): refuse it here, once
        str(root).encode("utf-8")
    except UnicodeEncodeError:
        raise CaptureError(f"{terminal_safe(str(root))}: the capture folder's path holds bytes that are not UTF-8, "
                           "which OpenCV cannot open; rename it") from None
    meta_path, man_path = root / "capture.json", root / "manifest.parquet"
    if not meta_path.is_file():
        raise CaptureError(f"{meta_path}: missing (is {root} a geoface capture? a dataset in another layout is "
                           f"imported first: `geoface import SOURCE {root} --out CAPTURE`, docs/sources.md)")
    info = read_json_object(meta_path, "missing")
    if info.get("format") != FORMAT:
        raise CaptureError(f"{meta_path}: format is {info.get('format')!r}, expected {FORMAT!r}")
    if not man_path.is_file():
        raise CaptureError(f"{man_path}: missing")
    df = read_parquet_table(man_path, str(man_path), CaptureError)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise CaptureError(f"{man_path}: missing columns {missing}")
    if df.duplicated(["subject", "sequence", "frame", "camera"]).any():
        dup = df[df.duplicated(["subject", "sequence", "frame", "camera"])].iloc[0]
        raise CaptureError(f"{man_path}: duplicate row for {dup.subject}/{dup.sequence}/{dup.frame}/{dup.camera}")
    check_split_values(df, str(man_path))
    check_manifest_twins(df, str(man_path), check_manifest_paths(df, str(man_path)))
    group = check_sequence_splits(df, str(man_path))  # after the names: they are printed as they are
    known: dict[bytes, dict[str, Camera]] = {}
    check_manifest_cameras(df, root, lambda s, q: load_cameras(root / s / q / "cameras.json", known), group)
    cap = Capture(root=root, manifest=in_canonical_order(df, group), info=info)  # no result depends on row order
    if check_files or check_hashes:
        check_image_files(cap, hashes=check_hashes)
    return cap


def read_index(where: str, read: Callable[[str], bytes]) -> CaptureIndex:
    """The content index (capture_version.py) of the capture whose files `read(relative path) -> bytes` returns: a
    folder (`capture_index`) or any other file source (a DVC revision); `where` names it in messages. Raises
    CaptureError naming `where` (and the file) when it is not a geoface capture, a file is missing, or its manifest
    holds a name or path load_capture refuses (check_manifest_paths, check_manifest_twins)."""
    try:
        info = json.loads(read("capture.json"))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise CaptureError(f"{where}: not a geoface capture (no capture.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CaptureError(f"{where}: not a geoface capture (capture.json is not valid JSON: {e})") from None
    except RecursionError:
        raise CaptureError(f"{where}: not a geoface capture (capture.json: JSON nested too deeply)") from None
    if not isinstance(info, dict):
        raise CaptureError(f"{where}: not a geoface capture (capture.json: expected a JSON object, got "
                           f"{json_type(info)})")
    if info.get("format") != FORMAT:
        raise CaptureError(f"{where}: not a geoface capture (capture.json format is {info.get('format')!r}, "
                           f"expected {FORMAT!r})")
    try:
        raw = read("manifest.parquet")
    except FileNotFoundError:
        raise CaptureError(f"{where}/manifest.parquet: missing") from None
    df = read_parquet_table(io.BytesIO(raw), f"{where}/manifest.parquet", CaptureError)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise CaptureError(f"{where}/manifest.parquet: missing columns {missing}")
    check_manifest_twins(df, f"{where}/manifest.parquet", check_manifest_paths(df, f"{where}/manifest.parquet"))
    cams, masks = {}, {}
    for subject, sequence in df.groupby(["subject", "sequence"]).groups:
        rel = f"{subject}/{sequence}/cameras.json"
        try:
            data = json.loads(read(rel))
        except FileNotFoundError:
            raise CaptureError(f"{where}/{rel}: cameras file is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CaptureError(f"{where}/{rel}: not a cameras file ({e})") from None
        except RecursionError:
            raise CaptureError(f"{where}/{rel}: not a cameras file (JSON nested too deeply)") from None
        if not isinstance(data, dict) or not isinstance(data.get("cameras"), dict):
            got = "a JSON object without a 'cameras' mapping" if isinstance(data, dict) else json_type(data)
            raise CaptureError(f"{where}/{rel}: not a cameras file (expected a JSON object with a 'cameras' mapping, "
                               f"got {got})")
        cams[(subject, sequence)] = data["cameras"]
    for i, rel in masks_without_hash(df).items():  # captures written before the manifest held mask hashes
        try:
            masks[i] = hashlib.sha256(read(rel)).hexdigest()
        except FileNotFoundError:
            raise CaptureError(f"{where}/{rel}: mask file is missing") from None
    return make_index(where, df, cams, masks)


def capture_index(root: Path | str) -> CaptureIndex:
    """The content index of the capture folder `root` (read_index)."""
    root = Path(root)
    if not root.is_dir():
        raise CaptureError(f"{root}: not a geoface capture (not a folder)")

    def read(rel: str) -> bytes:
        path = root / rel
        if path.exists() and not path.is_file():  # a FIFO would block, /dev/zero never ends
            raise CaptureError(f"{path}: not a regular file")
        return path.read_bytes()

    return read_index(str(root), read)


def capture_version(root: Path | str) -> str:
    """The version id of the capture folder `root`: the one its writer recorded in capture.json (`version_id`), or
    computed from its files for a capture written before geoface recorded it (the same value)."""
    meta = Path(root) / "capture.json"
    try:
        info = json.loads(meta.read_text()) if meta.is_file() else {}  # (not a FIFO: it would block)
    except (OSError, ValueError, RecursionError):  # missing, unreadable, not JSON: capture_index says what is wrong
        info = {}
    stored = info.get("version_id") if isinstance(info, dict) else None
    return stored if isinstance(stored, str) and stored else capture_index(root).version
