"""Build geoface's stand-in head model (NOT FLAME) and write it in FLAME's folder layout.

`build_standin(out_dir, seed, n_shape, n_expr, grid)` measures the face on matplotlib's
public-domain sample photo with MediaPipe, builds the head mesh, rig, bases and landmark
embeddings, and writes (atomically: a temporary sibling folder, then a rename):

    FLAME_NEUTRAL.npz, flame_static_embedding.pkl, flame_dynamic_embedding.npy,
    mediapipe_landmark_embedding.npz, ibug68_landmark_embedding.npz, head_template.obj,
    standin_extras.npz, head_model.json

Loadable by `smplx.FLAME(model_path=out_dir, ext='npz', num_betas=n_shape,
num_expression_coeffs=n_expr)`. Deterministic for a given seed (nothing is cached).
"""
from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np

from flame_fitting.core.fileio import output_dir, write_obj
from . import embedding as emb
from .bases import build_bases
from .face_surface import PHOTO_NAME, build_metric_face
from .fields import FieldContext, mirror_index
from flame_fitting.geometry.meshes import vertex_normals
from .head_mesh import HeadMesh, build_head_mesh
from .rig import KINTREE, joint_regressor, joint_targets, skinning_weights

DEFAULT_GRID = (63, 80)  # rows x cols -> ~5060 vertices (FLAME: 5023)
N_SHAPEDIRS = 400  # smplx's FLAME wants 300 identity + 100 expression columns
N_POSEDIRS = 36


def _check_args(n_shape: int, n_expr: int, grid) -> tuple[int, int]:
    if not 1 <= n_shape <= 300:
        raise ValueError(f"build_standin: n_shape must be in 1..300, got {n_shape}")
    if not 1 <= n_expr <= 100:
        raise ValueError(f"build_standin: n_expr must be in 1..100, got {n_expr}")
    rows, cols = DEFAULT_GRID if grid is None else (int(grid[0]), int(grid[1]))
    return rows, cols


def face_weight(verts: np.ndarray, face_region: np.ndarray, ramp: float = 0.035) -> np.ndarray:
    """Smooth face weight (V,): 1 on the face region, smoothstep down to 0 at `ramp` metres from it."""
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(verts[face_region]).query(verts)
    x = np.clip(1.0 - dist / ramp, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def uv_face_share(mesh: HeadMesh) -> float:
    """Fraction of the UV square covered by triangles whose three vertices are in the face region."""
    t = mesh.uv[mesh.uv_faces]
    area = 0.5 * np.abs(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]))
    return float(area[mesh.face_region[mesh.faces].all(1)].sum())


def build_standin(out_dir: Path, seed: int = 0, n_shape: int = 50, n_expr: int = 30, grid: tuple | None = None) -> dict:
    """Build the stand-in head model into `out_dir` (replaced atomically); return a summary dict."""
    t0 = time.perf_counter()
    rows, cols = _check_args(n_shape, n_expr, grid)
    out_dir = Path(out_dir)
    face = build_metric_face()
    mesh = build_head_mesh(face, rows, cols)
    v, f = mesh.verts, mesh.faces
    targets = emb.mediapipe_targets(mesh.mp_points, v, f)
    fi, bary, err = emb.embed(targets, v, f)
    mp_on_mesh = emb.interpolate(v, f, fi, bary)
    joints = joint_targets(mp_on_mesh, mp_on_mesh[emb.IRIS])
    j_reg = joint_regressor(v, joints, mesh.eye_region)
    weights = skinning_weights(v, f, mp_on_mesh, joints, mesh.eye_region, mesh.lip_side)
    ctx = FieldContext(verts=v, normals=vertex_normals(v, f), mp=mp_on_mesh,
                       mirror=mirror_index(mesh.grid_ij, mesh.lip_side, cols), lip_side=mesh.lip_side,
                       face_mask=face_weight(v, mesh.face_region))
    ident, expr, id_names, ex_names = build_bases(ctx, n_shape, n_expr, seed)
    shapedirs = np.zeros((len(v), 3, N_SHAPEDIRS))
    shapedirs[:, :, :n_shape] = ident
    shapedirs[:, :, 300:300 + n_expr] = expr
    lmk = emb.flame_embeddings(fi, bary)
    summary = {
        "kind": "standin", "seed": int(seed), "n_shape": int(n_shape), "n_expr": int(n_expr),
        "n_vertices": int(len(v)), "n_faces": int(len(f)), "n_uv": int(len(mesh.uv)),
        "n_face_region_vertices": int(mesh.face_region.sum()), "uv_face_share": round(uv_face_share(mesh), 4),
        "embed_err_mean_mm": round(float(err[:468].mean() * 1e3), 4),
        "embed_err_max_mm": round(float(err[:468].max() * 1e3), 4),
        "grid": [rows, cols], "source_photo": PHOTO_NAME,
        "note": "geoface stand-in head model — NOT FLAME",
        "identity_names": id_names, "expr_names": ex_names,
    }
    with output_dir(out_dir, kind="head model") as tmp:
        np.savez(tmp / "FLAME_NEUTRAL.npz", v_template=v.astype(np.float32), f=f.astype(np.int64),
                 shapedirs=shapedirs.astype(np.float32), posedirs=np.zeros((len(v), 3, N_POSEDIRS), np.float32),
                 J_regressor=j_reg.astype(np.float32), kintree_table=KINTREE, weights=weights.astype(np.float32))
        with open(tmp / "flame_static_embedding.pkl", "wb") as fh:
            pickle.dump(lmk["static"], fh, protocol=2)
        np.save(tmp / "flame_dynamic_embedding.npy", lmk["dynamic"], allow_pickle=True)
        np.savez(tmp / "mediapipe_landmark_embedding.npz", lmk_face_idx=fi.astype(np.int64),
                 lmk_b_coords=bary.astype(np.float64), landmark_indices=np.arange(478, dtype=np.int64))
        np.savez(tmp / "ibug68_landmark_embedding.npz", **lmk["ibug68"])
        write_obj(tmp / "head_template.obj", v, f, mesh.uv, mesh.uv_faces, comment="geoface stand-in head model (NOT FLAME)")
        np.savez(tmp / "standin_extras.npz", face_region=mesh.face_region, eye_region=mesh.eye_region,
                 lip_side=mesh.lip_side, mp_points_neutral=targets.astype(np.float32),
                 mp_triangles=mesh.mp_triangles.astype(np.int64),
                 photo_landmarks_px=face.photo_px.astype(np.float32), photo_name=np.array(PHOTO_NAME))
        # the file holds what was built, not how long it took: the same inputs give the same bytes, so DVC keeps
        # the folder's hash and the stages after it stay cached when it is rebuilt
        (tmp / "head_model.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    summary["build_s"] = round(time.perf_counter() - t0, 3)
    return summary
