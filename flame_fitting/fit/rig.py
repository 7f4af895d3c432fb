"""The camera rig inside the fitter: pinhole projection with analytic Jacobians and per-camera corrections.

Correction of camera c (bundle adjustment), ξ_c = [ω (3) | τ (3) | φ (1, only with refine_focal)]:
a rigid motion of the world about a pivot p0 (the head's centre) applied before the camera,
    Y = Exp(ω)(X - p0) + p0 + τ,   p = R_c Y + t_c,   uv = c_c + e^φ · K_c[:2,:2] · p_xy / p_z,
i.e. world_to_cam' = world_to_cam @ Δ with Δ = [Exp(ω) | p0 + τ - Exp(ω) p0], and fx, fy (and skew)
scaled by e^φ. The head pose and all cameras share a 6-DoF rigid gauge: Δ_c -> Δ_c G with the head
poses -> G⁻¹ H leaves every projection unchanged; the fitter holds the rig's mean rotation and centroid
(`Problem.shared_basis`), and each correction has a prior on its rotation and on its centre's move
(`Problem.camera_prior`); `refine.py` decides whether a refinement is kept.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from flame_fitting.geometry.camera import Camera
from flame_fitting.fit.so3 import hat, left_jacobian, rodrigues


@dataclass(frozen=True)
class Rig:
    names: list[str]   # C camera names (the order of every camera axis)
    K: Tensor          # (C, 3, 3) float64
    R: Tensor          # (C, 3, 3) world -> camera rotation
    t: Tensor          # (C, 3)
    pivot: Tensor      # (3,) world point the corrections rotate about
    n_params: int      # per-camera correction parameters optimised: 0, 6 or 7

    @classmethod
    def from_cameras(cls, cameras: dict[str, Camera], names: list[str], pivot: np.ndarray, refine: bool = False,
                     refine_focal: bool = False) -> Rig:
        t64 = lambda a: torch.as_tensor(np.asarray(a, np.float64))  # noqa: E731
        return cls(names=list(names), K=t64(np.stack([cameras[n].K for n in names])),
                   R=t64(np.stack([cameras[n].world_to_cam[:3, :3] for n in names])),
                   t=t64(np.stack([cameras[n].world_to_cam[:3, 3] for n in names])), pivot=t64(pivot),
                   n_params=(7 if refine_focal else 6) if refine else 0)

    def zeros(self) -> Tensor:
        """Zero corrections (C, n_params)."""
        return torch.zeros(len(self.names), self.n_params, dtype=torch.float64)

    @property
    def centers(self) -> Tensor:
        """(C, 3) uncorrected camera centres in world coordinates."""
        return -(self.R.transpose(1, 2) @ self.t[..., None])[..., 0]


def _split(rig: Rig, xi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    C = len(rig.names)
    z = torch.zeros(C, 3, dtype=torch.float64)
    if rig.n_params == 0:
        return z, z, torch.zeros(C, dtype=torch.float64)
    phi = xi[:, 6] if rig.n_params == 7 else torch.zeros(C, dtype=torch.float64)
    return xi[:, :3], xi[:, 3:6], phi


def corrected_centers(rig: Rig, xi: Tensor) -> Tensor:
    """(C, 3) camera centres in world coordinates after the corrections ξ (C, n_params)."""
    w, tau, _ = _split(rig, xi)
    # camera centre o' solves Exp(ω)(o' - p0) + p0 + τ = o  =>  o' = Exp(-ω)(o - p0 - τ) + p0
    Rw = rodrigues(w)
    return (Rw.transpose(1, 2) @ (rig.centers - rig.pivot - tau)[..., None])[..., 0] + rig.pivot


def _mat(A: Tensor, B: Tensor) -> Tensor:
    """Per-point 3-row products in the L-last layout: A (..., i, m, L) or (..., i, m, 1), B (..., m, j, L) or
    (..., m, j, 1) -> (..., i, j, L) = Σ_m A[i, m] B[m, j], as 3 broadcast multiply-adds (no copies)."""
    return sum(A[..., :, m:m + 1, :] * B[..., m:m + 1, :, :] for m in range(A.shape[-2]))


def project(rig: Rig, xi: Tensor, X: Tensor, jacobians: bool = True):
    """Project world points into every camera ("L-last" layout, as `jacobian.py`).

    xi (C, n_params) corrections, X (B, 3, L) -> uv (B, C, 2, L), depth (B, C, L), and if `jacobians`:
    P = duv/dX (B, C, 2, 3, L) and Q = duv/dξ_c (B, C, 2, n_params, L) (each row depends only on its own
    camera's ξ_c).
    """
    w, tau, phi = _split(rig, xi)
    Rw = rodrigues(w)                                                             # (C, 3, 3)
    q = Rw @ (X - rig.pivot[:, None])[:, None]                                    # (B, C, 3, L) rotated about p0
    pc = rig.R @ (q + (rig.pivot + tau)[:, :, None]) + rig.t[:, :, None]          # (B, C, 3, L)
    z = pc[:, :, 2]
    zs = torch.where(z.abs() > 1e-9, z, torch.full_like(z, 1e-9))
    xn = pc[:, :, :2] / zs[:, :, None]
    Kf = rig.K[:, :2, :2] * torch.exp(phi)[:, None, None]                         # (C, 2, 2)
    centre = rig.K[:, :2, 2, None]                                                # (C, 2, 1)
    uv = Kf @ xn + centre
    if not jacobians:
        return uv, z
    inv = (1 / zs)[:, :, None, None]                                              # (B, C, 1, 1, L)
    Pi = torch.cat([Kf[:, :, :, None] * inv, -((uv - centre) / zs[:, :, None])[:, :, :, None]], 3)  # (B,C,2,3,L)
    PiR = _mat(Pi, rig.R[..., None])                                              # d uv / d Y
    P = _mat(PiR, Rw[..., None])
    Q = X.new_zeros(uv.shape[:3] + (rig.n_params, X.shape[-1]))
    if rig.n_params:
        hq = hat(q.transpose(-1, -2)).permute(0, 1, 3, 4, 2)                      # (B, C, 3, 3, L) [q]x
        Q[:, :, :, 0:3] = -_mat(PiR, _mat(hq, left_jacobian(w)[..., None]))      # d(Exp(ω)y)/dω = -[Exp(ω)y]x J_l
        Q[:, :, :, 3:6] = PiR
        if rig.n_params == 7:
            Q[:, :, :, 6] = uv - centre
    return uv, z, P, Q


def corrected_cameras(rig: Rig, xi: Tensor, cameras: dict[str, Camera]) -> dict[str, Camera]:
    """The input cameras with the corrections ξ (C, n_params) applied (new Camera objects)."""
    w, tau, phi = _split(rig, xi)
    Rw = rodrigues(w).numpy()
    p0, out = rig.pivot.numpy(), {}
    for c, name in enumerate(rig.names):
        cam = cameras[name]
        delta = np.eye(4)
        delta[:3, :3] = Rw[c]
        delta[:3, 3] = p0 + tau[c].numpy() - Rw[c] @ p0
        K = cam.K.astype(np.float64).copy()
        K[:2, :2] *= float(np.exp(phi[c]))
        out[name] = replace(cam, K=K, world_to_cam=cam.world_to_cam.astype(np.float64) @ delta)
    return out
