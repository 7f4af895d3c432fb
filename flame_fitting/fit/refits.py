"""The solves `fit_sequence` runs after its first landmark solve, each from the previous one's state.

`refit_with_noise_model`: rounds of estimating each landmark group's noise from the residuals (`noise.py`) and
solving again with the groups re-weighted (and, landmarks only, the priors moved by `landmarks_only_priors`).
`refit_with_surface`: one more solve with the multi-view silhouette term (`silhouette.py`) or the surface-point
term (`points.py`) added; `silhouette_data` / `points_data` build those terms' data for the packed frames.
A solve that raises keeps the previous result (logged); the orchestration is `fitter.py`.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from flame_fitting.geometry.camera import Camera
from flame_fitting.fit.config import FitConfig
from flame_fitting.fit.lm import LMOutcome, run_lm, view_weights
from flame_fitting.fit.noise import NoiseModel, estimate_noise, landmark_groups
from flame_fitting.fit.observations import FitInputError
from flame_fitting.fit.problem import Problem
from flame_fitting.fit.reduced import ReducedModel
from flame_fitting.fit.silhouette_data import SilhouetteData, SilhouetteModel, mask_targets
from flame_fitting.head.head_model import HeadModel

log = logging.getLogger(__name__)
GROSS_VIEW_WEIGHT = 0.1  # views weighted below this (median error > 3 × the view scale) stay out of the noise model


def refit_with_noise_model(pb: Problem, out: LMOutcome, cfg: FitConfig, progress: bool, desc: str,
                           landmarks_only: bool = False) -> tuple[Problem, LMOutcome, NoiseModel | None]:
    """Rounds of: estimate the landmark noise model from `out`'s residuals (`noise.py`), refit from its state
    with every landmark weighted by its group's weight — and, with `landmarks_only` (no silhouette term follows),
    with the identity / expression priors moved towards prior_shape_landmarks_only / prior_expr_landmarks_only by
    the share of the landmarks' weight the noise model took away (`landmarks_only_priors`). Returns the
    re-weighted problem, the last outcome and the last model (None when no frame could be fitted)."""
    groups = landmark_groups(pb.rm.landmark_indices)
    conf0, model = pb.conf, None
    for _ in range(cfg.noise_rounds):
        active = torch.isfinite(out.state.thetas).all(1)
        if not active.any():
            break
        used = (conf0 > 0) & (out.vis >= 0.5) & active[:, None, None]
        if cfg.view_weighting:  # views the fit rejected as gross failures say nothing about the landmarks' noise
            used &= view_weights(out.errors, out.robust_scale) >= GROSS_VIEW_WEIGHT
        model = estimate_noise(out.errors, used, groups, cfg.noise_free_px, cfg.noise_correlation,
                               cfg.noise_dense_factor)
        if model.is_identity:
            break
        w = torch.as_tensor(model.landmark_weights(groups), dtype=conf0.dtype)              # (L,)
        cfg_w = landmarks_only_priors(pb.cfg, float((conf0 * w).sum() / conf0.sum().clamp_min(1e-12))) \
            if landmarks_only else pb.cfg
        pb_w = replace(pb, conf=conf0 * w, cfg=cfg_w)
        first = out
        try:
            out = run_lm(pb_w, first.state, progress=progress, desc=f"{desc} (noise model)")
        except Exception:  # noqa: BLE001 - keep the previous round's result
            log.exception("fit: %s: the re-weighted solve failed; keeping the previous result", desc)
            break
        pb = pb_w
        offset = len(first.history)
        out.history = first.history + [{**row, "iteration": row["iteration"] + offset} for row in out.history]
        for i, why in first.diverged.items():  # frames that could not be fitted keep their first reason
            if not active[i]:
                out.diverged[i] = why
    return pb, out, model


def landmarks_only_priors(cfg: FitConfig, kept: float) -> FitConfig:
    """`cfg` with the identity / expression priors of a landmarks-only fit whose noise model kept the share `kept`
    (0..1) of the landmarks' weight: prior + (prior_*_landmarks_only - prior) · (1 - kept). Exact landmarks (kept 1)
    keep prior_shape / prior_expr; MediaPipe's (kept ≈ 0.01–0.13, docs/fitting.md) get ≈ the landmarks-only ones."""
    lost = min(max(1.0 - kept, 0.0), 1.0)
    return replace(cfg, prior_shape=cfg.prior_shape + (cfg.prior_shape_landmarks_only - cfg.prior_shape) * lost,
                   prior_expr=cfg.prior_expr + (cfg.prior_expr_landmarks_only - cfg.prior_expr) * lost)


