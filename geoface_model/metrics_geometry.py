"""Consistency and geometry metrics of generated views and UV maps (used by the `evaluate` stage on held-out
subjects); the image metrics (PSNR, SSIM, LPIPS) and `MetricError` are in metrics.py.

- TSED (Yu et al. 2023): SIFT (`cv2.SIFT_create`) matches between neighbouring generated views (Lowe ratio 0.8 and
  mutual nearest neighbours, no geometric verification — COLMAP's raw matches, as the reference code), symmetric
  epipolar distance ½(d(x₂, F x₁) + d(x₁, Fᵀ x₂)) with F from the known cameras; a pair is consistent with ≥ 10
  matches and a median < 2 px of the views themselves (distances measured on views upscaled for SIFT are divided
  by the scale); `tsed` is the fraction of consistent pairs.
- Landmark-fit consistency: MediaPipe landmarks on the generated views (upscaled to ≥ 256 px for detection), one
  head fitted across them with `fit_sequence` (cameras fixed, the known ones), RMSE of the reprojected embedded
  landmarks in pixels of the views.
- Geometry: error of a generated UV position map against ground truth, millimetres over the valid texels after
  denormalisation (`flame_fitting.uv.denormalize_points`), in the canonical frame (no alignment).
- Attention hit rate at a supervised block: fraction of appearance queries whose strongest geometry logit lies
  within Chebyshev distance 1 (UV token grid) of the true correspondence (the a2g target with the largest weight);
  `chance` = the same for a uniformly random key.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from flame_fitting.geometry.camera import Camera
from flame_fitting.fit import FitConfig, fit_sequence
from flame_fitting.uv import denormalize_points

from .metrics import MetricError


# ----------------------------------------------------------------------------- TSED
def fundamental_matrix(cam1: Camera, cam2: Camera) -> np.ndarray:
    """F (3,3) float64 with x₂ᵀ F x₁ = 0 for pixels (geoface convention) of the same point in cam1, cam2."""
    R1, t1 = cam1.world_to_cam[:3, :3].astype(np.float64), cam1.world_to_cam[:3, 3].astype(np.float64)
    R2, t2 = cam2.world_to_cam[:3, :3].astype(np.float64), cam2.world_to_cam[:3, 3].astype(np.float64)
    R = R2 @ R1.T
    t = t2 - R @ t1
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(cam2.K.astype(np.float64)).T @ tx @ R @ np.linalg.inv(cam1.K.astype(np.float64))


def symmetric_epipolar_distance(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """F (3,3), matched pixels x1, x2 (M,2) -> (M,) ½(d(x₂, F x₁) + d(x₁, Fᵀ x₂)) in pixels."""
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], 1)
    h2 = np.concatenate([x2, np.ones((len(x2), 1))], 1)
    l2, l1 = h1 @ F.T, h2 @ F
    e = np.abs((h2 * l2).sum(1))
    return 0.5 * (e / np.hypot(l2[:, 0], l2[:, 1]) + e / np.hypot(l1[:, 0], l1[:, 1]))


def sift_matches(img1: np.ndarray, img2: np.ndarray, ratio: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """SIFT matches (ratio test + mutual nearest neighbours) of two uint8 RGB images -> pixels (M,2), (M,2),
    in geoface's convention (OpenCV keypoints + 0.5)."""
    sift = cv2.SIFT_create()
    k1, d1 = sift.detectAndCompute(cv2.cvtColor(np.asarray(img1), cv2.COLOR_RGB2GRAY), None)
    k2, d2 = sift.detectAndCompute(cv2.cvtColor(np.asarray(img2), cv2.COLOR_RGB2GRAY), None)
    if d1 is None or d2 is None or len(k1) < 2 or len(k2) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    bf = cv2.BFMatcher(cv2.NORM_L2)
    back = {m.queryIdx: m.trainIdx for m in bf.match(d2, d1)}
    pairs = [(m.queryIdx, m.trainIdx) for m, n in bf.knnMatch(d1, d2, k=2)
             if m.distance < ratio * n.distance and back.get(m.trainIdx) == m.queryIdx]
    p1 = np.array([k1[i].pt for i, _ in pairs], np.float64).reshape(-1, 2) + 0.5
    p2 = np.array([k2[j].pt for _, j in pairs], np.float64).reshape(-1, 2) + 0.5
    return p1, p2


