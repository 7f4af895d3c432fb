"""The head model restricted to what its embedded landmarks need, for O(L) fitting.

A landmark is a barycentric combination of the 3 vertices of one triangle, so the L embedded
landmarks depend only on the U ≤ 3L vertices of their triangles. Joints are linear in
(shape, expr) through `J_regressor`, so they are precomputed as a template plus bases. The
`ReducedModel` (float64) holds the restricted template / bases / posedirs / skinning weights, the
joint bases, and the same data with the barycentric interpolation pushed through the skinning
weights (`lm_*`, used by the fast analytic path in `jacobian.py`).
This module also has the plain reference path: `posed_vertices` / `landmarks` evaluate LBS exactly
as smplx's `lbs` (pose blend shapes from R - I of the non-root joints, kinematic chain, blended
transforms, then `transl`) on the U vertices, and `landmark_jacobians` differentiates it with
`torch.func.jacfwd`, batched over frames with `vmap` (tests compare the fast path against it).

Per-frame parameter vector θ_f (n_f = n_expr + 18), see `FrameLayout`:
  [expr (n_expr) | jaw (3) | neck (3) | eyes (6: left | right) | global_orient (3) | transl (3)]
The identity `shape (n_shape,)` is separate (shared by all frames of a sequence).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import jacfwd, vmap

from flame_fitting.fit.so3 import rodrigues
from flame_fitting.head.head_model import HeadModel


@dataclass(frozen=True)
class FrameLayout:
    """Slices of the per-frame parameter vector θ_f."""

    n_expr: int

    @property
    def n(self) -> int:
        return self.n_expr + 18

    def slice(self, name: str) -> slice:
        e = self.n_expr
        return {"expr": slice(0, e), "jaw_pose": slice(e, e + 3), "neck_pose": slice(e + 3, e + 6),
                "eye_pose": slice(e + 6, e + 12), "global_orient": slice(e + 12, e + 15),
                "transl": slice(e + 15, e + 18)}[name]

    def pack(self, expr, jaw_pose, neck_pose, eye_pose, global_orient, transl) -> np.ndarray:
        """Parameters (numpy, any float) -> θ_f (n_f,) float64."""
        parts = [np.asarray(p, np.float64).reshape(-1) for p in (expr, jaw_pose, neck_pose, eye_pose, global_orient,
                                                                 transl)]
        out = np.concatenate(parts)
        if out.shape != (self.n,):
            raise ValueError(f"FrameLayout.pack: got {out.shape[0]} values, expected {self.n}")
        return out

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """θ_f (n_f,) -> dict of float32 arrays (expr, jaw_pose, neck_pose, eye_pose, global_orient, transl)."""
        theta = np.asarray(theta)
        return {k: theta[self.slice(k)].astype(np.float32) for k in
                ("expr", "jaw_pose", "neck_pose", "eye_pose", "global_orient", "transl")}


@dataclass(frozen=True)
class ReducedModel:
    """Restricted FLAME tensors (float64). U = vertices used by the L landmarks' triangles."""

    v_template: Tensor   # (U, 3)
    shapedirs: Tensor    # (U, 3, n_shape)
    exprdirs: Tensor     # (U, 3, n_expr)
    posedirs: Tensor     # (U, 3, 36)
    weights: Tensor      # (U, 5) skinning weights
    j_template: Tensor   # (5, 3) joints of the template
    j_shapedirs: Tensor  # (5, 3, n_shape)
    j_exprdirs: Tensor   # (5, 3, n_expr)
    parents: tuple[int, ...]
    tri_local: Tensor    # (L, 3) long: the landmark triangles' corners as indices into the U vertices
    bary: Tensor         # (L, 3)
    vertex_ids: np.ndarray         # (U,) int64 ids of the U vertices in the full mesh
    landmark_indices: np.ndarray   # (L,) int64 MediaPipe ids of the embedded landmarks
    # the barycentric interpolation pushed through the skinning weights, laid out for GEMMs (jacobian.py);
    # wl_lm = Σ_k b_lk w_{u_k, m}, Q_lm = Σ_k b_lk w_{u_k, m} [template | dirs | posedirs]_{u_k}:
    lm_weights: Tensor   # (5, L)                wl, joint-major
    lm_template: Tensor  # (5, 3, L)             Q of the template
    lm_dirs_z: Tensor    # (n, 5 * 3 * L)        Q of the (shape | expr) bases, coefficient-major (for Z = Q c)
    lm_dirs_j: Tensor    # (5 * 3, L * n)        the same, joint-major (for dZ/dc = G Q)
    lm_pose_z: Tensor    # (36, 5 * 3 * L)       Q of the pose blend shapes
    lm_pose_j: Tensor    # (5 * 3, L * 36)
    lm_bary_sum: Tensor  # (L,)  Σ_k b_lk (1 for FLAME embeddings)

    @property
    def n_shape(self) -> int:
        return self.shapedirs.shape[-1]

    @property
    def n_expr(self) -> int:
        return self.exprdirs.shape[-1]

    @property
    def n_landmarks(self) -> int:
        return self.bary.shape[0]

    @property
    def layout(self) -> FrameLayout:
        return FrameLayout(self.n_expr)

    @classmethod
    def from_head_model(cls, model: HeadModel, n_shape: int | None = None, n_expr: int | None = None,
                        dtype: torch.dtype = torch.float64) -> ReducedModel:
        """Restrict `model` to its MediaPipe landmarks, using the first n_shape / n_expr components."""
        n_shape = model.n_shape if n_shape is None else n_shape
        n_expr = model.n_expr if n_expr is None else n_expr
        if not (0 <= n_shape <= model.n_shape and 0 <= n_expr <= model.n_expr):
            raise ValueError(f"{model.folder}: n_shape={n_shape}, n_expr={n_expr} requested but the loaded head model "
                             f"has {model.n_shape} / {model.n_expr}")
        return cls.for_points(model, model.faces[model.mp_face_idx].cpu().numpy(), model.mp_bary,
                              model.mp_landmark_indices.cpu().numpy(), n_shape, n_expr, dtype)

    @classmethod
    def for_points(cls, model: HeadModel, tri: np.ndarray, bary, labels: np.ndarray, n_shape: int, n_expr: int,
                   dtype: torch.dtype = torch.float64) -> ReducedModel:
        """Restrict `model` to L surface points given as barycentric combinations of mesh triangles:
        tri (L, 3) vertex ids, bary (L, 3), labels (L,) int ids stored as `landmark_indices` (e.g. vertex ids
        for the silhouette model of `silhouette_data.py`, whose points are single vertices: tri (v, v, v),
        bary (1, 0, 0))."""
        fl = model.flame
        V = model.n_vertices
        tri = np.asarray(tri, np.int64).reshape(-1, 3)
        ids, inverse = np.unique(tri.reshape(-1), return_inverse=True)
        idx = torch.as_tensor(ids)
        f64 = lambda t: t.detach().to("cpu", dtype)  # noqa: E731
        shapedirs = f64(fl.shapedirs)[:, :, :n_shape]
        exprdirs = f64(fl.expr_dirs)[:, :, :n_expr]
        J = f64(fl.J_regressor)  # (5, V)
        posedirs = f64(fl.posedirs).T.reshape(V, 3, -1)
        tri_local = torch.as_tensor(inverse.reshape(-1, 3), dtype=torch.long)
        bary, weights = f64(torch.as_tensor(bary)), f64(fl.lbs_weights)[idx]
        corner_w = bary[:, :, None] * weights[tri_local]                                     # (L, 3, 5)
        rows = torch.cat([shapedirs, exprdirs], -1)[idx], posedirs[idx], f64(fl.v_template)[idx]
        if _one_vertex_each(tri_local, bary):  # the silhouette model's points
            (dirs_z, dirs_j), (pose_z, pose_j) = (_vertex_layouts(corner_w, tri_local, t) for t in rows[:2])
            template = _vertex_layouts(corner_w, tri_local, rows[2][..., None])[1].reshape(-1, 3, len(bary))
        else:
            lm = lambda t: torch.einsum("lkm,lk...->ml...", corner_w, t[tri_local])  # noqa: E731  (5, L, 3, ...)
            dirs, pose = lm(rows[0]), lm(rows[1])                                             # (5, L, 3, n | 36)
            K, L, n = dirs.shape[0], dirs.shape[1], dirs.shape[-1]
            c = lambda t: t.contiguous()  # noqa: E731
            dirs_z, dirs_j = c(dirs.permute(3, 0, 2, 1).reshape(n, K * 3 * L)), c(dirs.permute(0, 2, 1, 3).reshape(
                K * 3, L * n))
            pose_z, pose_j = c(pose.permute(3, 0, 2, 1).reshape(36, K * 3 * L)), c(pose.permute(0, 2, 1, 3).reshape(
                K * 3, L * 36))
            template = c(lm(rows[2]).transpose(1, 2))                                         # (5, 3, L)
        return cls(
            v_template=f64(fl.v_template)[idx], shapedirs=shapedirs[idx], exprdirs=exprdirs[idx],
            posedirs=posedirs[idx], weights=weights,
            j_template=J @ f64(fl.v_template), j_shapedirs=torch.einsum("jv,vcn->jcn", J, shapedirs),
            j_exprdirs=torch.einsum("jv,vcn->jcn", J, exprdirs), parents=tuple(int(p) for p in fl.parents),
            tri_local=tri_local, bary=bary, vertex_ids=ids.astype(np.int64),
            landmark_indices=np.asarray(labels).astype(np.int64),
            lm_weights=corner_w.sum(1).T.contiguous(), lm_template=template,
            lm_dirs_z=dirs_z, lm_dirs_j=dirs_j, lm_pose_z=pose_z, lm_pose_j=pose_j, lm_bary_sum=bary.sum(1))