def refit_with_surface(pb: Problem, out: LMOutcome, progress: bool, desc: str, sil=None, pts=None
                       ) -> tuple[Problem, LMOutcome]:
    """Solve again from `out`'s state with the silhouette term (sil) or the surface-point term (pts) added
    (landmarks keep their weights)."""
    first = out
    cfg = pb.cfg
    what = "+".join(n for n, t in (("silhouette", sil), ("surface-point", pts)) if t is not None)
    # re-pairing at each step makes the cost noisy at the 1e-4 level: stop on silhouette_tolerance; the landmarks'
    # robust scale was annealed by the first solve (silhouette_reanneal: anneal it again)
    pb_s = replace(pb, sil=sil, pts=pts, cfg=replace(cfg, tolerance=max(cfg.tolerance, cfg.silhouette_tolerance),
                                                      robust_anneal=cfg.robust_anneal if cfg.silhouette_reanneal
                                                      else 0.0))
    try:
        out = run_lm(pb_s, first.state, progress=progress, desc=f"{desc} ({what}s)")
    except Exception:  # noqa: BLE001 - keep the landmark-only result
        log.exception("fit: %s: the %s solve failed; keeping the landmark-only result", desc, what)
        return pb, first
    offset = len(first.history)
    out.history = first.history + [{**row, "iteration": row["iteration"] + offset} for row in out.history]
    for i, why in first.diverged.items():
        out.diverged.setdefault(i, why)
    return pb_s, out


def silhouette_data(model: HeadModel, rm: ReducedModel, cameras: dict[str, Camera], packed, masks: dict | None,
                    cfg: FitConfig, where: str):
    """SilhouetteData of the packed frames × cameras, or None (term off, or no mask of a fitted frame)."""
    if cfg.silhouette_weight <= 0 or not masks:
        return None
    targets, n = [], 0
    for fr in packed.frames:
        row = []
        for cam in packed.cam_names:
            m = (masks.get(fr) or {}).get(cam)
            if m is not None and np.shape(m)[:2] != (cameras[cam].height, cameras[cam].width):
                raise FitInputError(f"{where} frame {fr} camera {cam}: mask is {np.shape(m)[1::-1]} (W, H) but the "
                                    f"camera is {cameras[cam].width}×{cameras[cam].height}")
            row.append(None if m is None else mask_targets(m, cfg.silhouette_step_px, f"{where} frame {fr} {cam}"))
            n += m is not None
        targets.append(row)
    if not n:
        return None
    sm = SilhouetteModel.cached(model, rm.n_shape, rm.n_expr, cfg.silhouette_region)
    return SilhouetteData.build(sm, targets, cfg.silhouette_weight, cfg.silhouette_scale_px, cfg.silhouette_loss,
                                cfg.silhouette_max_px, cfg.silhouette_mode == "inside")


def points_data(model: HeadModel, rm: ReducedModel, packed, points: dict | None, cfg: FitConfig):
    """PointsData of the packed frames (None: no points or points_weight 0)."""
    if cfg.points_weight <= 0 or not points or not any(len(points.get(fr, ())) for fr in packed.frames):
        return None
    from flame_fitting.fit.points import PointsData
    sm = SilhouetteModel.cached(model, rm.n_shape, rm.n_expr, "all")
    return PointsData.build(sm, [points.get(fr) for fr in packed.frames], cfg.points_weight, cfg.points_scale_mm,
                            cfg.points_max_mm, cfg.points_loss)
