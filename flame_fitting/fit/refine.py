"""Camera refinement (`refine_cameras`) as its own solve, accepted only when the data call for it.

Landmarks of a detector are biased per view (MediaPipe: 2–10 px, growing with yaw), and a small head seen from
~1 m leaves a near-degenerate mode: move the head relative to the rig and turn every camera to follow it. A joint
solve from the start lets the biased first-solve weights drive that mode (cameras moved by up to 21°). So, when
refining, `fit_sequence` runs its first (and noise-model) solves with the calibration held, then this solve:
  * cameras and head are refined jointly from that state, with the landmark weights of the noise model;
  * the gauge is held exactly in the LM step (`Problem.shared_basis`): the rig's mean rotation, centroid and (by
    default, camera_scale "rig") size stay the calibration's;
  * each camera's correction has a Gaussian prior (rotation σ camera_rot_sigma_deg, centre σ
    camera_trans_sigma_mm, from the given calibration, `Problem.camera_prior`);
  * the result is accepted only if the MAP objective (data at a robust scale that does not cut off the errors the
    held calibration causes, `comparison_scale`, + every prior) falls by
    more than camera_accept_gain per free camera parameter (an AIC-style test: 2 per parameter) and no camera
    moved beyond camera_max_sigmas prior σ; otherwise the calibration is kept and the held solve's state stands.
The silhouette solve that may follow holds the cameras (its term has no camera Jacobian).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from flame_fitting.fit.lm import Evaluator, LMOutcome, State, run_lm
from flame_fitting.fit.problem import Problem, prior_terms
from flame_fitting.fit.rig import corrected_centers

log = logging.getLogger(__name__)


def objective(pb: Problem, state: State, scale: float) -> float:
    """MAP objective of `state` with the robust scale `scale` (px): robust data cost with that state's visibility
    weights (no whole-view weights: a view that the held cameras turn into an outlier must count when the
    refined cameras bring it back), plus every prior (the camera prior included)."""
    active = torch.isfinite(state.thetas).all(1)
    ev = Evaluator(pb, active)
    data, _, _ = ev(state, ev.weights(state), scale, False)
    return float(data[active].sum() + prior_terms(pb, state.shape, state.thetas, state.xi, active)[0])


def comparison_scale(pb: Problem, out: LMOutcome) -> float:
    """Robust scale (px) of the acceptance test: the first solve's annealing start for the held state's errors,
    robust_anneal × 1.4826 × median (at least robust_scale_px), so that the errors the held calibration causes are
    not cut off as outliers."""
    e = out.errors[torch.isfinite(out.errors)]
    med = float(e.median()) if e.numel() else 0.0
    return max(pb.cfg.robust_scale_px, max(pb.cfg.robust_anneal, 1.0) * 1.4826 * med)


def camera_moves(pb: Problem, xi: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(C,) rotation change (degrees) and centre move (mm) of each camera under the corrections xi (C, k)."""
    w = xi[:, :3]
    ang = torch.rad2deg(w.norm(dim=1))                       # angle of R_c Exp(ω_c) relative to R_c
    moved = (corrected_centers(pb.rig, xi) - pb.rig.centers).norm(dim=1) * 1e3
    return ang.numpy(), moved.numpy()


def refine_cameras(pb: Problem, out: LMOutcome, progress: bool, desc: str) -> tuple[LMOutcome, dict]:
    """Refine the cameras from the held solve's outcome `out` (pb: its problem, noise-model weights included).
    Returns the outcome to keep (the refined one, or `out` when refused) and a summary dict: accepted, reason,
    objective_before / _after, threshold, max_rot_deg, max_centre_mm (the candidate's largest move from the given
    calibration, which `pb.rig` holds)."""
    cfg, k = pb.cfg, pb.rig.n_params
    C = int(pb.observed_cameras.sum())  # the others are held (problem.py)
    pb_c = replace(pb, cameras_free=True)
    summary = {"accepted": False, "reason": "", "objective_before": None, "objective_after": None,
               "threshold": cfg.camera_accept_gain * (C * k - (7 if cfg.camera_scale == "rig" else 6)),
               "max_rot_deg": 0.0, "max_centre_mm": 0.0}
    try:
        cand = run_lm(pb_c, out.state, progress=progress, desc=f"{desc} (cameras)")
    except Exception as e:  # noqa: BLE001 - keep the calibration
        log.exception("fit: %s: the camera solve failed; keeping the given cameras", desc)
        summary["reason"] = f"camera solve failed: {type(e).__name__}: {e}"
        return out, summary
    scale = comparison_scale(pb, out)
    before, after = objective(pb, out.state, scale), objective(pb, cand.state, scale)
    rot, centre = camera_moves(pb, cand.state.xi)
    summary.update(objective_before=before, objective_after=after, max_rot_deg=float(rot.max()),
                   max_centre_mm=float(centre.max()))
    limit_r = cfg.camera_max_sigmas * cfg.camera_rot_sigma_deg
    limit_c = cfg.camera_max_sigmas * cfg.camera_trans_sigma_mm
    if not np.isfinite(after) or before - after <= summary["threshold"]:
        summary["reason"] = (f"objective fell by {before - after:.4g}, not more than {summary['threshold']:.4g} "
                             f"({cfg.camera_accept_gain:g} per free camera parameter): the data do not call for it")
    elif rot.max() > limit_r or centre.max() > limit_c:
        summary["reason"] = (f"a camera moved {rot.max():.2f}° / {centre.max():.1f} mm, beyond camera_max_sigmas "
                             f"({limit_r:g}° / {limit_c:g} mm)")
    else:
        summary["accepted"] = True
    if not summary["accepted"]:
        log.warning("fit: %s: camera solve not applied (the cameras stay as they were): %s", desc, summary["reason"])
        return out, summary
    offset = len(out.history)
    cand.history = out.history + [{**row, "iteration": row["iteration"] + offset} for row in cand.history]
    for i, why in out.diverged.items():
        if not torch.isfinite(out.state.thetas[i]).all():
            cand.diverged.setdefault(i, why)
    return cand, summary
