"""The stand-in head's skeleton: FLAME's 5 joints, their regressor and the skinning weights.

Joints (FLAME order): 0 root (centre of the neck, low), 1 neck (skull base, a bit above),
2 jaw (temporomandibular joint, on the midline just in front of the ear canals), 3 left eye
(subject's left, +x) and 4 right eye (eyeball centres, 11 mm behind the eye surface).
Each joint is a non-negative, normalised weighted average of nearby surface vertices (found by
NNLS so it reproduces the joint exactly on the template), so identity changes move the joints.
Skinning: root below an oblique head/neck plane (chin-throat to nape), neck joint above it; the
jaw weight is harmonic on the mesh between "jaw" (lower lip copies, chin, lower cheeks, under
the chin) and "skull" (upper lip copies, above the mouth, behind the joint); eye joints own the
eye-opening vertices. The stand-in has no pose correctives (posedirs are zero).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from .geometry import harmonic

PARENTS = np.array([-1, 0, 1, 1, 1], dtype=np.int64)
KINTREE = np.stack([PARENTS, np.arange(5)]).astype(np.int64)  # (2,5), FLAME layout
EYEBALL_DEPTH = 0.011  # m, eyeball centre behind the eye surface at the iris centre


def joint_targets(mp: np.ndarray, iris_surface: np.ndarray) -> np.ndarray:
    """Joint positions (5,3) on the template (head frame) from MediaPipe landmarks mp (478,3).

    iris_surface (10,3): iris points projected on the eye surface (468 right centre, 473 left).
    """
    eye_y = 0.5 * (mp[33, 1] + mp[263, 1])
    eye_z = 0.5 * (mp[33, 2] + mp[263, 2])
    chin_y = mp[152, 1]
    root = [0.0, chin_y + 0.02, eye_z - 0.085]
    neck = [0.0, eye_y - 0.050, eye_z - 0.085]
    jaw = [0.0, eye_y - 0.022, eye_z - 0.062]
    left = iris_surface[5] - [0.0, 0.0, EYEBALL_DEPTH]  # 473: subject's left iris centre
    right = iris_surface[0] - [0.0, 0.0, EYEBALL_DEPTH]  # 468
    return np.array([root, neck, jaw, left, right], dtype=np.float64)


def regress_point(verts: np.ndarray, cand: np.ndarray, target: np.ndarray, smooth: float = 1e-3) -> np.ndarray:
    """Non-negative weights (len(cand),) summing to 1 with sum w_i verts[cand_i] ≈ target (NNLS).

    A small ridge term spreads the weight over many vertices (a smooth regressor).
    """
    a = verts[cand].T  # (3, n)
    n = len(cand)
    big = 10.0
    m = np.concatenate([a, big * np.ones((1, n)), smooth * np.eye(n)])
    b = np.concatenate([target, [big], np.zeros(n)])
    w, _ = nnls(m, b, maxiter=50 * n)
    if w.sum() <= 0:
        raise ValueError("rig: joint regression failed (no weight)")
    w /= w.sum()
    err = np.linalg.norm(w @ verts[cand] - target)
    if err > 5e-4:
        raise ValueError(f"rig: joint at {np.round(target, 4)} is not reachable from its vertex ring (error {err:.4f} m)")
    return w


def joint_regressor(verts: np.ndarray, targets: np.ndarray, eye_region: np.ndarray) -> np.ndarray:
    """J_regressor (5,V): each joint from a ring of surface vertices around it (symmetric sides)."""
    reg = np.zeros((5, len(verts)))
    x = verts[:, 0]
    for j, t in enumerate(targets):
        if j in (3, 4):  # eyes: the eye opening and the orbit around it
            cand = np.flatnonzero(np.linalg.norm(verts - t, axis=1) < 0.045)
        elif j == 2:  # jaw: both temporomandibular areas
            side = np.array([0.0, t[1], t[2]])
            d = np.hypot(verts[:, 1] - side[1], verts[:, 2] - side[2])
            cand = np.flatnonzero((d < 0.022) & (np.abs(x) > 0.04))
        else:  # root / neck: the horizontal band of the surface at the joint's height
            cand = np.flatnonzero(np.abs(verts[:, 1] - t[1]) < 0.012)
        if len(cand) < 8:
            raise ValueError(f"rig: joint {j} has only {len(cand)} candidate vertices")
        reg[j, cand] = regress_point(verts, cand, t)
    return reg


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def skinning_weights(verts: np.ndarray, faces: np.ndarray, mp: np.ndarray, joints: np.ndarray,
                     eye_region: np.ndarray, lip_side: np.ndarray) -> np.ndarray:
    """LBS weights (V,5), rows sum to 1 (see the module docstring)."""
    y, z = verts[:, 1], verts[:, 2]
    # head vs neck: oblique plane through the chin-throat junction and the nape
    front = np.array([mp[152, 1] - 0.012, mp[152, 2] - 0.035])
    back = np.array([joints[1, 1] - 0.005, joints[1, 2] - 0.065])
    tang = (front - back) / np.linalg.norm(front - back)
    normal = np.array([-tang[1], tang[0]])
    normal = normal if normal[0] > 0 else -normal  # (y, z) normal pointing up, towards the head
    s = (np.stack([y, z], 1) - back) @ normal
    head = _smoothstep(s / 0.04 + 0.5)
    # jaw: harmonic between fixed jaw (1) and fixed skull (0) regions
    jaw_pt = joints[2]
    ang = np.degrees(np.arctan2(-(y - jaw_pt[1]), z - jaw_pt[2]))  # angle below the horizontal
    lip = mp[[13, 14, 61, 291]] - jaw_pt
    lip_ang = np.degrees(np.arctan2(-lip[:, 1], lip[:, 2])).mean()
    in_front = z > jaw_pt[2] + 0.005
    jaw_core = (ang > lip_ang + 14) & in_front & (s > -0.01)
    skull = (ang < lip_ang - 6) | (z < jaw_pt[2] - 0.02)
    fixed = jaw_core | skull | (lip_side != 0)
    val = np.where(jaw_core, 1.0, 0.0)
    # along the cut: lower lip 1 and upper lip 0 in the middle, both ramping to 0.5 at the corners
    cut = lip_side != 0
    half_width = np.abs(verts[cut, 0]).max() + 1e-3
    ramp = _smoothstep((half_width - np.abs(verts[:, 0])) / 0.012)
    val[lip_side == -1] = 0.5 + 0.5 * ramp[lip_side == -1]
    val[lip_side == 1] = 0.5 - 0.5 * ramp[lip_side == 1]
    jaw = np.clip(harmonic(val, fixed, faces), 0.0, 1.0)
    eye_l = (eye_region == 1).astype(np.float64)
    eye_r = (eye_region == 2).astype(np.float64)
    jaw = jaw * (1 - eye_l - eye_r)
    w = np.zeros((len(verts), 5))
    w[:, 0] = 1 - head
    w[:, 2] = head * jaw
    w[:, 3] = head * eye_l
    w[:, 4] = head * eye_r
    w[:, 1] = head - w[:, 2] - w[:, 3] - w[:, 4]
    return w
