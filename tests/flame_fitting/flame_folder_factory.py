"""Test utility: write a small, valid head model folder in FLAME's layout (docs/contracts.md).

Usage (tests in tests/flame_fitting import it directly; from another test folder put
`Path(__file__).parents[1] / "flame_fitting"` on sys.path first):

    from flame_folder_factory import write_flame_folder
    spec = write_flame_folder(tmp_path / "head")                 # FlameFolderSpec: path + every array written
    model = HeadModel.from_folder(spec.path, n_shape=spec.n_shape, n_expr=spec.n_expr)

The mesh is an ellipsoid "head" (metres, y up, face towards +z) built as a latitude/longitude
sphere: V = n_lat * n_lon + 2 vertices, F = 2 * n_lat * n_lon outward-facing triangles, UVs
u = azimuth / 2pi, v = 1 - polar / pi with a seam at the back (T = n_lat * (n_lon + 1) + 2 * n_lon
UV vertices, so T > V). Joints (root, neck, jaw, left eye at +x, right eye) come from a convex
J_regressor; skinning weights are smooth and sum to 1; shapedirs has 400 columns of smooth
random low-order polynomial fields, non-zero only in the first `n_shape` identity and first
`n_expr` expression columns; posedirs (V, 3, 36) is smooth random too. Embeddings use random
faces and Dirichlet barycentrics (MediaPipe: 478 points or `n_mp` < 478 with sorted ids).
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

RADII = np.array([0.075, 0.10, 0.09])  # x, y, z semi-axes in metres


@dataclass
class FlameFolderSpec:
    path: Path
    model_file: Path
    kind: str | None
    n_shape: int
    n_expr: int
    v_template: np.ndarray      # (V, 3) float32
    f: np.ndarray               # (F, 3) int64
    shapedirs: np.ndarray       # (V, 3, 400) float32
    posedirs: np.ndarray        # (V, 3, 36) float32
    J_regressor: np.ndarray     # (5, V) float32 (dense)
    kintree_table: np.ndarray   # (2, 5) int64
    weights: np.ndarray         # (V, 5) float32
    uv: np.ndarray              # (T, 2) float32
    uv_faces: np.ndarray        # (F, 3) int64
    mp_face_idx: np.ndarray     # (L,) int64
    mp_bary: np.ndarray         # (L, 3) float64
    mp_landmark_indices: np.ndarray  # (L,) int64
    static_face_idx: np.ndarray  # (51,)
    static_bary: np.ndarray      # (51, 3)
    lmk68_face_idx: np.ndarray | None
    lmk68_bary: np.ndarray | None

    def model_dict(self, sparse_j_regressor: bool = False) -> dict:
        """The FLAME model file's content as a dict of arrays."""
        J = sp.csc_matrix(self.J_regressor) if sparse_j_regressor else self.J_regressor
        return {"v_template": self.v_template, "f": self.f, "shapedirs": self.shapedirs, "posedirs": self.posedirs,
                "J_regressor": J, "kintree_table": self.kintree_table, "weights": self.weights}


