"""Self-checks of a frame's UV position map and correspondences, and one metrics dict per frame.

- Cycle: pixel centre → (u, v) (correspondences) → canonical 3D (bilinear lookup in the frame's UV
  position map, denormalised) → posed 3D (the frame's rigid head pose) → reprojected pixel; the error is
  the distance to the pixel centre. The rigid pose is the Kabsch fit of the posed vertices
  (`HeadModel.forward`) to the canonical ones (`HeadModel.canonical`): they share vertex ids, and smplx's
  FLAME applies global_orient about the root joint and then transl, so posed = R·canonical + t exactly
  when the canonical mesh has the same neck/eye pose as the posed one. If the canonical mesh leaves
  them out, the residual (`rigid_residual_mm`) shows how far from rigid the map is and the cycle error
  includes that articulation.
- Ground truth (synthetic captures, gt_raster.npz): UV of every pixel from the true face id +
  barycentrics vs ours: fraction within 1 texel, mean error in texels, coverage.
- Layout: overlapping charts (`raster.uv_overlap_fraction`), zero-width seams (distinct vertices that
  share a UV point, e.g. a mouth cut: a position map cannot hold both sides there).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_fitting.geometry.camera import Camera
from flame_fitting.geometry.rigid import rigid_fit
from flame_fitting.core.arrays import load_npz
from flame_fitting.uv.correspondences import CorrespondenceError, FrameCorrespondences, uv_from_fragments
from flame_fitting.uv import UVLayout, denormalize_points, get_bake_table, sample_bilinear


def cycle_errors(corr: FrameCorrespondences, posmap: np.ndarray, cameras: list[Camera], R: np.ndarray,
                 t: np.ndarray, stride: int = 1) -> list[np.ndarray]:
    """Per view: cycle errors (pixels, float32) of the visible pixels on a `stride` grid (empty array for
    empty views). posmap (R, R, 3) normalised; R (3, 3), t (3,) canonical → world."""
    if tuple(c.name for c in cameras) != corr.views:
        raise CorrespondenceError(f"frame {corr.frame_id}: cameras {[c.name for c in cameras]} do not match the "
                                  f"correspondences' views {list(corr.views)}")
    out = []
    for n, cam in enumerate(cameras):
        rows, cols = np.nonzero(corr.visible[n, ::stride, ::stride])
        rows, cols = rows * stride, cols * stride
        if len(rows) == 0:
            out.append(np.zeros(0, np.float32))
            continue
        p = denormalize_points(sample_bilinear(posmap, corr.uv[n, rows, cols])).astype(np.float64)
        xy, _ = cam.project(p @ np.asarray(R, np.float64).T + np.asarray(t, np.float64))
        out.append(np.hypot(xy[:, 0] - (cols + 0.5), xy[:, 1] - (rows + 0.5)).astype(np.float32))
    return out


def gt_uv_accuracy(corr: FrameCorrespondences, gt_face_id: np.ndarray, gt_bary: np.ndarray, layout: UVLayout,
                   resolution: int) -> dict:
    """Against a ground-truth pixel→surface map (gt_raster.npz: face_id (N,H,W) -1 background, bary
    (N,H,W,3) float16): on pixels both see, the fraction whose UV differs by < 1 texel (at `resolution`)
    and the mean UV error in texels; coverage = fraction of ground-truth foreground pixels we see;
    spurious = fraction of our visible pixels that are ground-truth background."""
    if gt_face_id.shape != corr.visible.shape:
        raise CorrespondenceError(f"frame {corr.frame_id}: ground truth is {gt_face_id.shape}, correspondences "
                                  f"{corr.visible.shape}")
    gt_mask = gt_face_id >= 0
    both = gt_mask & corr.visible
    gt_uv = uv_from_fragments(gt_face_id, gt_bary, layout)
    err = np.linalg.norm(corr.uv[both] - gt_uv[both], axis=1) * resolution
    n_gt, n_vis = int(gt_mask.sum()), int(corr.visible.sum())
    return {"gt_uv_accuracy": float((err < 1).mean()) if err.size else None,
            "gt_uv_error_texels": float(err.mean()) if err.size else None,
            "coverage": float(both.sum() / n_gt) if n_gt else None,
            "spurious": float((corr.visible & ~gt_mask).sum() / n_vis) if n_vis else None}


def coverage(corr: FrameCorrespondences, masks: np.ndarray) -> float | None:
    """Fraction of foreground mask pixels (N, H, W) bool that have a correspondence (None if no foreground)."""
    masks = np.asarray(masks, bool)
    if masks.shape != corr.visible.shape:
        raise CorrespondenceError(f"frame {corr.frame_id}: masks are {masks.shape}, views {corr.visible.shape}")
    n = int(masks.sum())
    return float((masks & corr.visible).sum() / n) if n else None


def layout_report(layout: UVLayout, resolution: int = 256) -> dict:
    """UV layout diagnostics: overlap fraction at R, charts, seam vertices (several UVs), and zero-width seams
    (UV points shared by distinct vertices)."""
    table = get_bake_table(layout, resolution)
    pv, pt = layout.corner_pairs[:, 0], layout.corner_pairs[:, 1]
    _, point = np.unique(np.round(layout.uv[pt].astype(np.float64) * 2 ** 20), axis=0, return_inverse=True)
    pairs = np.unique(np.stack([point.ravel(), pv], 1), axis=0)
    shared = np.bincount(pairs[:, 0]) > 1
    return {"uv_overlap_fraction": table.overlap_fraction, "n_charts": layout.n_charts,
            "uv_coverage": float(table.mask.mean()), "n_seam_vertices": int((np.bincount(pv) > 1).sum()),
            "n_shared_uv_points": int(shared.sum())}


def _stats(e: np.ndarray) -> dict:
    if e.size == 0:
        return {"median": None, "p95": None, "n": 0}
    return {"median": float(np.median(e)), "p95": float(np.percentile(e, 95)), "n": int(e.size)}


def frame_metrics(corr: FrameCorrespondences, posmap: np.ndarray, cameras: list[Camera], canonical: np.ndarray,
                  posed: np.ndarray, layout: UVLayout, masks: np.ndarray | None = None,
                  gt: tuple[np.ndarray, np.ndarray] | None = None, stride: int = 1) -> dict:
    """Metrics of one frame: cycle_error_px_median / _p95 (all views' sampled pixels), per-view cycle stats,
    coverage (vs `masks` (N,H,W) or the ground truth), uv_overlap_fraction, gt_uv_accuracy (needs
    gt = (face_id, bary)), empty_views (count; names in empty_view_names), rigid_residual_mm.
    canonical, posed (V, 3): the frame's canonical and posed vertices (same ids)."""
    try:
        R, t, resid = rigid_fit(canonical, posed)
    except ValueError as e:
        raise CorrespondenceError(f"frame {corr.frame_id}: canonical vs posed vertices: {e}") from None
    errs = cycle_errors(corr, posmap, cameras, R, t, stride)
    allerr = np.concatenate(errs) if errs else np.zeros(0, np.float32)
    s = _stats(allerr)
    out = {"cycle_error_px_median": s["median"], "cycle_error_px_p95": s["p95"],
           "cycle_per_view": {name: _stats(e) for name, e in zip(corr.views, errs)},
           "coverage": coverage(corr, masks) if masks is not None else None,
           "uv_overlap_fraction": get_bake_table(layout, posmap.shape[0]).overlap_fraction,
           "gt_uv_accuracy": None, "gt_uv_error_texels": None,
           "empty_views": len(corr.empty), "empty_view_names": dict(corr.empty),
           "rigid_residual_mm": resid * 1e3, "visible_pixels": int(corr.visible.sum())}
    if gt is not None:
        g = gt_uv_accuracy(corr, gt[0], gt[1], layout, posmap.shape[0])
        out.update(gt_uv_accuracy=g["gt_uv_accuracy"], gt_uv_error_texels=g["gt_uv_error_texels"],
                   gt_spurious=g["spurious"])
        if masks is None:
            out["coverage"] = g["coverage"]
    return out


def load_gt_raster(frame_dir: Path | str, views: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic frame's ground truth (gt.npz `cameras` order, gt_raster.npz) reordered to `views`
    -> face_id (N, H, W) int32, bary (N, H, W, 3) float16."""
    frame_dir = Path(frame_dir)
    names = [str(c) for c in load_npz(frame_dir / "gt.npz", CorrespondenceError, keys=("cameras",))["cameras"]]
    missing = [v for v in views if v not in names]
    if missing:
        raise CorrespondenceError(f"{frame_dir / 'gt.npz'}: no ground truth for cameras {missing}")
    order = [names.index(v) for v in views]
    r = load_npz(frame_dir / "gt_raster.npz", CorrespondenceError, keys=("face_id", "bary"))
    return r["face_id"][order], r["bary"][order]


def aggregate(frames: list[dict]) -> dict:
    """Per-frame `frame_metrics` dicts -> one summary: medians over frames of the cycle median / p95, the worst
    frame's p95, mean coverage and ground-truth accuracy (over frames that have them), empty views in total."""
    def vals(key):
        return np.array([f[key] for f in frames if f.get(key) is not None], np.float64)

    def stat(key, fn):
        v = vals(key)
        return float(fn(v)) if v.size else None

    return {"frames": len(frames), "cycle_error_px_median": stat("cycle_error_px_median", np.median),
            "cycle_error_px_p95": stat("cycle_error_px_p95", np.median),
            "cycle_error_px_p95_worst_frame": stat("cycle_error_px_p95", np.max),
            "coverage": stat("coverage", np.mean), "gt_uv_accuracy": stat("gt_uv_accuracy", np.mean),
            "uv_overlap_fraction": stat("uv_overlap_fraction", np.max),
            "empty_views": int(sum(f.get("empty_views", 0) for f in frames))}
