"""The canonical capture format: every capture source (synthetic, NeRSemble, RenderMe-360,
COLMAP, transforms.json, folder) writes this, every later stage reads only this.

Layout (see docs/capture_format.md):
    <root>/capture.json                         format marker, source, version_id (capture_version.py), free-form info
    <root>/manifest.parquet                     one row per image (MANIFEST_COLUMNS, plus optional extras)
    <root>/<subject>/<sequence>/cameras.json    {"convention": "opencv", "units": "m", "cameras": {name: Camera.to_dict()}}
    <root>/<subject>/<sequence>/<frame:05d>/<camera>.png
    <root>/<subject>/<sequence>/<frame:05d>/masks/<camera>.png   (optional)

`CaptureWriter` writes into a temporary sibling directory and renames it into place on `close()`,
so an interrupted run never leaves a half-written capture. `load_capture` validates: manifest, cameras, and
every image file's real size (read from its header only, `image_size`) against its camera.
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
import pyarrow as pa
import pyarrow.compute as pc

from flame_fitting.core.arrays import load_npz, read_parquet_table
from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.names import name_problem, relpath_problem, terminal_safe
from flame_fitting.geometry.camera import Camera, CameraError
from flame_fitting.core import readers
from flame_fitting.core.fileio import check_output_dir, make_temp_dir, replace_dir, sha256_file, write_image, write_json
from flame_fitting.core.readers import check_declared_size, check_pixel_count, image_size

from .capture_version import CaptureIndex, make_index, masks_without_hash

FORMAT = "geoface-capture"
VERSION = 1
MANIFEST_COLUMNS = ["subject", "sequence", "frame", "camera", "path", "width", "height", "sha256", "split", "source"]
SPLITS = ("train", "val", "test")


class CaptureError(GeofaceError, ValueError):
    """Malformed capture: the message names the file and what is wrong."""


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

    `root` is checked before anything is written (fileio.check_output_dir): it must not equal or
    contain one of `inputs`, and an existing non-empty `root` is replaced only if geoface wrote it
    and `overwrite` is set."""

    def __init__(self, root: Path | str, source: str, info: dict | None = None, image_ext: str = ".png",
                 overwrite: bool = True, inputs: tuple = ()):
        self.root = Path(root)
        self.overwrite, self.inputs = overwrite, tuple(inputs)
        check_output_dir(self.root, self.inputs, overwrite, kind="capture")
        self.tmp = make_temp_dir(self.root)
        self.source, self.info, self.ext = source, dict(info or {}), image_ext
        self.rows: list[dict] = []
        self._cameras: dict[tuple[str, str], dict[str, Camera]] = {}

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
        self._cameras[(subject, sequence)] = dict(cameras)
        path = self.tmp / subject / sequence / "cameras.json"
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
        if split not in SPLITS:
            raise CaptureError(f"{subject}: split must be one of {SPLITS}, got {split!r}")
        rel = f"{frame_dir(subject, sequence, frame)}/{camera}{self.ext}"
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


