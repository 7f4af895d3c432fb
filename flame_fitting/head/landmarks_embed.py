"""Landmark embeddings on a triangle mesh: pure, differentiable, batch-friendly functions.

A landmark embedding is, per landmark, one face index and three barycentric weights
(FLAME's `lmk_face_idx`, `lmk_b_coords`). The 3D landmark is
`points = sum_k bary[:, k] * verts[faces[face_idx, k]]` (docs/contracts.md).
The MediaPipe embedding also says which of MediaPipe's 478 points each embedded landmark is
(`landmark_indices`); `select_detections` picks the matching detected points.
"""
from __future__ import annotations

import torch
from torch import Tensor

N_MEDIAPIPE = 478  # points of MediaPipe's face mesh with irises


def interpolate_landmarks(verts: Tensor, faces: Tensor, face_idx: Tensor, bary: Tensor) -> Tensor:
    """Barycentric interpolation of mesh vertices at embedded landmarks.

    verts: (B, V, 3) float; faces: (F, 3) long; face_idx: (L,) long; bary: (L, 3) float.
    Returns (B, L, 3) in the dtype of `verts`; differentiable w.r.t. `verts` (and `bary`).
    """
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be (B, V, 3), got {tuple(verts.shape)}")
    if face_idx.ndim != 1 or bary.shape != (face_idx.shape[0], 3):
        raise ValueError(f"face_idx must be (L,) and bary (L, 3); got {tuple(face_idx.shape)} and {tuple(bary.shape)}")
    tri = verts[:, faces[face_idx.long()]]  # (B, L, 3 corners, 3 xyz)
    return torch.einsum("blkc,lk->blc", tri, bary.to(verts.dtype))


def select_detections(points: Tensor, landmark_indices: Tensor) -> Tensor:
    """The detected MediaPipe points that an embedding covers, in embedding order.

    points: (..., 478, C) detections; landmark_indices: (L,) long in [0, 478). Returns (..., L, C).
    """
    if points.shape[-2] != N_MEDIAPIPE:
        raise ValueError(f"expected {N_MEDIAPIPE} MediaPipe points on axis -2, got shape {tuple(points.shape)}")
    return points[..., landmark_indices.long(), :]
