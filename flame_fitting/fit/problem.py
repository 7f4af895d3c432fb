"""The fitting objective: robust reprojection cost, priors, and its Gauss-Newton normal equations.

cost = Σ_{f,c,l} conf·vis·view·ρ(|uv_fcl(θ) - obs_fcl|)       (pixels², ρ(e) ≈ e² for small e)
     + prior_shape ||β||²
     + Σ_f (prior_expr ||ψ_f||² + prior_jaw ||jaw_f||² + prior_neck ||neck_f||² + prior_eyes ||eyes_f||²)
     + Σ_c ξ_cᵀ P_c ξ_c   (camera refinement: rotation change / σ_r, centre move / σ_t, log focal / σ_f)
     + temporal_weight Σ_f ||s ⊙ (θ_f - θ_f-1)||²                             (optional)
Robust losses by IRLS: per (frame, camera, landmark) weight w(e) = ρ'(e) / 2e, held fixed while one
linear system is built; visibility weights vis (smooth in the cosine between the landmark
triangle's normal and the direction to the camera) and whole-view weights (`lm.view_weights`) are
also refreshed once per iteration (they enter here as `base_w`).
The Gauss-Newton model is cost(δ) ≈ c + 2 gᵀδ + δᵀAδ with A = JᵀWJ, g = JᵀWr. The data term is
reduced to landmark space first: M_l = Σ_c w P_clᵀP_cl (3×3), g_l = Σ_c w P_clᵀ r_cl, then
A = Σ_l D_lᵀ M_l D_l with D_l = dX_l/dθ: the large product does not grow with the number of cameras.
Unknowns: shared s = [β (n_shape) | ξ (C·n_cam)], per frame θ_f (n_f).
Gauge (camera refinement): the head poses and all cameras share a rigid motion, which no image observes. It is
held exactly, not by a penalty: `Problem.shared_basis` gives the subspace of corrections that keep the rig's mean
rotation and centroid (and by default its size: the calibration sets the metric scale) to first order, and
`lm.py` solves the shared step in it (see `shared_basis`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flame_fitting.fit.config import FitConfig
from flame_fitting.fit.jacobian import forward_and_jacobian
from flame_fitting.fit.reduced import ReducedModel
from flame_fitting.fit.rig import Rig, corrected_centers, project
from flame_fitting.fit.so3 import hat

Z_MIN = 0.01        # m: points closer than this to a camera plane (or behind it) are "behind the camera"
BEHIND_PX = 1e4     # such points cost ρ(BEHIND_PX) each, with no gradient


def rho(e: Tensor, scale: float, kind: str) -> Tensor:
    """Robust cost of 2D errors e (pixels); ≈ e² for e << scale."""
    if kind == "l2":
        return e * e
    if kind == "huber":
        return torch.where(e <= scale, e * e, 2 * scale * e - scale * scale)
    return scale * scale * torch.log1p((e / scale) ** 2)  # cauchy


def irls_weight(e: Tensor, scale: float, kind: str) -> Tensor:
    """IRLS weight ρ'(e) / 2e."""
    if kind == "l2":
        return torch.ones_like(e)
    if kind == "huber":
        return torch.where(e <= scale, torch.ones_like(e), scale / e.clamp_min(1e-12))
    return 1 / (1 + (e / scale) ** 2)


def visibility(X: Tensor, normals: Tensor, centers: Tensor, cos0: float, softness: float) -> Tensor:
    """Smooth visibility weights (B, C, L) from landmarks X (B, 3, L), unit normals (B, 3, L), camera centres (C, 3)."""
    d = centers[None, :, :, None] - X[:, None]                                    # (B, C, 3, L)
    cos = (d * normals[:, None]).sum(2) / (d * d).sum(2).sqrt().clamp_min(1e-12)
    return torch.sigmoid((cos - cos0) / softness)


