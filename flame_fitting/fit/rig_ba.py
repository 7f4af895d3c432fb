"""Bundle adjustment of a camera rig from point tracks (the maths of `features.py`; pure numpy).

Unknowns: per camera a rotation correction ω_c about its own centre (R_c = Exp(ω_c) R0_c) and a centre move δo_c
(o_c = o0_c + δo_c); per track a 3D point X_p. Intrinsics are held (observations are undistorted pixels of the
pinhole K). Residual: the reprojection error in pixels, Huber-robust at `scale_px` (per observation, on the 2D
error's length) and weighted per observation (`Tracks.weight`), plus Gaussian priors ω_c ~ N(0, rot_sigma²), δo_c ~ N(0, trans_sigma²) from the given
calibration. The gauge (a similarity of rig + points leaves every projection unchanged) is held exactly: the
camera step is solved in the subspace Σ_c R0_cᵀ ω_c = 0 (ω_c turns camera c about its own axes, so R0_cᵀ ω_c is
its turn in world axes; a turn of the whole rig by g is ω_c = −R0_c g), Σ_c δo_c = 0 and Σ_c v_c·δo_c = 0 (v_c:
unit-rms offsets of the centres from their centroid) — the rig keeps its mean orientation, centroid and size, as in
the landmark camera solve (problem.py `_gauge_basis`, whose ω are in world axes already). Until 2026-12-06 the
rotation row was Σ_c ω_c = 0, which on a rig around the head (Σ_c R0_c nearly singular) left two turns of the whole
rig free: the refined 360° ring turned 38–43° against the given cameras. Cameras without observations are held at
the given calibration and left out of the gauge (they could otherwise turn against the observed ones at the cost of
their priors alone).

The data term is in units of the observations' noise: Σ weight · ρ(r) / noise_px² (`noise_px`; 1 px unless given).
`noise_level_px` estimates it from a solution's residuals (robust, corrected for the unknowns the solution used up):
with 0.1-px tracks a 1-px data term lets the calibration's priors outweigh the images ~100-fold and hold the cameras
near the given ones along the rig's weak modes (docs/fitting.md "Camera refinement").

Solver: Levenberg–Marquardt with the points eliminated by the Schur complement (3×3 blocks per point, a dense
reduced camera system of 6C − 7 unknowns). `bundle_adjust` is tested against scipy's least_squares on small
problems (tests/flame_fitting/fit/test_rig_ba.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .so3 import hat_np, left_jacobian_np, log_np, rodrigues_np


@dataclass
class Tracks:
    """Observations of points: cam (n,) camera index, point (n,) point index, uv (n, 2) undistorted pixels,
    weight (n,) each observation's weight in the cost (None: 1; e.g. 1 / σ² of its localisation)."""

    cam: np.ndarray
    point: np.ndarray
    uv: np.ndarray
    n_points: int
    weight: np.ndarray | None = None


@dataclass
class BAResult:
    R: np.ndarray        # (C, 3, 3) world→camera rotations
    centers: np.ndarray  # (C, 3)
    X: np.ndarray        # (P, 3) points
    cost: float          # robust data cost + priors at the solution
    residuals: np.ndarray  # (n, 2) px
    iterations: int


def gauge_basis(centers: np.ndarray, R: np.ndarray, observed: np.ndarray | None = None) -> np.ndarray:
    """(6C, 6C' - 7) orthonormal basis of camera corrections [ω_0, δo_0, ω_1, δo_1, ...] (C' observed cameras, R
    (C,3,3) their world→camera rotations) that keep the rig's mean rotation in world axes, centroid and size and
    hold the cameras that are not `observed` (C,) bool (default all observed) at zero (module docstring)."""
    C = len(centers)
    seen = np.ones(C, bool) if observed is None else np.asarray(observed, bool)
    v = np.where(seen[:, None], centers - centers[seen].mean(0), 0.0)
    v = v / max(np.sqrt((v[seen] ** 2).sum(1).mean()), 1e-12)
    G = np.zeros((7, C, 6))
    G[0:3, :, 0:3] = np.transpose(R, (2, 0, 1)) * seen[None, :, None]      # rows i: Σ_c (R_cᵀ ω_c)_i
    G[3:6, :, 3:6] = np.eye(3)[:, None] * seen[None, :, None]
    G[6, :, 3:6] = v
    held = np.zeros((6 * int((~seen).sum()), C, 6))
    for j, c in enumerate(np.flatnonzero(~seen)):
        held[6 * j:6 * j + 6, c] = np.eye(6)
    G = np.concatenate([G.reshape(7, 6 * C), held.reshape(-1, 6 * C)])
    _, S, Vt = np.linalg.svd(G)
    rank = int((S > 1e-9 * S[0]).sum())
    return Vt[rank:].T


