"""`fit_sequence`: multi-view FLAME fitting of one sequence by second-order bundle adjustment.

Pipeline: validate and pack the observations (`observations.py`; frames with < min_views views are
skipped and recorded) -> restrict the head model to its embedded landmarks (`reduced.py`) -> per
frame, triangulate the landmarks robustly and align the neutral model to them (`init.py`) ->
Levenberg-Marquardt on all frames at once: one identity for the sequence, per-frame expression /
jaw / neck / eyes / head pose, optionally per-camera extrinsic (and focal) corrections, normal
equations solved by Schur complement on the shared unknowns (`lm.py`, `schur.py`) -> with
`noise_model`, estimate each landmark group's noise from the residuals and solve again from there
with the groups re-weighted (`noise.py`, `refits.py`) -> with `refine_cameras`, a camera solve from there, kept only
when the data call for it (`refine.py`; the solves before it and after it hold the cameras) -> with
masks and `silhouette_weight` > 0, solve again with the
multi-view silhouette term added (`silhouette.py`, `refits.py`) -> fitted vertices from `HeadModel.forward`, refined
cameras, residual table, noise-model table, per-frame status, timings.
A numerical failure is reported in the frames' status (with subject / sequence / frame), never
raised; bad input (cameras, array shapes) raises `FitInputError`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from flame_fitting.core.threads import torch_threads
from flame_fitting.geometry.camera import Camera
from flame_fitting.fit.config import FitConfig
from flame_fitting.fit.init import initial_pose
from flame_fitting.fit.jacobian import forward_and_jacobian
from flame_fitting.fit.lm import Evaluator, LMOutcome, State, run_lm
from flame_fitting.fit.observations import FitInputError, check_cameras, pack_observations
from flame_fitting.fit.problem import Problem
from flame_fitting.fit.reduced import ReducedModel
from flame_fitting.fit.refine import refine_cameras
from flame_fitting.fit.refits import points_data, refit_with_noise_model, refit_with_surface, silhouette_data
from flame_fitting.fit.report import FrameParams, FrameStatus, SequenceFit, residual_table
from flame_fitting.fit.rig import Rig, corrected_cameras
from flame_fitting.head.head_model import HeadModel

log = logging.getLogger(__name__)
HISTORY_COLUMNS = ["iteration", "cost", "candidate_cost", "accepted", "gain", "lambda", "robust_scale_px", "median_px"]


def _initialise(rm: ReducedModel, cams: dict[str, Camera], packed, cfg: FitConfig, init: dict | None):
    """Initial θ (F, n_f) (NaN rows for frames that could not be initialised) and per-frame notes."""
    zeros = torch.zeros
    X0, _, _ = forward_and_jacobian(rm, zeros(rm.n_shape, dtype=torch.float64),
                                    zeros(1, rm.layout.n, dtype=torch.float64), normals=False, jacobian=False)
    neutral, root = X0[0].T.numpy(), rm.j_template[0].numpy()
    names = packed.cam_names
    K = np.stack([cams[n].K for n in names]).astype(np.float64)
    R = np.stack([cams[n].world_to_cam[:3, :3] for n in names]).astype(np.float64)
    t = np.stack([cams[n].world_to_cam[:3, 3] for n in names]).astype(np.float64)
    thetas = np.full((len(packed.frames), rm.layout.n), np.nan)
    notes = {}
    for i, fr in enumerate(packed.frames):
        if init is not None and fr in init:
            p = init[fr]
            thetas[i] = rm.layout.pack(np.asarray(p.expr)[:rm.n_expr], p.jaw_pose, p.neck_pose, p.eye_pose,
                                       p.global_orient, p.transl)
            continue
        try:
            th, _, notes[fr] = initial_pose(neutral, root, K, R, t, packed.uv[i], packed.valid[i], rm.layout,
                                            cfg.triangulation_px, cfg.ransac_pairs, cfg.seed + i)
        except (ValueError, np.linalg.LinAlgError) as e:  # degenerate geometry: this frame only
            th, notes[fr] = None, f"initialisation failed: {type(e).__name__}: {e}"
        if th is not None:
            thetas[i] = th
    return torch.as_tensor(thetas), notes


def _pivot(rm: ReducedModel, shape: torch.Tensor, thetas: torch.Tensor) -> np.ndarray:
    """(3,) the median over frames of the initial landmark centroid: the point camera corrections rotate about."""
    ok = torch.isfinite(thetas).all(1)
    if not ok.any():
        return np.zeros(3)
    X = forward_and_jacobian(rm, shape, thetas[ok], normals=False, jacobian=False)[0]      # (B, 3, L)
    return X.mean(2).median(0).values.numpy()


def _vertices(model: HeadModel, params: dict[int, FrameParams], batch: int = 64) -> dict[int, np.ndarray]:
    frames, out = sorted(params), {}
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            chunk = frames[i:i + batch]
            t = {k: torch.cat([params[f].tensors()[k] for f in chunk]) for k in params[chunk[0]].tensors()}
            verts = model(**t).vertices.numpy()
            out.update({f: verts[j] for j, f in enumerate(chunk)})
    return out


def _frame_params(model: HeadModel, rm: ReducedModel, shape: np.ndarray, theta: np.ndarray) -> FrameParams:
    p = rm.layout.unpack(theta)
    sh, ex = np.zeros(model.n_shape, np.float32), np.zeros(model.n_expr, np.float32)
    sh[:rm.n_shape], ex[:rm.n_expr] = shape, p["expr"]
    return FrameParams(shape=sh, expr=ex, jaw_pose=p["jaw_pose"], neck_pose=p["neck_pose"], eye_pose=p["eye_pose"],
                       global_orient=p["global_orient"], transl=p["transl"])


def _silhouette_summary(pb: Problem, st: State, active: torch.Tensor) -> dict:
    """{"used": bool, "n_masks", "n_samples_used", "median_px"} of the final silhouette pairing."""
    if pb.sil is None:
        return {"used": False, "n_masks": 0, "n_samples_used": 0, "median_px": None}
    from flame_fitting.fit.silhouette import silhouette_errors
    e = silhouette_errors(pb.sil, pb.rig, st.shape, torch.where(active[:, None], st.thetas, 0.0), st.xi)
    e = e[active][torch.isfinite(e[active])]
    return {"used": True, "n_masks": int(pb.sil.valid.any(2).sum()), "n_samples_used": int(e.numel()),
            "median_px": float(e.median()) if e.numel() else None}


PIXEL_REFERENCE = 512  # the longer image side the decision thresholds in pixels are given for


def pixel_scaled(cfg: FitConfig, cameras: dict[str, Camera]) -> FitConfig:
    """cfg with `max_median_px` and `triangulation_px` grown by the cameras' median longer side / PIXEL_REFERENCE
    when that is above 1 (unchanged up to 512 px). MediaPipe's landmark errors grow with the resolution (3.8 px at
    512², 11.8 px at 1100×1604, ~26 px at 2200×3208 on the same synthetic heads, fits of 0.2–0.3 mm): a fixed 25 px
    flagged good full-resolution NeRSemble fits as diverged, and the dataset stage dropped them."""
    sides = [max(c.width, c.height) for c in cameras.values()]
    s = float(np.median(sides)) / PIXEL_REFERENCE if sides else 1.0
    if s <= 1.0:
        return cfg
    return replace(cfg, max_median_px=cfg.max_median_px * s, triangulation_px=cfg.triangulation_px * s)


def _check_types(model, cameras, cfg) -> None:
    """fit_sequence's arguments of the wrong kind, refused in one line before anything uses them."""
    if not isinstance(model, HeadModel):
        raise FitInputError(f"fit: model must be a HeadModel (geoface.load_head_model(folder)), got "
                            f"{type(model).__name__}")
    if not isinstance(cameras, dict):
        raise FitInputError(f"fit: cameras must be a dict {{name: Camera}} (Capture.cameras(subject, sequence)), got "
                            f"{type(cameras).__name__}")
    check_cameras(cameras)
    if cfg is not None and not isinstance(cfg, FitConfig):
        raise FitInputError(f"fit: cfg must be a FitConfig (FitConfig(**settings)), got {type(cfg).__name__}")
    for name in ("n_shape", "n_expr"):
        want = None if cfg is None else getattr(cfg, name)
        if want is not None and want > getattr(model, name):
            raise FitInputError(f"fit: FitConfig.{name}={want} but the head model at {model.folder} has "
                                f"{getattr(model, name)} components")