@dataclass
class Problem:
    rm: ReducedModel
    rig: Rig
    obs: Tensor        # (F, C, 2, L) float64 undistorted pixels
    conf: Tensor       # (F, C, L) float64, 0 where missing
    cfg: FitConfig
    sil: Any = None    # silhouette_data.SilhouetteData (mask boundaries + pairing) or None: no silhouette term
    pts: Any = None    # points.PointsData (triangulated surface points + pairing) or None: no surface-point term
    cameras_free: bool = True  # with camera refinement: False holds the corrections at their current values

    @property
    def n_frame(self) -> int:
        return self.rm.layout.n

    @property
    def observed_cameras(self) -> Tensor:
        """(C,) bool: cameras with a landmark in some frame (the others' corrections are held, `_gauge_basis`)."""
        return (self.conf > 0).any(2).any(0)

    @property
    def n_shared(self) -> int:
        return self.rm.n_shape + len(self.rig.names) * self.rig.n_params

    def frame_prior(self) -> Tensor:
        """(n_f,) diagonal prior weights of θ_f."""
        lay, cfg = self.rm.layout, self.cfg
        p = torch.zeros(lay.n, dtype=torch.float64)
        for name, w in (("expr", cfg.prior_expr), ("jaw_pose", cfg.prior_jaw), ("neck_pose", cfg.prior_neck),
                        ("eye_pose", cfg.prior_eyes)):
            p[lay.slice(name)] = w
        return p

    def temporal_scale(self) -> Tensor:
        """(n_f,) per-parameter scale s of the temporal term (expr 1, rotations /0.1 rad, translation /1 cm)."""
        s = torch.full((self.n_frame,), 10.0, dtype=torch.float64)
        s[self.rm.layout.slice("expr")] = 1.0
        s[self.rm.layout.slice("transl")] = 100.0
        return s

    def camera_prior(self) -> Tensor:
        """(C, k, k) prior precision of each camera's correction ξ_c (k = n_params): the rotation change ω_c has σ
        camera_rot_sigma_deg, the camera centre's move δo_c ≈ [o_c - p0]× ω_c - τ_c (first order, see `rig.py`)
        σ camera_trans_sigma_mm, the log focal scale σ focal_sigma; i.e. ξ_cᵀ P_c ξ_c = |ω_c / σ_r|² +
        |δo_c / σ_t|² (+ (φ_c / σ_f)²)."""
        cfg, rig, k = self.cfg, self.rig, self.rig.n_params
        C = len(rig.names)
        B = torch.zeros(C, k, k, dtype=torch.float64)                       # rows: [ω | δo | φ] = B_c ξ_c
        B[:, 0:3, 0:3] = torch.eye(3, dtype=torch.float64)
        if k >= 6:
            B[:, 3:6, 0:3] = hat(rig.centers - rig.pivot)
            B[:, 3:6, 3:6] = -torch.eye(3, dtype=torch.float64)
        if k == 7:
            B[:, 6, 6] = 1.0
        w = [1 / np.radians(cfg.camera_rot_sigma_deg) ** 2] * 3 + [1 / (cfg.camera_trans_sigma_mm / 1e3) ** 2] * 3
        w = torch.tensor((w + [1 / cfg.focal_sigma ** 2])[:k], dtype=torch.float64)
        return B.transpose(1, 2) @ (w[:, None] * B)

    def shared_basis(self) -> Tensor | None:
        """(n_shared, m) orthonormal basis T of the subspace the LM step of the shared unknowns is solved in
        (s = T s', `lm.py`), or None without camera refinement. Cameras held (`cameras_free` False): the shape only.
        Cameras free: every shape direction and the camera corrections that keep the rig's mean rotation and
        centroid and (camera_scale "rig") its size (`_gauge_basis`): a similarity of rig + heads leaves every
        projection unchanged except through the head's size, which the head model knows only through its identity
        prior, so these directions are held at the given calibration exactly rather than by a soft penalty.
        camera_scale "rig" (default): the calibration sets the metric scale (benchmark, 16 cameras perturbed by
        2° / 1 cm: refined head error ×1.02 of the exact-camera fit; with "head" the identity prior shrank the rig
        by 1 % and the error grew ×8.9). "head": for a head model that has a scale-like identity component and a
        rig whose scale is in doubt (a head model without one cannot follow a rig scale error).
        """
        if not self.rig.n_params:
            return None
        if not self.cameras_free:
            return torch.eye(self.n_shared, self.rm.n_shape, dtype=torch.float64)
        return _gauge_basis(self.rig, self.rm.n_shape, self.cfg.camera_scale == "rig", self.observed_cameras)


