"""The one check every loader makes of a numeric array it was given: numeric, the expected shape, finite."""
from __future__ import annotations

import numpy as np


def checked_array(value, shape: tuple[int | None, ...], what: str, error: type[Exception] = ValueError
                  ) -> np.ndarray:
    """`value` as a float64 array of `shape` (None = any size on that axis) with no NaN or inf; otherwise
    `error` naming `what` and the problem."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise error(f"{what}: not a numeric array") from None
    if arr.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, arr.shape)):
        raise error(f"{what}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise error(f"{what}: contains NaN or inf")
    return arr
