"""UV position map files: `save_posmap` / `load_posmap` (compressed npz that records the normalisation box and
refuses a file written with another one). Part of `flame_fitting.uv` (the public façade).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_fitting.core.arrays import load_npz
from flame_fitting.core.fileio import atomic_write
from flame_fitting.uv.bake import BOX_CENTER, BOX_HALF, BakedPosmap, UVError


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
    z = load_npz(path, UVError, keys=("posmap", "mask", "box_center", "box_half", "layout_key", "n_clipped"))
    if not (np.allclose(z["box_center"], BOX_CENTER) and np.isclose(z["box_half"], BOX_HALF)):
        raise UVError(f"{path}: written with box centre {z['box_center'].tolist()} half {float(z['box_half'])}, "
                      f"this code uses {BOX_CENTER.tolist()} / {BOX_HALF}")
    return BakedPosmap(z["posmap"].astype(np.float32), z["mask"].astype(bool), int(z["n_clipped"]),
                       str(z["layout_key"]))
