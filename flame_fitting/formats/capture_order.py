"""The canonical row order of a capture's manifest: (subject, sequence, frame, camera), names in code-point order
(Python's `sorted`), the order `CaptureWriter` writes. `load_capture` hands every reader the manifest in this order
whatever the file's row order, so no result depends on how a hand-made manifest was sorted or concatenated
(docs/capture_format.md): a landmarks unit wrote its detections in the rows' order, so the same capture with its rows
permuted gave other bytes in data/landmarks, another key to every fit unit (which hashes those files) and the landmarks
metrics summed in another order (pixel_error_mean 1.0161644 against 1.0161645 px).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def canonical_positions(df: pd.DataFrame, group: np.ndarray) -> np.ndarray | None:
    """The row positions of `df` in canonical order, None when its rows are in it already (a capture written by
    `CaptureWriter`: one pass over integer codes, no sort). `group`: every row's sequence number in sorted (subject,
    sequence) order (`capture_splits.check_sequence_splits`). Frames and cameras are ranked by their distinct values
    (`pd.factorize(sort=True)`), so whatever dtype the columns hold sorts as `sorted` sorts them."""
    frame = pd.factorize(df["frame"], sort=True)[0].astype(np.int64)
    camera = pd.factorize(df["camera"], sort=True)[0].astype(np.int64)
    g = np.asarray(group, np.int64)
    dg, df_, dc = np.diff(g), np.diff(frame), np.diff(camera)
    if np.all((dg > 0) | ((dg == 0) & ((df_ > 0) | ((df_ == 0) & (dc > 0))))):
        return None
    return np.lexsort((camera, frame, g))


def in_canonical_order(df: pd.DataFrame, group: np.ndarray) -> pd.DataFrame:
    """`df` itself when its rows are in canonical order, else its rows in that order under a fresh 0..n-1 index."""
    pos = canonical_positions(df, group)
    return df if pos is None else df.iloc[pos].reset_index(drop=True)
