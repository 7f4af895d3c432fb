"""Surface-point term of the fit: 3D points triangulated from the images' feature tracks pull on the model's surface.

For sequences fitted without a silhouette term (no masks: NeRSemble without alpha maps, COLMAP folders; with
`points_with_masks` also beside one), the only other data are MediaPipe's sparse landmarks, whose view-shared
biases leave the head's pose off by 1–3° and the parts no landmark sees to the prior (docs/fitting.md, "Landmarks
only"). The images still hold the skin's texture:
per frame, SIFT tracks between neighbouring cameras (features.py, no mask needed) are triangulated with the fit's
cameras, and the tracks whose every observation reprojects within `points_reproj_px` are kept (`frame_points`).

Formulation (ICP-style, point -> model, point-to-plane), like the silhouette term:
  * once per LM iteration (at the current state): each point i is paired with the nearest model vertex v(i)
    (k-d tree over the posed vertices); pairs farther than `points_max_mm` are dropped (the background of a real
    studio, hair); the vertex's unit normal n_i (area-weighted face normals of the posed mesh) is taken then;
  * residual r_i = 1000 · n_iᵀ(x_v(i) − p_i) (millimetres along the normal: no pull along the surface), cost
    points_weight · ρ(r_i) with the robust loss `points_loss` at `points_scale_mm`; Jacobian
    1000 · n_iᵀ · dx_v/d[shape | θ_f] (`jacobian.forward_and_jacobian` on the paired vertices). Cameras are held in
    this term.
The pairing and normals are held fixed while a candidate step is evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from flame_fitting.fit.jacobian import forward_and_jacobian
from flame_fitting.fit.reduced import ReducedModel
from flame_fitting.fit.silhouette import paired_subset
from flame_fitting.fit.silhouette_data import SilhouetteModel


def vertex_normals(X: Tensor, faces: Tensor) -> Tensor:
    """Unit vertex normals (B, 3, V) of vertices X (B, 3, V): sums of the adjacent faces' area-weighted normals."""
    tv = X.transpose(1, 2)[:, faces]                                       # (B, Fc, 3, 3)
    fn = torch.linalg.cross(tv[:, :, 1] - tv[:, :, 0], tv[:, :, 2] - tv[:, :, 0])
    n = X.new_zeros(X.shape[0], X.shape[2], 3)
    for k in range(3):
        n.index_add_(1, faces[:, k], fn)
    return (n / n.norm(dim=2, keepdim=True).clamp_min(1e-12)).transpose(1, 2)


@dataclass
class PointsData:
    """Triangulated points of the packed frames and the current pairing."""

    sm: SilhouetteModel  # every vertex of the model and the faces (region "all")
    points: Tensor       # (F, N, 3) float64 metres (padded)
    valid: Tensor        # (F, N) bool
    corr: Tensor         # (F, N) long: paired vertex, -1 = none (refreshed by `pair_points`)
    normals: Tensor      # (F, N, 3) the paired vertex's normal at pairing time
    weight: float
    scale_mm: float
    max_mm: float
    loss: str = "huber"
    paired: dict = field(default_factory=dict)  # (chunk start, stop) -> (model of the paired vertices, index into it)

    @classmethod
    def build(cls, sm: SilhouetteModel, points: list[np.ndarray | None], weight: float, scale_mm: float,
              max_mm: float, loss: str = "huber") -> PointsData:
        """points[f]: (n, 3) world points of packed frame f (metres) or None."""
        F = len(points)
        N = max([len(p) for p in points if p is not None] + [1])
        pts, val = torch.zeros(F, N, 3, dtype=torch.float64), torch.zeros(F, N, dtype=torch.bool)
        for f, p in enumerate(points):
            if p is not None and len(p):
                pts[f, :len(p)], val[f, :len(p)] = torch.as_tensor(np.asarray(p, np.float64)), True
        return cls(sm, pts, val, torch.full((F, N), -1, dtype=torch.long), torch.zeros(F, N, 3, dtype=torch.float64),
                   weight, scale_mm, max_mm, loss)

    @property
    def n_used(self) -> int:
        return int((self.corr >= 0).sum())


