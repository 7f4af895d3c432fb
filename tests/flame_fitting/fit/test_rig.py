"""Camera rig inside the fitter: projection parity with Camera, analytic Jacobians, corrected cameras."""
import numpy as np
import pytest
import torch

from flame_fitting.fit.rig import Rig, corrected_cameras, corrected_centers, project
from flame_fitting.fit.synthetic import arc_cameras


@pytest.fixture()
def setup():
    cams = arc_cameras(4, np.zeros(3), 1.0, yaw_deg=(-60, 60), pitch_deg=(-10, 10))
    names = sorted(cams)
    rng = np.random.default_rng(0)
    X = torch.as_tensor(rng.uniform(-0.1, 0.1, (2, 3, 7)))                  # (B, 3, L)
    xi = torch.as_tensor(rng.normal(0, 0.02, (4, 7)))
    return cams, names, X, xi


def test_projection_matches_camera(setup):
    cams, names, X, _ = setup
    rig = Rig.from_cameras(cams, names, np.array([0.01, 0.02, 0.0]))
    uv, z = project(rig, rig.zeros(), X, jacobians=False)
    for c, n in enumerate(names):
        ref_uv, ref_z = cams[n].project(X[1].T.numpy())
        np.testing.assert_allclose(uv[1, c].T.numpy(), ref_uv, atol=1e-3)
        np.testing.assert_allclose(z[1, c].numpy(), ref_z, atol=1e-6)


@pytest.mark.parametrize("focal", [False, True])
def test_jacobians_match_autograd(setup, focal):
    cams, names, X, xi = setup
    rig = Rig.from_cameras(cams, names, np.array([0.01, 0.02, 0.0]), refine=True, refine_focal=focal)
    xi = xi[:, :rig.n_params]
    uv, _, P, Q = project(rig, xi, X)
    JX = torch.autograd.functional.jacobian(lambda x: project(rig, xi, x, False)[0], X)    # (B,C,2,L, B,3,L)
    Jxi = torch.autograd.functional.jacobian(lambda p: project(rig, p, X, False)[0], xi)   # (B,C,2,L, C,k)
    B, C, _, L = uv.shape
    for b in range(B):
        for c in range(C):
            for l in range(L):
                assert (JX[b, c, :, l, b, :, l] - P[b, c, :, :, l]).abs().max() < 1e-7
                assert (Jxi[b, c, :, l, c, :] - Q[b, c, :, :, l]).abs().max() < 1e-7
    other = Jxi.clone()
    other[:, range(C), :, :, range(C)] = 0          # a point in camera c depends on ξ_c only
    assert other.abs().max() == 0


def test_corrected_cameras_reproduce_the_corrected_projection(setup):
    cams, names, X, xi = setup
    rig = Rig.from_cameras(cams, names, np.array([0.01, 0.02, 0.0]), refine=True, refine_focal=True)
    uv, z = project(rig, xi, X, jacobians=False)
    new = corrected_cameras(rig, xi, cams)
    centres = corrected_centers(rig, xi)
    for c, n in enumerate(names):
        ref_uv, ref_z = new[n].project(X[0].T.numpy())
        np.testing.assert_allclose(uv[0, c].T.numpy(), ref_uv, atol=2e-3)
        np.testing.assert_allclose(z[0, c].numpy(), ref_z, atol=1e-5)
        np.testing.assert_allclose(centres[c].numpy(), new[n].center, atol=1e-6)
        assert new[n].K[0, 0] == pytest.approx(cams[n].K[0, 0] * np.exp(xi[c, 6].item()), rel=1e-6)
