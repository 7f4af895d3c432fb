"""Solving the damped normal equations of the fit by a Schur complement on the shared unknowns.

The system has an arrow structure: shared unknowns s (identity + camera corrections, n_S ≤ a few
hundred) coupled to every frame, and per-frame unknowns θ_f (n_f ≈ 50) coupled only to s and,
with temporal smoothness, to their neighbours (block tridiagonal A_FF):
    [A_SS  A_SF] [δs]     [g_S]
    [A_FS  A_FF] [δθ] = - [g_F]
Eliminating the frames: (A_SS - A_SF A_FF⁻¹ A_FS) δs = -(g_S - A_SF A_FF⁻¹ g_F), then
δθ = -A_FF⁻¹ (g_F + A_FS δs). A_FF⁻¹ is applied by batched Cholesky (independent frames) or a block
Cholesky sweep (tridiagonal); cost O(F n_f³ + F n_f² n_S + n_S³), linear in the number of frames.
`solve_dense` is the slow reference (the full matrix) used in tests.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _tridiag_solve(D: Tensor, E: Tensor, rhs: Tensor) -> Tensor:
    """Solve the symmetric block-tridiagonal system with diagonal blocks D (F, n, n), off-diagonal blocks
    A[f, f+1] = A[f+1, f] = diag(E[f]) (E (F-1, n)), right-hand sides rhs (F, n, m), by block Cholesky."""
    F = D.shape[0]
    chol, y = [], []
    for f in range(F):
        Df, rf = D[f], rhs[f]
        if f:
            # S_f = D_f - E_f-1 S_f-1⁻¹ E_f-1 ; y_f = r_f - E_f-1 S_f-1⁻¹ y_f-1
            e = E[f - 1]
            Sinv_E = torch.cholesky_solve(torch.diag(e), chol[-1])
            Df = Df - e[:, None] * Sinv_E
            rf = rf - e[:, None] * torch.cholesky_solve(y[-1], chol[-1])
        chol.append(torch.linalg.cholesky(Df))
        y.append(rf)
    x = [None] * F
    x[-1] = torch.cholesky_solve(y[-1], chol[-1])
    for f in range(F - 2, -1, -1):
        x[f] = torch.cholesky_solve(y[f] - E[f][:, None] * x[f + 1], chol[f])
    return torch.stack(x)


def solve_frames(D: Tensor, E: Tensor | None, rhs: Tensor) -> Tensor:
    """A_FF⁻¹ rhs: D (F, n, n) diagonal blocks, E (F-1, n) diagonal off-diagonal blocks or None, rhs (F, n, m)."""
    if E is None or D.shape[0] == 1:
        return torch.cholesky_solve(rhs, torch.linalg.cholesky(D))
    return _tridiag_solve(D, E, rhs)


def solve_schur(A_ss: Tensor, g_s: Tensor, A_sf: Tensor, A_ff: Tensor, g_f: Tensor, E: Tensor | None
                ) -> tuple[Tensor, Tensor]:
    """Newton step of the arrow system. A_ss (S, S), g_s (S,), A_sf (F, S, n), A_ff (F, n, n), g_f (F, n),
    E (F-1, n) or None -> δs (S,), δθ (F, n). Raises torch.linalg.LinAlgError when not positive definite."""
    S = A_ss.shape[0]
    rhs = torch.cat([A_sf.transpose(1, 2), g_f[..., None]], -1)                  # (F, n, S + 1)
    sol = solve_frames(A_ff, E, rhs)                                              # A_FF⁻¹ [A_FS | g_F]
    if S:
        red = A_ss - torch.einsum("fsn,fnt->st", A_sf, sol[..., :S])
        red_g = g_s - torch.einsum("fsn,fn->s", A_sf, sol[..., S])
        ds = -torch.cholesky_solve(red_g[:, None], torch.linalg.cholesky(0.5 * (red + red.T)))[:, 0]
    else:
        ds = g_s.new_zeros(0)
    dth = -(sol[..., S] + torch.einsum("fnt,t->fn", sol[..., :S], ds))
    return ds, dth


def solve_dense(A_ss: Tensor, g_s: Tensor, A_sf: Tensor, A_ff: Tensor, g_f: Tensor, E: Tensor | None
                ) -> tuple[Tensor, Tensor]:
    """Reference: the same step from the assembled dense matrix."""
    S, (F, n) = A_ss.shape[0], g_f.shape
    N = S + F * n
    A = A_ss.new_zeros(N, N)
    A[:S, :S] = A_ss
    for f in range(F):
        blk = slice(S + f * n, S + (f + 1) * n)
        A[:S, blk], A[blk, :S], A[blk, blk] = A_sf[f], A_sf[f].T, A_ff[f]
        if E is not None and f + 1 < F:
            nxt = slice(S + (f + 1) * n, S + (f + 2) * n)
            A[blk, nxt] = A[nxt, blk] = torch.diag(E[f])
    x = -torch.linalg.solve(A, torch.cat([g_s, g_f.reshape(-1)]))
    return x[:S], x[S:].reshape(F, n)