def _gauge_basis(rig: Rig, n_shape: int, hold_scale: bool, observed: Tensor | None = None) -> Tensor:
    """(n_shape + C·k, n_shape + C'·k - 6 or 7) orthonormal basis of the shared unknowns whose camera corrections
    keep the rig's mean rotation (Σ_c ω_c = 0) and centroid (Σ_c δo_c = 0, δo_c = [o_c - p0]× ω_c - τ_c) and, with
    hold_scale, its size (Σ_c v_c·δo_c = 0, v_c = (o_c - ō) / rms|o - ō|), to first order, the sums over the C'
    `observed` (C,) cameras (default all); the corrections of the others are held at zero: with no landmark they
    have only their priors, and in the sums they turned against the observed cameras (12 front cameras + 6 back
    ones without detections: the observed rig turned 0.125°, each back camera 0.25° with no evidence)."""
    C, k = len(rig.names), rig.n_params
    seen = torch.ones(C, dtype=torch.bool) if observed is None else torch.as_tensor(observed, dtype=torch.bool)
    o = rig.centers
    G = torch.zeros(7, n_shape + C * k, dtype=torch.float64)              # the constraints G s = 0
    Gc = G[:, n_shape:].view(7, C, k)
    dO = torch.zeros(C, 3, k, dtype=torch.float64)                        # δo_c = dO_c ξ_c
    dO[:, :, 0:3] = hat(o - rig.pivot)
    dO[:, :, 3:6] = -torch.eye(3, dtype=torch.float64)
    dO = dO * seen[:, None, None]
    Gc[0:3, :, 0:3] = torch.eye(3, dtype=torch.float64)[:, None] * seen[None, :, None]
    Gc[3:6] = dO.permute(1, 0, 2)
    v = torch.where(seen[:, None], o - o[seen].mean(0), torch.zeros_like(o))
    Gc[6] = ((v / v[seen].pow(2).sum(1).mean().sqrt().clamp_min(1e-12))[:, :, None] * dO).sum(1)
    G = G if hold_scale else G[:6]
    blind = torch.nonzero(~seen).flatten().tolist()
    if blind:  # ξ_c = 0 for every camera without observations
        H = torch.zeros(len(blind) * k, n_shape + C * k, dtype=torch.float64)
        for j, c in enumerate(blind):
            H[j * k:(j + 1) * k, n_shape + c * k:n_shape + (c + 1) * k] = torch.eye(k, dtype=torch.float64)
        G = torch.cat([G, H])
    _, S, Vh = torch.linalg.svd(G, full_matrices=True)
    rank = int((S > 1e-9 * S[0]).sum())
    return Vh[rank:].T.contiguous()


@dataclass
class FrameTerms:
    """Data terms of a chunk of B frames (everything float64)."""

    cost: Tensor          # (B,) robust data cost per frame
    errors: Tensor        # (B, C, L) pixel errors (NaN where not observed or behind the camera)
    A_ff: Tensor | None = None   # (B, n_f, n_f)
    g_f: Tensor | None = None    # (B, n_f)
    A_sf: Tensor | None = None   # (B, n_S, n_f)
    A_ss: Tensor | None = None   # (n_S, n_S)  summed over the chunk
    g_s: Tensor | None = None    # (n_S,)


