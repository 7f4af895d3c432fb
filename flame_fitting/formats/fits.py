"""The fit stage's output format, per sequence folder `<fits>/<subject>/<sequence>/`: `fit.npz` (per fitted
frame: frame, shape, expr, jaw_pose, neck_pose, eye_pose, global_orient, transl, vertices (F, V, 3) in metres,
world frame), `cameras.json` (the refined cameras), `residuals.parquet`, `history.csv`, `status.json`.
Light (numpy only): the stages after `fit` read fits without importing the fitter.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_fitting.core.arrays import load_npz
from flame_fitting.core.errors import GeofaceError


class FitFileError(GeofaceError, ValueError):
    """A fit.npz that cannot be read: the message names the file and what is wrong."""


def fit_folders(fits_dir: Path | str) -> list[Path]:
    """The sequence folders under `fits_dir` that hold a fit.npz, sorted."""
    return sorted(p.parent for p in Path(fits_dir).glob("*/*/fit.npz"))


def load_sequence_fit(folder: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of `<folder>/fit.npz` (a fit stage sequence folder `<fits>/<subject>/<sequence>`), one row per
    fitted frame F: frame (F,), shape (F, n_shape), expr (F, n_expr), jaw_pose / neck_pose / global_orient / transl
    (F, 3), eye_pose (F, 6), vertices (F, V, 3) metres in the world frame, float32 (only `keys`, when given: the
    others, the vertices of every frame among them, are not read), without pickle; FitFileError naming the file when
    it is missing, truncated, not an .npz, holds object arrays or lacks one of `keys`."""
    return load_npz(Path(folder) / "fit.npz", FitFileError, keys=keys)
