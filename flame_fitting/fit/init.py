"""Per-frame initial head pose: robust triangulation of the landmarks, then a similarity alignment
of the model's neutral embedded landmarks to them (global rotation + translation; the scale is only
a sanity check). Identity, expression, jaw, neck and eyes start at zero.
"""
from __future__ import annotations

import numpy as np

from flame_fitting.fit.reduced import FrameLayout
from flame_fitting.fit.so3 import log_np
from flame_fitting.fit.triangulate import triangulate_robust
from flame_fitting.geometry.rigid import umeyama

MIN_POINTS = 6            # triangulated landmarks needed for the alignment
SCALE_RANGE = (0.67, 1.5)  # a similarity scale outside this is reported in the frame's note


def normalized(K: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Pinhole pixels uv (C, L, 2) with intrinsics K (C, 3, 3) -> normalised image coordinates (C, L, 2)."""
    Kinv = np.linalg.inv(K)
    h = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], -1)
    xn = np.einsum("cij,clj->cli", Kinv, h)
    return xn[..., :2] / xn[..., 2:]


def initial_pose(neutral: np.ndarray, root: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray, uv: np.ndarray,
                 valid: np.ndarray, layout: FrameLayout, threshold_px: float, max_pairs: int, seed: int
                 ) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """One frame's initial θ_f.

    neutral (L, 3) model landmarks at zero parameters; root (3,) the root joint at zero shape;
    K, R (C, 3, 3), t (C, 3) cameras; uv (C, L, 2) pinhole pixels; valid (C, L).
    Returns θ_f (n_f,) (None when the frame cannot be initialised), the triangulated points (L, 3)
    (NaN where not triangulated) and a note ("" when all is well, else the reason / warning).
    """
    f = 0.5 * (K[:, 0, 0] + K[:, 1, 1])
    tri = triangulate_robust(R, t, f, normalized(K, uv), valid, threshold_px, max_pairs, seed)
    ok = tri.ok
    if ok.sum() < MIN_POINTS:
        return None, tri.points, f"triangulation failed: {int(ok.sum())} landmark(s) triangulated (need {MIN_POINTS})"
    src, dst = neutral[ok], tri.points[ok]
    keep = np.ones(len(src), bool)
    for _ in range(2):  # drop gross triangulation errors, re-align
        s, Rm, tm = umeyama(src[keep], dst[keep])
        res = np.linalg.norm(dst - (s * src @ Rm.T + tm), axis=1)
        new = res < max(3 * np.median(res[keep]), 0.005)
        if new.sum() < MIN_POINTS:
            break
        keep = new
    s, Rm, _ = umeyama(src[keep], dst[keep])
    t_rigid = dst[keep].mean(0) - Rm @ src[keep].mean(0)  # the best rigid fit for this rotation (scale 1)
    note = ""
    if not SCALE_RANGE[0] <= s <= SCALE_RANGE[1]:
        note = f"initial similarity scale {s:.2f} (expected about 1: landmarks or cameras may be off)"
    zeros = np.zeros
    theta = layout.pack(zeros(layout.n_expr), zeros(3), zeros(3), zeros(6), log_np(Rm), t_rigid + Rm @ root - root)
    return theta, tri.points, note
