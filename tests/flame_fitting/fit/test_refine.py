"""Camera refinement (refine_cameras) never makes things worse: exact cameras stay put under view-dependent
landmark bias, perturbed cameras are recovered, and the rig's similarity gauge is held (refine.py, problem.py)."""
from dataclasses import replace

import numpy as np
import pytest
from fit_testdata import vertex_error_mm

from flame_fitting.fit import FitConfig, fit_sequence
from flame_fitting.fit.report import rig_similarity
from flame_fitting.fit.so3 import angle_deg
from flame_fitting.fit.synthetic import perturb_camera


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
    """Cameras perturbed by 2° / 20 mm each (rotation about the camera's centre, then a move), refined. The rig's
    size is then restored (a metric calibration knows its scale; camera_scale "rig" holds it)."""
    rng = np.random.default_rng(5)
    moved = {n: perturb_camera(c, rng, 2.0, 0.02) for n, c in cams.items()}
    o, o_true = _centres(moved), _centres(cams)
    size = np.sqrt(((o_true - o_true.mean(0)) ** 2).sum(1).mean() / ((o - o.mean(0)) ** 2).sum(1).mean())
    given = {}
    for i, n in enumerate(sorted(moved)):
        w2c = moved[n].world_to_cam.astype(np.float64).copy()
        w2c[:3, 3] = -w2c[:3, :3] @ (o.mean(0) + size * (o[i] - o.mean(0)))
        given[n] = moved[n].with_pose(w2c)
    return given, fit_sequence(head, given, noisy_obs, FitConfig(refine_cameras=True), progress=False)


def test_perturbed_cameras_are_recovered(head, cams, truth, noisy_obs, perturbed_fit):
    given, fit = perturbed_fit
    assert fit.camera_refinement["accepted"], fit.camera_refinement["reason"]
    names = sorted(cams)
    s, R, t = rig_similarity(fit.cameras, cams)                 # the unobservable similarity, removed
    rot = [angle_deg(fit.cameras[n].R.astype(np.float64) @ R.T @ cams[n].R.astype(np.float64).T) for n in names]
    centre = np.linalg.norm(s * _centres(fit.cameras) @ R.T + t - _centres(cams), axis=1) * 1e3
    assert np.median(rot) <= 0.3 and np.median(centre) <= 3.0


def test_perturbed_cameras_give_the_exact_camera_head(head, cams, truth, noisy_obs, perturbed_fit):
    """The refined fit's vertex error (world frame, after removing the unobservable rigid motion + scale) is within
    0.3 mm of the fit with the exact cameras; without refinement it is far worse."""
    given, fit = perturbed_fit
    s, R, t = rig_similarity(fit.cameras, cams)
    exact = fit_sequence(head, cams, noisy_obs, FitConfig(), progress=False)
    held = fit_sequence(head, given, noisy_obs, FitConfig(), progress=False)
    aligned = replace(fit, vertices={f: s * v.astype(np.float64) @ R.T + t for f, v in fit.vertices.items()})
    assert vertex_error_mm(head, aligned, truth) <= vertex_error_mm(head, exact, truth) + 0.3
    assert vertex_error_mm(head, held, truth) > 2.0


@pytest.mark.xfail(strict=True, reason="the landmark camera solve alone (no images, or too few feature tracks; issue "
                   "12 item 3 is met from the images' tracks, test_features.py): with view-dependently biased "
                   "landmarks it follows the bias along the head-to-rig mode and is refused (docs/fitting.md)")
def test_perturbed_cameras_are_recovered_under_biased_landmarks(head, cams, truth, noisy_obs, perturbed_fit):
    """The required recovery with a detector's view-dependent bias (8 px, 6 % scale across the arc): rotations to
    0.3° and centres to 3 mm median (rig-aligned), vertex error within 0.3 mm of the exact-camera fit. Strict xfail:
    it records the unmet requirement and turns into a failure (XPASS) once the camera solve meets it."""
    given, _ = perturbed_fit
    obs = _biased(noisy_obs, cams, 8.0)
    fit = fit_sequence(head, given, obs, FitConfig(refine_cameras=True), progress=False)
    exact = fit_sequence(head, cams, obs, FitConfig(), progress=False)
    names = sorted(cams)
    s, R, t = rig_similarity(fit.cameras, cams)
    rot = [angle_deg(fit.cameras[n].R.astype(np.float64) @ R.T @ cams[n].R.astype(np.float64).T) for n in names]
    centre = np.linalg.norm(s * _centres(fit.cameras) @ R.T + t - _centres(cams), axis=1) * 1e3
    aligned = replace(fit, vertices={f: s * v.astype(np.float64) @ R.T + t for f, v in fit.vertices.items()})
    assert np.median(rot) <= 0.3 and np.median(centre) <= 3.0
    assert vertex_error_mm(head, aligned, truth) <= vertex_error_mm(head, exact, truth) + 0.3


