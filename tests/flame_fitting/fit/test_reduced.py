"""Reduced model: parity with HeadModel.forward, analytic Jacobians against the jacfwd reference."""
import numpy as np
import pytest
import torch
from fit_testdata import N_EXPR, N_SHAPE
from flame_folder_factory import write_flame_folder

from flame_fitting.fit.jacobian import forward_and_jacobian
from flame_fitting.fit.reduced import FrameLayout, ReducedModel, landmark_jacobians, landmarks_batch
from flame_fitting.head.head_model import HeadModel


def _random(rm: ReducedModel, B: int, seed: int, scale: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    shape = torch.randn(rm.n_shape, generator=g, dtype=torch.float64)
    thetas = scale * torch.randn(B, rm.layout.n, generator=g, dtype=torch.float64)
    thetas[:, rm.layout.slice("expr")] *= 3
    return shape, thetas


def _head_forward(head: HeadModel, rm: ReducedModel, shape, thetas):
    lay, B = rm.layout, thetas.shape[0]
    sh = torch.zeros(B, head.n_shape)
    sh[:, :rm.n_shape] = shape.float()
    ex = torch.zeros(B, head.n_expr)
    ex[:, :rm.n_expr] = thetas[:, lay.slice("expr")].float()
    p = {k: thetas[:, lay.slice(k)].float() for k in ("jaw_pose", "neck_pose", "eye_pose", "global_orient", "transl")}
    with torch.no_grad():
        return head(shape=sh, expr=ex, **p).landmarks_mp.double()


@pytest.mark.parametrize("n_mp", [478, 105])
def test_landmarks_match_head_model(tmp_path, n_mp):
    spec = write_flame_folder(tmp_path / "h", n_shape=N_SHAPE, n_expr=N_EXPR, n_mp=n_mp, seed=1)
    head = HeadModel.from_folder(spec.path, N_SHAPE, N_EXPR)
    rm = ReducedModel.from_head_model(head)
    assert rm.n_landmarks == n_mp and len(rm.vertex_ids) <= 3 * n_mp
    np.testing.assert_array_equal(rm.landmark_indices, spec.mp_landmark_indices)
    shape, thetas = _random(rm, 5, 0)
    ref = _head_forward(head, rm, shape, thetas)
    X, _, _ = forward_and_jacobian(rm, shape, thetas, normals=False, jacobian=False)
    assert (X.transpose(1, 2) - ref).abs().max() < 1e-6
    Xv, _ = landmarks_batch(rm, shape, thetas)  # the plain vertex-level LBS (reference path)
    assert (Xv - ref).abs().max() < 1e-6


def test_truncated_components_match_zero_padding(head):
    rm = ReducedModel.from_head_model(head, n_shape=4, n_expr=3)
    shape, thetas = _random(rm, 3, 1)
    X, _, _ = forward_and_jacobian(rm, shape, thetas, normals=False, jacobian=False)
    assert (X.transpose(1, 2) - _head_forward(head, rm, shape, thetas)).abs().max() < 1e-6
    with pytest.raises(ValueError, match="n_shape=11"):
        ReducedModel.from_head_model(head, n_shape=N_SHAPE + 1)


@pytest.mark.parametrize("scale", [0.0, 0.4])
def test_analytic_jacobian_matches_jacfwd(head, scale):
    rm = ReducedModel.from_head_model(head)
    shape, thetas = _random(rm, 4, 2, scale)
    X_ref, n_ref, Ds_ref, Df_ref = landmark_jacobians(rm, shape, thetas)
    X, nrm, D = forward_and_jacobian(rm, shape, thetas)
    D_ref = torch.cat([Ds_ref, Df_ref], -1).transpose(1, 2)                     # (B, 3, L, P)
    assert (X - X_ref.transpose(1, 2)).abs().max() < 1e-12
    assert (nrm - n_ref.transpose(1, 2)).abs().max() < 1e-9
    assert (D - D_ref).abs().max() < 1e-10 * max(1.0, float(D_ref.abs().max()))


def test_jacfwd_reference_matches_finite_differences(head):
    rm = ReducedModel.from_head_model(head)
    shape, thetas = _random(rm, 1, 3)
    _, _, Ds, Df = landmark_jacobians(rm, shape, thetas)
    eps = 1e-6
    for j in (0, rm.layout.slice("jaw_pose").start + 1, rm.layout.slice("global_orient").start):
        th = thetas.clone()
        th[0, j] += eps
        fd = (landmarks_batch(rm, shape, th)[0] - landmarks_batch(rm, shape, thetas)[0]) / eps
        assert (fd[0] - Df[0, ..., j]).abs().max() < 1e-5
    sh = shape.clone()
    sh[2] += eps
    fd = (landmarks_batch(rm, sh, thetas)[0] - landmarks_batch(rm, shape, thetas)[0]) / eps
    assert (fd[0] - Ds[0, ..., 2]).abs().max() < 1e-5


def test_layout_round_trip():
    lay = FrameLayout(5)
    parts = dict(expr=np.arange(5.0), jaw_pose=[1, 2, 3], neck_pose=[4, 5, 6], eye_pose=np.arange(6.0) + 10,
                 global_orient=[7, 8, 9], transl=[0.1, 0.2, 0.3])
    theta = lay.pack(**parts)
    assert theta.shape == (lay.n,) == (23,)
    back = lay.unpack(theta)
    for k, v in parts.items():
        np.testing.assert_allclose(back[k], np.asarray(v, np.float32))
    with pytest.raises(ValueError, match="expected 23"):
        lay.pack(np.zeros(4), *[np.zeros(3)] * 2, np.zeros(6), *[np.zeros(3)] * 2)