_JSON_TYPES = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false",
               type(None): "null"}


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _read_bytes(path: Path, missing: str) -> bytes:
    """The bytes of `path`; CaptureError naming the file when it is missing (`PATH: {missing}`) or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CaptureError(f"{path}: {missing}") from None
    except OSError as e:
        raise CaptureError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_json_object(path: Path, missing: str, raw: bytes | None = None) -> dict:
    """The JSON object in `path` (whose bytes are `raw` when given); CaptureError naming the file when it is missing
    (`PATH: {missing}`), unreadable, not UTF-8 JSON, or another JSON type (`expected a JSON object, got a list`)."""
    try:
        data = json.loads((_read_bytes(path, missing) if raw is None else raw).decode("utf-8"))
    except UnicodeDecodeError:
        raise CaptureError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise CaptureError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CaptureError(f"{path}: expected a JSON object, got {_json_type(data)}")
    return data


def load_cameras(path: Path, known: dict[bytes, dict[str, Camera]] | None = None) -> dict[str, Camera]:
    """cameras.json -> {name: Camera}; CaptureError naming the file on any problem. `known`: the cameras of files
    already read, by content, filled in here (the sequences of a subject usually share one calibration: the same
    bytes are validated once; the returned dict is then shared, not to be changed)."""
    path = Path(path)
    raw = _read_bytes(path, "cameras file is missing")
    if known is not None and raw in known:
        return known[raw]
    data = _read_json_object(path, "cameras file is missing", raw)
    if data.get("convention", "opencv") != "opencv":
        raise CaptureError(f"{path}: convention must be 'opencv', got {data.get('convention')!r}")
    if data.get("units", "m") != "m":
        raise CaptureError(f"{path}: units must be 'm' (translations in metres), got {data.get('units')!r}")
    if not isinstance(data.get("cameras"), dict) or not data["cameras"]:
        raise CaptureError(f"{path}: no 'cameras' mapping")
    out = {}
    for name, d in data["cameras"].items():
        why = name_problem(name)
        if why:
            raise CaptureError(f"{path}: camera name {name!r} {why}")
        try:
            out[name] = Camera.from_dict(d, name=name)
        except (CameraError, TypeError, ValueError) as e:
            raise CaptureError(f"{path}: camera {name!r}: {e}") from None
    if known is not None:
        known[raw] = out
    return out


@dataclass
class Capture:
    """A validated capture on disk. `manifest` has one row per image."""

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
        m = self.manifest
        return sorted(m[(m.subject == subject) & (m.sequence == sequence)].frame.unique().tolist())


def load_capture(root: Path | str, check_files: bool = True, check_hashes: bool = False) -> Capture:
    """Open and validate a capture. Raises CaptureError naming the offending file. check_files: every image
    exists and its header's size is its camera's (an image whose header cannot be read is left to the stages,
    which record it as unreadable and go on)."""
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
    info = _read_json_object(meta_path, "missing")
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
    bad_split = set() if df.split.isin(SPLITS).all() else set(df.split) - set(SPLITS)
    if bad_split:
        raise CaptureError(f"{man_path}: unknown split values {sorted(bad_split)}")
    check_manifest_paths(df, str(man_path))
    cap = Capture(root=root, manifest=df, info=info)
    known: dict[bytes, dict[str, Camera]] = {}
    check_manifest_cameras(df, root, lambda s, q: load_cameras(root / s / q / "cameras.json", known))
    if check_files or check_hashes:
        check_image_files(cap, hashes=check_hashes)
    return cap


def check_image_files(cap: Capture, hashes: bool = False) -> None:
    """CaptureError naming the first image of `cap.manifest` that is missing or whose header gives another size than
    the manifest's (the manifest's size is its camera's: `load_capture`); with `hashes`, also one whose content hash
    differs from the manifest's; and one whose camera is larger than readers.MAX_IMAGE_PIXELS (the images and masks
    are decoded at that size: a hand-made capture's 12000×12000 camera is 432 MB an image). Only headers are read (an image whose header cannot be read is left to the stages,
    which record it as unreadable). The data stages check a sequence's images in the unit that reads them
    (`formats.units.unit_capture`), so a run whose units are all current opens no image."""
    for row in cap.manifest.itertuples():
        path = cap.root / row.path
        # the size every reader of the image and its mask will decode: a hand-made capture may declare any
        check_pixel_count((row.width, row.height), path, CaptureError)
        if not path.is_file():
            raise CaptureError(f"{path}: image file is missing")
        real = image_size(path)
        if real is None:  # no size read: a header PIL refuses as a decompression bomb is refused here, before OpenCV
            check_declared_size(path, path, CaptureError)  # stops a stage's unit with its raw assertion instead
        if real is not None and real != (row.width, row.height):
            cam_file = cap.root / row.subject / row.sequence / "cameras.json"
            raise CaptureError(f"{path}: image is {real[0]}×{real[1]} pixels but camera {row.camera!r} "
                               f"in {cam_file} is {row.width}×{row.height}")
        if hashes and sha256_file(path) != row.sha256:
            raise CaptureError(f"{path}: content hash differs from the manifest (file changed)")


PATH_COLUMNS = ("path", "mask_path", "gt_path")  # manifest columns holding file paths relative to the root


def check_manifest_paths(df: pd.DataFrame, where: str) -> None:
    """CaptureError unless every subject, sequence and camera of the manifest is a safe single name and every path
    column a relative path inside the capture (core/names.py): a hostile manifest could otherwise make a stage read
    files elsewhere, or write and delete outside its output folder (`out/<subject>/<sequence>`)."""
    for col in ("subject", "sequence", "camera"):
        for value in df[col].unique():
            why = name_problem(value)
            if why:
                raise CaptureError(f"{where}: {col} {value!r} {why}")
    for col in [c for c in PATH_COLUMNS if c in df.columns]:
        values = df[col]
        # a text column's suspects (`_path_suspects`) in manifest order, else every distinct value in that order: the
        # first that `relpath_problem` refuses is the first of the column's values it refuses
        maybe = values.iloc[_path_suspects(values)] if isinstance(values.dtype, pd.StringDtype) else values
        for value in maybe.dropna().unique():
            why = relpath_problem(value)
            if why:
                raise CaptureError(f"{where}: {col} {value!r} {why}")


def _path_suspects(values: pd.Series) -> np.ndarray:
    """Positions (ascending) of the text values that `relpath_problem` may refuse, every refused one among them: the
    values one of whose '/'-separated parts it refuses on its own (an empty, '.' or '..' part, a backslash, NUL or
    unsafe character; an absolute path's first part is empty, a drive's 'C:'), each distinct part checked once (a
    capture's 1.6 million paths have a few thousand). Nulls are not paths (as `dropna`)."""
    text = pc.cast(pa.array(values), pa.large_string())
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    parts = pc.split_pattern(text, "/")
    flat, parent = pc.list_flatten(parts), pc.list_parent_indices(parts).to_numpy()
    distinct = pc.unique(flat)
    refused = np.array([relpath_problem(p) is not None for p in distinct.to_pylist()], dtype=bool)
    return np.unique(parent[refused[pc.index_in(flat, value_set=distinct).to_numpy()]])


_EXACT = 2 ** 53  # sizes a float64 compares exactly with an integer


def _compares_exactly(dtype) -> bool:
    """Whether numpy compares a column of `dtype` with int64 sizes below _EXACT as Python compares the numbers."""
    return isinstance(dtype, np.dtype) and (dtype.kind in "if" or (dtype.kind == "u" and dtype.itemsize < 8))


def check_manifest_cameras(df: pd.DataFrame, root: Path, cameras: Callable[[str, str], dict[str, Camera]]) -> None:
    """CaptureError naming the image of the first manifest row whose camera is not in its sequence's cameras.json, or
    whose width and height are not that camera's; sequences in `groupby` order (sorted), rows in manifest order
    within each; a sequence's cameras (`cameras(subject, sequence)`) are read before its rows are checked, so a bad
    cameras.json is reported where its sequence comes. Each sequence's rows are compared as whole columns against
    its cameras (each camera name looked up once); only a row that fails that is checked on its own, as before."""
    group = df.groupby(["subject", "sequence"]).ngroup().to_numpy()  # numbered in iteration order
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(group.max(initial=-1) + 2))
    firsts = order[starts[:-1]]
    keys = zip(df["subject"].iloc[firsts].tolist(), df["sequence"].iloc[firsts].tolist())
    codes, names = pd.factorize(df["camera"])
    names = names.tolist()
    width, height = df["width"].to_numpy(), df["height"].to_numpy()
    numeric = _compares_exactly(df["width"].dtype) and _compares_exactly(df["height"].dtype)
    for g, (subject, sequence) in enumerate(keys):
        rows = order[starts[g]:starts[g + 1]]
        cams = cameras(subject, sequence)
        used, inverse = np.unique(codes[rows], return_inverse=True)
        cam = [cams.get(names[c]) for c in used]
        known = np.array([c is not None and max(c.width, c.height) < _EXACT for c in cam], dtype=bool)
        size = np.array([(c.width, c.height) if k else (-1, -1) for c, k in zip(cam, known)], dtype=np.int64)[inverse]
        fine = known[inverse] & (width[rows] == size[:, 0]) & (height[rows] == size[:, 1]) if numeric else \
            np.zeros(len(rows), dtype=bool)
        if not fine.all():
            _check_rows(df.iloc[rows[~fine]], cams, root / subject / sequence / "cameras.json", root)


def _check_rows(rows: pd.DataFrame, cams: dict[str, Camera], cam_file: Path, root: Path) -> None:
    """The row-by-row check of `check_manifest_cameras`, in the order of `rows`."""
    for row in rows.itertuples():
        cam = cams.get(row.camera)
        if cam is None:
            raise CaptureError(f"{root / row.path}: camera {row.camera!r} is not in {cam_file}")
        if (cam.width, cam.height) != (row.width, row.height):
            raise CaptureError(f"{root / row.path}: manifest size {row.width}×{row.height} differs from camera "
                               f"{row.camera!r} ({cam.width}×{cam.height}) in {cam_file}")


def read_index(where: str, read: Callable[[str], bytes]) -> CaptureIndex:
    """The content index (capture_version.py) of the capture whose files `read(relative path) -> bytes` returns: a
    folder (`capture_index`) or any other file source (a DVC revision); `where` names it in messages. Raises
    CaptureError naming `where` (and the file) when it is not a geoface capture or a file is missing."""
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
                           f"{_json_type(info)})")
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
    check_manifest_paths(df, f"{where}/manifest.parquet")
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
            got = "a JSON object without a 'cameras' mapping" if isinstance(data, dict) else _json_type(data)
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