def test_the_rig_similarity_gauge_is_held(perturbed_fit):
    """A similarity of rig + heads is unobservable (up to the head model's size): the refined rig keeps the given
    rig's mean orientation, centroid and size (to first order in the corrections) while the cameras move."""
    given, fit = perturbed_fit
    s, R, t = rig_similarity(fit.cameras, given)
    assert abs(s - 1) < 1e-3                                               # size
    assert angle_deg(R) < 0.02                                             # mean orientation
    assert np.linalg.norm(_centres(fit.cameras).mean(0) - _centres(given).mean(0)) * 1e3 < 1.0   # centroid
    moved = [angle_deg(fit.cameras[n].R.astype(np.float64) @ given[n].R.astype(np.float64).T) for n in given]
    assert max(moved) > 1.0


def test_shared_basis_spans_the_corrections_that_keep_the_rigid_gauge(head, cams):
    """T is orthonormal, keeps every shape direction, and its camera corrections leave the rig's mean rotation and
    (to first order) centroid and size unchanged; with the cameras held it is the shape only."""
    import torch

    from flame_fitting.fit.problem import Problem
    from flame_fitting.fit.reduced import ReducedModel
    from flame_fitting.fit.rig import Rig, corrected_centers

    rm = ReducedModel.from_head_model(head, 4, 3)
    names = sorted(cams)
    rig = Rig.from_cameras(cams, names, np.array([0.0, 0.01, 0.02]), refine=True)
    pb = Problem(rm, rig, torch.zeros(1, len(names), 2, rm.n_landmarks, dtype=torch.float64),
                 torch.ones(1, len(names), rm.n_landmarks, dtype=torch.float64), FitConfig(refine_cameras=True))
    T = pb.shared_basis()
    assert T.shape == (4 + 6 * len(names), 4 + 6 * len(names) - 7)
    assert torch.allclose(T.T @ T, torch.eye(T.shape[1], dtype=torch.float64), atol=1e-10)
    assert torch.allclose(T[:4] @ T[:4].T, torch.eye(4, dtype=torch.float64), atol=1e-10)
    xi = (T[4:] @ torch.randn(T.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    xi = 1e-4 * xi.reshape(len(names), 6)
    assert xi[:, :3].sum(0).abs().max() < 1e-12
    d, o = corrected_centers(rig, xi) - rig.centers, rig.centers - rig.centers.mean(0)
    assert d.mean(0).abs().max() < 1e-3 * d.abs().max()                   # centroid
    assert (d * o).sum().abs() < 1e-3 * (d.norm(dim=1) * o.norm(dim=1)).sum()   # size
    held = Problem(pb.rm, rig, pb.obs, pb.conf, pb.cfg, cameras_free=False).shared_basis()
    assert torch.equal(held, torch.eye(4 + 6 * len(names), 4, dtype=torch.float64))


def test_cameras_without_landmarks_are_held_and_out_of_the_gauge(head, cams, noisy_obs):
    """Cameras that see no face (the back of a rig around the head) had only their priors in the camera solve, and
    the gauge's sums over every camera let them turn against the observed ones: the observed rig turned 0.125° and
    each blind camera 0.25° with no evidence (cameras.json). They are now held, and the refined fit is the one
    without them."""
    rng = np.random.default_rng(5)
    given = {n: perturb_camera(c, rng, 2.0, 0.02) for n, c in cams.items()}
    blind = {}
    for i, c in enumerate(list(cams.values())[:3]):  # three more cameras turned 180° about the head: no detections
        w2c = c.world_to_cam.astype(np.float64) @ np.diag([-1.0, 1.0, -1.0, 1.0])
        blind[f"back{i}"] = replace(c.with_pose(w2c), name=f"back{i}")
    obs = {f: {**views, **{n: np.full_like(next(iter(views.values())), np.nan) for n in blind}}
           for f, views in noisy_obs.items()}
    cfg = FitConfig(refine_cameras=True, min_views=2)
    seen = fit_sequence(head, given, noisy_obs, cfg, progress=False)
    both = fit_sequence(head, {**given, **blind}, obs, cfg, progress=False)
    assert seen.camera_refinement["accepted"] and both.camera_refinement["accepted"]
    if "second_pass_accepted" in both.camera_refinement:  # the summary of two passes says what each did
        assert both.camera_refinement["reason"].startswith("first pass applied; second pass")
    for n, c in blind.items():
        assert np.array_equal(both.cameras[n].world_to_cam, c.world_to_cam)
    for n in given:
        assert angle_deg(both.cameras[n].R.astype(np.float64) @ seen.cameras[n].R.astype(np.float64).T) < 1e-3
        assert np.linalg.norm(both.cameras[n].center - seen.cameras[n].center) * 1e3 < 0.01