def tsed(images: list[np.ndarray], cameras: list[Camera], pairs: list[tuple[int, int]] | None = None,
         min_matches: int = 10, max_median_px: float = 2.0, pixel_scale: float = 1.0) -> dict:
    """Fraction of consistent view pairs (default: neighbours i, i+1 in the given order) + per-pair details.
    `pixel_scale`: how many pixels of `images` make one pixel of the views they were upscaled from (for SIFT);
    the distances (`median_sed_px`) and `max_median_px` are in the views' own pixels."""
    if len(images) != len(cameras) or len(images) < 2:
        raise MetricError(f"tsed: needs >= 2 images with one camera each, got {len(images)} / {len(cameras)}")
    pairs = pairs if pairs is not None else [(i, i + 1) for i in range(len(images) - 1)]
    rows = []
    for i, j in pairs:
        x1, x2 = sift_matches(images[i], images[j])
        sed = symmetric_epipolar_distance(fundamental_matrix(cameras[i], cameras[j]), x1, x2) / pixel_scale
        med = float(np.median(sed)) if len(sed) else None
        ok = len(sed) >= min_matches and med is not None and med < max_median_px
        rows.append({"i": i, "j": j, "n_matches": int(len(sed)), "median_sed_px": med, "consistent": bool(ok)})
    return {"tsed": float(np.mean([r["consistent"] for r in rows])), "pairs": rows}


# ----------------------------------------------------------------------------- landmarks, geometry
def landmark_fit_rmse(model, cameras: list[Camera], points: list[np.ndarray]) -> dict:
    """One head fitted (cameras fixed) to MediaPipe landmarks (478,2) per view (NaN rows = missing) -> RMSE px of
    the embedded landmarks over the views with detections, or None when fewer than 2 views have any."""
    names = [c.name or f"view_{i:02d}" for i, c in enumerate(cameras)]
    ok = [bool(np.isfinite(p).all(1).sum() >= 6) for p in points]
    base = {"lmk_views_detected": int(sum(ok)), "lmk_views": len(points)}
    if sum(ok) < 2:
        return base | {"lmk_rmse_px": None, "lmk_status": "fewer than 2 views with landmarks"}
    cams = dict(zip(names, cameras))
    obs = {0: {n: np.asarray(p, np.float64) for n, p, o in zip(names, points, ok) if o}}
    fit = fit_sequence(model, cams, obs, FitConfig(threads=1), progress=False)
    if fit.status[0].status == "skipped":
        return base | {"lmk_rmse_px": None, "lmk_status": f"fit skipped: {fit.status[0].reason}"}
    ids = fit.landmark_indices
    err = np.concatenate([(fit.landmarks_2d(0, n)[ids] - p[ids]).reshape(-1, 2) for n, p in obs[0].items()])
    err = err[np.isfinite(err).all(1)]
    return base | {"lmk_rmse_px": float(np.sqrt((err**2).sum(1).mean())), "lmk_status": fit.status[0].status}


def detect_landmarks(images: list[np.ndarray], min_side: int = 256) -> list[np.ndarray]:
    """MediaPipe (478,2) landmarks per uint8 RGB view in its own pixels (NaN when no face); small views are
    upscaled (cubic) to `min_side` for detection."""
    from flame_fitting.landmarks.detector import detect_rgb

    out = []
    for img in images:
        s = max(1.0, min_side / min(img.shape[:2]))
        big = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC) if s > 1 else img
        out.append(detect_rgb(np.ascontiguousarray(big)).points / s)
    return out


def landmark_consistency(model, images: list[np.ndarray], cameras: list[Camera]) -> dict:
    """`landmark_fit_rmse` on MediaPipe landmarks detected on the generated views."""
    return landmark_fit_rmse(model, cameras, detect_landmarks(images))


