"""Silhouette term (flame_fitting.fit.silhouette, .silhouette_data): mask boundary sampling, contour parity with
the loop reference, analytic gradient against finite differences, and identity recovery from exact masks + noisy
landmarks."""
import numpy as np
import pytest
import torch
from fit_testdata import N_EXPR, N_SHAPE, vertex_error_mm

from flame_fitting.fit import FitConfig, fit_sequence
from flame_fitting.fit.problem import irls_weight, rho
from flame_fitting.fit.rig import Rig
from flame_fitting.fit.silhouette import silhouette_terms
from flame_fitting.fit.silhouette_data import (SilhouetteData, SilhouetteModel, contour_vertices, contour_vertices_ref,
                                               mask_targets)
from flame_fitting.fit.synthetic import model_outputs, project_landmarks, random_params
from flame_fitting.geometry.raster import rasterize


def render_masks(head, cams, verts) -> dict[str, np.ndarray]:
    names = sorted(cams)
    K = np.stack([cams[n].K for n in names]).astype(np.float32)
    W = np.stack([cams[n].world_to_cam for n in names]).astype(np.float32)
    fr = rasterize(verts.astype(np.float32), head.faces.numpy().astype(np.int32), K, W, 512, 512)
    return {n: (fr.face_id[i] >= 0).astype(np.uint8) * 255 for i, n in enumerate(names)}


def test_mask_targets_disk():
    yy, xx = np.mgrid[:200, :200] + 0.5                       # pixel centres at +0.5
    mask = ((xx - 100.0) ** 2 + (yy - 90.0) ** 2 <= 50.0 ** 2).astype(np.uint8)
    p, n = mask_targets(mask, step=2)
    radial = (p - [100.0, 90.0]) / np.linalg.norm(p - [100.0, 90.0], axis=1, keepdims=True)
    r = np.linalg.norm(p - [100.0, 90.0], axis=1)
    assert len(p) > 100
    assert abs(r.mean() - 50.0) < 0.3 and np.abs(r - 50.0).max() < 1.0   # on the pixel edge, not the pixel centres
    assert (np.einsum("ij,ij->i", n, radial) > 0.9).all()                 # unit outward normals
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-9)


def _setup(head, cams, truth):
    sm = SilhouetteModel.from_head_model(head, N_SHAPE, N_EXPR)
    f = min(truth)
    p = truth[f]
    rig = Rig.from_cameras(cams, sorted(cams), np.zeros(3), False, False)
    theta = torch.as_tensor(sm.rm.layout.pack(p.expr[:N_EXPR], p.jaw_pose, p.neck_pose, p.eye_pose, p.global_orient,
                                              p.transl))[None]
    shape = torch.as_tensor(np.asarray(p.shape, np.float64)[:N_SHAPE])
    return sm, rig, shape, theta, f


def test_contour_vertices_match_reference(head, cams, truth):
    sm, rig, shape, theta, _ = _setup(head, cams, truth)
    from flame_fitting.fit.jacobian import forward_and_jacobian
    X = forward_and_jacobian(sm.rm, shape, theta, normals=False, jacobian=False)[0]
    fast = contour_vertices(sm, X, rig.centers)
    faces, Xn = sm.faces.numpy(), X[0].T.numpy()
    for c in range(len(rig.names)):
        ref = contour_vertices_ref(faces, Xn, rig.centers[c].numpy())
        assert set(torch.nonzero(fast[0, c])[:, 0].tolist()) == ref
        assert len(ref) > 10


