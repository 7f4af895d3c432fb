"""Head model folder I/O: validation, OBJ reading, embeddings, and the chumpy-free FLAME converter.

The folder layout is fixed in docs/contracts.md ("Head model folder"); real FLAME and the
stand-in share it. Everything here is numpy/scipy only (no torch), so the CLI starts fast:

    python -m flame_fitting.head.flame_io validate FOLDER      # prints what was found, as JSON
    python -m flame_fitting.head.flame_io convert SRC.pkl DST_FOLDER/FLAME_NEUTRAL.npz

FLAME's original pickles hold chumpy arrays and chumpy breaks on numpy >= 1.24, so the
converter unpickles them with stand-in classes (never importing chumpy) and writes a plain npz.
Any bad input raises `HeadModelError` naming the file, the key and the expected/actual shape.

This module is the whole-folder loading and validation, `write_smplx_copy` (what smplx reads, written from the
validated arrays) and the CLI; its neighbours:

* `flame_spec`   file names, FLAME dimensions, `HeadModelError`, model-array / head_model.json checks;
* `flame_pickle` the one restricted (allow-list) unpickler for pickles and object .npy files, chumpy-free,
  `load_model_arrays`, `convert_flame_pickle`;
* `flame_assets` the template OBJ (`read_obj`) and the landmark embeddings.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flame_fitting.core.names import terminal_safe
from flame_fitting.core.output_dirs import cli_words
from flame_fitting.head.flame_assets import (check_embedding, Embedding, load_dynamic_embedding,
                                             load_mediapipe_embedding, load_static_embedding, ObjMesh, _read_npz,
                                             read_obj)
from flame_fitting.head.flame_pickle import convert_flame_pickle, load_model_arrays
from flame_fitting.head.flame_spec import (DYNAMIC_EMBEDDING, EXPR_SPACE, HEAD_MODEL_JSON, HeadModelError,
                                           IBUG68_EMBEDDING, infer_kind, LAYOUT_HELP, MEDIAPIPE_EMBEDDING,
                                           MODEL_FILES, read_head_model_json, SHAPE_SPACE, STATIC_EMBEDDING,
                                           TEMPLATE_OBJ)


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
    model_arrays: dict = field(default_factory=dict, repr=False)  # the model file's numeric arrays, validated

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
        meta=meta, ignored_model_files=ignored, model_arrays=arrays)


def write_smplx_copy(info: FlameFolder, dst: Path | str) -> None:
    """Write into folder `dst` what smplx's FLAME reads, from the validated arrays only: FLAME_NEUTRAL.npz
    (plain numeric arrays) and flame_static_embedding.pkl (two arrays, pickled here). smplx itself reads
    with `pickle.load` / `np.load(allow_pickle=True)`, so it is never given a user's file."""
    dst = Path(dst)
    np.savez(dst / "FLAME_NEUTRAL.npz", **info.model_arrays)
    with open(dst / STATIC_EMBEDDING, "wb") as fh:
        pickle.dump({"lmk_face_idx": info.static.face_idx, "lmk_b_coords": info.static.bary}, fh, protocol=2)


def validate_flame_folder(path: Path | str) -> dict:
    """Validate a head model folder; returns a JSON-friendly description of what was found."""
    return load_flame_folder(path).describe()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flame_fitting.head.flame_io", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="FLAME pickle (chumpy or plain) -> plain npz")
    c.add_argument("src")
    c.add_argument("dst", help="e.g. DST_FOLDER/FLAME_NEUTRAL.npz")
    c.add_argument("--force", action="store_true", help="replace DST if it exists")
    v = sub.add_parser("validate", help="check a head model folder")
    v.add_argument("folder")
    args = ap.parse_args(argv)
    try:
        out = (convert_flame_pickle(args.src, args.dst, overwrite=args.force) if args.cmd == "convert"
               else validate_flame_folder(args.folder))
    except HeadModelError as e:
        print(f"error: {terminal_safe(cli_words(str(e)))}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
