"""Multi-view silhouette term of the fit: foreground-mask boundaries pull on the model's occluding contour.

Formulation (docs/fitting.md, "Silhouettes"): ICP-style, mask -> model, point-to-line.
  * once per image (`mask_targets`): the outer boundary of the mask (cv2.findContours), sampled every
    `silhouette_step_px` boundary pixels, moved half a pixel outward onto the pixel edge, with its unit outward
    normal n_i (from the contour tangent);
  * once per LM iteration (at the current state, like the IRLS weights): the model's contour vertices in each
    view = endpoints of mesh edges between a camera-facing and a back-facing triangle (plus open-boundary edges of
    a facing triangle); each boundary sample i is paired with the nearest projected contour vertex v(i) (k-d tree),
    pairs farther than `silhouette_max_px` are dropped. Occluded contour vertices (inner folds) project inside the
    mask and are rarely the nearest to a boundary sample, which is why this direction is used rather than
    "contour vertex -> distance transform";
  * residual r_i = n_iᵀ(π_c(x_v(i)) - p_i) (pixels, point-to-line: no pull along the boundary), cost
    silhouette_weight · ρ(r_i) with a Cauchy / Huber / l2 loss of scale `silhouette_scale_px` (mode "inside":
    only r_i > 0 counts, i.e. the model may not stick out of the mask — for masks that also cover hair and
    shoulders); Jacobian n_iᵀ · dπ/dx · dx_v/d[shape | θ_f] from the analytic vertex Jacobian
    (`ReducedModel.for_points` on the candidate vertices, cut to the paired ones by `subset`,
    `jacobian.forward_and_jacobian`). Camera corrections (refine_cameras) are held fixed in this term.
The pairing is held fixed while a candidate step is evaluated (Gauss-Newton on a fixed correspondence).
`contour_vertices_ref` is the per-edge loop reference of the vectorised contour test.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from flame_fitting.fit.jacobian import forward_and_jacobian
from flame_fitting.fit.reduced import ReducedModel
from flame_fitting.fit.rig import Rig, corrected_centers, project
from flame_fitting.head.head_model import HeadModel


def mask_targets(mask: np.ndarray, step: int = 3, where: str = "mask") -> tuple[np.ndarray, np.ndarray]:
    """Boundary samples of a foreground mask: mask (H, W) bool / uint8 (> 0 = foreground) -> points (N, 2) pixels
    (x, y; pixel centres at +0.5) on the outer boundary, unit outward normals (N, 2), both float64."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"{where}: mask must be (H, W), got shape {mask.shape}")
    m = (mask > 0).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts, nrm = [], []
    for c in contours:
        c = c[:, 0].astype(np.float64)                                     # (n, 2) pixel indices (x, y)
        if len(c) < 8:
            continue
        tangent = np.roll(c, -2, 0) - np.roll(c, 2, 0)
        n = np.stack([tangent[:, 1], -tangent[:, 0]], 1)
        n /= np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
        probe = np.round(c + 2 * n).astype(int)                            # outward = the side off the mask
        inside = m[probe[:, 1].clip(0, m.shape[0] - 1), probe[:, 0].clip(0, m.shape[1] - 1)] > 0
        if inside.mean() > 0.5:
            n = -n
        sel = slice(0, None, max(1, int(step)))
        pts.append(c[sel] + 0.5 + 0.5 * n[sel])
        nrm.append(n[sel])
    if not pts:
        return np.zeros((0, 2)), np.zeros((0, 2))
    return np.concatenate(pts), np.concatenate(nrm)