def test_gradient_matches_finite_differences(head, cams, truth):
    sm, rig, shape, theta, f = _setup(head, cams, truth)
    masks = render_masks(head, cams, model_outputs(head, truth[f])[0])
    sd = SilhouetteData.build(sm, [[mask_targets(masks[n]) for n in sorted(cams)]], 1.0, 2.0, "l2", 30.0)
    rng = np.random.default_rng(1)
    shape0 = shape + 0.3 * torch.as_tensor(rng.standard_normal(N_SHAPE))          # off the truth: residuals ≠ 0
    theta0 = theta + 0.02 * torch.as_tensor(rng.standard_normal(theta.shape[1]))
    xi, act, sl = rig.zeros(), torch.ones(1, dtype=torch.bool), slice(0, 1)
    cost, A, g = silhouette_terms(sd, rig, shape0, theta0, xi, sl, act, True, True, rho, irls_weight)
    assert sd.n_used > 200 and float(cost[0]) > 0
    p0 = torch.cat([shape0, theta0[0]])
    n_s = N_SHAPE

    def c_at(p):  # l2 cost at the fixed pairing = Σ r²: its gradient is 2 Jᵀ r = 2 g
        return float(silhouette_terms(sd, rig, p[:n_s], p[None, n_s:], xi, sl, act, False, False, rho,
                                      irls_weight)[0][0])
    h = 1e-6
    fd = torch.tensor([(c_at(p0 + h * e) - c_at(p0 - h * e)) / (2 * h) for e in torch.eye(len(p0), dtype=p0.dtype)])
    np.testing.assert_allclose(2 * g[0].numpy(), fd.numpy(), rtol=1e-4, atol=1e-4 * float(fd.abs().max()))
    assert torch.linalg.eigvalsh(A[0]).min() > -1e-8 * float(A[0].diagonal().max())      # JᵀWJ: PSD


def test_silhouettes_recover_identity_better_than_landmarks(head, cams, truth):
    rng = np.random.default_rng(5)
    shape = 1.5 * rng.standard_normal(N_SHAPE)                # a pronounced identity, poorly seen in noisy landmarks
    gt = {f: random_params(head, rng, shape=shape) for f in (0, 1)}
    bias = {f: 4.0 * rng.standard_normal((478, 2)) for f in gt}   # per-landmark error shared by all views (detector)
    obs = {f: {n: uv + bias[f] for n, uv in project_landmarks(head, cams, p, 1.0, rng).items()} for f, p in gt.items()}
    masks = {f: render_masks(head, cams, model_outputs(head, p)[0]) for f, p in gt.items()}
    lm_only = fit_sequence(head, cams, obs, FitConfig(silhouette_weight=0.0), progress=False, masks=masks)
    with_sil = fit_sequence(head, cams, obs, FitConfig(silhouette_weight=1.0), progress=False, masks=masks)
    e_lm, e_sil = vertex_error_mm(head, lm_only, gt), vertex_error_mm(head, with_sil, gt)
    assert not lm_only.silhouette["used"] and with_sil.silhouette["used"]
    assert with_sil.silhouette["n_masks"] == 2 * len(cams)
    assert e_sil < 0.6 * e_lm, (e_sil, e_lm)
    print(f"vertex error: landmarks only {e_lm:.3f} mm, + silhouettes {e_sil:.3f} mm")
    assert e_sil < 1.0, (e_sil, e_lm)


def test_inside_mode_is_robust_to_masks_larger_than_the_head(head, cams, truth):
    """Real masks also cover hair and shoulders: with every mask dilated by 5 px, the one-sided "inside" term must not
    make the fit worse than landmarks alone, while the two-sided term (which wants the contour on the boundary) does."""
    import cv2
    rng = np.random.default_rng(6)
    gt = {0: random_params(head, rng, shape=rng.standard_normal(N_SHAPE))}
    obs = {f: project_landmarks(head, cams, p, 1.0, rng) for f, p in gt.items()}
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11))
    masks = {f: {n: cv2.dilate(m, kernel) for n, m in render_masks(head, cams, model_outputs(head, p)[0]).items()}
             for f, p in gt.items()}
    def err(**kw):
        return vertex_error_mm(head, fit_sequence(head, cams, obs, FitConfig(**kw), progress=False, masks=masks), gt)
    e_lm = err(silhouette_weight=0.0)
    e_in = err(silhouette_weight=1.0, silhouette_mode="inside")
    e_two = err(silhouette_weight=1.0, silhouette_mode="two_sided")
    print(f"vertex error, masks dilated 5 px: landmarks {e_lm:.3f}, inside {e_in:.3f}, two-sided {e_two:.3f} mm")
    assert e_in < 1.1 * e_lm + 0.02, (e_in, e_lm)
    assert e_two > 2 * e_lm, (e_two, e_lm)