def fit_sequence(model: HeadModel, cameras: dict[str, Camera], observations: dict, cfg: FitConfig | None = None,
                 progress: bool = True, *, confidences: dict | None = None, init: dict[int, FrameParams] | None = None,
                 subject: str = "", sequence: str = "", masks: dict | None = None,
                 points: dict | None = None) -> SequenceFit:
    """Fit the head model to multi-view landmarks of one sequence.

    observations: {frame: {camera: (478, 2) pixels in MediaPipe order, NaN rows missing}} (or objects with
    `.points` / `.detected`); confidences: optional {frame: {camera: (478,)}} >= 0; init: optional initial
    parameters per frame (e.g. a previous fit; identity is taken from the first frame's shape), otherwise
    triangulation + similarity alignment. subject / sequence only label the report and log messages.
    With cfg.calibrated_embedding the model's calibrated MediaPipe embedding is used when it has one
    (`HeadModel.with_mediapipe_embedding`); `fit_capture` reports which.
    masks: optional {frame: {camera: (H, W) foreground mask (> 0 = head)}}; with cfg.silhouette_weight > 0 the
    landmark solve is followed by one with the silhouette term (`silhouette.py`); frames / views without a mask
    have no silhouette residuals. `SequenceFit.silhouette` says what was used.
    points: optional {frame: (n, 3) world points on the head's surface (metres; `features.frame_points`)}; without a
    silhouette term (or with cfg.points_with_masks) and with cfg.points_weight > 0 the landmark solve is followed by
    one with the surface-point term (`points.py`); `SequenceFit.points` says what was used.
    Bad input (a model that is not a HeadModel, cameras that are not {name: Camera}, cfg not a FitConfig, landmark
    arrays of another shape, components beyond the model's) raises FitInputError naming it.
    """
    _check_types(model, cameras, cfg)
    cfg = pixel_scaled(cfg or FitConfig(), cameras)
    if cfg.calibrated_embedding and model.has_calibrated_embedding:
        model = model.with_mediapipe_embedding(calibrated=True)
    with torch_threads(cfg.threads), torch.no_grad():
        return _fit(model, cameras, observations, cfg, progress, confidences, init, subject, sequence, masks, points)