def landmarks_and_visibility(pb: Problem, shape: Tensor, thetas: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
    """Landmarks X (B, 3, L) and visibility weights (B, C, L) (ones when visibility is off)."""
    X, nrm, _ = forward_and_jacobian(pb.rm, shape, thetas, normals=pb.cfg.visibility, jacobian=False)
    if not pb.cfg.visibility:
        return X, X.new_ones(X.shape[0], len(pb.rig.names), X.shape[2])
    return X, visibility(X, nrm, corrected_centers(pb.rig, xi), pb.cfg.visibility_cos, pb.cfg.visibility_softness)


def frame_terms(pb: Problem, shape: Tensor, thetas: Tensor, xi: Tensor, obs: Tensor, base_w: Tensor, scale: float,
                jacobians: bool, sil_frames: slice | None = None, sil_active: Tensor | None = None) -> FrameTerms:
    """Cost (and normal-equation blocks) of B frames: thetas (B, n_f), obs (B, C, 2, L), base_w (B, C, L) =
    confidence × visibility (0 = unused). With pb.sil and sil_frames (the frames' rows in pb.sil, active (B,) bool),
    the silhouette term (`silhouette.py`) is added to the cost and to the [shape | θ_f] blocks (re-pairing the
    mask boundaries at every Jacobian evaluation); so is the surface-point term with pb.pts (`points.py`)."""
    extra = []  # (cost, A, g) of the silhouette and surface-point terms
    if pb.sil is not None and sil_frames is not None:
        from flame_fitting.fit.silhouette import silhouette_terms
        extra.append(silhouette_terms(pb.sil, pb.rig, shape, thetas, xi, sil_frames, sil_active, jacobians, jacobians,
                                      rho, irls_weight))
    if pb.pts is not None and sil_frames is not None:
        from flame_fitting.fit.points import points_terms
        extra.append(points_terms(pb.pts, shape, thetas, sil_frames, sil_active, jacobians, jacobians, rho,
                                  irls_weight))
    kind = pb.cfg.robust_loss
    X, _, D = forward_and_jacobian(pb.rm, shape, thetas, normals=False, jacobian=jacobians)
    if jacobians:
        uv, z, P, Q = project(pb.rig, xi, X)
    else:
        uv, z = project(pb.rig, xi, X, jacobians=False)
    r = uv - obs                                                                  # (B, C, 2, L)
    e = torch.sqrt(r[:, :, 0] ** 2 + r[:, :, 1] ** 2)                              # (B, C, L)
    used = base_w > 0
    front = used & (z > Z_MIN) & torch.isfinite(e)
    e_safe = torch.where(front, e, torch.zeros_like(e))
    behind_cost = rho(torch.tensor(BEHIND_PX, dtype=e.dtype), scale, kind)
    cost_each = torch.where(front, base_w * rho(e_safe, scale, kind), torch.where(used & ~front, base_w * behind_cost,
                                                                                  torch.zeros_like(e)))
    out = FrameTerms(cost=cost_each.sum((1, 2)), errors=torch.where(front, e, torch.full_like(e, float("nan"))))
    for t in extra:
        out.cost = out.cost + t[0]
    if not jacobians:
        return out
    B, C, L = e.shape
    w = torch.where(front, base_w * irls_weight(e_safe, scale, kind), torch.zeros_like(e))[:, :, None, None]
    r = torch.where(front[:, :, None], r, torch.zeros_like(r))
    WP = w * P                                                                    # (B, C, 2, 3, L)
    M = (WP[:, :, :, :, None] * P[:, :, :, None]).sum((1, 2))                    # (B, 3, 3, L)
    g3 = (WP * r[:, :, :, None]).sum((1, 2))                                      # (B, 3, L)
    MD = sum(M[:, :, j, :, None] * D[:, j:j + 1] for j in range(3))               # (B, 3, L, P)
    Dm = D.reshape(B, 3 * L, -1)
    A = Dm.transpose(1, 2) @ MD.reshape(B, 3 * L, -1)                             # (B, P, P)
    g = (Dm.transpose(1, 2) @ g3.reshape(B, 3 * L, 1))[..., 0]                    # (B, P)
    for t in extra:
        A, g = A + t[1], g + t[2]
    n_s, k = pb.rm.n_shape, pb.rig.n_params
    nS = pb.n_shared
    A_ss = A.new_zeros(nS, nS)
    g_s = A.new_zeros(nS)
    A_sf = A.new_zeros(B, nS, pb.n_frame)
    A_ss[:n_s, :n_s] = A[:, :n_s, :n_s].sum(0)
    g_s[:n_s] = g[:, :n_s].sum(0)
    A_sf[:, :n_s] = A[:, :n_s, n_s:]
    if k:
        WQ = w * Q                                                                # (B, C, 2, k, L)
        Qm = Q.permute(1, 0, 2, 4, 3).reshape(C, -1, k)                           # (C, B·2·L, k)
        cam = slice(n_s, nS)
        A_ss[cam, cam] = torch.block_diag(*(WQ.permute(1, 3, 0, 2, 4).reshape(C, k, -1) @ Qm))
        QP = (WQ[:, :, :, :, None] * P[:, :, :, None]).sum(2)                    # (B, C, k, 3, L)
        QPD = QP.reshape(B, C * k, 3 * L) @ Dm                                    # (B, C·k, P)
        A_ss[cam, :n_s] = QPD[..., :n_s].sum(0)
        A_ss[:n_s, cam] = A_ss[cam, :n_s].T
        g_s[cam] = (WQ * r[:, :, :, None]).sum((0, 2, 4)).reshape(-1)
        A_sf[:, cam] = QPD[..., n_s:]
    out.A_ff, out.g_f, out.A_sf, out.A_ss, out.g_s = A[:, n_s:, n_s:], g[:, n_s:], A_sf, A_ss, g_s
    return out


def prior_terms(pb: Problem, shape: Tensor, thetas: Tensor, xi: Tensor, active: Tensor):
    """Priors + gauge + temporal: cost (scalar), per-frame prior cost (F,), and their contributions to the
    normal equations: diag of A_ff (F, n_f), g_f (F, n_f), A_ss (n_S, n_S), g_s (n_S,), and the temporal
    coupling: off-diagonal blocks' diagonals (F-1, n_f) (A[f, f+1] = diag(E[f])) or None."""
    cfg, n_s, k = pb.cfg, pb.rm.n_shape, pb.rig.n_params
    pf = pb.frame_prior()
    th = torch.where(active[:, None], thetas, torch.zeros_like(thetas))
    frame_cost = (pf * th * th).sum(1)
    A_f = pf.expand_as(th) * active[:, None]
    g_f = pf * th
    A_ss = torch.zeros(pb.n_shared, pb.n_shared, dtype=torch.float64)
    g_s = torch.zeros(pb.n_shared, dtype=torch.float64)
    A_ss[range(n_s), range(n_s)] = cfg.prior_shape
    g_s[:n_s] = cfg.prior_shape * shape
    shared_cost = cfg.prior_shape * (shape * shape).sum()
    if k:
        P = pb.camera_prior()                                               # (C, k, k)
        Pxi = (P @ xi[:, :, None])[..., 0]                                  # (C, k)
        shared_cost = shared_cost + (xi * Pxi).sum()
        A_ss[n_s:, n_s:] += torch.block_diag(*P)
        g_s[n_s:] += Pxi.reshape(-1)
    E = None
    pair = active[1:] & active[:-1]
    if cfg.temporal_weight > 0 and len(th) > 1 and bool(pair.any()):
        ws = cfg.temporal_weight * pb.temporal_scale() ** 2                     # (n_f,)
        d = (th[1:] - th[:-1]) * pair[:, None]
        tcost = (ws * d * d).sum(1)
        frame_cost = frame_cost + torch.cat([tcost, tcost.new_zeros(1)])
        A_f = A_f + torch.cat([ws * pair[:, None], ws.new_zeros(1, len(ws))]) + torch.cat(
            [ws.new_zeros(1, len(ws)), ws * pair[:, None]])
        g_f = g_f + torch.cat([-ws * d, ws.new_zeros(1, len(ws))]) + torch.cat([ws.new_zeros(1, len(ws)), ws * d])
        E = -ws * pair[:, None].to(ws.dtype)
    return shared_cost + frame_cost.sum(), frame_cost, A_f, g_f, A_ss, g_s, E
