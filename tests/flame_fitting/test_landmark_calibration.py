"""Landmark embedding calibration (flame_fitting.landmarks.calibration, flame_fitting.geometry.surface_points) without MediaPipe.

The core check: "detections" are exact projections of a *shifted* embedding on an ellipsoid head rendered by the
real rasteriser in two non-rigidly posed frames; lifting them (and, separately, the reprojection refinement started
from the original embedding) must recover the shifted embedding. Plus: the geometric helpers against slow
references, and the calibrated file through HeadModel and the fitter.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

import flame_fitting.landmarks.calibration as lc
from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.fit import FitConfig, fit_sequence
from flame_fitting.fit.synthetic import arc_cameras, model_outputs, project_landmarks, random_params
from flame_fitting.head.flame_spec import HeadModelError
from flame_fitting.head.head_model import CALIBRATED_EMBEDDING, CALIBRATION_JSON, HeadModel
from flame_fitting.geometry.meshes import icosphere
from flame_fitting.geometry.raster import rasterize
from flame_fitting.geometry.surface_points import (closest_point_on_triangles, closest_points, geometric_median, ray_triangles,
                                          template_points)

sys.path.insert(0, str(Path(__file__).parent))
from flame_folder_factory import write_flame_folder  # noqa: E402

RADII = np.array([0.075, 0.10, 0.09])
CFG = lc.CalibrationConfig(min_samples=3, refine_iterations=20, depth_jump_m=0.04)  # 2 mm pixels here


def closest_point_ref(p, a, b, c):
    """Slow reference: Ericson, Real-Time Collision Detection §5.1.5 (Voronoi regions), one triangle."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = ab @ ap, ac @ ap
    if d1 <= 0 and d2 <= 0:
        return a
    bp = p - b
    d3, d4 = ab @ bp, ac @ bp
    if d3 >= 0 and d4 <= d3:
        return b
    vc = d1 * d4 - d3 * d2
    if vc <= 0 and d1 >= 0 and d3 <= 0:
        return a + d1 / (d1 - d3) * ab
    cp = p - c
    d5, d6 = ab @ cp, ac @ cp
    if d6 >= 0 and d5 <= d6:
        return c
    vb = d5 * d2 - d1 * d6
    if vb <= 0 and d2 >= 0 and d6 <= 0:
        return a + d2 / (d2 - d6) * ac
    va = d3 * d6 - d5 * d4
    if va <= 0 and (d4 - d3) >= 0 and (d5 - d6) >= 0:
        return b + (d4 - d3) / ((d4 - d3) + (d5 - d6)) * (c - b)
    denom = 1 / (va + vb + vc)
    return a + ab * vb * denom + ac * vc * denom


def test_closest_point_on_triangles_matches_reference():
    rng = np.random.default_rng(0)
    tri, p = rng.normal(size=(300, 3, 3)), 2 * rng.normal(size=(300, 3))
    got = np.einsum("nk,nkd->nd", closest_point_on_triangles(p, tri[:, 0], tri[:, 1], tri[:, 2]), tri)
    ref = np.stack([closest_point_ref(p[i], *tri[i]) for i in range(len(p))])
    np.testing.assert_allclose(got, ref, atol=1e-9)


def test_closest_points_matches_brute_force():
    v, f = icosphere(2)
    v = v * RADII
    rng = np.random.default_rng(1)
    pts = v[rng.integers(0, len(v), 25)] + rng.normal(0, 0.01, (25, 3))
    face, bary, _ = closest_points(pts, v, f)
    got = np.linalg.norm(template_points(face, bary, v, f) - pts, axis=1)
    ref = np.array([min(np.linalg.norm(closest_point_ref(p, *v[t]) - p) for t in f) for p in pts])
    np.testing.assert_allclose(got, ref, atol=1e-12)
    assert np.all(bary >= -1e-12) and np.allclose(bary.sum(1), 1)


def test_contour_ids_are_the_noise_models():
    from flame_fitting.fit.noise import MP_GROUPS

    np.testing.assert_array_equal(lc.contour_ids(), sorted(MP_GROUPS["contour"]))


def test_ray_triangles_and_geometric_median():
    tri = np.array([[[0.0, 0, 1], [1, 0, 1], [0, 1, 1]]])
    bc, t = ray_triangles(np.zeros(3), np.array([[0.2, 0.3, 1.0]]), tri)
    np.testing.assert_allclose(bc[0], [0.5, 0.2, 0.3])
    np.testing.assert_allclose(t, [1.0])
    x = np.r_[np.random.default_rng(2).normal(0, 1e-3, (40, 3)), np.full((15, 3), 5.0)]  # 27 % gross outliers
    assert np.linalg.norm(geometric_median(x)) < 2e-3


