"""Landmark embeddings of the stand-in head: face index + barycentric weights on the final mesh.

MediaPipe's 478 points are embedded at their closest point on the neutral mesh; the ten iris
points (468..477), which float in front of/behind the eye surface, are first projected along
the viewing axis (z) onto it. iBUG-68 points come from MediaPipe through the standard index
list; FLAME's static embedding is iBUG 17..67 and its dynamic (contour) embedding repeats the
static contour (iBUG 0..16) for every one of FLAME's 79 yaw bins (the stand-in has no
yaw-dependent contour).
"""
from __future__ import annotations

import numpy as np

from flame_fitting.geometry.surface_points import closest_points

from .geometry import ray_mesh_far_hits

MP_TO_IBUG68 = np.array([
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,  # contour 0..16
    71, 63, 105, 66, 107, 336, 296, 334, 293, 301,  # brows 17..26
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose 27..35
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes 36..47
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips 48..59
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips 60..67
], dtype=np.int64)
IRIS = np.arange(468, 478)
N_DYNAMIC_BINS = 79


def project_along_z(points: np.ndarray, verts: np.ndarray, faces: np.ndarray, depth: float = 0.03) -> np.ndarray:
    """Project points (P,3) onto the front surface along z (ray from `depth` behind, going +z)."""
    out = np.empty_like(points)
    fwd = np.array([[0.0, 0.0, 1.0]])
    for k, p in enumerate(points):
        o = p - np.array([0.0, 0.0, depth])
        t = ray_mesh_far_hits(o, fwd, verts, faces)[0]
        if np.isnan(t):
            raise ValueError(f"embedding: iris point {k} does not project onto the head surface")
        out[k] = o + t * fwd[0]
    return out


def mediapipe_targets(mp_points: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The 478 MediaPipe points to embed (478,3): face points as measured, irises on the eye surface."""
    out = mp_points.copy()
    out[IRIS] = project_along_z(mp_points[IRIS], verts, faces)
    return out


def embed(points: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest-point embedding: (face_idx (P,) int64, bary (P,3) float64 summing to 1, error (P,) m)."""
    fi, bary, dist = closest_points(points, verts, faces)
    bary = np.clip(bary, 0.0, None)
    return fi, bary / bary.sum(1, keepdims=True), dist


def interpolate(verts: np.ndarray, faces: np.ndarray, face_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Landmark positions (P,3) = sum_k bary[:, k] * verts[faces[face_idx, k]]."""
    return np.einsum("pk,pkd->pd", bary, verts[faces[face_idx]])


def flame_embeddings(face_idx: np.ndarray, bary: np.ndarray) -> dict:
    """From the 478 MediaPipe embeddings: iBUG-68, FLAME static (51) and dynamic (79,17) embeddings."""
    ib_f, ib_b = face_idx[MP_TO_IBUG68], bary[MP_TO_IBUG68]
    return {
        "ibug68": {"lmk_face_idx": ib_f.astype(np.int64), "lmk_b_coords": ib_b.astype(np.float64)},
        "static": {"lmk_face_idx": ib_f[17:].astype(np.int64), "lmk_b_coords": ib_b[17:].astype(np.float64)},
        "dynamic": {"lmk_face_idx": np.tile(ib_f[:17], (N_DYNAMIC_BINS, 1)).astype(np.int64),
                    "lmk_b_coords": np.tile(ib_b[:17], (N_DYNAMIC_BINS, 1, 1)).astype(np.float64)},
    }
