"""Silhouette data of the fit (the term itself: `silhouette.py`; docs/fitting.md, "Silhouettes").

  * once per image (`mask_targets`): the outer boundary of the mask (cv2.findContours), sampled every
    `silhouette_step_px` boundary pixels, moved half a pixel outward onto the pixel edge, with its unit outward
    normal n_i (from the contour tangent);
  * once per head model (`SilhouetteModel`): the candidate vertices as a single-vertex `ReducedModel` with their
    mesh connectivity (faces, unique edges and the two faces of each edge);
  * the model's contour vertices in each view (`contour_vertices`) = endpoints of mesh edges between a
    camera-facing and a back-facing triangle (plus open-boundary edges of a facing triangle);
    `contour_vertices_ref` is the per-edge loop reference of that vectorised test;
  * `SilhouetteData`: the boundary samples of the packed frames and cameras (padded), the term's settings and
    the current pairing (filled by `silhouette.pair`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import Tensor

from flame_fitting.fit.reduced import ReducedModel
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
