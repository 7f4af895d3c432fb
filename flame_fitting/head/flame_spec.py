"""The head model folder contract as code: file names, FLAME dimensions, `HeadModelError`, the checks of
the model arrays, head_model.json and the model kind.

The contract itself is docs/contracts.md ("Head model folder"); `flame_fitting.head.flame_io` is the public
façade (validation of a whole folder and the CLI). Pure numpy; every check raises `HeadModelError`
naming the file, the key and the expected/actual shape.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.json_files import read_json_object


class HeadModelError(GeofaceError, ValueError):
    """A head model folder or file that is missing, malformed or needs conversion."""


MODEL_FILES = ("FLAME_NEUTRAL.npz", "FLAME_NEUTRAL.pkl", "flame2023.pkl", "flame2023_no_jaw.pkl",
               "flame2023_Open.pkl", "generic_model.pkl")  # by preference
STATIC_EMBEDDING, DYNAMIC_EMBEDDING = "flame_static_embedding.pkl", "flame_dynamic_embedding.npy"
MEDIAPIPE_EMBEDDING, IBUG68_EMBEDDING = "mediapipe_landmark_embedding.npz", "ibug68_landmark_embedding.npz"
TEMPLATE_OBJ, HEAD_MODEL_JSON = "head_template.obj", "head_model.json"
KINDS = ("standin", "flame2020", "flame2023")
SHAPE_SPACE, EXPR_SPACE, N_JOINTS, N_POSE_BASIS = 300, 100, 5, 36  # smplx's FLAME split of shapedirs
FLAME_N_VERTICES, N_MEDIAPIPE = 5023, 478
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
LAYOUT_HELP = (
    "A head model folder (docs/contracts.md) holds: FLAME_NEUTRAL.npz (or FLAME_NEUTRAL.pkl / flame2023.pkl / "
    "flame2023_Open.pkl / flame2023_no_jaw.pkl / generic_model.pkl without chumpy), flame_static_embedding.pkl, mediapipe_landmark_embedding.npz, "
    "head_template.obj, optionally flame_dynamic_embedding.npy, ibug68_landmark_embedding.npz and head_model.json "
    "({\"kind\": \"standin\"|\"flame2020\"|\"flame2023\", \"n_shape\": int, \"n_expr\": int}). Convert a chumpy pickle with: "
    "geoface head-model convert SRC.pkl DST_FOLDER/FLAME_NEUTRAL.npz")


def convert_command(src: Path) -> str:
    return f"geoface head-model convert {src} {Path(src).parent / 'FLAME_NEUTRAL.npz'}"


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


def read_head_model_json(path: Path) -> dict:
    """head_model.json, checked: kind in KINDS, 0 <= n_shape <= 300, 0 <= n_expr <= 100."""
    meta = read_json_object(path, HeadModelError, 1 << 20, "head model description")  # a few hundred bytes
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

