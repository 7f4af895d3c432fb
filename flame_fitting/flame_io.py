"""Head model folder I/O: validation, OBJ reading, embeddings, and the chumpy-free FLAME converter.

The folder layout is fixed in docs/contracts.md ("Head model folder"); real FLAME and the
stand-in share it. Everything here is numpy/scipy only (no torch), so the CLI starts fast:

    python -m flame_fitting.flame_io validate FOLDER      # prints what was found, as JSON
    python -m flame_fitting.flame_io convert SRC.pkl DST_FOLDER/FLAME_NEUTRAL.npz

FLAME's original pickles hold chumpy arrays and chumpy breaks on numpy >= 1.24, so the
converter unpickles them with stand-in classes (never importing chumpy) and writes a plain npz.
Any bad input raises `HeadModelError` naming the file, the key and the expected/actual shape.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp


class HeadModelError(ValueError):
    """A head model folder or file that is missing, malformed or needs conversion."""


MODEL_FILES = ("FLAME_NEUTRAL.npz", "FLAME_NEUTRAL.pkl", "flame2023.pkl", "generic_model.pkl")  # by preference
STATIC_EMBEDDING, DYNAMIC_EMBEDDING = "flame_static_embedding.pkl", "flame_dynamic_embedding.npy"
MEDIAPIPE_EMBEDDING, IBUG68_EMBEDDING = "mediapipe_landmark_embedding.npz", "ibug68_landmark_embedding.npz"
TEMPLATE_OBJ, HEAD_MODEL_JSON = "head_template.obj", "head_model.json"
KINDS = ("standin", "flame2020", "flame2023")
SHAPE_SPACE, EXPR_SPACE, N_JOINTS, N_POSE_BASIS = 300, 100, 5, 36  # smplx's FLAME split of shapedirs
FLAME_N_VERTICES, N_MEDIAPIPE = 5023, 478
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
LAYOUT_HELP = (
    "A head model folder (docs/contracts.md) holds: FLAME_NEUTRAL.npz (or FLAME_NEUTRAL.pkl / flame2023.pkl / "
    "generic_model.pkl without chumpy), flame_static_embedding.pkl, mediapipe_landmark_embedding.npz, "
    "head_template.obj, optionally flame_dynamic_embedding.npy, ibug68_landmark_embedding.npz and head_model.json "
    "({\"kind\": \"standin\"|\"flame2020\"|\"flame2023\", \"n_shape\": int, \"n_expr\": int}). Convert a chumpy pickle with: "
    "python -m flame_fitting.flame_io convert SRC.pkl DST_FOLDER/FLAME_NEUTRAL.npz")


def convert_command(src: Path) -> str:
    return f"python -m flame_fitting.flame_io convert {src} {Path(src).parent / 'FLAME_NEUTRAL.npz'}"


# ---------------------------------------------------------------- pickles (with or without chumpy)
class _ChumpyStandIn:
    """Holds a chumpy object's pickled state; `to_numpy()` rebuilds its value without chumpy."""
    chumpy_class = "chumpy.?"

    def __init__(self, *args, **kwargs):
        self.state = {"args": args, **kwargs}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"state": state}

    def to_numpy(self) -> np.ndarray:
        s, name = self.state, self.chumpy_class.rsplit(".", 1)[-1]
        if name == "Select" and {"a", "idxs"} <= s.keys():
            out = _resolve(s["a"]).ravel()[np.asarray(s["idxs"])]
            return out.reshape(s["preferred_shape"]) if "preferred_shape" in s else out
        if name == "Reshape" and {"a", "newshape"} <= s.keys():
            return _resolve(s["a"]).reshape(s["newshape"])
        if name == "transpose" and "a" in s:
            return np.transpose(_resolve(s["a"]), s.get("axes"))
        if name == "AtleastNd" and {"x", "ndims"} <= s.keys():
            return [np.atleast_1d, np.atleast_2d, np.atleast_3d][s["ndims"] - 1](_resolve(s["x"]))
        if "x" in s and "a" not in s:  # Ch and subclasses that only hold a value
            return _resolve(s["x"])
        raise HeadModelError(f"chumpy object of class {self.chumpy_class} (state keys {sorted(s)}) cannot be "
                             "converted without chumpy; save its value as a numpy array with an old numpy + chumpy")