def triangulate(tr: Tracks, K: np.ndarray, R: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(P, 3) linear (DLT) triangulation of every track."""
    P = K @ np.concatenate([R, -(R @ centers[:, :, None])], axis=2)  # (C, 3, 4)
    Pc = P[tr.cam]
    A = np.stack([tr.uv[:, :1] * Pc[:, 2] - Pc[:, 0], tr.uv[:, 1:] * Pc[:, 2] - Pc[:, 1]], 1)  # (n, 2, 4)
    M = np.zeros((tr.n_points, 4, 4))
    np.add.at(M, tr.point, np.einsum("nki,nkj->nij", A, A))
    _, vecs = np.linalg.eigh(M)
    h = vecs[:, :, 0]
    return h[:, :3] / np.where(np.abs(h[:, 3:]) > 1e-12, h[:, 3:], 1e-12)


def reprojection_errors(tr: Tracks, K: np.ndarray, R: np.ndarray, centers: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(n,) pixel length of each observation's reprojection error (inf behind the camera)."""
    r, xc = _project(K, R, centers, X, tr)
    return np.where(xc[:, 2] > 1e-6, np.linalg.norm(r, axis=1), np.inf)


def _project(K, R, C, X, tr):
    xc = np.einsum("nij,nj->ni", R[tr.cam], X[tr.point] - C[tr.cam])
    uv = np.einsum("nij,nj->ni", K[tr.cam], xc)
    return uv[:, :2] / uv[:, 2:3] - tr.uv, xc


def _cost(r, w, d, scale, rot_sigma, trans_sigma, weight) -> float:
    n = np.linalg.norm(r, axis=1)
    rho = np.where(n < scale, 0.5 * n ** 2, scale * n - 0.5 * scale ** 2)
    return float((weight * rho).sum() + 0.5 * ((w / rot_sigma) ** 2).sum() + 0.5 * ((d / trans_sigma) ** 2).sum())


def noise_level_px(tr: Tracks, residuals: np.ndarray, n_cameras: int) -> float:
    """The observations' noise σ (px per axis, at weight 1) from a solution's residuals (n, 2): the median weighted
    residual length over the Rayleigh median √(2 ln 2), scaled by √(equations / (equations − unknowns)) for the
    3 per point and 6C − 7 per rig the solution fitted (C: the cameras with observations, at most n_cameras; the
    others are held). A floor of 0.01 px."""
    w = np.ones(len(tr.cam)) if tr.weight is None else np.asarray(tr.weight, np.float64)
    med = float(np.median(np.sqrt(w) * np.linalg.norm(residuals, axis=1))) / np.sqrt(2 * np.log(2))
    eq, unknowns = 2 * len(tr.cam), 3 * tr.n_points + 6 * min(n_cameras, len(np.unique(tr.cam))) - 7
    return max(med * np.sqrt(eq / max(eq - unknowns, 1)), 0.01)


def _corrections(R: np.ndarray, centers: np.ndarray, R0: np.ndarray, centers0: np.ndarray):
    """The unknowns (ω (C,3), δo (C,3)) that take the given cameras (R0, centers0) to (R, centers)."""
    return np.stack([log_np(a @ b.T) for a, b in zip(R, R0)]), centers - centers0


def prior_cost(R: np.ndarray, centers: np.ndarray, R0: np.ndarray, centers0: np.ndarray, rot_sigma: float,
               trans_sigma: float) -> float:
    """The priors' share of the objective for cameras (R, centers) against the given (R0, centers0)."""
    w, d = _corrections(R, centers, R0, centers0)
    return float(0.5 * ((w / rot_sigma) ** 2).sum() + 0.5 * ((d / trans_sigma) ** 2).sum())


def bundle_adjust(tr: Tracks, K: np.ndarray, R0: np.ndarray, centers0: np.ndarray, rot_sigma: float,
                  trans_sigma: float, scale_px: float = 1.0, hold_cameras: bool = False, X0: np.ndarray | None = None,
                  iterations: int = 100, tol: float = 1e-8, noise_px: float = 1.0,
                  start: BAResult | None = None) -> BAResult:
    """Minimise the module's objective from the given cameras (K (C,3,3), R0 (C,3,3), centers0 (C,3); rot_sigma in
    radians, trans_sigma in the centres' unit) and points X0 (default: `triangulate`). hold_cameras: points only
    (the objective of the given calibration, for the acceptance test). noise_px: the data term's unit (module
    docstring); the Huber scale stays in pixels. start: begin from that solution's cameras and points (the priors
    still measured from R0, centers0)."""
    C, P, n = len(R0), tr.n_points, len(tr.cam)
    obs_w = (np.ones(n) if tr.weight is None else np.asarray(tr.weight, np.float64)) / noise_px ** 2
    if start is not None:
        (w, d), X = _corrections(start.R, start.centers, R0, centers0), start.X.copy()
    else:
        w, d = np.zeros((C, 3)), np.zeros((C, 3))
        X = triangulate(tr, K, R0, centers0) if X0 is None else X0.copy()
    basis = gauge_basis(centers0, R0, np.bincount(tr.cam, minlength=C) > 0)
    prior = np.tile(np.r_[np.full(3, rot_sigma ** -2), np.full(3, trans_sigma ** -2)], C)
    order = np.argsort(tr.point, kind="stable")
    starts = np.searchsorted(tr.point[order], np.arange(P + 1))
    pi, pj = [], []  # observation pairs of one track (for the Schur complement)
    for p in range(P):
        ids = order[starts[p]:starts[p + 1]]
        pi.append(np.repeat(ids, len(ids)))
        pj.append(np.tile(ids, len(ids)))
    pi, pj = np.concatenate(pi), np.concatenate(pj)
    R = rodrigues_np(w) @ R0
    r, xc = _project(K, R, centers0 + d, X, tr)
    f = _cost(r, w, d, scale_px, rot_sigma, trans_sigma, obs_w)
    lam, it = 1e-3, 0
    for it in range(1, iterations + 1):
        nr = np.linalg.norm(r, axis=1)
        wt = obs_w * np.where(nr < scale_px, 1.0, scale_px / np.maximum(nr, 1e-12))  # IRLS weights of the Huber cost
        Kc, z = K[tr.cam], xc[:, 2]
        dp = np.zeros((n, 2, 3))
        dp[:, 0, 0], dp[:, 0, 1] = Kc[:, 0, 0] / z, Kc[:, 0, 1] / z
        dp[:, 0, 2] = -(Kc[:, 0, 0] * xc[:, 0] + Kc[:, 0, 1] * xc[:, 1]) / z ** 2
        dp[:, 1, 1], dp[:, 1, 2] = Kc[:, 1, 1] / z, -Kc[:, 1, 1] * xc[:, 1] / z ** 2
        B = dp @ R[tr.cam]                                                    # ∂r/∂X
        Bw = B * wt[:, None, None]
        Hpp = np.zeros((P, 3, 3))
        np.add.at(Hpp, tr.point, np.einsum("nki,nkj->nij", Bw, B))
        gp = np.zeros((P, 3))
        np.add.at(gp, tr.point, np.einsum("nki,nk->ni", Bw, r))
        Hinv = np.linalg.inv(Hpp + (lam * np.maximum(np.einsum("pii->pi", Hpp), 1e-12))[:, :, None] * np.eye(3))
        if hold_cameras:
            dc = np.zeros((C, 6))
        else:
            A = np.concatenate([dp @ -hat_np(xc) @ left_jacobian_np(w)[tr.cam], dp @ -R[tr.cam]], axis=2)  # ∂r/∂(ω, δo)
            Aw = A * wt[:, None, None]
            Hcc = np.zeros((C, C, 6, 6))
            np.add.at(Hcc, (tr.cam, tr.cam), np.einsum("nki,nkj->nij", Aw, A))
            gc = np.zeros((C, 6))
            np.add.at(gc, tr.cam, np.einsum("nki,nk->ni", Aw, r))
            Hcp = np.einsum("nki,nkj->nij", Aw, B)                           # (n, 6, 3)
            HcpHinv = np.einsum("nij,njk->nik", Hcp, Hinv[tr.point])
            np.add.at(Hcc, (tr.cam[pi], tr.cam[pj]), -np.einsum("nij,nkj->nik", HcpHinv[pi], Hcp[pj]))
            np.add.at(gc, tr.cam, -np.einsum("nij,nj->ni", HcpHinv, gp[tr.point]))
            S = Hcc.transpose(0, 2, 1, 3).reshape(6 * C, 6 * C) + np.diag(prior)
            g = gc.reshape(-1) + prior * np.concatenate([w, d], 1).reshape(-1)
            Sr, gr = basis.T @ S @ basis, basis.T @ g
            y = np.linalg.solve(Sr + lam * np.diag(np.maximum(np.diag(Sr), 1e-12)), -gr)
            dc = (basis @ y).reshape(C, 6)
        hp = gp.copy()
        if not hold_cameras:
            np.add.at(hp, tr.point, np.einsum("nij,ni->nj", Hcp, dc[tr.cam]))
        dX = -np.einsum("pij,pj->pi", Hinv, hp)
        w2, d2, X2 = w + dc[:, :3], d + dc[:, 3:], X + dX
        R2 = rodrigues_np(w2) @ R0
        r2, xc2 = _project(K, R2, centers0 + d2, X2, tr)
        f2 = _cost(r2, w2, d2, scale_px, rot_sigma, trans_sigma, obs_w)
        if np.isfinite(f2) and f2 < f:
            gain = (f - f2) / max(f, 1e-300)
            w, d, X, R, r, xc, f = w2, d2, X2, R2, r2, xc2, f2
            lam = max(lam / 3, 1e-9)
            if gain < tol:
                break
        else:
            lam *= 4
            if lam > 1e8:
                break
    return BAResult(R, centers0 + d, X, f, r, it)