def test_capture_masks_load_and_mode_resolution(tmp_path, head, cams, truth):
    """fit_capture's mask loading: every view with a mask_path comes back as its mask, views without one are absent;
    silhouette_mode "auto" becomes two_sided for synthetic captures, inside for other sources."""
    from flame_fitting.formats.capture import CaptureWriter, load_capture
    from flame_fitting.fit.capture import resolve_silhouette_mode
    from flame_fitting.fit.capture_masks import load_masks
    f = min(truth)
    masks = render_masks(head, cams, model_outputs(head, truth[f])[0])
    names = sorted(cams)
    caps = {}
    for source in ("synthetic", "renderme360"):
        with CaptureWriter(tmp_path / source, source=source) as w:
            w.set_cameras("s0", "seq", cams)
            for i, n in enumerate(names):
                w.add_image("s0", "seq", f, n, np.zeros((512, 512, 3), np.uint8), mask=masks[n] if i % 2 else None)
        caps[source] = load_capture(tmp_path / source)
    got = load_masks(caps["synthetic"], "s0", "seq")
    assert sorted(got[f]) == names[1::2]
    for n in names[1::2]:
        np.testing.assert_array_equal(got[f][n], masks[n])
    assert resolve_silhouette_mode(FitConfig(), caps["synthetic"]).silhouette_mode == "two_sided"
    assert resolve_silhouette_mode(FitConfig(), caps["renderme360"]).silhouette_mode == "inside"
    assert resolve_silhouette_mode(FitConfig(silhouette_mode="two_sided"), caps["renderme360"]).silhouette_mode == \
        "two_sided"


def test_unreadable_mask_is_recorded_and_skipped(tmp_path, head, cams, truth):
    """A mask file that cannot be decoded leaves that view without a silhouette and is recorded; the others load."""
    from flame_fitting.formats.capture import CaptureWriter, load_capture
    from flame_fitting.fit.capture_masks import load_masks
    f = min(truth)
    masks = render_masks(head, cams, model_outputs(head, truth[f])[0])
    names = sorted(cams)
    with CaptureWriter(tmp_path / "cap", source="synthetic") as w:
        w.set_cameras("s0", "seq", cams)
        for n in names:
            w.add_image("s0", "seq", f, n, np.zeros((512, 512, 3), np.uint8), mask=masks[n])
    cap = load_capture(tmp_path / "cap")
    bad = cap.root / cap.manifest[cap.manifest.camera == names[0]].mask_path.iloc[0]
    bad.write_bytes(b"not a png")
    skipped = []
    got = load_masks(cap, "s0", "seq", skipped)
    assert sorted(got[f]) == names[1:]
    assert len(skipped) == 1 and skipped[0]["path"] == str(bad)
    # masks are decoded when used, not held for the whole sequence: one whose header reads but whose pixels do not
    # decode is absent when asked for, recorded once
    cut = cap.root / cap.manifest[cap.manifest.camera == names[1]].mask_path.iloc[0]
    cut.write_bytes(cut.read_bytes()[:60])
    skipped = []
    got = load_masks(cap, "s0", "seq", skipped)
    assert sorted(got[f]) == names[1:] and len(skipped) == 1  # its header alone was read: not (yet) recorded
    assert got[f].get(names[1]) is None and got[f].get(names[1]) is None
    np.testing.assert_array_equal(got[f][names[2]], masks[names[2]])
    assert skipped[1:] == [{"path": str(cut), "error": "missing or not a decodable image; view fitted without its "
                                                       "silhouette"}]


def test_bad_mask_and_head_region(head, cams, truth, exact_obs):
    """A mask whose size differs from its camera's image is refused (naming frame and camera); the "head" region
    drops the root-skinned vertices and treats no open edge as a contour."""
    from flame_fitting.fit import FitInputError
    f = min(exact_obs)
    n = sorted(cams)[0]
    with pytest.raises(FitInputError, match=f"frame {f} camera {n}"):
        fit_sequence(head, cams, {f: exact_obs[f]}, FitConfig(), progress=False,
                     masks={f: {n: np.zeros((100, 120), np.uint8)}})
    full = SilhouetteModel.from_head_model(head, N_SHAPE, N_EXPR, "all")
    part = SilhouetteModel.from_head_model(head, N_SHAPE, N_EXPR, "head")
    root = head.flame.lbs_weights.numpy()[:, 0] >= 0.5
    assert set(part.rm.vertex_ids.tolist()).isdisjoint(np.flatnonzero(root).tolist())
    assert len(part.rm.vertex_ids) < len(full.rm.vertex_ids) and (part.edge_faces >= 0).all()
