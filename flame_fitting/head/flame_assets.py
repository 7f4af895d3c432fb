"""The head model folder's side files: the UV template OBJ (`read_obj`) and the landmark embeddings
(MediaPipe, static contour, optional dynamic contour and iBUG-68), each validated against the mesh.

File names and the folder layout: `flame_spec` / docs/contracts.md. Bad input raises `HeadModelError`
naming the file (and line or key).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flame_fitting.core.arrays import load_npz
from flame_fitting.head.flame_pickle import _resolve, load_object_npy, load_pickle
from flame_fitting.head.flame_spec import LAYOUT_HELP, N_MEDIAPIPE, HeadModelError, _shape_error


@dataclass
class ObjMesh:
    verts: np.ndarray     # (N, 3) float32
    uv: np.ndarray        # (T, 2) float32, OBJ convention (v up)
    faces: np.ndarray     # (F, 3) int64, 0-based vertex indices
    uv_faces: np.ndarray  # (F, 3) int64, 0-based vt indices


def _parse_obj_line(p: list[str], v: list, vt: list, fv: list, ft: list) -> str | None:
    """Parse one split OBJ line into the lists; returns an error text or None."""
    if p[0] in ("v", "vt"):
        n = 3 if p[0] == "v" else 2
        if len(p) < n + 1:
            return f"'{p[0]}' needs {n} coordinates"
        (v if p[0] == "v" else vt).append([float(x) for x in p[1:n + 1]])
    elif p[0] == "f":
        if len(p) != 4:
            return f"face with {len(p) - 1} corners; only triangles are supported"
        corners = [c.split("/") for c in p[1:]]
        if any(len(c) < 2 or not c[1] for c in corners):
            return "face corner without a texture index; expected 'f v/vt v/vt v/vt'"
        fv.append([int(c[0]) - 1 if int(c[0]) > 0 else len(v) + int(c[0]) for c in corners])
        ft.append([int(c[1]) - 1 if int(c[1]) > 0 else len(vt) + int(c[1]) for c in corners])
    return None


def _read_obj_lines(path: Path, lines: list[str]) -> ObjMesh:
    """The reference parser: line by line, every OBJ form `read_obj` accepts, errors with the line number."""
    v, vt, fv, ft = [], [], [], []
    for n, line in enumerate(lines, 1):
        p = line.split()
        if not p or p[0] not in ("v", "vt", "f"):
            continue
        try:
            err = _parse_obj_line(p, v, vt, fv, ft)
        except ValueError:
            err = "not a number"
        if err:
            raise HeadModelError(f"{path}:{n}: {err}: '{line.strip()}'")
    return ObjMesh(np.asarray(v, np.float32).reshape(-1, 3), np.asarray(vt, np.float32).reshape(-1, 2),
                   np.asarray(fv, np.int64).reshape(-1, 3), np.asarray(ft, np.int64).reshape(-1, 3))


def _read_obj_fast(lines: list[str]) -> ObjMesh | None:
    """The common form (`v x y z`, `vt u v`, `f a/b c/d e/f` or `f a/b/n ...` throughout, positive indices) parsed
    with numpy, ~2x faster than `_read_obj_lines` (benchmarks/head_model_load.py), with the same result; None for
    anything else (the reference parser then reads the file and names the line at fault)."""
    groups: dict[str, list[str]] = {"v": [], "vt": [], "f": []}
    for line in lines:
        tag, _, rest = line.strip().partition(" ")
        if tag in groups:
            groups[tag].append(rest)
        elif tag[:1] in ("v", "f") and tag not in ("vn", "vp"):  # e.g. `v` + tab: the reference parser's case
            return None
    try:
        v = np.array(" ".join(groups["v"]).split(), np.float64)
        vt = np.array(" ".join(groups["vt"]).split(), np.float64)
        corners = " ".join(groups["f"]).split()
        slashes = {c.count("/") for c in corners}
        if (v.size != 3 * len(groups["v"]) or vt.size != 2 * len(groups["vt"]) or len(slashes) != 1
                or len(corners) != 3 * len(groups["f"]) or any(len(f.split()) != 3 for f in groups["f"])
                or "//" in "".join(groups["f"])):
            return None
        idx = np.array(" ".join(corners).replace("/", " ").split(), np.int64).reshape(len(corners), -1)
    except (ValueError, OverflowError):
        return None
    if idx.shape[1] not in (2, 3) or idx.size and idx[:, :2].min() <= 0:
        return None
    return ObjMesh(v.astype(np.float32).reshape(-1, 3), vt.astype(np.float32).reshape(-1, 2),
                   (idx[:, 0] - 1).reshape(-1, 3), (idx[:, 1] - 1).reshape(-1, 3))


def read_obj(path: Path | str) -> ObjMesh:
    """Read a triangle OBJ with UVs (`v`, `vt`, `f v/vt[/vn]`); indices become 0-based."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    except FileNotFoundError:
        raise HeadModelError(f"{path}: missing. {LAYOUT_HELP}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HeadModelError(f"{path}: cannot read ({e})") from None
    mesh = _read_obj_fast(lines) or _read_obj_lines(path, lines)
    if len(mesh.faces) == 0:
        raise HeadModelError(f"{path}: no faces")
    for name, idx, n in (("vertex", mesh.faces, len(mesh.verts)), ("texture (vt)", mesh.uv_faces, len(mesh.uv))):
        if idx.min() < 0 or idx.max() >= n:
            raise HeadModelError(f"{path}: face {name} index out of range [1, {n}]")
    if not np.all(np.isfinite(mesh.uv)) or mesh.uv.min() < -1e-4 or mesh.uv.max() > 1 + 1e-4:
        raise HeadModelError(f"{path}: vt coordinates must lie in [0, 1], got [{mesh.uv.min()}, {mesh.uv.max()}]")
    return mesh


# ---------------------------------------------------------------- landmark embeddings
@dataclass
class Embedding:
    face_idx: np.ndarray                         # (L,) int64 ((79, 17) for the dynamic contour)
    bary: np.ndarray                             # (L, 3) float64 ((79, 17, 3))
    landmark_indices: np.ndarray | None = None   # (L,) int64: which MediaPipe point (0..477)


def check_embedding(data: dict, n_faces: int, where, count: int | None = None, ndim: int = 1) -> Embedding:
    """Validate {lmk_face_idx, lmk_b_coords}: shapes, face indices < n_faces, barycentrics summing to 1."""
    for key in ("lmk_face_idx", "lmk_b_coords"):
        if key not in data:
            raise HeadModelError(f"{where}: missing key '{key}'")
    fi, b = np.asarray(data["lmk_face_idx"]), np.asarray(data["lmk_b_coords"])
    if fi.ndim != ndim or (count is not None and fi.shape[0] != count):
        raise _shape_error(where, "lmk_face_idx", f"{'(L,)' if ndim == 1 else f'{ndim}-d'}"
                           + (f" with L = {count}" if count else ""), fi.shape)
    if b.shape != fi.shape + (3,):
        raise _shape_error(where, "lmk_b_coords", str(fi.shape + (3,)), b.shape)
    if fi.dtype.kind == "f" and np.array_equal(fi, np.round(fi)):
        fi = fi.astype(np.int64)  # exact integers stored as floats
    if fi.dtype.kind not in "iu":
        raise HeadModelError(f"{where}: key 'lmk_face_idx' must hold integers, got dtype {fi.dtype}")
    if fi.size and (fi.min() < 0 or fi.max() >= n_faces):
        raise HeadModelError(f"{where}: key 'lmk_face_idx' has face index {fi.max() if fi.max() >= n_faces else fi.min()} "
                             f"outside [0, {n_faces}) (the mesh has {n_faces} faces)")
    b = b.astype(np.float64)
    s = b.sum(-1)
    bad = np.flatnonzero(~np.isfinite(s).ravel() | (np.abs(s.ravel() - 1) > 1e-3))
    if bad.size:
        raise HeadModelError(f"{where}: key 'lmk_b_coords' rows must sum to 1; {bad.size} do not "
                             f"(landmark {bad[0]} sums to {s.ravel()[bad[0]]:.6g})")
    return Embedding(fi.astype(np.int64), b)


def _read_npz(path: Path) -> dict:
    if not path.exists():
        raise HeadModelError(f"{path}: missing. {LAYOUT_HELP}")
    return load_npz(path, HeadModelError)


def load_mediapipe_embedding(path: Path, n_faces: int) -> Embedding:
    data = _read_npz(path)
    emb = check_embedding(data, n_faces, path)
    if "landmark_indices" not in data:
        raise HeadModelError(f"{path}: missing key 'landmark_indices' (which of MediaPipe's {N_MEDIAPIPE} points)")
    li = np.asarray(data["landmark_indices"])
    if li.shape != emb.face_idx.shape:
        raise _shape_error(path, "landmark_indices", str(emb.face_idx.shape), li.shape)
    if li.dtype.kind not in "iu" or li.min() < 0 or li.max() >= N_MEDIAPIPE or len(np.unique(li)) != len(li):
        raise HeadModelError(f"{path}: key 'landmark_indices' must be distinct integers in [0, {N_MEDIAPIPE})")
    emb.landmark_indices = li.astype(np.int64)
    return emb


def load_static_embedding(path: Path, n_faces: int) -> Embedding:
    data = load_pickle(path, hint="re-save it as a dict of plain numpy arrays")
    if not isinstance(data, dict):
        raise HeadModelError(f"{path}: expected a pickled dict, found {type(data).__name__}")
    return check_embedding({k: _resolve(v) for k, v in data.items()}, n_faces, path)


def load_dynamic_embedding(path: Path, n_faces: int) -> Embedding:
    arr = load_object_npy(path, hint="re-save it as a dict of plain numpy arrays")  # FLAME's np.save of a dict
    data = arr[()] if arr.shape == () else arr
    if not isinstance(data, dict):
        raise HeadModelError(f"{path}: expected a saved dict, found {type(data).__name__}")
    return check_embedding({k: _resolve(v) for k, v in data.items()}, n_faces, path, ndim=2)