def pair_points(pd_: PointsData, sl: slice, X: Tensor, active: Tensor) -> None:
    """Refresh pd_.corr / pd_.normals of frames `sl` from posed vertices X (B, 3, V)."""
    corr = torch.full(pd_.corr[sl].shape, -1, dtype=torch.long)
    nrm = vertex_normals(X, pd_.sm.faces)
    normals = torch.zeros(pd_.normals[sl].shape, dtype=torch.float64)
    for b in range(X.shape[0]):
        ok = pd_.valid[sl][b]
        if not active[b] or not ok.any():
            continue
        q = X[b].T.numpy()
        if not np.isfinite(q).all():
            continue
        d, j = cKDTree(q).query(pd_.points[sl][b][ok].numpy())
        j = torch.as_tensor(j)
        idx = torch.where(torch.as_tensor(d * 1e3 <= pd_.max_mm), j, -1)
        rows = torch.nonzero(ok)[:, 0]
        corr[b, rows] = idx
        normals[b, rows] = nrm[b][:, j].T
    pd_.corr[sl], pd_.normals[sl] = corr, normals


def _paired_model(pd_: PointsData, shape: Tensor, thetas: Tensor, sl: slice, active: Tensor,
                  refresh: bool) -> tuple[ReducedModel, Tensor]:
    key = (sl.start, sl.stop)
    if refresh or key not in pd_.paired:
        X = forward_and_jacobian(pd_.sm.rm, shape, thetas, normals=False, jacobian=False)[0]
        pair_points(pd_, sl, X, active)
        pd_.paired[key] = paired_subset(pd_.sm, pd_.corr[sl])
    return pd_.paired[key]


def points_terms(pd_: PointsData, shape: Tensor, thetas: Tensor, sl: slice, active: Tensor, jacobians: bool,
                 refresh: bool, rho, irls_weight):
    """Cost (B,) and (if jacobians) A (B, P, P), g (B, P) over [shape | θ_f] of frames `sl` (thetas (B, n_f))."""
    rm, corr = _paired_model(pd_, shape, thetas, sl, active, refresh)      # corr (B, N) into rm's points
    X, _, D = forward_and_jacobian(rm, shape, thetas, normals=False, jacobian=jacobians)
    B, N = corr.shape
    ci = corr.clamp_min(0)
    xs = torch.gather(X, 2, ci[:, None].expand(B, 3, N)).transpose(1, 2)   # (B, N, 3)
    nrm = pd_.normals[sl]
    r = 1e3 * ((xs - pd_.points[sl]) * nrm).sum(2)                        # (B, N) mm
    used = (corr >= 0) & active[:, None] & torch.isfinite(r)
    r = torch.where(used, r, torch.zeros_like(r))
    e = r.abs()
    cost = (pd_.weight * rho(e, pd_.scale_mm, pd_.loss) * used).sum(1)
    if not jacobians:
        return cost, None, None
    w = pd_.weight * irls_weight(e, pd_.scale_mm, pd_.loss) * used         # (B, N)
    U, n_p = D.shape[2], D.shape[-1]
    J = 1e3 * nrm                                                         # dr/dx (B, N, 3)
    M = D.new_zeros(B, U, 3, 3).scatter_add_(1, ci[..., None, None].expand(B, N, 3, 3),
                                             w[..., None, None] * J[..., :, None] * J[..., None, :])
    g3 = D.new_zeros(B, U, 3).scatter_add_(1, ci[..., None].expand(B, N, 3), (w * r)[..., None] * J)
    Du = D.permute(0, 2, 1, 3)                                            # (B, U, 3, P)
    Dm = Du.reshape(B, 3 * U, n_p)
    A = Dm.transpose(1, 2) @ (M @ Du).reshape(B, 3 * U, n_p)
    g = (Dm.transpose(1, 2) @ g3.reshape(B, 3 * U, 1))[..., 0]
    return cost, A, g


def points_errors(pd_: PointsData, shape: Tensor, thetas: Tensor) -> Tensor:
    """|r| (F, N) mm at the current pairing (NaN where unused), for reports."""
    X = forward_and_jacobian(pd_.sm.rm, shape, thetas, normals=False, jacobian=False)[0]
    F, N = pd_.corr.shape
    xs = torch.gather(X, 2, pd_.corr.clamp_min(0)[:, None].expand(F, 3, N)).transpose(1, 2)
    r = (1e3 * ((xs - pd_.points) * pd_.normals).sum(2)).abs()
    return torch.where(pd_.corr >= 0, r, torch.full_like(r, float("nan")))
