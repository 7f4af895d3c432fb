"""The landmark noise model (flame_fitting.fit.noise): groups, variance components, weights, and its effect on
fits with systematically wrong contour points."""
import numpy as np
import pytest
import torch
from fit_testdata import vertex_error_mm

from flame_fitting.fit import FitConfig, fit_sequence
from flame_fitting.fit.noise import (DENSE, GROUP_NAMES, MEDIAN_TO_SIGMA, MIN_SAMPLES, MP_GROUPS, estimate_noise,
                                     landmark_groups, noise_weights)

CONTOUR = np.array(MP_GROUPS["contour"])


def test_groups_are_mediapipes_sets():
    conn = pytest.importorskip("mediapipe.python.solutions.face_mesh_connections")
    ids = lambda *sets: tuple(sorted({int(i) for s in sets for edge in s for i in edge}))  # noqa: E731
    assert MP_GROUPS["contour"] == ids(conn.FACEMESH_FACE_OVAL)
    assert MP_GROUPS["lips"] == ids(conn.FACEMESH_LIPS)
    assert MP_GROUPS["eyes"] == ids(conn.FACEMESH_LEFT_EYE, conn.FACEMESH_RIGHT_EYE)
    assert MP_GROUPS["brows"] == ids(conn.FACEMESH_LEFT_EYEBROW, conn.FACEMESH_RIGHT_EYEBROW)
    assert MP_GROUPS["nose"] == ids(conn.FACEMESH_NOSE)
    assert set(ids(conn.FACEMESH_LEFT_IRIS, conn.FACEMESH_RIGHT_IRIS)) <= set(MP_GROUPS["iris"])
    g = landmark_groups(np.arange(478))
    assert all(g[i] == GROUP_NAMES.index("contour") for i in CONTOUR)
    assert g[468] == GROUP_NAMES.index("iris") and g[50] == DENSE    # 50: a cheek point, in no named group
    named = np.concatenate([np.array(v) for v in MP_GROUPS.values()])
    assert len(named) == len(set(named.tolist()))                     # the groups do not overlap


def test_noise_weights_formula():
    views = np.array([1, 5, 5, 5, 5, 5, 5.0])
    sigma = np.array([1.0, 3.0, np.nan, 1.25, 2.0, 2.0, 2.0])
    w = noise_weights(sigma, views, free_px=1.25, correlation=0.5, dense_factor=10.0)
    # κ = 1 + (views - 1) ρ; the dense group (last) × 10
    np.testing.assert_allclose(w[:4], [1.0, 1 / (1 + 3.0 * (9 - 1.5625)), 1.0, 1.0])
    np.testing.assert_allclose(w[4], 1 / (1 + 3.0 * (4 - 1.5625)))
    np.testing.assert_allclose(w[DENSE], 1 / (1 + 30.0 * (4 - 1.5625)))
    assert noise_weights(sigma, views, 1.25, 0.0, 1.0)[1] == pytest.approx(1 / (1 + 9 - 1.5625))


def test_estimate_noise_recovers_group_spreads():
    rng = np.random.default_rng(0)
    F, C, L = 12, 8, 478
    groups = landmark_groups(np.arange(L))
    true_sigma = np.linspace(0.5, 4.0, len(GROUP_NAMES))
    r = rng.standard_normal((F, C, L, 2)) * true_sigma[groups][:, None]
    errors = torch.as_tensor(np.linalg.norm(r, axis=-1))
    used = torch.ones(F, C, L, dtype=torch.bool)
    used[:, :2] = False                                   # two views not used: 6 views per landmark
    errors[:, :2] = 1e3                                   # ... and their (huge) errors must not count
    errors[0, 3, 5] = float("nan")                        # a missing observation
    m = estimate_noise(errors, used, groups, 1.25, 1.0, 10.0)
    np.testing.assert_allclose(m.sigma_px, true_sigma, rtol=0.08)
    assert m.views[GROUP_NAMES.index("lips")] == pytest.approx(6.0)
    assert m.samples.sum() == F * 6 * L - 1
    np.testing.assert_allclose(m.weights, noise_weights(m.sigma_px, m.views, 1.25, 1.0, 10.0))
    assert np.all(m.weights[true_sigma <= 1.0] == 1) and np.all(m.weights[true_sigma > 1.5] < 0.5)
    few = torch.zeros_like(used)
    few[0, 0, :MIN_SAMPLES - 1] = True                    # too few samples anywhere: no estimate, weight 1
    assert estimate_noise(errors, few, groups, 1.25, 1.0, 10.0).is_identity


def test_accurate_landmarks_are_fitted_as_without_the_model(head, cams, noisy_obs):
    """1-px noise stays below noise_free_px: the model is the identity and the fit does not change."""
    on = fit_sequence(head, cams, noisy_obs, FitConfig(), progress=False)
    off = fit_sequence(head, cams, noisy_obs, FitConfig(noise_model=False), progress=False)
    assert on.noise is not None and np.all(on.noise.weight == 1)
    assert on.noise.sigma_px.between(0.8, 1.2).all()
    for f in on.params:
        np.testing.assert_array_equal(on.vertices[f], off.vertices[f])
    assert off.noise is None


def slide_contour(head, obs: dict, shift_px: float) -> dict:
    """Each view's contour landmarks moved by shift_px along the face outline (perpendicular to the direction from
    the landmarks' centroid): a systematic, view-dependent error like MediaPipe's sliding face-oval points."""
    out = {}
    for f, views in obs.items():
        out[f] = {}
        for name, pts in views.items():
            p = pts.astype(np.float64).copy()
            radial = p[CONTOUR] - np.nanmean(p, 0)
            tangent = np.stack([-radial[:, 1], radial[:, 0]], 1) / np.linalg.norm(radial, axis=1, keepdims=True)
            p[CONTOUR] += shift_px * tangent
            out[f][name] = p.astype(np.float32)
    return out


def test_contour_points_sliding_along_the_outline_are_down_weighted(head, cams, truth, noisy_obs):
    """4 px: small enough that the robust loss alone does not reject the shifted points (the harmful case)."""
    slid = slide_contour(head, noisy_obs, 4.0)
    clean = vertex_error_mm(head, fit_sequence(head, cams, noisy_obs, FitConfig(), progress=False), truth)
    off = fit_sequence(head, cams, slid, FitConfig(noise_model=False), progress=False)
    on = fit_sequence(head, cams, slid, FitConfig(), progress=False)
    err_off, err_on = vertex_error_mm(head, off, truth), vertex_error_mm(head, on, truth)
    w = on.noise.set_index("group").weight
    assert w["contour"] < 0.05                           # the contour group is recognised as noisy ...
    assert (w.drop("contour") == 1).all()                # ... and only it
    assert err_off > 1.3 * clean                         # without the model the sliding points bend the fit
    assert err_on < 1.05 * clean                         # with it the fit is as good as on clean landmarks
    assert all(s.status == "ok" for s in on.status.values())
