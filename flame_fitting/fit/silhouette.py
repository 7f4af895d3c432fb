"""Multi-view silhouette term of the fit: foreground-mask boundaries pull on the model's occluding contour.

Formulation (docs/fitting.md, "Silhouettes"): ICP-style, mask -> model, point-to-line. The data it works on —
mask boundary samples (`mask_targets`), the candidate-vertex model (`SilhouetteModel`), the contour test
(`contour_vertices`) and the packed samples + pairing (`SilhouetteData`) — live in `silhouette_data.py`.
  * once per LM iteration (at the current state, like the IRLS weights): each boundary sample i is paired with
    the nearest projected contour vertex v(i) (k-d tree, `pair`), pairs farther than `silhouette_max_px` are
    dropped. Occluded contour vertices (inner folds) project inside the mask and are rarely the nearest to a
    boundary sample, which is why this direction is used rather than "contour vertex -> distance transform";
  * residual r_i = n_iᵀ(π_c(x_v(i)) - p_i) (pixels, point-to-line: no pull along the boundary), cost
    silhouette_weight · ρ(r_i) with a Cauchy / Huber / l2 loss of scale `silhouette_scale_px` (mode "inside":
    only r_i > 0 counts, i.e. the model may not stick out of the mask — for masks that also cover hair and
    shoulders); Jacobian n_iᵀ · dπ/dx · dx_v/d[shape | θ_f] from the analytic vertex Jacobian
    (`ReducedModel.for_points` on the candidate vertices, cut to the paired ones by `subset`,
    `jacobian.forward_and_jacobian`). Camera corrections (refine_cameras) are held fixed in this term.
The pairing is held fixed while a candidate step is evaluated (Gauss-Newton on a fixed correspondence).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from flame_fitting.fit.jacobian import forward_and_jacobian
from flame_fitting.fit.reduced import ReducedModel
from flame_fitting.fit.rig import Rig, corrected_centers, project
from flame_fitting.fit.silhouette_data import SilhouetteData, SilhouetteModel, contour_vertices


def pair(sd: SilhouetteData, sl: slice, uv: Tensor, contour: Tensor, active: Tensor) -> None:
    """Refresh sd.corr[sl]: nearest contour vertex per boundary sample. uv (B, C, 2, Vc), contour (B, C, Vc)."""
    corr = torch.full(sd.corr[sl].shape, -1, dtype=torch.long)
    pts, val = sd.points[sl], sd.valid[sl]
    for b in range(uv.shape[0]):
        if not active[b]:
            continue
        for c in range(uv.shape[1]):
            ok = val[b, c]
            cand = torch.nonzero(contour[b, c])[:, 0]
            if not ok.any() or len(cand) == 0:
                continue
            q = uv[b, c][:, cand].T.numpy()
            good = np.isfinite(q).all(1)
            if not good.any():
                continue
            cand, q = cand[torch.as_tensor(good)], q[good]
            d, j = cKDTree(q).query(pts[b, c][ok].numpy())
            idx = torch.where(torch.as_tensor(d <= sd.max_px), cand[torch.as_tensor(j)], -1)
            corr[b, c, torch.nonzero(ok)[:, 0]] = idx
    sd.corr[sl] = corr


def subset(sm: SilhouetteModel, idx: Tensor) -> ReducedModel:
    """The candidate points `idx` (U,) long of `sm` as a model of their own (for the Jacobian of paired vertices)."""
    rm, U = sm.rm, len(idx)
    K, L = rm.lm_weights.shape
    n = rm.lm_dirs_z.shape[0]
    return replace(
        rm, v_template=rm.v_template[idx], shapedirs=rm.shapedirs[idx], exprdirs=rm.exprdirs[idx],
        posedirs=rm.posedirs[idx], weights=rm.weights[idx], tri_local=torch.arange(U)[:, None].repeat(1, 3),
        bary=rm.bary[idx], vertex_ids=rm.vertex_ids[idx.numpy()], landmark_indices=rm.landmark_indices[idx.numpy()],
        lm_weights=rm.lm_weights.index_select(1, idx), lm_template=rm.lm_template.index_select(2, idx),
        lm_dirs_z=rm.lm_dirs_z.view(-1, L).index_select(1, idx).view(n, -1),
        lm_dirs_j=rm.lm_dirs_j.view(K * 3, L, n).index_select(1, idx).view(K * 3, -1),
        lm_pose_z=rm.lm_pose_z.view(-1, L).index_select(1, idx).view(36, -1),
        lm_pose_j=rm.lm_pose_j.view(K * 3, L, 36).index_select(1, idx).view(K * 3, -1), lm_bary_sum=rm.lm_bary_sum[idx])


def _paired_model(sd: SilhouetteData, rig: Rig, shape: Tensor, thetas: Tensor, xi: Tensor, sl: slice,
                  active: Tensor, refresh: bool) -> tuple[ReducedModel, Tensor]:
    """The model of the vertices paired in frames `sl` and the pairing as indices into it (B, C, N) (-1: none);
    re-pairs first when `refresh` or nothing is paired yet (the only step that poses every candidate vertex)."""
    key = (sl.start, sl.stop)
    if refresh or key not in sd.paired:
        X = forward_and_jacobian(sd.sm.rm, shape, thetas, normals=False, jacobian=False)[0]
        uv = project(rig, xi, X, jacobians=False)[0]
        pair(sd, sl, uv, contour_vertices(sd.sm, X, corrected_centers(rig, xi)), active)
        sd.paired[key] = paired_subset(sd.sm, sd.corr[sl])
    return sd.paired[key]


def paired_subset(sm: SilhouetteModel, corr: Tensor) -> tuple[ReducedModel, Tensor]:
    """The model of the vertices a pairing `corr` (any shape, -1: none) uses, and the pairing as indices into it."""
    ids, inv = torch.unique(corr[corr >= 0], return_inverse=True)
    local = torch.full_like(corr, -1)
    local[corr >= 0] = inv
    return subset(sm, ids if len(ids) else torch.zeros(1, dtype=torch.long)), local


def silhouette_terms(sd: SilhouetteData, rig: Rig, shape: Tensor, thetas: Tensor, xi: Tensor, sl: slice,
                     active: Tensor, jacobians: bool, refresh: bool, rho, irls_weight):
    """Cost (B,) and (if jacobians) A (B, P, P), g (B, P) over [shape | θ_f] of frames `sl` (thetas (B, n_f)).
    refresh: re-pair boundary samples with the current contour first (done at every Jacobian evaluation)."""
    rm, corr = _paired_model(sd, rig, shape, thetas, xi, sl, active, refresh)    # corr (B, C, N) into rm's points
    X, _, D = forward_and_jacobian(rm, shape, thetas, normals=False, jacobian=jacobians)
    if jacobians:
        uv, z, P, _ = project(rig, xi, X)
    else:
        uv, z = project(rig, xi, X, jacobians=False)
    used = (corr >= 0) & active[:, None, None]
    ci = corr.clamp_min(0)
    B, C, N = corr.shape
    uvs = torch.gather(uv, 3, ci[:, :, None].expand(B, C, 2, N))           # (B, C, 2, N)
    nrm = sd.normals[sl].permute(0, 1, 3, 2)                              # (B, C, 2, N)
    r = ((uvs - sd.points[sl].permute(0, 1, 3, 2)) * nrm).sum(2)          # (B, C, N)
    zs = torch.gather(z, 2, ci)
    used = used & (zs > 0.01) & torch.isfinite(r)
    if sd.inside_only:  # one-sided: only a model contour beyond the mask boundary (r > 0 along the outward normal)
        used = used & (r > 0)
    r = torch.where(used, r, torch.zeros_like(r))
    e = r.abs()
    cost = (sd.weight * rho(e, sd.scale, sd.loss) * used).sum((1, 2))
    if not jacobians:
        return cost, None, None
    w = sd.weight * irls_weight(e, sd.scale, sd.loss) * used              # (B, C, N)
    U, n_p = D.shape[2], D.shape[-1]
    Pg = torch.gather(P, 4, ci[:, :, None, None].expand(B, C, 2, 3, N))   # (B, C, 2, 3, N)
    nP = (Pg * nrm[:, :, :, None]).sum(2).permute(0, 1, 3, 2).reshape(B, C * N, 3)   # dr/dx (B, C·N, 3)
    # reduce to vertex space, as the landmark term: M_u = Σ_{i→u} w nPᵀnP, g_u = Σ_{i→u} w nP r
    wf, rf, cf = w.reshape(B, C * N), r.reshape(B, C * N), ci.reshape(B, C * N)
    M = D.new_zeros(B, U, 3, 3).scatter_add_(1, cf[..., None, None].expand(B, C * N, 3, 3),
                                             wf[..., None, None] * nP[..., :, None] * nP[..., None, :])
    g3 = D.new_zeros(B, U, 3).scatter_add_(1, cf[..., None].expand(B, C * N, 3), (wf * rf)[..., None] * nP)
    Du = D.permute(0, 2, 1, 3)                                            # (B, U, 3, P)
    Dm = Du.reshape(B, 3 * U, n_p)
    A = Dm.transpose(1, 2) @ (M @ Du).reshape(B, 3 * U, n_p)
    g = (Dm.transpose(1, 2) @ g3.reshape(B, 3 * U, 1))[..., 0]
    return cost, A, g


def silhouette_errors(sd: SilhouetteData, rig: Rig, shape: Tensor, thetas: Tensor, xi: Tensor) -> Tensor:
    """|r| (F, C, N) pixels at the current pairing (NaN where unused), for reports."""
    X = forward_and_jacobian(sd.sm.rm, shape, thetas, normals=False, jacobian=False)[0]
    uv = project(rig, xi, X, jacobians=False)[0]
    corr = sd.corr
    B, C, N = corr.shape
    uvs = torch.gather(uv, 3, corr.clamp_min(0)[:, :, None].expand(B, C, 2, N))
    r = ((uvs - sd.points.permute(0, 1, 3, 2)) * sd.normals.permute(0, 1, 3, 2)).sum(2).abs()
    return torch.where(corr >= 0, r, torch.full_like(r, float("nan")))
