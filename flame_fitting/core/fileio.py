"""The one place the toolkit writes files: atomic writes with one temporary-name scheme, folders
replaced only when the toolkit wrote them, stale temporaries removed, hashing.

- `atomic_write(path, write)` / `write_bytes` / `write_text` / `write_json` / `write_csv` / `write_npz` /
  `write_png` / `write_image` / `write_ply` / `write_obj`: the data go to a temporary sibling (`temp_path`) that is
  renamed over `path` only when complete; `sha256_file` hashes a file.
- Output folders and temporaries: `output_dir(dst, ...)`, `make_temp_dir` + `replace_dir`, `check_output_dir`,
  `mark_output`, `temp_path`, `clean_stale`, ... are written in output_dirs.py (how folders are replaced) and
  temp_names.py (how temporaries are named) and re-exported here (`__all__`): every write is imported from here.
- Reading files the toolkit did not write (JSON, images, masks, image sizes): readers.py.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable

import cv2
import numpy as np

from flame_fitting.core.names import spreadsheet_safe
from flame_fitting.core.output_dirs import (MARKER, OutputError, check_output_dir, file_ancestor, is_toolkit_output,
                                            mark_output, nested, output_dir, output_kind, replace_dir,
                                            share_like_umask)
from flame_fitting.core.temp_names import TMP_TAG, clean_stale, make_temp_dir, temp_path

__all__ = [
    # file writers (this module)
    "atomic_write", "write_bytes", "write_text", "write_npz", "write_ply", "write_json", "write_csv", "encode_image",
    "write_image", "write_png", "preview_size", "write_obj", "sha256_file",
    # temporary names and output folders (temp_names.py, output_dirs.py)
    "TMP_TAG", "MARKER", "OutputError", "temp_path", "clean_stale", "make_temp_dir", "is_toolkit_output",
    "output_kind", "nested", "file_ancestor", "check_output_dir", "mark_output", "replace_dir", "share_like_umask",
    "output_dir",
]


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(f)` with a binary file open on a temporary sibling of `path`, then rename it over
    `path`; nothing is left behind if `write` raises. Returns `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes(path: Path | str, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: Path | str, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_npz(path: Path | str, compresslevel: int = 6, **arrays) -> Path:
    """Compressed .npz of `arrays` (numeric arrays only: written and read back with allow_pickle=False), the file
    numpy's `savez_compressed` writes; zlib `compresslevel` 6 is its default, 1 about twice as fast for ~10 % more
    bytes on the correspondences' maps."""
    def write(fh):
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED, allowZip64=True, compresslevel=compresslevel) as z:
            for name, a in arrays.items():
                with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
    return atomic_write(path, write)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write_ply(path: Path | str, vertices: np.ndarray) -> Path:
    """A binary little-endian PLY with one vertex element, atomically: `vertices` is a structured array whose float32 /
    uint8 fields are the PLY properties, in order."""
    kinds = {"f": "float", "u": "uchar"}
    props = "".join(f"property {kinds[vertices.dtype[f].kind]} {f}\n" for f in vertices.dtype.names)
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(vertices)}\n{props}end_header\n"
    return atomic_write(path, lambda f: (f.write(header.encode("ascii")), f.write(vertices.tobytes())))


def write_json(path: Path | str, data, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent, default=_json_default) + "\n")


def write_csv(path: Path | str, df) -> Path:
    """A pandas DataFrame as CSV without the index. A text cell a spreadsheet would run as a formula (starting with
    '=', '+', '-', '@', tab or CR: names and messages from another's files) is written with a leading "'"
    (core/names.py `spreadsheet_safe`); numbers, negative ones included, are written as they are. A text cell
    holding a CR puts every text cell in quotes (the csv module quotes LF but not CR, which readers take for the end
    of a row)."""
    text = [i for i, t in enumerate(df.dtypes) if t.kind == "O"]  # object and pandas' string dtypes
    quoting = csv.QUOTE_MINIMAL
    if text:
        df = df.copy()
        for i in text:
            df.isetitem(i, df.iloc[:, i].map(spreadsheet_safe))
            if df.iloc[:, i].map(lambda v: isinstance(v, str) and "\r" in v).any():
                quoting = csv.QUOTE_NONNUMERIC
    return write_text(path, df.to_csv(index=False, quoting=quoting))