@pytest.fixture(scope="module")
def scene():
    """Ellipsoid head (icosphere(4)), two posed frames (anisotropic scale + rotation + shift), 7 cameras at
    yaw -60…60°, 256², the original embedding on front faces and a version shifted by 2-3 mm on the surface,
    detections = exact projections of the shifted one where it is visible."""
    v, f = icosphere(4)
    v = v * RADII
    rng = np.random.default_rng(3)
    cen = v[f].mean(1)
    front = np.flatnonzero((cen[:, 2] > 0.06) & (np.abs(cen[:, 1]) < 0.06))
    L = 24
    face0, bary0 = rng.choice(front, L, replace=False), rng.dirichlet(np.ones(3) * 3, L)
    p0 = template_points(face0, bary0, v, f)
    off = rng.normal(size=(L, 3))
    nrm = p0 / RADII ** 2
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    off -= (off * nrm).sum(1, keepdims=True) * nrm
    off *= (rng.uniform(2e-3, 3e-3, L) / np.linalg.norm(off, axis=1))[:, None]
    face1, bary1, _ = closest_points(p0 + off, v, f)
    eyes = [0.6 * np.array([np.sin(a), 0.1, np.cos(a)]) for a in np.radians(np.linspace(-60, 60, 7))]
    cams = [Camera(K=intrinsics(300, 300, 128, 128), world_to_cam=look_at(e, np.zeros(3)), width=256, height=256,
                   name=f"c{i}") for i, e in enumerate(eyes)]
    frames = []
    for k, (scale, ang) in enumerate((([1.05, 0.97, 1.02], 0.15), ([0.96, 1.04, 0.99], -0.2))):
        R = np.array([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]])
        verts = (v * scale) @ R.T + [0.005 * k, -0.01, 0.0]
        K = np.stack([c.K for c in cams])
        frags = rasterize(verts.astype(np.float32), f.astype(np.int32), K, np.stack([c.world_to_cam for c in cams]),
                          256, 256)
        x1 = template_points(face1, bary1, verts, f)
        det = []
        for i, c in enumerate(cams):
            uv, z = c.project(x1)
            px = np.floor(uv).astype(int)
            facing = ((x1 - c.center) * (x1 / RADII ** 2 @ R.T)).sum(1) < 0   # ≈ outward normal of the posed head
            hit = frags.face_id[i, px[:, 1], px[:, 0]] >= 0
            vis = facing & hit & (z <= frags.depth[i, px[:, 1], px[:, 0]] + 4e-3)
            det.append(np.where(vis[:, None], uv.astype(np.float64), np.nan))
        frames.append((verts, frags, np.stack(det)))
    return dict(v=v, f=f, cams=cams, frames=frames, face0=face0, bary0=bary0, face1=face1, bary1=bary1, L=L)


def _lift_all(s, cfg=CFG):
    samples = [[] for _ in range(s["L"])]
    for verts, frags, det in s["frames"]:
        for i, cam in enumerate(s["cams"]):
            face, bary = lc.lift_detections(det[i], cam, verts, s["f"], frags.face_id[i], frags.depth[i], cfg)
            pts = template_points(np.maximum(face, 0), bary, s["v"], s["f"])
            for j in np.flatnonzero(face >= 0):
                samples[j].append(pts[j])
    return [np.asarray(x).reshape(-1, 3) for x in samples]


def test_lift_recovers_injected_shift(scene):
    s = scene
    samples = _lift_all(s)
    assert min(len(x) for x in samples) >= 5
    keep = np.zeros(s["L"], bool)
    keep[0] = True                                               # e.g. a face-oval (contour) point: kept
    samples[1] = samples[1][:2]                                  # too few samples: kept
    res = lc.calibrate_embedding(samples, [], s["v"], s["f"], s["face0"], s["bary0"], keep, CFG)
    got = template_points(res.face_idx, res.bary, s["v"], s["f"])
    want = template_points(s["face1"], s["bary1"], s["v"], s["f"])
    orig = template_points(s["face0"], s["bary0"], s["v"], s["f"])
    err = np.linalg.norm(got - want, axis=1) * 1e3
    assert err[2:].max() < 0.01, err
    assert not res.calibrated[:2].any() and res.calibrated[2:].all()
    np.testing.assert_array_equal(res.face_idx[:2], s["face0"][:2])
    np.testing.assert_allclose(res.shift_mm, np.linalg.norm(got - orig, axis=1) * 1e3, atol=1e-9)
    assert 2.0 - 1e-6 < res.shift_mm[2:].min() and res.shift_mm.max() < 3.0 + 1e-6


def test_lift_rejects_silhouette_and_background(scene):
    s = scene
    verts, frags, _ = s["frames"][0]
    fid = frags.face_id[3]
    rows, cols = np.nonzero(fid >= 0)
    edge = np.array([[cols.min() + 0.5, rows[cols == cols.min()][0] + 0.5], [2.5, 2.5], [np.nan, np.nan]])
    face, _ = lc.lift_detections(edge, s["cams"][3], verts, s["f"], fid, frags.depth[3], CFG)
    assert (face == -1).all()