def _one_vertex_each(tri_local: Tensor, bary: Tensor) -> bool:
    """Every point is one vertex: its triangle's corners are that vertex, with weights exactly (1, 0, 0) (the
    silhouette model's candidate vertices, silhouette_data.py)."""
    return bool((tri_local == tri_local[:, :1]).all() and (bary[:, 0] == 1).all() and (bary[:, 1:] == 0).all())


def _vertex_layouts(corner_w: Tensor, tri_local: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """For points that are one vertex each (`_one_vertex_each`): Q = Σ_k w_lkm t_{u_lk} of per-vertex rows t
    (U, 3, N) in the two layouts `ReducedModel` keeps, coefficient-major (N, 5 * 3 * L) and joint-major
    (5 * 3, L * N), as w_l0m t_{u_l0} (the corners of weight 0 left out) written straight into each layout: about
    half the CPU of the einsum over the three corners and its two permuted copies (the silhouette model's ~5,000
    vertices: ~0.2 s a fit process). The same bytes: each product is rounded once either way, the einsum adds
    exact zeros to it, and `+ 0.0` gives a zero product the einsum's sign (-0.0 + 0.0 = +0.0;
    tests/flame_fitting/fit/test_reduced_vertices.py)."""
    w, rows = corner_w[:, 0].T, t[tri_local[:, 0]]                                      # (5, L), (L, 3, N)
    (L, _, N), K = rows.shape, w.shape[0]
    z = torch.empty(N, K, 3, L, dtype=rows.dtype)
    torch.mul(rows.permute(2, 1, 0)[:, None], w[None, :, None, :], out=z).add_(0.0)
    j = torch.empty(K, 3, L, N, dtype=rows.dtype)
    torch.mul(rows.permute(1, 0, 2)[None], w[:, None, :, None], out=j).add_(0.0)
    return z.reshape(N, K * 3 * L), j.reshape(K * 3, L * N)


def posed_vertices(rm: ReducedModel, shape: Tensor, theta: Tensor) -> Tensor:
    """LBS on the U reduced vertices for one frame: shape (n_shape,), theta (n_f,) -> (U, 3)."""
    lay = rm.layout
    expr = theta[lay.slice("expr")]
    v_shaped = rm.v_template + rm.shapedirs @ shape + rm.exprdirs @ expr                  # (U, 3)
    J = rm.j_template + rm.j_shapedirs @ shape + rm.j_exprdirs @ expr                     # (5, 3)
    poses = torch.cat([theta[lay.slice("global_orient")], theta[lay.slice("neck_pose")], theta[lay.slice("jaw_pose")],
                       theta[lay.slice("eye_pose")]]).reshape(5, 3)
    R = rodrigues(poses)                                                                  # (5, 3, 3)
    eye = torch.eye(3, dtype=R.dtype)
    v_posed = v_shaped + rm.posedirs @ (R[1:] - eye).reshape(36)                          # (U, 3)
    g_rot, g_t = [R[0]], [J[0]]
    for i in range(1, len(rm.parents)):
        p = rm.parents[i]
        g_rot.append(g_rot[p] @ R[i])
        g_t.append(g_rot[p] @ (J[i] - J[p]) + g_t[p])
    A_rot = torch.stack(g_rot)                                                            # (5, 3, 3)
    A_t = torch.stack(g_t) - (A_rot @ J[:, :, None])[..., 0]                              # (5, 3)
    T_rot = torch.einsum("uk,kab->uab", rm.weights, A_rot)
    T_t = rm.weights @ A_t
    return (T_rot @ v_posed[:, :, None])[..., 0] + T_t + theta[lay.slice("transl")]


def landmarks(rm: ReducedModel, shape: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """One frame: shape (n_shape,), theta (n_f,) -> landmarks (L, 3), unit triangle normals (L, 3)."""
    v = posed_vertices(rm, shape, theta)
    tri = v[rm.tri_local]                                                                 # (L, 3, 3)
    X = (tri * rm.bary[:, :, None]).sum(1)
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return X, n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)


def landmarks_batch(rm: ReducedModel, shape: Tensor, thetas: Tensor) -> tuple[Tensor, Tensor]:
    """Frames: shape (n_shape,), thetas (B, n_f) -> landmarks (B, L, 3), normals (B, L, 3)."""
    return vmap(lambda th: landmarks(rm, shape, th))(thetas)


def landmark_jacobians(rm: ReducedModel, shape: Tensor, thetas: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Landmarks and their Jacobians for B frames sharing one identity.

    shape (n_shape,), thetas (B, n_f) -> X (B, L, 3), normals (B, L, 3), dX/dshape (B, L, 3, n_shape),
    dX/dθ_f (B, L, 3, n_f).
    """
    n_s = rm.n_shape

    def f(p: Tensor):
        X, nrm = landmarks(rm, p[:n_s], p[n_s:])
        return X, (X, nrm)

    full = torch.cat([shape.expand(thetas.shape[0], n_s), thetas], 1)
    D, (X, nrm) = vmap(jacfwd(f, has_aux=True))(full)
    return X, nrm, D[..., :n_s], D[..., n_s:]
