"""What a capture's files must be, checked when it is opened (`capture.load_capture`, the content index `capture.
read_index`) and by the unit that reads its images: `CaptureError`, the error of every check, naming the file and
what is wrong; cameras.json (`load_cameras`); the manifest's names and relative paths (`check_manifest_paths`), names
and paths that a case-insensitive file system folds into one (`check_manifest_twins`); each manifest row's camera and
size against its sequence's cameras.json (`check_manifest_cameras`); the image files (`check_image_files`).

The manifest checks work on whole columns (each distinct name, path part and camera once) and check a row on its own
only when it fails them: a capture of 1.6 million images (NeRSemble) is opened by four stages on every run. When
several rows are wrong, the first is reported, as a row-by-row check would (tests/flame_fitting/test_capture_checks.py
compares them with one).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.fileio import sha256_file
from flame_fitting.core.json_files import json_type, parse_json, read_bytes
from flame_fitting.core.names import name_key, name_problem, relpath_problem
from flame_fitting.core.readers import check_declared_size, check_pixel_count, image_size
from flame_fitting.geometry.camera import Camera, CameraError

if TYPE_CHECKING:
    from .capture import Capture


class CaptureError(GeofaceError, ValueError):
    """Malformed capture: the message names the file and what is wrong."""


MAX_CAPTURE_JSON_BYTES = 1 << 26  # 64 MiB: a camera's entry in cameras.json is ~0.6 KB, capture.json a few KB


def _read_bytes(path: Path, missing: str) -> bytes:
    """The bytes of `path`; CaptureError naming the file when it is missing (`PATH: {missing}`), not a regular file,
    larger than MAX_CAPTURE_JSON_BYTES or unreadable (json_files.read_bytes)."""
    return read_bytes(path, CaptureError, MAX_CAPTURE_JSON_BYTES, "capture's JSON file", missing)


def read_json_object(path: Path, missing: str, raw: bytes | None = None) -> dict:
    """The JSON object in `path` (whose bytes are `raw` when given); CaptureError naming the file when it is missing
    (`PATH: {missing}`), unreadable, too large, not UTF-8 JSON (nested too deeply included: json_files.parse_json),
    or another JSON type (`expected a JSON object, got a list`)."""
    data = parse_json(_read_bytes(path, missing) if raw is None else raw, path, CaptureError)
    if not isinstance(data, dict):
        raise CaptureError(f"{path}: expected a JSON object, got {json_type(data)}")
    return data


def load_cameras(path: Path, known: dict[bytes, dict[str, Camera]] | None = None) -> dict[str, Camera]:
    """cameras.json -> {name: Camera}; CaptureError naming the file on any problem. `known`: the cameras of files
    already read, by content, filled in here (the sequences of a subject usually share one calibration: the same
    bytes are validated once; the returned dict is then shared, not to be changed)."""
    path = Path(path)
    raw = _read_bytes(path, "cameras file is missing")
    if known is not None and raw in known:
        return known[raw]
    data = read_json_object(path, "cameras file is missing", raw)
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
            what = str(e) if str(e).startswith(f"camera {name!r}") else f"camera {name!r}: {e}"  # Camera's name it
            raise CaptureError(f"{path}: {what}") from None
    if known is not None:
        known[raw] = out
    return out


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


def check_manifest_paths(df: pd.DataFrame, where: str) -> dict:
    """CaptureError unless every subject, sequence and camera of the manifest is a safe single name and every path
    column a relative path inside the capture (core/names.py): a hostile manifest could otherwise make a stage read
    files elsewhere, or write and delete outside its output folder (`out/<subject>/<sequence>`). Returns the distinct
    values of each of those three columns, in manifest order, and under "parts" the path columns it split into parts
    (`_split_paths`; for `check_manifest_twins`)."""
    names: dict = {"parts": {}}
    for col in ("subject", "sequence", "camera"):
        names[col] = df[col].unique()
        for value in names[col]:
            why = name_problem(value)
            if why:
                raise CaptureError(f"{where}: {col} {value!r} {why}")
    for col in [c for c in PATH_COLUMNS if c in df.columns]:
        values = df[col]
        if col == "path" and values.isna().any():  # every row is an image: a null would reach a unit as `root / nan`
            row = df.iloc[int(values.isna().to_numpy().argmax())]
            raise CaptureError(f"{where}: path of {row.subject}/{row.sequence}/{row.frame}/{row.camera} is null "
                               "(every manifest row names its image)")
        # a text column's suspects (`_path_suspects`) in manifest order, else every distinct value in that order: the
        # first that `relpath_problem` refuses is the first of the column's values it refuses
        if isinstance(values.dtype, pd.StringDtype):
            names["parts"][col] = _split_paths(values)
            maybe = values.iloc[_path_suspects(*names["parts"][col])]
        else:
            maybe = values
        for value in maybe.dropna().unique():
            why = relpath_problem(value)
            if why:
                raise CaptureError(f"{where}: {col} {value!r} {why}")
    return names


TWIN_SCOPES = (("subject", (), "folder"), ("sequence", ("subject",), "folder"),
               ("camera", ("subject", "sequence"), "file"))  # a name, what it must differ from, what it becomes


def twin_message(col: str, name: str, other: str, owner: tuple = (), becomes: str = "file", other_col: str = "") -> str:
    """What a name (or path) `name` of `col` that differs from `other` (of `other_col`, default `col`) only by case or
    Unicode normalisation is, in the words of every check of the twin rule (load_capture, read_index, CaptureWriter);
    `owner`: the subject (and sequence) it belongs to."""
    of = f" of {'/'.join(owner)}" if owner else ""
    return (f"{col} {name!r}{of} differs from {other_col or col} {other!r} only by case or Unicode normalisation "
            f"(one {becomes} on macOS and Windows)")


def check_twin(seen: dict, col: str, name: str, key: tuple, file: Path, owner: tuple = (), becomes: str = "file") -> None:
    """A writer's twin rule (`CaptureWriter`): CaptureError naming `file` when `seen` holds another name of `col` under
    `key` (the scope and `name_key(name)`); else `name` is recorded there."""
    if (other := seen.setdefault((col, *key), name)) != name:
        raise CaptureError(f"{file}: {twin_message(col, name, other, owner, becomes)}")


def check_manifest_twins(df: pd.DataFrame, where: str, names: dict | None = None) -> None:
    """CaptureError naming the first subject (of the manifest), sequence (of its subject) or camera (of its sequence)
    whose name differs from an earlier one only by case or Unicode normalisation (core/names.py `name_key`: 'Cam' ~
    'cam', 'Jos\\u00e9' ~ 'Jose\\u0301'): one folder or file on macOS and Windows, so a capture read on Linux would
    break or merge them there (`geoface import` skips such a name: the twin rule of pipelines/common.py); then the
    first file path (`path`, `mask_path`, `gt_path`, any layout) that is another's twin (`_check_path_twins`). Names
    are text (`check_manifest_paths` first; `names`: the distinct values it returns). Each distinct name of a column is
    keyed once; the rows are read only when two names of the column are twins somewhere (a camera 'Cam1' of one
    sequence and 'cam1' of another may be)."""
    for col, scope, becomes in TWIN_SCOPES:
        keys: dict[str, list[str]] = {}
        for name in (names[col] if names else df[col].unique()):  # manifest order
            keys.setdefault(name_key(name), []).append(name)
        twins = [n for group in keys.values() if len(group) > 1 for n in group]
        if not twins:
            continue
        seen: dict[tuple, str] = {}
        for *owner, name in df.loc[df[col].isin(twins), [*scope, col]].drop_duplicates().itertuples(index=False):
            if (other := seen.setdefault((*owner, name_key(name)), name)) != name:
                raise CaptureError(f"{where}: {twin_message(col, name, other, tuple(owner), becomes)}")
    _check_path_twins(df, where, (names or {}).get("parts", {}))


def _check_path_twins(df: pd.DataFrame, where: str, split: dict) -> None:
    """CaptureError naming the first path (columns in PATH_COLUMNS order, each in manifest order) that differs from an
    earlier, different path only by case or Unicode normalisation: two rows' files that macOS and Windows store as one
    (a hand-written manifest need not follow the standard layout, whose names `check_manifest_twins` keys). Two such
    paths have as many '/'-separated parts and differ in a part whose key (`name_key`) the other's part shares, so
    only the distinct parts are keyed (a few thousand of NeRSemble's 1.6 million paths; `split`: {column:
    `_split_paths`} already made) and only the rows holding a part that has a twin are read."""
    cols = [c for c in PATH_COLUMNS if c in df.columns]
    split = {c: split[c] if c in split else _split_paths(df[c]) for c in cols}
    keys: dict[str, set] = {}
    for part in pc.unique(pa.chunked_array([split[c][2] for c in cols], pa.large_string())).to_pylist():
        keys.setdefault(name_key(part), set()).add(part)
    twins = [p for group in keys.values() if len(group) > 1 for p in group]
    if not twins:
        return
    seen: dict[str, tuple[str, str]] = {}
    for col in cols:
        flat, parent, _ = split[col]
        rows = np.unique(parent[pc.is_in(flat, value_set=pa.array(twins, pa.large_string())).to_numpy(
            zero_copy_only=False)])
        for value in df[col].iloc[rows].unique():  # manifest order
            other_col, other = seen.setdefault(name_key(value), (col, value))
            if other != value:
                raise CaptureError(f"{where}: {twin_message(col, value, other, other_col=other_col)}")


def _split_paths(values: pd.Series) -> tuple[pa.Array, np.ndarray, pa.Array]:
    """The '/'-separated parts of a column of text paths: every part (large strings), the position of the value each
    came from (ascending), and the distinct parts. Nulls have no parts."""
    text = pc.cast(pa.array(values, from_pandas=True), pa.large_string())
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    parts = pc.split_pattern(text, "/")
    flat = pc.list_flatten(parts)
    return flat, pc.list_parent_indices(parts).to_numpy(), pc.unique(flat)


def _path_suspects(flat: pa.Array, parent: np.ndarray, distinct: pa.Array) -> np.ndarray:
    """Positions (ascending) of the text values that `relpath_problem` may refuse, every refused one among them: the
    values one of whose '/'-separated parts (`_split_paths`) it refuses on its own (an empty, '.' or '..' part, a
    backslash, NUL or unsafe character; an absolute path's first part is empty, a drive's 'C:'), each distinct part
    checked once (a capture's 1.6 million paths have a few thousand). Nulls are not paths (as `dropna`)."""
    refused = np.array([relpath_problem(p) is not None for p in distinct.to_pylist()], dtype=bool)
    return np.unique(parent[refused[pc.index_in(flat, value_set=distinct).to_numpy()]])


_EXACT = 2 ** 53  # sizes a float64 compares exactly with an integer


def _compares_exactly(dtype) -> bool:
    """Whether numpy compares a column of `dtype` with int64 sizes below _EXACT as Python compares the numbers."""
    return isinstance(dtype, np.dtype) and (dtype.kind in "if" or (dtype.kind == "u" and dtype.itemsize < 8))


def check_manifest_cameras(df: pd.DataFrame, root: Path, cameras: Callable[[str, str], dict[str, Camera]],
                           group: np.ndarray | None = None) -> None:
    """CaptureError naming the image of the first manifest row whose camera is not in its sequence's cameras.json, or
    whose width and height are not that camera's; sequences in `groupby` order (sorted), rows in manifest order
    within each; a sequence's cameras (`cameras(subject, sequence)`) are read before its rows are checked, so a bad
    cameras.json is reported where its sequence comes. Each sequence's rows are compared as whole columns against
    its cameras (each camera name looked up once); only a row that fails that is checked on its own, as before.
    `group`: every row's sequence number in that order when already made (`capture_splits.check_sequence_splits`)."""
    if group is None:
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
