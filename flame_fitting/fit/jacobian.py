"""Analytic Jacobians of the reduced model's landmarks, batched over frames (the fast path).

`landmark_jacobians` in `reduced.py` (forward-mode autodiff, `jacfwd` + `vmap`) is the slow
reference this is tested against. Everything is evaluated at landmark level: the barycentric
interpolation is pushed through the skinning (`ReducedModel.lm_*`), so X_l = Σ_m A_m(Z_lm) + transl
with Z_lm = Σ_k b_lk w_{u_k m} v_p,u_k linear in (shape, expr, pose features): a few GEMMs per batch
of frames, no per-vertex Jacobians. Layout "L-last": X (B, 3, L), D (B, 3, L, P), so that the
normal equations are plain batched GEMMs (`problem.py`).
Derivation, with v_u = Σ_j w_uj G_j (v_p,u - J_j) + transl:
  * linear coefficients c = (shape, expr): dv_u/dc = T_rot,u · dirs_u + Σ_j w_uj dA_t,j/dc, where
    A_t,j = g_t,j - g_rot,j J_j is linear in the joints J (themselves linear in c);
  * joint rotation ω_k (axis-angle, R_k = Exp(ω_k)): Exp(ω + δ) = Exp(J_l(ω) δ) Exp(ω), so δ rotates
    every transform of k's subtree about the world axis φ = g_rot,parent(k) J_l(ω_k) e_a through the
    posed joint g_t,k: dv_u = φ × (Σ_{j∈sub(k)} w_uj G_j(v_p - J_j) - (Σ_{j∈sub(k)} w_uj) g_t,k), plus
    (k ≥ 1) the pose blend shapes: T_rot,u · posedirs_u,k · vec(hat(J_l e_a) R_k);
  * transl: identity.
"""
from __future__ import annotations

import torch
from torch import Tensor

from flame_fitting.fit.reduced import ReducedModel
from flame_fitting.fit.so3 import hat, left_jacobian, rodrigues

# FLAME joint k -> slice start of its axis-angle in θ_f, relative to n_expr
_POSE_OFFSET = {0: 12, 1: 3, 2: 0, 3: 6, 4: 9}  # root=global_orient, neck, jaw, left eye, right eye


def _subtree(parents: tuple[int, ...]) -> Tensor:
    """(K, K) float: [k, j] = 1 when joint j is k or a descendant of k."""
    K = len(parents)
    sub = torch.zeros(K, K, dtype=torch.float64)
    for j in range(K):
        k = j
        while k >= 0:
            sub[k, j] = 1
            k = parents[k]
    return sub


def _chain(rm: ReducedModel, J: Tensor, R: Tensor, jdirs: Tensor):
    """Kinematic chain: joints J (B, K, 3), rotations R (B, K, 3, 3), joint bases jdirs (K, 3, n) ->
    global rotations g_rot (B, K, 3, 3), posed joints g_t (B, K, 3), A_t = g_t - g_rot J (B, K, 3),
    dA_t / d coeffs (B, K, 3, n)."""
    par, K, B = rm.parents, len(rm.parents), J.shape[0]
    g_rot, g_t, dg_t = [R[:, 0]], [J[:, 0]], [jdirs[0].expand(B, 3, -1)]
    for i in range(1, K):
        p = par[i]
        g_rot.append(g_rot[p] @ R[:, i])
        g_t.append((g_rot[p] @ (J[:, i] - J[:, p])[..., None])[..., 0] + g_t[p])
        dg_t.append(g_rot[p] @ (jdirs[i] - jdirs[p]) + dg_t[p])
    g_rot, g_t = torch.stack(g_rot, 1), torch.stack(g_t, 1)
    return g_rot, g_t, g_t - (g_rot @ J[..., None])[..., 0], torch.stack(dg_t, 1) - g_rot @ jdirs