def _points_summary(pb: Problem, st: State, active: torch.Tensor) -> dict:
    """{"used": bool, "n_points", "n_points_used", "median_mm"} of the final surface-point pairing."""
    if pb.pts is None:
        return {"used": False}
    from flame_fitting.fit.points import points_errors
    e = points_errors(pb.pts, st.shape, torch.where(active[:, None], st.thetas, 0.0))
    e = e[torch.isfinite(e)]
    return {"used": True, "n_points": int(pb.pts.valid.sum()), "n_points_used": int(e.numel()),
            "median_mm": float(e.median()) if e.numel() else None}


def _fit(model, cameras, observations, cfg, progress, confidences, init, subject, sequence, masks,
         points=None) -> SequenceFit:
    t0 = time.perf_counter()
    where = f"subject {subject!r} sequence {sequence!r}"
    rm = ReducedModel.from_head_model(model, cfg.n_shape, cfg.n_expr)
    packed = pack_observations(cameras, observations, rm.landmark_indices, confidences, cfg.min_views)
    status = {fr: FrameStatus(fr, "skipped", why) for fr, why in packed.skipped.items()}
    if not packed.frames:  # nothing to fit: every frame skipped
        log.warning("fit: %s: no frame has %d views with detections", where, cfg.min_views)
        return SequenceFit(subject=subject, sequence=sequence, params={}, vertices={}, landmarks={},
                           landmark_indices=rm.landmark_indices, cameras=dict(cameras),
                           residuals=residual_table([], packed.cam_names, *(np.zeros((0, 0, 0)),) * 3, 1.0),
                           history=pd.DataFrame(columns=HISTORY_COLUMNS), status=dict(sorted(status.items())),
                           timing={"total_s": time.perf_counter() - t0}, converged=False, config=cfg)
    thetas, notes = _initialise(rm, cameras, packed, cfg, init)
    shape = torch.zeros(rm.n_shape, dtype=torch.float64)
    if init:
        first = np.asarray(init[min(init)].shape, np.float64)[:rm.n_shape]
        if np.all(np.isfinite(first)):
            shape[:len(first)] = torch.as_tensor(first)
    t_init = time.perf_counter()
    rig = Rig.from_cameras(cameras, packed.cam_names, _pivot(rm, shape, thetas), cfg.refine_cameras, cfg.refine_focal)
    pb = Problem(rm, rig, torch.as_tensor(packed.uv).transpose(2, 3).contiguous(), torch.as_tensor(packed.conf), cfg)
    failed = [i for i in range(len(packed.frames)) if not torch.isfinite(thetas[i]).all()]
    state = State(shape, thetas, rig.zeros())
    noise, cam_summary = None, None
    sil = silhouette_data(model, rm, cameras, packed, masks, cfg, where)  # bad masks raise FitInputError
    pts = points_data(model, rm, packed, points, cfg) if sil is None or cfg.points_with_masks else None
    try:
        desc = f"fit {subject}/{sequence}".rstrip("/ ")
        pb = pb_base = replace(pb, cameras_free=False)  # refine_cameras: the calibration is held until `refine_cameras`
        out = run_lm(pb, state, progress=progress, desc=desc)
        if cfg.noise_model:
            pb, out, noise = refit_with_noise_model(pb, out, cfg, progress, desc, landmarks_only=sil is None)
        if rig.n_params:
            out, cam_summary = refine_cameras(pb, out, progress, desc)
            if cam_summary["accepted"] and cfg.noise_model:
                # the noise model was estimated with the given cameras' errors in the residuals: estimate it again
                # with the refined cameras (held), then refine once more from there
                pb, out, noise = refit_with_noise_model(pb_base, out, cfg, progress, desc, landmarks_only=sil is None)
                out, again = refine_cameras(pb, out, progress, desc)
                cam_summary = {**again, "accepted": True, "second_pass_accepted": again["accepted"],
                               "reason": "first pass applied; second pass (after the noise model's re-estimate) "
                                         + ("applied" if again["accepted"] else f"not applied: {again['reason']}")}
        if sil is not None:
            pb, out = refit_with_surface(pb, out, progress, desc, sil=sil, pts=pts)
        elif pts is not None:
            pb, out = refit_with_surface(pb, out, progress, desc, pts=pts)
    except Exception as e:  # noqa: BLE001 - a numerical failure must not kill the sequence
        log.exception("fit: %s: the solver failed; all frames keep their initial state", where)
        out = LMOutcome(state=state, history=[], diverged={i: f"solver error: {type(e).__name__}: {e}"
                                                          for i in range(len(packed.frames))},
                        converged=False, errors=torch.full(packed.valid.shape, float("nan")),
                        vis=torch.ones(packed.valid.shape, dtype=torch.float64), robust_scale=cfg.robust_scale_px)
    t_solve = time.perf_counter()
    for i, fr in enumerate(packed.frames):
        if i in out.diverged:
            reason = notes.get(fr) if i in failed and notes.get(fr) else out.diverged[i]
            status[fr] = FrameStatus(fr, "diverged", reason, "" if i in failed else notes.get(fr, ""))
            log.warning("fit: %s frame %d diverged: %s", where, fr, reason)
        else:
            status[fr] = FrameStatus(fr, "ok", "", notes.get(fr, ""))
    st = out.state
    active = torch.isfinite(st.thetas).all(1)
    ev = Evaluator(pb, active)
    vis = ev.weights(st)
    _, errors, _ = ev(st, vis, out.robust_scale, False)  # final errors (after any per-frame revert)
    shape_np = st.shape.numpy()
    params = {fr: _frame_params(model, rm, shape_np, st.thetas[i].numpy()) for i, fr in enumerate(packed.frames)}
    X = forward_and_jacobian(rm, st.shape, torch.where(active[:, None], st.thetas, 0.0), normals=False,
                             jacobian=False)[0].transpose(1, 2)
    X = torch.where(active[:, None, None], X, float("nan"))
    fit = SequenceFit(
        subject=subject, sequence=sequence, params=params, vertices=_vertices(model, params),
        landmarks={fr: X[i].numpy().astype(np.float32) for i, fr in enumerate(packed.frames)},
        landmark_indices=rm.landmark_indices,
        cameras=corrected_cameras(rig, st.xi, cameras) if rig.n_params else dict(cameras),
        residuals=residual_table(packed.frames, packed.cam_names, errors.numpy(), packed.valid, vis.numpy(),
                                 3 * cfg.robust_scale_px),
        history=pd.DataFrame(out.history, columns=HISTORY_COLUMNS),
        status=dict(sorted(status.items())), timing={}, converged=out.converged, config=cfg,
        noise=noise.table() if noise is not None else None,
        silhouette=_silhouette_summary(pb, st, active), points=_points_summary(pb, st, active),
        camera_refinement=cam_summary)
    t_end = time.perf_counter()
    n = max(1, len(packed.frames))
    fit.timing = {"init_s": t_init - t0, "solve_s": t_solve - t_init, "outputs_s": t_end - t_solve,
                  "total_s": t_end - t0, "s_per_frame": (t_end - t0) / n}
    return fit
