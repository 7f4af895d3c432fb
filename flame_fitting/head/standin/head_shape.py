"""The stand-in head's generic (non-face) shape: cranium, jaw, neck and ears.

An implicit solid (smooth union of a cranium ellipsoid, a tilted jaw ellipsoid and an elliptic
neck cylinder; approximate signed distances) seen from a centre point c inside the head: the
radius along a ray is where the ray leaves the solid. Ears are radial bumps added afterwards.
All constants are metres in the *eye frame* of `face_surface.MetricFace` (origin between the
outer eye corners, y up, face along +z); they describe an average adult head
(breadth ~0.155 m, cranium height ~0.21 m, length ~0.19 m, neck ~0.1 m below the chin).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HeadShape:
    centre: tuple = (0.0, -0.012, -0.068)  # c: ray centre (becomes the head frame origin)
    cranium_c: tuple = (0.0, 0.010, -0.073)
    cranium_r: tuple = (0.0775, 0.105, 0.095)
    jaw_c: tuple = (0.0, -0.062, -0.030)
    jaw_r: tuple = (0.055, 0.042, 0.058)
    jaw_tilt: float = 0.42  # rad, rotation about x: chin end down
    neck_c: tuple = (0.0, -0.092)  # (x, z) of the neck axis at y = neck_top
    neck_r: tuple = (0.054, 0.056)  # (x, z) semi-axes
    neck_top: float = -0.02
    neck_lean: float = 0.12  # rad, the neck leans forward going down
    neck_bottom: float = -0.215  # y of the open neck boundary (~0.1 m below the chin)
    blend: float = 0.025  # smooth-union radius
    ear_c: tuple = (0.070, -0.018, -0.082)  # centre of the right-hand (+x) ear (mirrored for -x)
    ear_size: tuple = (0.031, 0.018)  # vertical, horizontal (along z) half-extent
    ear_height: float = 0.017  # protrusion


def _ellipsoid_sd(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Approximate signed distance of points p (N,3) to an axis-aligned ellipsoid (semi-axes r)."""
    k0 = np.linalg.norm(p / r, axis=1)
    k1 = np.linalg.norm(p / (r * r), axis=1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _rot_x(p: np.ndarray, a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.stack([p[:, 0], c * p[:, 1] - s * p[:, 2], s * p[:, 1] + c * p[:, 2]], 1)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def head_sd(shape: HeadShape, p: np.ndarray) -> np.ndarray:
    """Signed distance (approx., negative inside) of points p (N,3) to the generic head solid."""
    cran = _ellipsoid_sd(p - np.array(shape.cranium_c), np.array(shape.cranium_r))
    jaw = _ellipsoid_sd(_rot_x(p - np.array(shape.jaw_c), shape.jaw_tilt), np.array(shape.jaw_r))
    dy = shape.neck_top - p[:, 1]  # depth below the neck top (>0 going down)
    axis_z = shape.neck_c[1] + np.tan(shape.neck_lean) * np.maximum(dy, 0.0)
    q = np.stack([p[:, 0] - shape.neck_c[0], np.zeros(len(p)), p[:, 2] - axis_z], 1)
    ring = _ellipsoid_sd(q, np.array([shape.neck_r[0], 1.0, shape.neck_r[1]]))
    neck = np.maximum(ring, -dy)  # open below (the mesh is cut at neck_bottom), capped at the top
    return _smin(_smin(cran, jaw, shape.blend), neck, shape.blend)


def ray_exit(shape: HeadShape, dirs: np.ndarray, r_max: float = 0.3) -> np.ndarray:
    """Distance (N,) from the centre c along unit dirs (N,3) to where each ray leaves the solid."""
    c = np.array(shape.centre)
    ts = np.linspace(0.0, r_max, 76)
    pts = c + ts[None, :, None] * dirs[:, None, :]  # (N, S, 3)
    inside = (head_sd(shape, pts.reshape(-1, 3)) < 0).reshape(len(dirs), len(ts))
    if not inside[:, 0].all():
        raise ValueError("head_shape: the ray centre is not inside the head solid")
    last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)  # last inside sample
    lo, hi = ts[last], ts[np.minimum(last + 1, len(ts) - 1)]
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        ins = head_sd(shape, c + mid[:, None] * dirs) < 0
        lo, hi = np.where(ins, mid, lo), np.where(ins, hi, mid)
    return 0.5 * (lo + hi)


def ear_offset(shape: HeadShape, pts: np.ndarray) -> np.ndarray:
    """Radial ear bump height (N,) at head surface points pts (N,3), both sides (mirrored in x).

    An oval auricle (ear_size half-extents) that rises towards its back edge (the helix stands
    off the head), with a concha bowl in front of the middle and a soft front edge.
    """
    ex, ey, ez = shape.ear_c
    sv, sh = shape.ear_size
    u = (pts[:, 1] - ey) / sv  # up
    w = (pts[:, 2] - ez) / sh  # forward (+) / backward (-)
    rho = np.sqrt(u * u + w * w)
    soft = np.where(w > 0, 0.45, 0.2)  # the front blends into the cheek, the back edge is crisp
    outline = np.clip((1.0 - rho) / soft + 0.5, 0.0, 1.0)
    outline = outline * outline * (3 - 2 * outline)
    tilt = 0.35 + 0.65 * np.clip((0.7 - w) / 1.4, 0.0, 1.0)
    concha = 0.45 * np.exp(-(((u + 0.1) ** 2 + (w - 0.15) ** 2) / 0.12))
    lobe = 1.0 - 0.35 * np.clip(-u - 0.55, 0.0, 1.0) / 0.45
    lateral = np.clip((np.abs(pts[:, 0]) - 0.6 * ex) / (0.3 * ex), 0.0, 1.0)  # only on the sides
    return shape.ear_height * outline * np.clip(tilt - concha, 0.0, None) * lobe * lateral