def _edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """faces (Fc, 3) -> unique edges (E, 2) and their two faces (E, 2) (-1: open boundary; non-manifold extra
    faces are ignored)."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    fid = np.tile(np.arange(len(faces)), 3)
    key = np.sort(e, 1)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    ef = np.full((len(uniq), 2), -1, np.int64)
    order = np.argsort(inv, kind="stable")
    first = np.ones(len(order), bool)
    first[1:] = inv[order][1:] != inv[order][:-1]
    ef[inv[order][first], 0] = fid[order][first]
    second = ~first
    second[1:] &= first[:-1]                                               # only the 2nd face of each edge
    ef[inv[order][second], 1] = fid[order][second]
    return uniq.astype(np.int64), ef


@dataclass
class SilhouetteModel:
    """The head model restricted to the silhouette candidate vertices and their mesh connectivity."""

    rm: ReducedModel       # points = the candidate vertices (labels = their mesh ids)
    faces: Tensor          # (Fc, 3) long, local indices
    edges: Tensor          # (E, 2) long, local indices
    edge_faces: Tensor     # (E, 2) long, -1 = open boundary

    @classmethod
    def cached(cls, model: HeadModel, n_shape: int, n_expr: int, region: str = "all") -> SilhouetteModel:
        """`from_head_model`, built once per head model tensors (a sequence-by-sequence fit reuses it)."""
        key = (id(model.flame), id(model.faces), n_shape, n_expr, region)
        hit = _CACHE.get(key)
        if hit is None:
            if len(_CACHE) >= 4:
                _CACHE.pop(next(iter(_CACHE)))
            hit = _CACHE[key] = ((model.flame, model.faces), cls.from_head_model(model, n_shape, n_expr, region))
        return hit[1]

    @classmethod
    def from_head_model(cls, model: HeadModel, n_shape: int, n_expr: int, region: str = "all") -> SilhouetteModel:
        """region: "all" (every vertex) or "head" (vertices skinned mostly to the neck / jaw / eyes, not the root
        joint: drops FLAME's neck base and shoulders; the cut's open edges are not contours)."""
        faces = model.faces.cpu().numpy().astype(np.int64)
        keep = np.ones(model.n_vertices, bool)
        if region == "head":
            keep = model.flame.lbs_weights.detach().cpu().numpy()[:, 0] < 0.5
        elif region != "all":
            raise ValueError(f"SilhouetteModel: region {region!r} not one of 'all', 'head'")
        fk = faces[keep[faces].all(1)]
        ids = np.unique(fk)
        local = np.full(model.n_vertices, -1, np.int64)
        local[ids] = np.arange(len(ids))
        fl = local[fk]
        edges, ef = _edges(fl)
        if region == "head":  # the cut through the neck is not an occluding contour
            interior = ef[:, 1] >= 0
            edges, ef = edges[interior], ef[interior]
        tri = np.repeat(ids[:, None], 3, 1)
        bary = np.zeros((len(ids), 3))
        bary[:, 0] = 1
        rm = ReducedModel.for_points(model, tri, bary, ids, n_shape, n_expr)
        t = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
        return cls(rm, t(fl), t(edges), t(ef))


_CACHE: dict = {}  # (ids of the model's tensors, n_shape, n_expr, region) -> (the tensors, kept alive; the model)


def contour_vertices(sm: SilhouetteModel, X: Tensor, centers: Tensor) -> Tensor:
    """Contour-vertex mask (B, C, Vc) bool from candidate vertices X (B, 3, Vc) and camera centres (C, 3)."""
    tv = X.transpose(1, 2)[:, sm.faces]                                    # (B, Fc, 3, 3)
    n = torch.linalg.cross(tv[:, :, 1] - tv[:, :, 0], tv[:, :, 2] - tv[:, :, 0])
    front = ((centers[None, :, None] - tv[:, None, :, 0]) * n[:, None]).sum(-1) > 0   # (B, C, Fc)
    f0 = front[:, :, sm.edge_faces[:, 0]]
    f1 = front[:, :, sm.edge_faces[:, 1].clamp_min(0)]
    open_ = (sm.edge_faces[:, 1] < 0)
    on = torch.where(open_, f0, f0 != f1)                                  # (B, C, E)
    out = torch.zeros(X.shape[0], centers.shape[0], X.shape[2], dtype=torch.bool)
    for k in range(2):
        idx = sm.edges[:, k].expand_as(on)
        out.scatter_reduce_(2, idx, on, reduce="amax")
    return out


def contour_vertices_ref(faces: np.ndarray, X: np.ndarray, center: np.ndarray) -> set[int]:
    """Slow reference of `contour_vertices` for one frame and camera: faces (Fc, 3), X (Vc, 3), center (3,)."""
    front = [float(np.dot(np.cross(X[b] - X[a], X[c] - X[a]), center - X[a])) > 0 for a, b, c in faces]
    edge_faces: dict[tuple[int, int], list[int]] = {}
    for f, tri in enumerate(faces):
        for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])):
            edge_faces.setdefault((min(a, b), max(a, b)), []).append(f)
    out = set()
    for (a, b), fs in edge_faces.items():
        if (len(fs) == 1 and front[fs[0]]) or (len(fs) >= 2 and front[fs[0]] != front[fs[1]]):
            out |= {int(a), int(b)}
    return out


@dataclass
class SilhouetteData:
    """Mask boundary samples of the packed frames and cameras, and the current pairing."""

    sm: SilhouetteModel
    points: Tensor     # (F, C, N, 2) float64 boundary samples (padded)
    normals: Tensor    # (F, C, N, 2) unit outward normals
    valid: Tensor      # (F, C, N) bool
    corr: Tensor       # (F, C, N) long: paired candidate vertex, -1 = none (refreshed by `pair`)
    weight: float
    scale: float
    loss: str
    max_px: float
    inside_only: bool = False   # one-sided term (silhouette_mode "inside"): the model must stay inside the mask
    paired: dict = field(default_factory=dict)  # (chunk start, stop) -> (model of the paired vertices, pairing into it)

    @classmethod
    def build(cls, sm: SilhouetteModel, targets: list[list[tuple[np.ndarray, np.ndarray] | None]], weight: float,
              scale: float, loss: str, max_px: float, inside_only: bool = False) -> SilhouetteData:
        """targets[f][c]: `mask_targets` output or None (no mask)."""
        F, C = len(targets), len(targets[0]) if targets else 0
        N = max([len(t[0]) for row in targets for t in row if t is not None] + [1])
        pts, nrm, val = torch.zeros(F, C, N, 2, dtype=torch.float64), torch.zeros(F, C, N, 2, dtype=torch.float64), \
            torch.zeros(F, C, N, dtype=torch.bool)
        for f, row in enumerate(targets):
            for c, t in enumerate(row):
                if t is not None and len(t[0]):
                    n = len(t[0])
                    pts[f, c, :n], nrm[f, c, :n], val[f, c, :n] = torch.as_tensor(t[0]), torch.as_tensor(t[1]), True
        return cls(sm, pts, nrm, val, torch.full((F, C, N), -1, dtype=torch.long), weight, scale, loss, max_px,
                   inside_only)

    @property
    def n_used(self) -> int:
        return int((self.corr >= 0).sum())


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