def sphere_mesh(n_lat: int, n_lon: int):
    """Ellipsoid lat/long mesh: verts (V,3), faces (F,3), uv (T,2), uv_faces (F,3)."""
    theta = np.pi * np.arange(1, n_lat + 1) / (n_lat + 1)  # polar angle from +y
    phi = 2 * np.pi * np.arange(n_lon + 1) / n_lon           # azimuth from +z towards +x (last = seam copy)
    d = np.stack([np.outer(np.sin(theta), np.sin(phi[:-1])), np.outer(np.cos(theta), np.ones(n_lon)),
                  np.outer(np.sin(theta), np.cos(phi[:-1]))], -1).reshape(-1, 3)
    verts = np.concatenate([[[0, 1, 0]], d, [[0, -1, 0]]]) * RADII
    top, bottom = 0, n_lat * n_lon + 1
    vid = lambda i, j: 1 + i * n_lon + j % n_lon  # noqa: E731
    tid = lambda i, j: i * (n_lon + 1) + j        # noqa: E731
    t_top, t_bot = n_lat * (n_lon + 1), n_lat * (n_lon + 1) + n_lon
    faces, uv_faces = [], []
    for j in range(n_lon):
        faces.append([top, vid(0, j), vid(0, j + 1)])
        uv_faces.append([t_top + j, tid(0, j), tid(0, j + 1)])
        for i in range(n_lat - 1):
            faces += [[vid(i, j), vid(i + 1, j), vid(i, j + 1)], [vid(i, j + 1), vid(i + 1, j), vid(i + 1, j + 1)]]
            uv_faces += [[tid(i, j), tid(i + 1, j), tid(i, j + 1)], [tid(i, j + 1), tid(i + 1, j), tid(i + 1, j + 1)]]
        last = n_lat - 1
        faces.append([vid(last, j), bottom, vid(last, j + 1)])
        uv_faces.append([tid(last, j), t_bot + j, tid(last, j + 1)])
    uv_grid = np.stack(np.meshgrid(phi / (2 * np.pi), 1 - theta / np.pi), -1).reshape(-1, 2)
    cap_u = (np.arange(n_lon) + 0.5) / n_lon
    uv = np.concatenate([uv_grid, np.stack([cap_u, np.ones(n_lon)], 1), np.stack([cap_u, np.zeros(n_lon)], 1)])
    return verts.astype(np.float32), np.array(faces, np.int64), uv.astype(np.float32), np.array(uv_faces, np.int64)


def _smooth_fields(q: np.ndarray, n: int, scale: float, rng) -> np.ndarray:
    """n random smooth vector fields on points q (V,3): cubic polynomials -> (V, 3, n)."""
    x, y, z = q.T
    basis = np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, y * z, x * z,
                      x ** 3, y ** 3, z ** 3, x * y * z, x * x * y, y * y * z, z * z * x], 1)  # (V, M)
    coef = rng.standard_normal((basis.shape[1], 3, n)) / np.sqrt(basis.shape[1])
    return np.einsum("vm,mcn->vcn", basis, coef) * scale


def _convex_rows(mask: np.ndarray, rng) -> np.ndarray:
    w = mask * (0.5 + rng.random(mask.shape))
    return w / w.sum(-1, keepdims=True)


def _embedding(rng, n_faces: int, n: int):
    return rng.integers(0, n_faces, n).astype(np.int64), rng.dirichlet(np.ones(3), n)


def write_obj(path: Path, verts, uv, faces, uv_faces) -> None:
    """OBJ with `v`, `vt` and 1-based `f v/vt` triangles."""
    lines = [f"v {a:.8f} {b:.8f} {c:.8f}" for a, b, c in verts] + [f"vt {a:.9f} {b:.9f}" for a, b in uv]
    lines += [f"f {v[0] + 1}/{t[0] + 1} {v[1] + 1}/{t[1] + 1} {v[2] + 1}/{t[2] + 1}" for v, t in zip(faces, uv_faces)]
    Path(path).write_text("\n".join(lines) + "\n")


