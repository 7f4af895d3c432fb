"""Normal equations of the fit against autograd of the plain cost, and the Schur solver against a dense solve."""
import numpy as np
import pytest
import torch

from flame_fitting.fit.config import FitConfig
from flame_fitting.fit.jacobian import forward_and_jacobian
from flame_fitting.fit.problem import Problem, frame_terms, prior_terms
from flame_fitting.fit.reduced import ReducedModel
from flame_fitting.fit.rig import Rig, project
from flame_fitting.fit.schur import solve_dense, solve_schur
from flame_fitting.fit.synthetic import arc_cameras


def _problem(head, refine: bool, temporal: float = 0.0, B: int = 3):
    rm = ReducedModel.from_head_model(head, n_shape=6, n_expr=5)
    cams = arc_cameras(3, np.zeros(3), 1.0, yaw_deg=(-40, 40))
    names = sorted(cams)
    rig = Rig.from_cameras(cams, names, np.array([0.0, 0.01, 0.02]), refine=refine, refine_focal=refine)
    g = torch.Generator().manual_seed(0)
    L = rm.n_landmarks
    obs = 256 + 60 * torch.randn(B, 3, 2, L, generator=g, dtype=torch.float64)
    conf = torch.rand(B, 3, L, generator=g, dtype=torch.float64)
    cfg = FitConfig(robust_loss="l2", refine_cameras=refine, refine_focal=refine, temporal_weight=temporal,
                    prior_shape=0.7, prior_expr=0.3, prior_jaw=2.0, prior_neck=3.0, prior_eyes=4.0)
    pb = Problem(rm, rig, obs, conf, cfg)
    shape = 0.5 * torch.randn(6, generator=g, dtype=torch.float64)
    thetas = 0.1 * torch.randn(B, rm.layout.n, generator=g, dtype=torch.float64)
    xi = 0.01 * torch.randn(3, rig.n_params, generator=g, dtype=torch.float64)
    return pb, shape, thetas, xi


def _flat(shape, thetas, xi):
    return torch.cat([shape, xi.reshape(-1), thetas.reshape(-1)])


def _unflat(pb, x, B):
    n_s, k = pb.rm.n_shape, pb.rig.n_params
    C = len(pb.rig.names)
    return x[:n_s], x[n_s + C * k:].reshape(B, -1), x[n_s:n_s + C * k].reshape(C, k)


@pytest.mark.parametrize("refine", [False, True])
def test_data_normal_equations_match_autograd(head, refine):
    pb, shape, thetas, xi = _problem(head, refine)
    B = thetas.shape[0]
    t = frame_terms(pb, shape, thetas, xi, pb.obs, pb.conf, 3.0, True)

    def cost(x):
        s, th, c = _unflat(pb, x, B)
        return frame_terms(pb, s, th, c, pb.obs, pb.conf, 3.0, False).cost.sum()

    x = _flat(shape, thetas, xi)
    grad = torch.autograd.functional.jacobian(cost, x) / 2        # cost ≈ c + 2 gᵀδ + δᵀAδ
    nS = pb.n_shared
    assert torch.allclose(t.g_s, grad[:nS], rtol=1e-8, atol=1e-6)
    assert torch.allclose(t.g_f.reshape(-1), grad[nS:], rtol=1e-8, atol=1e-6)
    # Gauss-Newton matrix: JᵀWJ from the residual Jacobian
    def residuals(x):
        s, th, c = _unflat(pb, x, B)
        X = forward_and_jacobian(pb.rm, s, th, normals=False, jacobian=False)[0]
        uv, _ = project(pb.rig, c, X, jacobians=False)
        return ((uv - pb.obs) * pb.conf[:, :, None].sqrt()).reshape(-1)

    J = torch.autograd.functional.jacobian(residuals, x, vectorize=True, strategy="forward-mode")
    A = J.T @ J
    assert torch.allclose(t.A_ss, A[:nS, :nS], rtol=1e-8, atol=1e-4)
    n_f = pb.n_frame
    for b in range(B):
        blk = slice(nS + b * n_f, nS + (b + 1) * n_f)
        assert torch.allclose(t.A_ff[b], A[blk, blk], rtol=1e-8, atol=1e-4)
        assert torch.allclose(t.A_sf[b], A[:nS, blk], rtol=1e-8, atol=1e-4)


@pytest.mark.parametrize("refine,temporal", [(False, 0.0), (True, 0.5)])
def test_prior_terms_match_autograd(head, refine, temporal):
    pb, shape, thetas, xi = _problem(head, refine, temporal)
    B = thetas.shape[0]
    active = torch.ones(B, dtype=torch.bool)
    c, _, A_f, g_f, A_ss, g_s, E = prior_terms(pb, shape, thetas, xi, active)
    x = _flat(shape, thetas, xi)
    f = lambda x: prior_terms(pb, *_unflat(pb, x, B), active)[0]  # noqa: E731
    grad = torch.autograd.functional.jacobian(f, x) / 2
    hess = torch.autograd.functional.hessian(f, x) / 2
    nS, n_f = pb.n_shared, pb.n_frame
    assert torch.allclose(g_s, grad[:nS], atol=1e-9) and torch.allclose(g_f.reshape(-1), grad[nS:], atol=1e-9)
    assert torch.allclose(A_ss, hess[:nS, :nS], atol=1e-6)
    H_ff = hess[nS:, nS:].reshape(B, n_f, B, n_f)
    for b in range(B):
        assert torch.allclose(torch.diag(A_f[b]), H_ff[b, :, b], atol=1e-9)
        if b + 1 < B:
            off = torch.zeros(n_f, n_f, dtype=torch.float64) if E is None else torch.diag(E[b])
            assert torch.allclose(off, H_ff[b, :, b + 1], atol=1e-9)
    assert (E is not None) == (temporal > 0)


@pytest.mark.parametrize("tridiagonal", [False, True])
def test_schur_matches_dense(tridiagonal):
    g = torch.Generator().manual_seed(1)
    F, n, S = 5, 4, 3
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    J_s, J_f = rnd(40, F, S), rnd(40, F, n)                              # random least-squares structure
    A_ss = torch.einsum("rfs,rft->st", J_s, J_s) + torch.eye(S)
    A_sf = torch.einsum("rfs,rfn->fsn", J_s, J_f)
    A_ff = torch.einsum("rfn,rfm->fnm", J_f, J_f) + 3 * torch.eye(n)
    E = -rnd(F - 1, n).abs() if tridiagonal else None
    if tridiagonal:  # keep it positive definite: diagonal dominance over the couplings
        pad = torch.zeros(1, n)
        A_ff = A_ff + torch.diag_embed(torch.cat([E.abs(), pad]) + torch.cat([pad, E.abs()]))
    g_s, g_f = rnd(S), rnd(F, n)
    ds, dth = solve_schur(A_ss, g_s, A_sf, A_ff, g_f, E)
    ds_ref, dth_ref = solve_dense(A_ss, g_s, A_sf, A_ff, g_f, E)
    assert torch.allclose(ds, ds_ref, atol=1e-10) and torch.allclose(dth, dth_ref, atol=1e-10)