class _SparseStandIn:
    """Holds a pickled scipy sparse matrix's state; independent of the scipy version that wrote it."""
    fmt = "csc"

    def __setstate__(self, state):
        self.state = state

    def to_numpy(self) -> np.ndarray:
        s = self.state
        shape = tuple(s.get("_shape", s.get("shape")))
        cls = sp.csc_matrix if self.fmt == "csc" else sp.csr_matrix
        return cls((np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"])), shape=shape).toarray()


def _resolve(v) -> np.ndarray:
    if isinstance(v, (_ChumpyStandIn, _SparseStandIn)):
        return v.to_numpy()
    if sp.issparse(v):
        return v.toarray()
    return np.asarray(v)


_SAFE_BUILTINS = {"object", "set", "frozenset", "dict", "list", "tuple", "slice", "complex", "int", "float",
                  "bool", "str", "bytes", "bytearray", "range"}


class _FlameUnpickler(pickle.Unpickler):
    """Unpickler for FLAME files: chumpy and scipy sparse classes become stand-ins, other foreign code is refused."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self.path, self.chumpy_classes, self._made = path, set(), {}

    def _standin(self, base, qualname: str, **attrs):
        if qualname not in self._made:
            self._made[qualname] = type(qualname.rsplit(".", 1)[-1], (base,), attrs)
        return self._made[qualname]

    def find_class(self, module: str, name: str):
        top = module.split(".")[0]
        if top == "chumpy":
            self.chumpy_classes.add(f"{module}.{name}")
            return self._standin(_ChumpyStandIn, f"{module}.{name}", chumpy_class=f"{module}.{name}")
        if top == "scipy" and name in ("csc_matrix", "csr_matrix", "csc_array", "csr_array"):
            return self._standin(_SparseStandIn, f"{module}.{name}", fmt=name[:3])
        if top in ("__builtin__", "builtins") and name not in _SAFE_BUILTINS:
            raise HeadModelError(f"{self.path}: refusing to unpickle {module}.{name}")
        if top not in ("numpy", "scipy", "copy_reg", "copyreg", "__builtin__", "builtins", "collections", "_codecs"):
            raise HeadModelError(f"{self.path}: refusing to unpickle {module}.{name} (not numpy/scipy/chumpy data)")
        if module.startswith("numpy._core"):  # written by numpy >= 2
            module = "numpy.core" + module[len("numpy._core"):]
        return super().find_class(module, name)


def load_pickle(path: Path | str, allow_chumpy: bool = False, hint: str | None = None):
    """Unpickle a FLAME data file without importing chumpy. Chumpy objects stay as stand-ins when
    `allow_chumpy`, otherwise they raise `HeadModelError` with `hint` (default: the conversion command)."""
    path = Path(path)
    hint = hint or f"Convert it once with: {convert_command(path)}"
    try:
        with open(path, "rb") as fh:
            up = _FlameUnpickler(fh, path)
            data = up.load()
    except HeadModelError:
        raise
    except FileNotFoundError:
        raise HeadModelError(f"{path}: missing. {LAYOUT_HELP}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        extra = f". {hint}" if "chumpy" in str(e) else ""
        raise HeadModelError(f"{path}: cannot unpickle ({type(e).__name__}: {e}){extra}") from None
    if up.chumpy_classes and not allow_chumpy:
        raise HeadModelError(f"{path}: contains chumpy objects ({', '.join(sorted(up.chumpy_classes))}), which need "
                             f"chumpy (broken on numpy >= 1.24). {hint}")
    return data


def _as_array(value) -> np.ndarray | None:
    """Numeric array from a pickled value (ndarray, chumpy stand-in, sparse); None for non-numeric values."""
    if not isinstance(value, (np.ndarray, _ChumpyStandIn, _SparseStandIn)) and not sp.issparse(value):
        return None
    a = _resolve(value)
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    return None


def convert_flame_pickle(src: Path | str, dst_npz: Path | str) -> dict:
    """Convert a FLAME pickle (chumpy or plain) to a plain npz: float arrays float32, integer arrays
    int64, sparse J_regressor dense, plus `source_file` (the pickle's name). Entries that are not
    arrays, or optional ones that cannot be rebuilt without chumpy, are skipped and listed with the
    reason; a required key that cannot be rebuilt is an error. Writes atomically (tmp + rename).
    Returns {"dst", "keys", "skipped": {key: reason}, "n_vertices", "n_faces"}."""
    src, dst = Path(src), Path(dst_npz)
    if dst.suffix != ".npz":
        raise HeadModelError(f"{dst}: destination must be a .npz file, e.g. {dst / 'FLAME_NEUTRAL.npz'}")
    data = load_pickle(src, allow_chumpy=True)
    if not isinstance(data, dict):
        raise HeadModelError(f"{src}: expected a pickled dict of arrays, found {type(data).__name__}")
    arrays, skipped = {}, {}
    for key, value in data.items():
        try:
            a = _as_array(value)
        except HeadModelError as e:
            if key in REQUIRED_KEYS:
                raise HeadModelError(f"{src}: key '{key}': {e}") from None
            skipped[str(key)] = str(e)
            continue
        if a is None:
            skipped[str(key)] = f"not a numeric array ({type(value).__name__})"
        else:
            arrays[str(key)] = a
    V, F = check_model_arrays(arrays, src)
    arrays["source_file"] = np.array(src.name)  # lets kind inference see "flame2023" after renaming
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"dst": str(dst), "keys": sorted(arrays), "skipped": skipped, "n_vertices": V, "n_faces": F}


# ---------------------------------------------------------------- model arrays
def load_model_arrays(path: Path | str) -> dict[str, np.ndarray]:
    """The numeric arrays of FLAME_NEUTRAL.npz / a plain FLAME pickle, checked by `check_model_arrays`."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except ValueError as e:
            raise HeadModelError(f"{path}: holds object arrays or is corrupt ({e}); write plain numeric arrays") from None
        except OSError as e:
            raise HeadModelError(f"{path}: cannot read ({e})") from None
    else:
        data = load_pickle(path)
        if not isinstance(data, dict):
            raise HeadModelError(f"{path}: expected a pickled dict of arrays, found {type(data).__name__}")
        arrays = {str(k): a for k, v in data.items() if (a := _as_array(v)) is not None}
    check_model_arrays(arrays, path)
    return arrays


def _shape_error(where, key, expected: str, actual) -> HeadModelError:
    return HeadModelError(f"{where}: key '{key}' has shape {tuple(actual)}, expected {expected}")


def check_model_arrays(arrays: dict, where) -> tuple[int, int]:
    """Check FLAME model arrays (contract shapes, index ranges, kinematic tree); returns (V, F)."""
    for key in REQUIRED_KEYS:
        if key not in arrays:
            raise HeadModelError(f"{where}: missing key '{key}' (required: {', '.join(REQUIRED_KEYS)})")
    vt, f = np.asarray(arrays["v_template"]), np.asarray(arrays["f"])
    if vt.ndim != 2 or vt.shape[1] != 3:
        raise _shape_error(where, "v_template", "(V, 3)", vt.shape)
    V = vt.shape[0]
    if not np.all(np.isfinite(vt)):
        raise HeadModelError(f"{where}: key 'v_template' has non-finite values")
    if f.ndim != 2 or f.shape[1] != 3:
        raise _shape_error(where, "f", "(F, 3)", f.shape)
    if f.dtype.kind not in "iu" or f.size == 0 or f.min() < 0 or f.max() >= V:
        raise HeadModelError(f"{where}: key 'f' must hold integer vertex indices in [0, {V}), "
                             f"got dtype {f.dtype} range [{f.min() if f.size else '-'}, {f.max() if f.size else '-'}]")
    checks = {"shapedirs": (lambda s: len(s) == 3 and s[:2] == (V, 3) and s[2] >= SHAPE_SPACE + EXPR_SPACE,
                            f"({V}, 3, >= {SHAPE_SPACE + EXPR_SPACE}) [0:300 identity, 300:400 expression]"),
              "posedirs": (lambda s: s in ((V, 3, N_POSE_BASIS), (V * 3, N_POSE_BASIS)),
                           f"({V}, 3, {N_POSE_BASIS}) or ({V * 3}, {N_POSE_BASIS})"),
              "J_regressor": (lambda s: s == (N_JOINTS, V), f"({N_JOINTS}, {V})"),
              "kintree_table": (lambda s: s == (2, N_JOINTS), f"(2, {N_JOINTS})"),
              "weights": (lambda s: s == (V, N_JOINTS), f"({V}, {N_JOINTS})")}
    for key, (ok, expected) in checks.items():
        shape = tuple(np.shape(arrays[key]))
        if not ok(shape):
            raise _shape_error(where, key, expected, shape)
    kt = np.asarray(arrays["kintree_table"]).astype(np.int64)
    if list(kt[0, 1:]) != [0, 1, 1, 1] or list(kt[1]) != list(range(N_JOINTS)):
        raise HeadModelError(f"{where}: key 'kintree_table' must be [[*, 0, 1, 1, 1], [0, 1, 2, 3, 4]] "
                             f"(root, neck, jaw, left eye, right eye), got {kt.tolist()}")
    w = np.asarray(arrays["weights"], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(w).all(1) | (np.abs(w.sum(1) - 1) > 1e-3))
    if bad.size:
        raise HeadModelError(f"{where}: key 'weights' rows must sum to 1; {bad.size} rows do not (first: vertex {bad[0]})")
    return V, f.shape[0]


# ---------------------------------------------------------------- OBJ template (UV layout)
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


def read_obj(path: Path | str) -> ObjMesh:
    """Read a triangle OBJ with UVs (`v`, `vt`, `f v/vt[/vn]`); indices become 0-based."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    except FileNotFoundError:
        raise HeadModelError(f"{path}: missing. {LAYOUT_HELP}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HeadModelError(f"{path}: cannot read ({e})") from None
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
    mesh = ObjMesh(np.asarray(v, np.float32).reshape(-1, 3), np.asarray(vt, np.float32).reshape(-1, 2),
                   np.asarray(fv, np.int64).reshape(-1, 3), np.asarray(ft, np.int64).reshape(-1, 3))
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
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise HeadModelError(f"{path}: cannot read as a plain npz ({e})") from None


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
    try:
        data = np.load(path, allow_pickle=True, encoding="latin1")[()]
    except Exception as e:  # noqa: BLE001
        raise HeadModelError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise HeadModelError(f"{path}: expected a saved dict, found {type(data).__name__}")
    return check_embedding(data, n_faces, path, ndim=2)


# ---------------------------------------------------------------- the folder
@dataclass
class FlameFolder:
    """What `load_flame_folder` found; every array already validated."""
    path: Path
    model_file: Path          # the FLAME model file smplx will read
    kind: str                 # "standin" | "flame2020" | "flame2023"
    n_shape: int              # effective identity components
    n_expr: int               # effective expression components
    n_vertices: int
    n_faces: int
    shapedirs_columns: int
    template: ObjMesh
    mediapipe: Embedding
    static: Embedding
    dynamic: Embedding | None = None
    ibug68: Embedding | None = None
    meta: dict = field(default_factory=dict)  # head_model.json ({} when absent)
    ignored_model_files: list = field(default_factory=list)

    def describe(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "model_file": self.model_file.name,
                "ignored_model_files": self.ignored_model_files, "head_model_json": bool(self.meta),
                "n_vertices": self.n_vertices, "n_faces": self.n_faces, "n_uv": len(self.template.uv),
                "n_shape": self.n_shape, "n_expr": self.n_expr, "shapedirs_columns": self.shapedirs_columns,
                "n_mediapipe_landmarks": len(self.mediapipe.face_idx), "n_static_landmarks": len(self.static.face_idx),
                "has_dynamic_embedding": self.dynamic is not None, "has_ibug68": self.ibug68 is not None}


def find_model_file(folder: Path) -> tuple[Path, list[str]]:
    """The FLAME model file to use (first of MODEL_FILES present) and the other candidates present."""
    found = [folder / n for n in MODEL_FILES if (folder / n).is_file()]
    if not found:
        raise HeadModelError(f"{folder}: no FLAME model file (looked for {', '.join(MODEL_FILES)}). {LAYOUT_HELP}")
    return found[0], [p.name for p in found[1:]]


def read_head_model_json(path: Path) -> dict:
    """head_model.json, checked: kind in KINDS, 0 <= n_shape <= 300, 0 <= n_expr <= 100."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HeadModelError(f"{path}: cannot read as JSON ({e})") from None
    if not isinstance(meta, dict):
        raise HeadModelError(f"{path}: expected a JSON object")
    if meta.get("kind") not in KINDS:
        raise HeadModelError(f"{path}: key 'kind' must be one of {KINDS}, got {meta.get('kind')!r}")
    for key, hi in (("n_shape", SHAPE_SPACE), ("n_expr", EXPR_SPACE)):
        v = meta.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
            raise HeadModelError(f"{path}: key '{key}' must be an integer in [0, {hi}], got {v!r}")
    return meta


def infer_kind(model_file: Path, source_file: str, n_vertices: int) -> str:
    """Kind of a real FLAME model without head_model.json: "flame2023" when the model file's name
    (or the name the converter recorded in `source_file`) contains "2023", else "flame2020".
    Only a 5023-vertex model can be real FLAME; anything else must declare itself in head_model.json."""
    if n_vertices != FLAME_N_VERTICES:
        raise HeadModelError(f"{Path(model_file).parent / HEAD_MODEL_JSON}: missing, and {Path(model_file).name} has "
                             f"{n_vertices} vertices (real FLAME has {FLAME_N_VERTICES}); write head_model.json. {LAYOUT_HELP}")
    return "flame2023" if "2023" in Path(model_file).name + source_file else "flame2020"


def load_flame_folder(path: Path | str) -> FlameFolder:
    """Validate a head model folder and return its parts (see docs/contracts.md)."""
    folder = Path(path)
    if not folder.is_dir():
        raise HeadModelError(f"{folder}: not a directory. {LAYOUT_HELP}")
    model_file, ignored = find_model_file(folder)
    arrays = load_model_arrays(model_file)  # checked
    V, F = len(arrays["v_template"]), len(arrays["f"])
    if (folder / HEAD_MODEL_JSON).exists():
        meta = read_head_model_json(folder / HEAD_MODEL_JSON)
        kind, n_shape, n_expr = meta["kind"], meta["n_shape"], meta["n_expr"]
    else:
        meta, kind = {}, infer_kind(model_file, str(arrays.get("source_file", "")), V)
        n_shape, n_expr = SHAPE_SPACE, EXPR_SPACE
    template = read_obj(folder / TEMPLATE_OBJ)
    obj = folder / TEMPLATE_OBJ
    if len(template.verts) != V:
        raise HeadModelError(f"{obj}: has {len(template.verts)} vertices, expected {V} (key 'v_template' of {model_file.name})")
    if len(template.faces) != F:
        raise HeadModelError(f"{obj}: has {len(template.faces)} faces, expected {F} (key 'f' of {model_file.name})")
    diff = np.flatnonzero((template.faces != arrays["f"]).any(1))
    if diff.size:
        raise HeadModelError(f"{obj}: face vertex indices differ from key 'f' of {model_file.name} "
                             f"({diff.size} faces, first: face {diff[0]}); the UV faces must follow 'f' row by row")
    dyn, ibug = folder / DYNAMIC_EMBEDDING, folder / IBUG68_EMBEDDING
    return FlameFolder(
        path=folder, model_file=model_file, kind=kind, n_shape=n_shape, n_expr=n_expr, n_vertices=V, n_faces=F,
        shapedirs_columns=int(np.shape(arrays["shapedirs"])[2]), template=template,
        mediapipe=load_mediapipe_embedding(folder / MEDIAPIPE_EMBEDDING, F),
        static=load_static_embedding(folder / STATIC_EMBEDDING, F),
        dynamic=load_dynamic_embedding(dyn, F) if dyn.exists() else None,
        ibug68=check_embedding(_read_npz(ibug), F, ibug, count=68) if ibug.exists() else None,
        meta=meta, ignored_model_files=ignored)


def validate_flame_folder(path: Path | str) -> dict:
    """Validate a head model folder; returns a JSON-friendly description of what was found."""
    return load_flame_folder(path).describe()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flame_fitting.flame_io", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="FLAME pickle (chumpy or plain) -> plain npz")
    c.add_argument("src")
    c.add_argument("dst", help="e.g. DST_FOLDER/FLAME_NEUTRAL.npz")
    v = sub.add_parser("validate", help="check a head model folder")
    v.add_argument("folder")
    args = ap.parse_args(argv)
    try:
        out = convert_flame_pickle(args.src, args.dst) if args.cmd == "convert" else validate_flame_folder(args.folder)
    except HeadModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