def write_flame_folder(root: Path | str, *, n_lat: int = 12, n_lon: int = 24, n_shape: int = 50, n_expr: int = 30,
                       kind: str | None = "standin", ext: str = "npz", model_name: str | None = None,
                       sparse_j_regressor: bool | None = None, n_mp: int = 478, with_ibug68: bool = True,
                       seed: int = 0) -> FlameFolderSpec:
    """Write a valid head model folder at `root` (created). `kind=None` omits head_model.json;
    `ext` "npz" or "pkl" (plain pickle; J_regressor scipy-sparse unless `sparse_j_regressor=False`);
    `model_name` overrides the model file name (e.g. "generic_model.pkl")."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    v, f, uv, uv_faces = sphere_mesh(n_lat, n_lon)
    V, F = len(v), len(f)
    q = v / RADII  # unit-sphere directions
    eyes = np.array([[0.35, 0.3, 0.89], [-0.35, 0.3, 0.89]])
    eye_d = np.linalg.norm(q[None] - eyes[:, None], axis=-1)  # (2, V)
    masks = np.stack([np.ones(V), q[:, 1] < -0.7, (q[:, 1] > -0.5) & (q[:, 1] < -0.1) & (np.abs(q[:, 0]) > 0.6),
                      eye_d[0] <= np.sort(eye_d[0])[3], eye_d[1] <= np.sort(eye_d[1])[3]]).astype(np.float64)
    J_regressor = _convex_rows(masks, rng).astype(np.float32)
    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    neck = sig((-q[:, 1] - 0.75) / 0.08)
    jaw = sig((-q[:, 1] - 0.15) / 0.08) * sig((q[:, 2] - 0.2) / 0.1) * (1 - neck)
    raw = np.stack([0.3 * np.ones(V), 3 * neck, 3 * jaw, 2 * np.exp(-(eye_d[0] / 0.15) ** 2),
                    2 * np.exp(-(eye_d[1] / 0.15) ** 2)], 1)
    weights = (raw / raw.sum(1, keepdims=True)).astype(np.float32)
    shapedirs = np.zeros((V, 3, 400))
    shapedirs[:, :, :n_shape] = _smooth_fields(q, n_shape, 0.003, rng)
    shapedirs[:, :, 300:300 + n_expr] = _smooth_fields(q, n_expr, 0.002, rng)
    posedirs = _smooth_fields(q, 36, 0.001, rng)
    mp_face_idx, mp_bary = _embedding(rng, F, n_mp)
    mp_ids = np.arange(478) if n_mp == 478 else np.sort(rng.choice(478, n_mp, replace=False))
    static_face_idx, static_bary = _embedding(rng, F, 51)
    dyn_face_idx, dyn_bary = _embedding(rng, F, 79 * 17)
    lmk68 = _embedding(rng, F, 68) if with_ibug68 else (None, None)
    spec = FlameFolderSpec(
        path=root, model_file=root / (model_name or f"FLAME_NEUTRAL.{ext}"), kind=kind, n_shape=n_shape, n_expr=n_expr,
        v_template=v, f=f, shapedirs=shapedirs.astype(np.float32), posedirs=posedirs.astype(np.float32),
        J_regressor=J_regressor, kintree_table=np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
        weights=weights, uv=uv, uv_faces=uv_faces, mp_face_idx=mp_face_idx, mp_bary=mp_bary,
        mp_landmark_indices=mp_ids.astype(np.int64), static_face_idx=static_face_idx, static_bary=static_bary,
        lmk68_face_idx=lmk68[0], lmk68_bary=lmk68[1])
    if ext == "npz":
        np.savez(spec.model_file, **spec.model_dict())
    else:
        with open(spec.model_file, "wb") as fh:
            pickle.dump(spec.model_dict(sparse_j_regressor=sparse_j_regressor is not False), fh)
    with open(root / "flame_static_embedding.pkl", "wb") as fh:
        pickle.dump({"lmk_face_idx": static_face_idx, "lmk_b_coords": static_bary}, fh)
    np.save(root / "flame_dynamic_embedding.npy",
            {"lmk_face_idx": dyn_face_idx.reshape(79, 17), "lmk_b_coords": dyn_bary.reshape(79, 17, 3)}, allow_pickle=True)
    np.savez(root / "mediapipe_landmark_embedding.npz", lmk_face_idx=mp_face_idx, lmk_b_coords=mp_bary,
             landmark_indices=spec.mp_landmark_indices)
    if with_ibug68:
        np.savez(root / "ibug68_landmark_embedding.npz", lmk_face_idx=lmk68[0], lmk_b_coords=lmk68[1])
    write_obj(root / "head_template.obj", v, uv, f, uv_faces)
    if kind is not None:
        (root / "head_model.json").write_text(json.dumps({"kind": kind, "n_shape": n_shape, "n_expr": n_expr}))
    return spec
