"""Camera refinement (refine_cameras) never makes things worse: exact cameras stay put under view-dependent
landmark bias, perturbed cameras are recovered, and the rig's similarity gauge is held (refine.py, problem.py)."""
import numpy as np
import pytest
from fit_testdata import vertex_error_mm

from flame_fitting.fit import FitConfig, fit_sequence
from flame_fitting.fit.so3 import angle_deg
from flame_fitting.fit.synthetic import perturb_camera


def _rig_similarity(cams, ref):
    """Similarity (s, R, t) taking the world of `cams` to that of `ref` (x_ref ≈ s R x + t): R the chordal mean of the
    cameras' relative orientations, s and t from their centres (the gauge a refinement cannot observe)."""
    names = sorted(ref)
    M = sum(ref[n].R.astype(np.float64).T @ cams[n].R.astype(np.float64) for n in names)
    U, _, Vt = np.linalg.svd(M)
    R = U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt
    a, b = _centres(cams), _centres(ref)
    ma, mb = a.mean(0), b.mean(0)
    s = ((b - mb) * ((a - ma) @ R.T)).sum() / ((a - ma) ** 2).sum()
    return s, R, mb - s * R @ ma


def _centres(cams) -> np.ndarray:
    return np.stack([cams[n].center for n in sorted(cams)]).astype(np.float64)


def _biased(obs, cams, px: float):
    """View-dependent landmark bias as a detector has it: each view's points shifted by up to `px` and scaled about
    their centroid by up to 2 %, growing with the view's distance from the middle camera."""
    names = sorted(cams)
    out = {}
    for f, views in obs.items():
        out[f] = {}
        for i, n in enumerate(names):
            a = (i - (len(names) - 1) / 2) / ((len(names) - 1) / 2)        # -1 … 1 across the arc
            p = views[n].astype(np.float64)
            c = np.nanmean(p, 0)
            out[f][n] = (c + (p - c) * (1 + 0.06 * a * abs(a)) + px * np.array([a, abs(a)])).astype(np.float32)
    return out


def test_exact_cameras_stay_within_their_prior_under_biased_landmarks(head, cams, truth, noisy_obs):
    obs = _biased(noisy_obs, cams, 8.0)
    fixed = fit_sequence(head, cams, obs, FitConfig(), progress=False)
    fit = fit_sequence(head, cams, obs, FitConfig(refine_cameras=True), progress=False)
    for n in cams:
        assert angle_deg(fit.cameras[n].R.astype(np.float64) @ cams[n].R.astype(np.float64).T) <= 2.0
        assert np.linalg.norm(fit.cameras[n].center - cams[n].center) * 1e3 <= 20.0
    assert vertex_error_mm(head, fit, truth) <= vertex_error_mm(head, fixed, truth) + 0.1
    assert fit.camera_refinement is not None and fixed.camera_refinement is None


@pytest.fixture(scope="module")
def perturbed_fit(head, cams, noisy_obs):
    """Cameras perturbed by 2° / 20 mm each, refined. Without the noise model: it is estimated from the residuals of
    the held (wrong) cameras and then weighs the camera solve's data down (0.45° median with it, see docs)."""
    rng = np.random.default_rng(5)
    given = {n: perturb_camera(c, rng, 2.0, 0.02) for n, c in cams.items()}
    return given, fit_sequence(head, given, noisy_obs, FitConfig(refine_cameras=True, noise_model=False),
                               progress=False)


def test_perturbed_cameras_are_recovered(head, cams, truth, noisy_obs, perturbed_fit):
    given, fit = perturbed_fit
    assert fit.camera_refinement["accepted"], fit.camera_refinement["reason"]
    names = sorted(cams)
    s, R, t = _rig_similarity(fit.cameras, cams)                 # the unobservable similarity, removed
    rot = [angle_deg(fit.cameras[n].R.astype(np.float64) @ R.T @ cams[n].R.astype(np.float64).T) for n in names]
    centre = np.linalg.norm(s * _centres(fit.cameras) @ R.T + t - _centres(cams), axis=1) * 1e3
    assert np.median(rot) <= 0.3 and np.median(centre) <= 3.0


@pytest.mark.xfail(strict=True, reason="not reached yet: the rig-aligned head is ~4 mm from the exact-camera fit "
                                       "(issue 12 item 3, see docs/fitting.md)")
def test_perturbed_cameras_give_the_exact_camera_head(head, cams, truth, noisy_obs, perturbed_fit):
    given, fit = perturbed_fit
    s, R, t = _rig_similarity(fit.cameras, cams)
    exact = fit_sequence(head, cams, noisy_obs, FitConfig(noise_model=False), progress=False)
    aligned = {f: s * v.astype(np.float64) @ R.T + t for f, v in fit.vertices.items()}
    err = np.mean([np.linalg.norm(aligned[f] - exact.vertices[f], axis=1).mean() * 1e3 for f in truth])
    assert vertex_error_mm(head, exact, truth) < 1.0 and err <= 0.3


def test_the_rig_similarity_gauge_is_held(perturbed_fit):
    given, fit = perturbed_fit
    s, R, t = _rig_similarity(fit.cameras, given)
    assert abs(s - 1) < 1e-3                                               # the rig's size
    assert angle_deg(R) < 0.02                                             # its mean orientation
    assert np.linalg.norm(_centres(fit.cameras).mean(0) - _centres(given).mean(0)) * 1e3 < 1.0   # its centroid
    moved = [angle_deg(fit.cameras[n].R.astype(np.float64) @ given[n].R.astype(np.float64).T) for n in given]
    assert max(moved) > 1.0                                                # ... while the cameras did move
