"""Smooth displacement-field building blocks for the stand-in's identity and expression bases.

Everything is a pure function of the neutral mesh (head frame) and its MediaPipe landmarks:
Gaussian bumps on landmark anchors, mirror maps, lip/eyelid memberships, and the Gram–Schmidt
orthogonalisation used for the identity space.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flame_fitting.geometry.surface_points import dot

MIRROR = np.array([-1.0, 1.0, 1.0])
UPPER_LID = {"right": [33, 246, 161, 160, 159, 158, 157, 173, 133], "left": [263, 466, 388, 387, 386, 385, 384, 398, 362]}
LOWER_LID = {"right": [33, 7, 163, 144, 145, 153, 154, 155, 133], "left": [263, 249, 390, 373, 374, 380, 381, 382, 362]}


@dataclass(frozen=True)
class FieldContext:
    verts: np.ndarray  # (V,3) neutral template, head frame
    normals: np.ndarray  # (V,3) unit vertex normals
    mp: np.ndarray  # (478,3) MediaPipe landmarks on the template
    mirror: np.ndarray  # (V,) index of each vertex's mirror twin
    lip_side: np.ndarray  # (V,) +1 upper-lip copy, -1 lower-lip copy, 0 other
    face_mask: np.ndarray  # (V,) smooth 0..1 weight of the face region


def mirror_index(grid_ij: np.ndarray, lip_side: np.ndarray, cols: int) -> np.ndarray:
    """Mirror twin (V,) of every vertex of the symmetric grid mesh (x -> -x)."""
    key = {(int(i), int(j), int(s)): k for k, ((i, j), s) in enumerate(zip(grid_ij, lip_side))}
    out = np.empty(len(grid_ij), dtype=np.int64)
    for k, ((i, j), s) in enumerate(zip(grid_ij, lip_side)):
        twin = (int(i), 0 if i < 0 else int((cols - j) % cols), int(s))
        if twin not in key:
            raise ValueError(f"fields: vertex {k} (grid {i},{j}) has no mirror twin")
        out[k] = key[twin]
    return out


def symmetrise(d: np.ndarray, mirror: np.ndarray, odd: bool = False) -> np.ndarray:
    """Mirror-symmetric (or, with odd=True, antisymmetric) part of a field d (V,3)."""
    return 0.5 * (d - d[mirror] * MIRROR) if odd else 0.5 * (d + d[mirror] * MIRROR)


def bump(v: np.ndarray, centres: np.ndarray, sigma) -> np.ndarray:
    """Sum (V,) of Gaussian bumps exp(-|(v-c)/sigma|^2 / 2) over centres (K,3); sigma scalar or (3,)."""
    c = np.atleast_2d(centres)
    d2 = (((v[:, None, :] - c[None]) / np.asarray(sigma, dtype=np.float64)) ** 2).sum(-1)
    return np.exp(-0.5 * d2).sum(1)


def side(v: np.ndarray, soft: float = 0.004) -> np.ndarray:
    """Smooth sign of x (V,): +1 on the subject's left, -1 on the right."""
    return np.tanh(v[:, 0] / soft)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def upper_lip(ctx: FieldContext) -> np.ndarray:
    """Membership (V,) of the upper lip side of the mouth line (1 above, 0 below; cut copies exact)."""
    mid = 0.5 * (ctx.mp[[78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]]
                 + ctx.mp[[78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]])
    line = np.interp(ctx.verts[:, 0], mid[:, 0], mid[:, 1])
    up = smoothstep((ctx.verts[:, 1] - line) / 0.004 + 0.5)
    up[ctx.lip_side == 1], up[ctx.lip_side == -1] = 1.0, 0.0
    return up


def eyelid_close(ctx: FieldContext, eye: str) -> np.ndarray:
    """Displacement (V,3) closing one eye: the upper lid comes down onto the lower lid line."""
    v, mp = ctx.verts, ctx.mp
    up_pts, lo_pts = mp[UPPER_LID[eye]], mp[LOWER_LID[eye]]
    xs_u, xs_l = np.argsort(up_pts[:, 0]), np.argsort(lo_pts[:, 0])
    up = np.interp(v[:, 0], up_pts[xs_u, 0], up_pts[xs_u, 1])
    lo = np.interp(v[:, 0], lo_pts[xs_l, 0], lo_pts[xs_l, 1])
    h = np.maximum(up - lo, 0.0)
    y = v[:, 1]
    below = np.clip(y - lo, 0.0, None)
    dy = np.where(y <= up, np.minimum(below, h), h * np.exp(-(((y - up) / 0.007) ** 2)))
    x0, x1 = np.sort(up_pts[[0, -1], 0])
    lateral = smoothstep((v[:, 0] - (x0 - 0.004)) / 0.004) * smoothstep(((x1 + 0.004) - v[:, 0]) / 0.004)
    front = smoothstep((v[:, 2] - (up_pts[:, 2].min() - 0.015)) / 0.008)
    d = np.zeros_like(v)
    d[:, 1] = -dy * lateral * front
    return d


def gram_schmidt(fields: list[np.ndarray], start: int = 0) -> list[np.ndarray]:
    """Orthogonalise fields (each (V,3)) in order from index `start` against all earlier ones.

    Fields before `start` are kept as they are (and must be mutually independent).
    """
    out = [f.astype(np.float64).copy() for f in fields]
    flat = [f.ravel() for f in out]
    for k in range(start, len(out)):
        x = flat[k].copy()
        # fixed-order sums (surface_points.dot), not BLAS's, whose last bits change with its thread count: the
        # stand-in's bases are the same to the last bit in every run (docs/lineage.md)
        n0 = np.sqrt(dot(x, x))
        for _ in range(2):  # twice is enough (re-orthogonalisation)
            for q in flat[:k]:
                x -= dot(x, q) / dot(q, q) * q
        if np.sqrt(dot(x, x)) < 1e-3 * n0:
            raise ValueError(f"fields: component {k} is (nearly) a combination of the earlier ones")
        flat[k] = x
        out[k] = x.reshape(out[k].shape)
    return out


def scale_to_peak(d: np.ndarray, peak: float) -> np.ndarray:
    """Scale a field (V,3) so its largest vertex displacement is `peak` metres."""
    m = np.linalg.norm(d, axis=1).max()
    if m <= 0:
        raise ValueError("fields: zero displacement field")
    return d * (peak / m)


def random_field(ctx: FieldContext, rng: np.random.Generator, sigma: tuple, face_only: bool,
                 odd: bool) -> np.ndarray:
    """Smooth random field (V,3): 3 Gaussian bumps with random 3D amplitudes, (anti)symmetrised."""
    if face_only:
        anchors = ctx.mp[rng.choice(468, size=3, replace=False)]
    else:
        pool = np.concatenate([ctx.mp[:468], ctx.verts[rng.choice(len(ctx.verts), 200, replace=False)]])
        anchors = pool[rng.choice(len(pool), size=3, replace=False)]
    d = np.zeros_like(ctx.verts)
    for a in anchors:
        s = rng.uniform(*sigma)
        d += bump(ctx.verts, a, s)[:, None] * rng.standard_normal(3)[None]
    if face_only:
        d *= ctx.face_mask[:, None]
    return symmetrise(d, ctx.mirror, odd=odd)