def test_refine_recovers_injected_shift(scene):
    s = scene
    frames = [lc.FrameViews(verts, s["cams"], det) for verts, _, det in s["frames"]]
    move = np.ones(s["L"], bool)
    fi, bc = lc.refine_reprojection(frames, s["v"], s["f"], s["face0"], s["bary0"], move, CFG)
    err = np.linalg.norm(template_points(fi, bc, s["v"], s["f"]) - template_points(s["face1"], s["bary1"], s["v"],
                                                                                     s["f"]), axis=1) * 1e3
    assert np.median(err) < 0.05 and err.max() < 0.2, err


@pytest.fixture(scope="module")
def calibrated_folder(tmp_path_factory):
    """Factory head model (10 identity / 8 expression components) with a calibrated embedding = the original
    moved ~3 mm on the surface."""
    spec = write_flame_folder(tmp_path_factory.mktemp("cal") / "head", n_shape=10, n_expr=8, seed=3)
    v, f = spec.v_template.astype(np.float64), spec.f
    rng = np.random.default_rng(4)
    p = template_points(spec.mp_face_idx, spec.mp_bary, v, f) + rng.normal(0, 2e-3, (len(spec.mp_face_idx), 3))
    fi, bc, _ = closest_points(p, v, f)
    res = lc.CalibrationResult(fi, bc, np.ones(len(fi), bool), np.zeros(len(fi)), np.zeros(len(fi), np.int64),
                               np.zeros(len(fi)))
    lc.write_calibrated_embedding(spec.path, res, spec.mp_landmark_indices, {"test": True})
    return spec


def test_head_model_loads_calibrated_embedding(calibrated_folder):
    spec = calibrated_folder
    assert (spec.path / CALIBRATED_EMBEDDING).is_file() and (spec.path / CALIBRATION_JSON).is_file()
    assert not list(spec.path.glob(".*tmp*"))
    model = HeadModel.from_folder(spec.path, 10, 8)
    assert model.has_calibrated_embedding and model.mp_embedding == "original"
    np.testing.assert_array_equal(model.mp_face_idx.numpy(), spec.mp_face_idx)          # default: the original
    cal = model.with_mediapipe_embedding(calibrated=True)
    with np.load(spec.path / CALIBRATED_EMBEDDING) as z:
        np.testing.assert_array_equal(cal.mp_face_idx.numpy(), z["lmk_face_idx"])
    np.testing.assert_array_equal(model.mp_face_idx.numpy(), spec.mp_face_idx)          # the original untouched
    a, b = model().landmarks_mp[0].numpy(), cal().landmarks_mp[0].numpy()
    assert 0.5e-3 < np.linalg.norm(a - b, axis=1).mean() < 6e-3
    assert cal.with_mediapipe_embedding(calibrated=False).mp_face_idx.data_ptr() == model.mp_face_idx.data_ptr()


def test_head_model_refuses_calibration_of_other_ids(tmp_path):
    spec = write_flame_folder(tmp_path / "head", n_shape=4, n_expr=4, n_mp=105)
    res = lc.CalibrationResult(spec.mp_face_idx, spec.mp_bary, np.ones(105, bool), np.zeros(105),
                               np.zeros(105, np.int64), np.zeros(105))
    lc.write_calibrated_embedding(spec.path, res, np.arange(105), {})
    with pytest.raises(HeadModelError, match="landmark_indices"):
        HeadModel.from_folder(spec.path, 4, 4)
    plain = write_flame_folder(tmp_path / "plain", n_shape=4, n_expr=4)
    with pytest.raises(HeadModelError, match=CALIBRATED_EMBEDDING):
        HeadModel.from_folder(plain.path, 4, 4).with_mediapipe_embedding(calibrated=True)


def test_fit_uses_calibrated_embedding(calibrated_folder):
    """Observations of the calibrated points: fitted exactly with the calibrated embedding (the default), not with
    the original (calibrated_embedding=False)."""
    model = HeadModel.from_folder(calibrated_folder.path, 10, 8)
    cal = model.with_mediapipe_embedding(calibrated=True)
    cams = arc_cameras(12, np.zeros(3), 1.0, yaw_deg=(-70, 70), pitch_deg=(-10, 10))
    truth = random_params(model, np.random.default_rng(5))
    obs = {0: project_landmarks(cal, cams, truth)}
    err = {}
    for flag in (True, False):
        fit = fit_sequence(model, cams, obs, FitConfig(calibrated_embedding=flag, noise_model=False), progress=False)
        err[flag] = np.linalg.norm(fit.vertices[0] - model_outputs(model, truth)[0], axis=1).mean() * 1e3
    assert err[True] < 0.05 < 0.5 < err[False], err
