"""Rotations for the fitter: axis-angle <-> matrix, exact at and near zero, torch (differentiable,
`torch.func`-friendly) and numpy, plus SO(3)'s left Jacobian for analytic camera derivatives.

The torch Rodrigues uses a Taylor branch below |ω|² = 1e-10 selected with `torch.where` on a
safe denominator, so forward-mode derivatives are finite at exactly zero rotation (smplx's
`batch_rodrigues` adds 1e-8 inside the norm instead; both agree to ~1e-8 rad).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_SMALL = 1e-10


def hat(w: Tensor) -> Tensor:
    """w (..., 3) -> skew-symmetric [w]_x (..., 3, 3), so that hat(w) @ v = w × v."""
    z = torch.zeros_like(w[..., 0])
    x, y, zz = w[..., 0], w[..., 1], w[..., 2]
    return torch.stack([torch.stack([z, -zz, y], -1), torch.stack([zz, z, -x], -1),
                        torch.stack([-y, x, z], -1)], -2)


def _coefficients(th2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """sin θ/θ, (1-cos θ)/θ², (θ - sin θ)/θ³ as functions of θ² (..., ), safe at 0."""
    small = th2 < _SMALL
    safe = torch.where(small, torch.ones_like(th2), th2)
    th = torch.sqrt(safe)
    a = torch.where(small, 1 - th2 / 6, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24, (1 - torch.cos(th)) / safe)
    c = torch.where(small, 1 / 6 - th2 / 120, (th - torch.sin(th)) / (safe * th))
    return a, b, c


def rodrigues(w: Tensor) -> Tensor:
    """Axis-angle w (..., 3) -> rotation matrices (..., 3, 3)."""
    a, b, _ = _coefficients((w * w).sum(-1))
    K = hat(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(K.shape)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def left_jacobian(w: Tensor) -> Tensor:
    """SO(3) left Jacobian J_l(w) (..., 3, 3): Exp(w + δ) ≈ Exp(J_l(w) δ) Exp(w)."""
    _, b, c = _coefficients((w * w).sum(-1))
    K = hat(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(K.shape)
    return eye + b[..., None, None] * K + c[..., None, None] * (K @ K)


# --- numpy ----------------------------------------------------------------------------
def rodrigues_np(w: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) -> rotation (..., 3, 3) float64."""
    return rodrigues(torch.as_tensor(np.asarray(w, np.float64))).numpy()


def hat_np(w: np.ndarray) -> np.ndarray:
    """(..., 3) -> [w]_x (..., 3, 3) float64."""
    return hat(torch.as_tensor(np.asarray(w, np.float64))).numpy()


def left_jacobian_np(w: np.ndarray) -> np.ndarray:
    """SO(3) left Jacobian (..., 3) -> (..., 3, 3) float64."""
    return left_jacobian(torch.as_tensor(np.asarray(w, np.float64))).numpy()


def log_np(R: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> axis-angle (3,) float64 (angle in [0, π])."""
    R = np.asarray(R, np.float64)
    cos = np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)
    th = np.arccos(cos)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if th < 1e-6:
        return v / 2
    if np.pi - th < 1e-4:  # near π: axis from the symmetric part
        S = (R + np.eye(3)) / 2
        axis = S[np.argmax(np.diag(S))]
        axis = axis / np.linalg.norm(axis)
        if axis @ v < 0:
            axis = -axis
        return axis * th
    return v * th / (2 * np.sin(th))


def angle_deg(R: np.ndarray) -> float:
    """Rotation angle (degrees) of a (3, 3) rotation matrix."""
    return float(np.degrees(np.linalg.norm(log_np(R))))
