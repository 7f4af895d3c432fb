"""UV position map files: `write_obj` (triangle OBJ with
optional UVs) and `save_posmap` / `load_posmap` (compressed npz that records the normalisation box and
refuses a file written with another one). Part of `flame_fitting.uv` (the public façade).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_fitting.core.fileio import atomic_write
from flame_fitting.uv.bake import BOX_CENTER, BOX_HALF, BakedPosmap, UVError


def write_obj(path: Path | str, verts: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None,
              uv_faces: np.ndarray | None = None) -> Path:
    """Write a triangle OBJ (atomic): verts (V, 3), faces (F, 3) 0-based, optional uv (T, 2) + uv_faces (F, 3)
    -> `v`, `vt`, `f v/vt` lines (1-based)."""
    verts, faces = np.asarray(verts, np.float64), np.asarray(faces, np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3 or not np.isfinite(verts).all():
        raise UVError(f"{path}: verts must be finite (V, 3), got {verts.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min(initial=0) < 0 or faces.max(initial=0) >= len(verts):
        raise UVError(f"{path}: faces must be (F, 3) indices into {len(verts)} vertices")
    lines = [f"v {a:.7f} {b:.7f} {c:.7f}" for a, b, c in verts]
    if uv is None:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    else:
        uv, uv_faces = np.asarray(uv, np.float64), np.asarray(uv_faces, np.int64)
        if uv_faces.shape != faces.shape or uv_faces.min() < 0 or uv_faces.max() >= len(uv):
            raise UVError(f"{path}: uv_faces must be {faces.shape} indices into {len(uv)} uv coordinates")
        lines += [f"vt {a:.7f} {b:.7f}" for a, b in uv]
        lines += [f"f {a + 1}/{ta + 1} {b + 1}/{tb + 1} {c + 1}/{tc + 1}"
                  for (a, b, c), (ta, tb, tc) in zip(faces, uv_faces)]
    data = ("\n".join(lines) + "\n").encode()
    return atomic_write(Path(path), lambda fh: fh.write(data))


def save_posmap(path: Path | str, baked: BakedPosmap, dtype=np.float32, frame_id: str = "") -> Path:
    """Write a compressed npz (atomic): posmap (R,R,3) `dtype` (float32 default = lossless; float16 quantises
    to ≤ 0.25 mm), mask (R,R) bool, n_clipped, box_center, box_half, layout_key, frame_id."""
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise UVError(f"{path}: posmap dtype must be float32 or float16, got {dtype}")
    arrays = dict(posmap=baked.posmap.astype(dtype), mask=baked.mask, n_clipped=np.int64(baked.n_clipped),
                  box_center=BOX_CENTER, box_half=np.float32(BOX_HALF), layout_key=np.array(baked.layout_key),
                  frame_id=np.array(str(frame_id)))
    return atomic_write(Path(path), lambda fh: np.savez_compressed(fh, **arrays))


def load_posmap(path: Path | str) -> BakedPosmap:
    """Read `save_posmap`'s file (posmap as float32); refuses a file written with another normalisation box."""
    with np.load(path) as z:
        missing = {"posmap", "mask", "box_center", "box_half", "layout_key", "n_clipped"} - set(z.files)
        if missing:
            raise UVError(f"{path}: not a UV position map file (missing {sorted(missing)})")
        if not (np.allclose(z["box_center"], BOX_CENTER) and np.isclose(z["box_half"], BOX_HALF)):
            raise UVError(f"{path}: written with box centre {z['box_center'].tolist()} half {float(z['box_half'])}, "
                          f"this code uses {BOX_CENTER.tolist()} / {BOX_HALF}")
        return BakedPosmap(z["posmap"].astype(np.float32), z["mask"].astype(bool), int(z["n_clipped"]),
                           str(z["layout_key"]))