def posmap_error_mm(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict:
    """pred, target (R,R,3) normalised UV position maps, mask (R,R) valid texels -> distances in mm."""
    pred, target, mask = np.asarray(pred), np.asarray(target), np.asarray(mask, bool)
    if pred.shape != target.shape or pred.shape[:2] != mask.shape or pred.shape[-1] != 3:
        raise MetricError(f"posmap_error_mm: shapes {pred.shape}, {target.shape}, mask {mask.shape} do not match")
    if not mask.any():
        raise MetricError("posmap_error_mm: empty mask")
    d = np.linalg.norm(denormalize_points(pred[mask]).astype(np.float64) - denormalize_points(target[mask]), axis=1) * 1e3
    return {"geo_mean_mm": float(d.mean()), "geo_median_mm": float(np.median(d)), "geo_p95_mm": float(np.percentile(d, 95)),
            "geo_rmse_mm": float(np.sqrt((d**2).mean()))}


# ----------------------------------------------------------------------------- attention
def attention_hit_rate(a2g: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, geo_grid: tuple[int, int]) -> dict:
    """a2g (B,Fa,La,Lg) logits; index (M,4) [b, view, app_token, geo_token] with weights (M,) (collated a2g
    targets); geo_grid (h, w) with h·w = Lg -> {"hit_rate", "chance", "n_queries"}."""
    B, Fa, La, Lg = a2g.shape
    gh, gw = geo_grid
    idx, w = np.asarray(index.cpu(), np.int64), np.asarray(weight.cpu(), np.float64)
    if gh * gw != Lg or idx.ndim != 2 or idx.shape[1] != 4 or len(w) != len(idx):
        raise MetricError(f"attention_hit_rate: grid {geo_grid} vs {Lg} keys, index {idx.shape}, weight {w.shape}")
    if len(idx) == 0:
        return {"hit_rate": None, "chance": None, "n_queries": 0}
    q = (idx[:, 0] * Fa + idx[:, 1]) * La + idx[:, 2]
    order = np.lexsort((-w, q))  # by query, largest weight first
    first = order[np.r_[True, q[order][1:] != q[order][:-1]]]
    true = idx[first, 3]
    pred = a2g.float().reshape(-1, Lg).argmax(-1).cpu().numpy()[q[first]]
    tr, tc, pr, pc = true // gw, true % gw, pred // gw, pred % gw
    hit = (np.abs(tr - pr) <= 1) & (np.abs(tc - pc) <= 1)
    near = (np.minimum(tr + 1, gh - 1) - np.maximum(tr - 1, 0) + 1) * (np.minimum(tc + 1, gw - 1) - np.maximum(tc - 1, 0) + 1)
    return {"hit_rate": float(hit.mean()), "chance": float((near / Lg).mean()), "n_queries": int(len(first))}


@torch.no_grad()
def attention_hit_rate_batch(model, batch: dict, codec, scheduler, cfg, generator: torch.Generator, device,
                             timestep: int | None = None) -> dict:
    """Hit rate at every supervised block ("hit_rate_l<k>") of a collated batch noised as in training
    (`diffusion.prepare_inputs`; at the noise level `timestep` when given, else a random one), plus "chance" and
    "n_queries"."""
    from .diffusion import prepare_inputs

    kwargs, _, _ = prepare_inputs(batch, codec, scheduler, cfg, generator, device, timestep=timestep)
    out = model(**kwargs, align=True, directions=("a2g",))
    if not out.align:
        raise MetricError("attention_hit_rate_batch: the model returned no alignment logits (no geometry stream?)")
    report = {}
    for layer, al in out.align.items():
        g = int(round(al.a2g.shape[-1] ** 0.5))
        r = attention_hit_rate(al.a2g, batch["a2g_index"], batch["a2g_weight"], (g, al.a2g.shape[-1] // g))
        report[f"hit_rate_l{layer}"] = r["hit_rate"]
        report["chance"], report["n_queries"] = r["chance"], r["n_queries"]
    return report