def encode_image(img: np.ndarray, ext: str = ".png", png_level: int = 1, jpeg_quality: int = 95,
                 what: str = "image") -> bytes:
    """The bytes of an (H, W, 3) RGB or (H, W) grey uint8 image encoded as `ext` (.png, .jpg, ...);
    OutputError naming `what` if it cannot be encoded."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise OutputError(f"{what}: an image must be (H, W, 3) or (H, W) uint8, got {img.dtype} {img.shape}")
    params = [cv2.IMWRITE_PNG_COMPRESSION, png_level] if ext == ".png" else [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    try:
        ok, buf = cv2.imencode(ext, img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    except cv2.error as e:
        raise OutputError(f"{what}: cannot encode an image as {ext} ({e})") from None
    if not ok:
        raise OutputError(f"{what}: {ext} encoding failed")
    return buf.tobytes()


def write_image(path: Path | str, img: np.ndarray, png_level: int = 1, jpeg_quality: int = 95) -> Path:
    """An (H, W, 3) RGB or (H, W) grey uint8 image, encoded by the file's suffix (.png, .jpg, ...), written
    atomically; raises OutputError naming the file if it cannot be encoded."""
    ext = Path(path).suffix.lower() or ".png"
    return write_bytes(path, encode_image(img, ext, png_level, jpeg_quality, what=str(path)))


def write_png(path: Path | str, img: np.ndarray) -> Path:
    """An (H, W, 3) RGB or (H, W) grey uint8 image as PNG (atomic); raises OutputError if it cannot."""
    return write_image(Path(path), img)


def preview_size(img: np.ndarray, side: int = 1024) -> np.ndarray:
    """`img` (H, W[, C]) shrunk (area interpolation) so its longer side is at most `side`, unchanged when it is: the
    size of a preview picture (full-resolution NeRSemble / RenderMe-360 frames made 3–5 MB PNGs per preview)."""
    s = side / max(img.shape[:2])
    if s >= 1:
        return img
    return cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                      interpolation=cv2.INTER_AREA)


def write_obj(path: Path | str, verts: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None,
              uv_faces: np.ndarray | None = None, comment: str | None = None) -> Path:
    """Write a triangle OBJ (atomic): verts (V, 3), faces (F, 3) 0-based, optional uv (T, 2) + uv_faces (F, 3)
    -> `v`, `vt`, `f v/vt` lines (1-based), after an optional `# comment` line."""
    verts, faces = np.asarray(verts, np.float64), np.asarray(faces, np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3 or not np.isfinite(verts).all():
        raise OutputError(f"{path}: verts must be finite (V, 3), got {verts.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min(initial=0) < 0 or faces.max(initial=0) >= len(verts):
        raise OutputError(f"{path}: faces must be (F, 3) indices into {len(verts)} vertices")
    lines = [f"# {comment}"] if comment else []
    lines += [f"v {a:.7f} {b:.7f} {c:.7f}" for a, b, c in verts]
    if uv is None:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    else:
        uv, uv_faces = np.asarray(uv, np.float64), np.asarray(uv_faces, np.int64)
        if uv_faces.shape != faces.shape or uv_faces.min() < 0 or uv_faces.max() >= len(uv):
            raise OutputError(f"{path}: uv_faces must be {faces.shape} indices into {len(uv)} uv coordinates")
        lines += [f"vt {a:.7f} {b:.7f}" for a, b in uv]
        lines += [f"f {a + 1}/{ta + 1} {b + 1}/{tb + 1} {c + 1}/{tc + 1}"
                  for (a, b, c), (ta, tb, tc) in zip(faces, uv_faces)]
    return write_text(path, "\n".join(lines) + "\n")


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