def forward_and_jacobian(rm: ReducedModel, shape: Tensor, thetas: Tensor, normals: bool = True,
                         jacobian: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Landmarks and their analytic Jacobian for B frames sharing one identity ("L-last" layout).

    shape (n_shape,), thetas (B, n_f) float64 -> X (B, 3, L), unit triangle normals (B, 3, L) (None unless
    `normals`), D = dX/d[shape | θ_f] (B, 3, L, n_shape + n_f) (None unless `jacobian`).
    """
    B, dt = thetas.shape[0], thetas.dtype
    lay, par, n_s, n_e = rm.layout, rm.parents, rm.n_shape, rm.n_expr
    K, L = len(par), rm.n_landmarks
    coeffs = torch.cat([shape.expand(B, n_s), thetas[:, lay.slice("expr")]], 1)           # (B, n)
    n = coeffs.shape[1]
    jdirs = torch.cat([rm.j_shapedirs, rm.j_exprdirs], -1)                                # (K, 3, n)
    J = rm.j_template + torch.einsum("jcn,bn->bjc", jdirs, coeffs)                        # (B, K, 3)
    omega = torch.stack([thetas[:, n_e + _POSE_OFFSET[k]:n_e + _POSE_OFFSET[k] + 3] for k in range(K)], 1)
    R = rodrigues(omega)                                                                   # (B, K, 3, 3)
    eye = torch.eye(3, dtype=dt)
    pf = (R[:, 1:] - eye).reshape(B, -1)                                                   # (B, 36)
    g_rot, g_t, A_t, dA_t = _chain(rm, J, R, jdirs)

    # Z_m = Σ_k b_k w_{u_k m} v_p,u_k (B, K, 3, L); C_m = G_m Z_m - wl_m g_rot,m J_m + ... = A_m applied
    Z = rm.lm_template + (coeffs @ rm.lm_dirs_z + pf @ rm.lm_pose_z).view(B, K, 3, L)
    C = g_rot @ Z + rm.lm_weights[None, :, None, :] * A_t[..., None]                      # (B, K, 3, L)
    transl = thetas[:, lay.slice("transl")]
    X = C.sum(1) + rm.lm_bary_sum * transl[..., None]                                     # (B, 3, L)
    nrm = triangle_normals(rm, coeffs, pf, g_rot, A_t, transl) if normals else None
    if not jacobian:
        return X, nrm, None

    D = thetas.new_empty(B, 3, L, n_s + lay.n)
    G = g_rot.permute(0, 2, 1, 3).reshape(B, 3, K * 3)                                    # [b, c, (m, j)]
    # linear coefficients: Σ_m g_rot,m Q_lm + Σ_m wl_lm dA_t,m
    lin = (G @ rm.lm_dirs_j).view(B * 3, L, n)
    lin.baddbmm_(rm.lm_weights.T.expand(B * 3, L, K), dA_t.permute(0, 2, 1, 3).reshape(B * 3, K, n))
    D[..., :n_s + n_e] = lin.view(B, 3, L, n)
    # joint rotations: φ × r (kinematic chain) + pose blend shapes
    sub = _subtree(par).to(dt)
    r = (sub @ C.reshape(B, K, 3 * L)).view(B, K, 3, L) - (sub @ rm.lm_weights)[None, :, None, :] * g_t[..., None]
    Jl = left_jacobian(omega)
    parent_rot = torch.stack([eye.expand(B, 3, 3) if par[k] < 0 else g_rot[:, par[k]] for k in range(K)], 1)
    phi = (parent_rot @ Jl)[..., None]                                                     # (B, K, 3c, 3a, 1)
    rr = r[:, :, :, None, :]                                                               # (B, K, 3c, 1, L)
    d_rot = torch.stack([phi[:, :, (c + 1) % 3] * rr[:, :, (c + 2) % 3] - phi[:, :, (c + 2) % 3] * rr[:, :, (c + 1) % 3]
                         for c in range(3)], 1)                                            # (B, 3c, K, 3a, L)
    dR = (hat(Jl.transpose(-1, -2)) @ R[:, :, None])[:, 1:].reshape(B, K - 1, 3, 9)        # (B, K-1, a, 9)
    Pb = (G @ rm.lm_pose_j).view(B, 3, L, K - 1, 9).permute(0, 3, 1, 2, 4)               # (B, K-1, 3c, L, 9)
    d_rot[:, :, 1:] += (Pb @ dR.transpose(-1, -2)[:, :, None]).permute(0, 2, 1, 4, 3)     # (B, 3c, K-1, a, L)
    for k in range(K):
        o = n_s + n_e + _POSE_OFFSET[k]
        D[..., o:o + 3] = d_rot[:, :, k].transpose(-1, -2)
    tr = n_s + lay.slice("transl").start
    D[..., tr:tr + 3] = 0
    for c in range(3):
        D[:, c, :, tr + c] = rm.lm_bary_sum
    return X, nrm, D


def triangle_normals(rm: ReducedModel, coeffs: Tensor, pf: Tensor, g_rot: Tensor, A_t: Tensor, transl: Tensor
                     ) -> Tensor:
    """Unit normals (B, 3, L) of the landmark triangles, posing their U corner vertices (forward only)."""
    dirs = torch.cat([rm.shapedirs, rm.exprdirs], -1)
    v_p = rm.v_template + torch.einsum("ucn,bn->buc", dirs, coeffs) + torch.einsum("ucp,bp->buc", rm.posedirs, pf)
    T_rot = torch.einsum("uk,bkij->buij", rm.weights, g_rot)
    v = (T_rot @ v_p[..., None])[..., 0] + rm.weights @ A_t + transl[:, None]
    tv = v[:, rm.tri_local]                                                                # (B, L, 3, 3)
    nrm = torch.linalg.cross(tv[:, :, 1] - tv[:, :, 0], tv[:, :, 2] - tv[:, :, 0])
    return (nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-20)).transpose(1, 2)
