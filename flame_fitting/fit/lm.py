"""Levenberg-Marquardt over all frames of a sequence (shared identity/cameras + per-frame parameters).

One iteration: refresh the visibility, view and robust (IRLS) weights at the current state, build the
normal equations (`problem.py`), damp them Marquardt-style (A + λ (diag A + ε)), solve by Schur
complement (`schur.py`) — with camera refinement the shared step in the subspace `Problem.shared_basis` (the
rigid gauge held, or the cameras held) — evaluate the true robust cost at the candidate with the same weights,
and accept it if the cost falls (λ shrinks by Nielsen's rule from the gain ratio, by up to 10×)
or reject it (λ grows 2×, 4×, 8×, ...). The robust scale is annealed: it starts at `robust_anneal` ×
the robust spread (1.48·median) of the initial errors and shrinks at each accepted step (to at most
half, never growing) down to `robust_scale_px`.
Guards, per frame (a frame never stops the others): non-finite parameters or cost -> the frame is
frozen at its last finite state and flagged; a candidate that is non-finite for some frames keeps
those frames' old parameters; after the run, a frame whose median error rose well above its best
is reverted to its best state, and one whose median error stays above `max_median_px` is flagged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from flame_fitting.fit.problem import Problem, frame_terms, landmarks_and_visibility, prior_terms
from flame_fitting.fit.schur import solve_schur

LAMBDA_MAX, LAMBDA_MIN = 1e16, 1e-12
DIAG_FLOOR = 1e-6
VIEW_SCALE = 2.0
REVERT_FACTOR, REVERT_PX = 1.5, 1.0  # revert a frame to its best state if its median error > 1.5 × best + 1 px


@dataclass
class State:
    shape: Tensor    # (n_shape,)
    thetas: Tensor   # (F, n_f)
    xi: Tensor       # (C, n_cam)

    def clone(self) -> State:
        return State(self.shape.clone(), self.thetas.clone(), self.xi.clone())


@dataclass
class LMOutcome:
    state: State
    history: list[dict]              # one row per LM iteration + a last row with the final cost
    diverged: dict[int, str]         # frame index -> reason
    converged: bool
    errors: Tensor                   # (F, C, L) final pixel errors (NaN where unused)
    vis: Tensor                      # (F, C, L) final visibility weights
    robust_scale: float


def view_weights(errors: Tensor, scale: float) -> Tensor:
    """(F, C, L) pixel errors -> (F, C, 1) weights of whole views: Cauchy in the view's median error with scale
    VIEW_SCALE × the robust scale, so a failed detection (another face, a mirrored mesh) loses its pull
    even where single points happen to fall near the model."""
    med = torch.nanmedian(errors, dim=2, keepdim=True).values
    w = 1 / (1 + (med / (VIEW_SCALE * scale)) ** 2)
    return torch.where(torch.isfinite(w), w, torch.ones_like(w))


def _median_px(errors: Tensor) -> Tensor:
    """(F, C, L) -> (F,) median error per frame (inf when nothing is observed)."""
    flat = errors.reshape(errors.shape[0], -1)
    med = torch.nanmedian(flat, dim=1).values
    return torch.where(torch.isfinite(med), med, torch.full_like(med, float("inf")))


class Evaluator:
    """Chunked evaluation of the data terms over all frames for one fixed set of weights."""

    def __init__(self, pb: Problem, active: Tensor):
        self.pb, self.active = pb, active

    def weights(self, state: State) -> Tensor:
        vis = []
        for sl in self._chunks():
            th = torch.where(self.active[sl, None], state.thetas[sl], torch.zeros_like(state.thetas[sl]))
            vis.append(landmarks_and_visibility(self.pb, state.shape, th, state.xi)[1])
        return torch.cat(vis)

    def _chunks(self):
        F, step = self.pb.obs.shape[0], self.pb.cfg.chunk_frames
        return [slice(i, min(F, i + step)) for i in range(0, F, step)]

    def __call__(self, state: State, vis: Tensor, scale: float, jacobians: bool):
        pb, parts = self.pb, []
        for sl in self._chunks():
            act = self.active[sl]
            th = torch.where(act[:, None], state.thetas[sl], torch.zeros_like(state.thetas[sl]))
            base = pb.conf[sl] * vis[sl] * act[:, None, None]
            parts.append(frame_terms(pb, state.shape, th, state.xi, pb.obs[sl], base, scale, jacobians, sl, act))
        cost = torch.cat([p.cost for p in parts])
        errors = torch.cat([p.errors for p in parts])
        if not jacobians:
            return cost, errors, None
        blocks = (torch.cat([p.A_ff for p in parts]), torch.cat([p.g_f for p in parts]),
                  torch.cat([p.A_sf for p in parts]), sum(p.A_ss for p in parts), sum(p.g_s for p in parts))
        return cost, errors, blocks


def run_lm(pb: Problem, state: State, progress: bool = False, desc: str = "fit") -> LMOutcome:
    """Minimise the problem's cost from `state` (modified copy returned)."""
    cfg = pb.cfg
    state = state.clone()
    F = state.thetas.shape[0]
    active = torch.isfinite(state.thetas).all(1)
    diverged = {int(i): "non-finite initial parameters" for i in torch.nonzero(~active)[:, 0]}
    ev = Evaluator(pb, active)
    vis = ev.weights(state)
    _, errors, _ = ev(state, vis, 1.0, False)
    target = cfg.robust_scale_px
    scale = target
    finite = errors[torch.isfinite(errors)]
    if cfg.robust_anneal > 0 and cfg.robust_loss != "l2" and finite.numel():
        scale = max(target, cfg.robust_anneal * 1.4826 * float(finite.median()))
    weigh = (lambda v, e, sc: v * view_weights(e, sc)) if cfg.view_weighting else (lambda v, e, sc: v)  # noqa: E731
    w = weigh(vis, errors, scale)
    data, errors, blocks = ev(state, w, scale, True)
    bad = active & ~torch.isfinite(data)
    if bad.any():  # finite parameters, non-finite cost (overflow): freeze those frames
        for i in torch.nonzero(bad)[:, 0]:
            diverged[int(i)] = "non-finite cost at the initial parameters"
        active &= ~bad
        vis = ev.weights(state)
        w = weigh(vis, errors, scale)
        data, errors, blocks = ev(state, w, scale, True)
    best_med, best_thetas = _median_px(errors), state.thetas.clone()
    lam, nu, history, converged = cfg.lambda_init, 2.0, [], False
    n_obs = float((pb.conf > 0).sum())
    pc, _, A_fp, g_fp, A_sp, g_sp, E = prior_terms(pb, state.shape, state.thetas, state.xi, active)
    cost = float(data.sum() + pc)
    T = pb.shared_basis()
    bar = tqdm(range(cfg.iterations), desc=desc, disable=not progress, leave=False)
    for it in bar:
        A_ff, g_f, A_sf, A_ss, g_s = blocks
        A_ff = A_ff + torch.diag_embed(A_fp)
        g_f, A_ss, g_s = g_f + g_fp, A_ss + A_sp, g_s + g_sp
        eye = torch.eye(A_ff.shape[-1], dtype=A_ff.dtype)
        A_ff = torch.where(active[:, None, None], A_ff, eye)
        g_f = torch.where(active[:, None], g_f, torch.zeros_like(g_f))
        A_sf = A_sf * active[:, None, None]
        damp_f = torch.diag_embed(lam * (torch.diagonal(A_ff, dim1=-2, dim2=-1) + DIAG_FLOOR))
        if T is None:  # shared unknowns solved in the gauge-free subspace s = T s' (camera refinement)
            A_ss_r, g_s_r, A_sf_r = A_ss, g_s, A_sf
        else:
            A_ss_r, g_s_r, A_sf_r = T.T @ A_ss @ T, T.T @ g_s, torch.einsum("st,fsn->ftn", T, A_sf)
        damp_s = torch.diag(lam * (torch.diagonal(A_ss_r) + DIAG_FLOOR))
        row = {"iteration": it, "cost": cost, "robust_scale_px": scale, "lambda": lam,
               "median_px": float(torch.nanmedian(errors)) if torch.isfinite(errors).any() else float("nan")}
        try:
            ds, dth = solve_schur(A_ss_r + damp_s, g_s_r, A_sf_r, A_ff + damp_f, g_f, E)
            ds = ds if T is None else T @ ds
        except torch.linalg.LinAlgError:
            ds = None
        if ds is None or not (torch.isfinite(ds).all() and torch.isfinite(dth).all()):
            lam, nu = lam * nu, nu * 2
            history.append({**row, "accepted": False})
            if lam > LAMBDA_MAX:
                break
            continue
        dth = dth * active[:, None]
        n_s = pb.rm.n_shape
        step_g = torch.dot(ds, g_s) + (dth * g_f).sum()
        step_A = (ds @ A_ss @ ds + torch.einsum("fn,fnm,fm->", dth, A_ff, dth)
                  + 2 * torch.einsum("s,fsn,fn->", ds, A_sf, dth))
        if E is not None:
            step_A = step_A + 2 * (E * dth[:-1] * dth[1:]).sum()
        predicted = float(-(2 * step_g + step_A))
        if predicted < 0.01 * cfg.tolerance * max(cost, n_obs) and scale == target:  # nothing left to gain
            history.append({**row, "accepted": False})
            converged = True
            break
        cand = State(state.shape + ds[:n_s], state.thetas + dth, state.xi + ds[n_s:].reshape(state.xi.shape))
        c_data, c_err, _ = ev(cand, w, scale, False)
        nonfinite = active & ~torch.isfinite(c_data)
        if nonfinite.any():  # keep those frames' old parameters in this candidate
            cand.thetas[nonfinite] = state.thetas[nonfinite]
            c_data, c_err, _ = ev(cand, w, scale, False)
        c_pc = prior_terms(pb, cand.shape, cand.thetas, cand.xi, active)[0]
        c_cost = float(c_data.sum() + c_pc)
        actual = cost - c_cost
        row["candidate_cost"] = c_cost
        if not (actual > 0 and torch.isfinite(torch.tensor(c_cost))):
            lam, nu = lam * nu, nu * 2
            history.append({**row, "accepted": False})
            if lam > LAMBDA_MAX:
                break
            continue
        gain = actual / predicted if predicted > 0 else 0.0
        lam, nu = max(LAMBDA_MIN, lam * max(0.1, 1 - (2 * gain - 1) ** 3)), 2.0
        state = cand
        history.append({**row, "accepted": True, "gain": gain})
        # refresh the weights at the new state
        vis = ev.weights(state)
        old_scale = scale
        fin = c_err[torch.isfinite(c_err)]
        if cfg.robust_anneal > 0 and fin.numel():
            scale = max(target, min(scale / 2, cfg.robust_anneal * 1.4826 * float(fin.median())))
        w = weigh(vis, c_err, scale)
        data, errors, blocks = ev(state, w, scale, True)
        med = _median_px(errors)
        better = active & (med < best_med)
        best_med, best_thetas[better] = torch.where(better, med, best_med), state.thetas[better]
        pc, _, A_fp, g_fp, A_sp, g_sp, E = prior_terms(pb, state.shape, state.thetas, state.xi, active)
        new_cost = float(data.sum() + pc)
        bar.set_postfix(cost=f"{new_cost:.4g}", scale=f"{scale:.3g}")
        if actual < cfg.tolerance * max(cost, n_obs) and scale == old_scale or new_cost == 0:
            cost, converged = new_cost, True
            break
        cost = new_cost
    history.append({"iteration": len(history), "cost": cost, "robust_scale_px": scale, "lambda": lam,
                    "median_px": float(torch.nanmedian(errors)) if torch.isfinite(errors).any() else float("nan")})
    med = _median_px(errors)
    for i in range(F):
        if not active[i]:
            continue
        if med[i] > REVERT_FACTOR * best_med[i] + REVERT_PX:
            diverged[i] = f"median error rose from {float(best_med[i]):.2f} px to {float(med[i]):.2f} px; reverted " \
                          f"to the best state"
            state.thetas[i] = best_thetas[i]
        elif not med[i] <= cfg.max_median_px:
            diverged[i] = (f"median reprojection error {float(med[i]):.2f} px > max_median_px {cfg.max_median_px:.4g}"
                           if torch.isfinite(med[i]) else "no landmark in front of any camera")
    return LMOutcome(state=state, history=history, diverged=diverged, converged=converged, errors=errors, vis=vis,
                     robust_scale=scale)
