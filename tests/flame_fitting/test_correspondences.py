"""Pixel↔UV correspondences, token targets, self-checks and previews (flame_fitting/uv/correspondences.py,
correspondence_files.py, uv_checks.py, uv_preview.py): exact answers on a plane and a sphere, kernels vs numpy
references, target normalisation and a2g/g2a consistency, empty views, refusals, cycle error and ground-truth accuracy
on the stand-in head."""
import numpy as np
import pytest
import torch

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.uv.correspondence_files import load_correspondences, save_correspondences
from flame_fitting.uv.correspondences import (CorrespondenceError, TokenGrid, _pixel_uv_reference, compute_correspondences,
                                           front_faces, pairs_reference, pixel_correspondences)
from flame_fitting.head.head_model import HeadModel
from flame_fitting.geometry.raster import rasterize
from standin_cache import standin_copy
from flame_fitting.uv import UVLayout, bake_posmap
from flame_fitting.geometry.rigid import rigid_fit
from flame_fitting.uv.checks import aggregate, cycle_errors, frame_metrics, gt_uv_accuracy, load_gt_raster
from flame_fitting.core.fileio import write_png
from flame_fitting.uv.preview import correspondence_overlay, figure9, matches, posmap_rgb


def plane_scene(S: int = 64):
    """A quad at z = 1 exactly filling the view of an identity-pose camera (f = S): uv = (x + 0.5, 0.5 - y),
    i.e. pixel (i, j) sees u = (j+0.5)/S, v = 1-(i+0.5)/S. Faces face the camera."""
    verts = np.array([[-0.5, -0.5, 1], [0.5, -0.5, 1], [0.5, 0.5, 1], [-0.5, 0.5, 1]], np.float32)
    faces = np.array([[0, 2, 1], [0, 3, 2]])
    uv = np.stack([verts[:, 0] + 0.5, 0.5 - verts[:, 1]], 1)
    cam = Camera(intrinsics(S, S, S / 2, S / 2), np.eye(4), S, S, name="front")
    return verts, UVLayout.from_arrays(uv, faces, faces), cam


def uv_sphere(n_lat: int, n_lon: int, radius: float):
    """Lat/long sphere: u = atan2(x, z)/2π + 1/2 (seam at -z), v = 1 - polar/π (v up). Faces counter-clockwise
    seen from outside. -> verts (V,3), faces (F,3), uv (T,2), uv_faces (F,3)."""
    i, j = np.meshgrid(np.arange(n_lat + 1), np.arange(n_lon + 1), indexing="ij")
    theta, phi = np.pi * i / n_lat, -np.pi + 2 * np.pi * j / n_lon
    grid_uv = np.stack([j / n_lon, 1 - i / n_lat], -1).reshape(-1, 2)
    vid = np.where(i == 0, 0, np.where(i == n_lat, 1, 2 + (i - 1) * n_lon + j % n_lon))
    pts = radius * np.stack([np.sin(theta) * np.sin(phi), np.cos(theta), np.sin(theta) * np.cos(phi)], -1)
    verts = np.zeros((2 + (n_lat - 1) * n_lon, 3))
    verts[vid.ravel()] = pts.reshape(-1, 3)
    tid = np.arange(grid_uv.shape[0]).reshape(n_lat + 1, n_lon + 1)
    q = [tid[:-1, :-1], tid[1:, :-1], tid[1:, 1:], tid[:-1, 1:]]
    tris = np.concatenate([np.stack([q[0], q[1], q[2]], -1).reshape(-1, 3),
                           np.stack([q[0], q[2], q[3]], -1).reshape(-1, 3)])
    fv = vid.ravel()[tris]
    keep = (fv[:, 0] != fv[:, 1]) & (fv[:, 1] != fv[:, 2]) & (fv[:, 0] != fv[:, 2])
    tris, fv = tris[keep], fv[keep]
    n = np.cross(verts[fv[:, 1]] - verts[fv[:, 0]], verts[fv[:, 2]] - verts[fv[:, 0]])
    flip = np.einsum("fk,fk->f", n, verts[fv].mean(1)) < 0
    tris[flip], fv[flip] = tris[flip][:, ::-1], fv[flip][:, ::-1]
    return verts.astype(np.float32), fv, grid_uv.astype(np.float32), tris


def orbit(center, yaw_deg, pitch_deg, dist, S, f, name):
    y, p = np.radians(yaw_deg), np.radians(pitch_deg)
    eye = center + dist * np.array([np.cos(p) * np.sin(y), np.sin(p), np.cos(p) * np.cos(y)])
    return Camera(intrinsics(f, f, S / 2, S / 2), look_at(eye, center), S, S, name=name)


@pytest.fixture(scope="module")
def sphere():
    verts, faces, uv, uv_faces = uv_sphere(48, 96, 0.1)
    layout = UVLayout.from_arrays(uv, uv_faces, faces)
    cams = [orbit(np.zeros(3), yaw, pitch, 0.5, 128, 300, f"c{k}")
            for k, (yaw, pitch) in enumerate([(0, 0), (70, 20), (-120, -30), (180, 50)])]
    return verts, layout, cams


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    path = tmp_path_factory.mktemp("standin") / "head_model"
    standin_copy(path, seed=0)
    model = HeadModel.from_folder(path, n_shape=50, n_expr=30)
    g = torch.Generator().manual_seed(5)
    p = dict(shape=torch.randn(1, 50, generator=g), expr=torch.randn(1, 30, generator=g),
             jaw_pose=torch.tensor([[0.15, 0.0, 0.0]]), neck_pose=0.1 * torch.randn(1, 3, generator=g),
             eye_pose=0.1 * torch.randn(1, 6, generator=g))
    with torch.no_grad():
        canonical = model.canonical(**p)[0].numpy()
        posed = model(**p, global_orient=torch.tensor([[0.1, 0.5, -0.05]]),
                      transl=torch.tensor([[0.02, -0.01, 0.05]])).vertices[0].numpy()
    layout = UVLayout.from_head_model(model)
    cams = [orbit(posed.mean(0), yaw, pitch, 1.0, 256, 750, f"cam{k}")
            for k, (yaw, pitch) in enumerate([(-80, 10), (-30, -20), (0, 0), (35, 25), (90, -5)])]
    return canonical, posed, layout, cams


def test_plane_pixel_uv_exact_and_tokens_one_hot():
    verts, layout, cam = plane_scene(64)
    tokens = TokenGrid(app_tokens=8, geo_tokens=4, min_app_coverage=0.5)
    corr = compute_correspondences(verts, layout, [cam], tokens, "plane")
    assert corr.visible.all() and not corr.empty
    i, j = np.mgrid[0:64, 0:64]
    np.testing.assert_allclose(corr.uv[0, ..., 0], (j + 0.5) / 64, atol=1e-5)
    np.testing.assert_allclose(corr.uv[0, ..., 1], 1 - (i + 0.5) / 64, atol=1e-5)
    np.testing.assert_allclose(corr.depth[0], 1.0, atol=1e-6)
    app = np.arange(64)
    ar, ac = app // 8, app % 8
    expect_geo = (ar // 2) * 4 + ac // 2
    np.testing.assert_array_equal(corr.a2g_index, np.stack([np.zeros(64), app, expect_geo], 1))
    np.testing.assert_array_equal(corr.a2g_weight, np.ones(64, np.float32))
    np.testing.assert_array_equal(corr.pair_count, np.full(64, 64))
    g2a = corr.g2a_index
    assert len(g2a) == 64 and (np.bincount(g2a[:, 1]) == 4).all()
    np.testing.assert_array_equal(expect_geo[g2a[:, 2]], g2a[:, 1])
    np.testing.assert_allclose(corr.g2a_weight, 0.25)


def test_sphere_pixel_uv_matches_ray_sphere_hit(sphere):
    verts, layout, cams = sphere
    corr = compute_correspondences(verts, layout, cams, TokenGrid(app_tokens=8, geo_tokens=8), "sphere")
    checked = 0
    for n, cam in enumerate(cams):
        o, d = (a.astype(np.float64) for a in cam.rays())
        b = np.einsum("hwk,hwk->hw", o, d)
        disc = b * b - (np.einsum("hwk,hwk->hw", o, o) - 0.1 ** 2)
        hit = disc > 0
        tt = -b - np.sqrt(np.where(hit, disc, 0))
        nrm = (o + tt[..., None] * d) / 0.1
        u = np.arctan2(nrm[..., 0], nrm[..., 2]) / (2 * np.pi) + 0.5
        v = 1 - np.arccos(np.clip(nrm[..., 1], -1, 1)) / np.pi
        facing = -np.einsum("hwk,hwk->hw", nrm, d) > 0.3
        ok = hit & facing & (np.abs(u - 0.5) < 0.48) & (v > 0.05) & (v < 0.95) & corr.visible[n]
        assert (corr.visible[n] & hit).sum() >= 0.97 * hit.sum()
        # UV error as an angle on the sphere (radians); the mesh's cells are 2π/96 = 0.065 rad wide, and a flat
        # triangle differs from the sphere by ≈ 5e-4·r (sagitta), seen obliquely up to 3× that
        angle = np.hypot((corr.uv[n, ..., 0] - u) * 2 * np.pi * np.sin(np.pi * (1 - v)),
                         (corr.uv[n, ..., 1] - v) * np.pi)
        assert angle[ok].max() < 4e-3 and np.median(angle[ok]) < 1e-3, (angle[ok].max(), np.median(angle[ok]))
        checked += ok.sum()
    assert checked > 10000


def test_kernel_matches_numpy_reference(sphere):
    verts, layout, cams = sphere
    K, w2c = np.stack([c.K for c in cams]), np.stack([c.world_to_cam for c in cams])
    frags = rasterize(verts, layout.faces, K, w2c, 128, 128)
    front = front_faces(verts, layout.faces, cams)
    for tokens in (TokenGrid(8, 16), TokenGrid(16, 4), TokenGrid(32, 32)):
        uv, vis, index, count = pixel_correspondences(frags, layout, front, tokens)
        ref_uv, ref_vis = _pixel_uv_reference(frags, layout, front)
        np.testing.assert_array_equal(vis, ref_vis)
        np.testing.assert_allclose(uv, ref_uv, atol=1e-6)
        ref_index, ref_count = pairs_reference(uv, vis, tokens)
        np.testing.assert_array_equal(index, ref_index)
        np.testing.assert_array_equal(count, ref_count)
    assert (~vis & (frags.face_id >= 0)).sum() == 0  # a closed sphere seen from outside: every hit faces the camera


def check_targets(corr, pixels_per_token):
    """Weights sum to 1 per supervised token; a2g and g2a are the same pixel counts normalised differently."""
    t = corr.tokens
    La, Lg = t.app_tokens ** 2, t.geo_tokens ** 2
    cnt = {tuple(k): c for k, c in zip(corr.pair_index.tolist(), corr.pair_count.tolist())}
    a_key = corr.a2g_index[:, 0] * La + corr.a2g_index[:, 1]
    np.testing.assert_allclose(np.bincount(a_key, corr.a2g_weight)[np.unique(a_key)], 1.0, atol=2e-3)
    g_key = corr.g2a_index[:, 0] * Lg + corr.g2a_index[:, 1]
    np.testing.assert_allclose(np.bincount(g_key, corr.g2a_weight)[np.unique(g_key)], 1.0, atol=2e-3)
    a_tot = np.bincount(corr.pair_index[:, 0] * La + corr.pair_index[:, 1], corr.pair_count)
    g_tot = np.bincount(corr.pair_index[:, 0] * Lg + corr.pair_index[:, 2], corr.pair_count)
    c_a2g = np.array([cnt[(v, a, g)] for v, a, g in corr.a2g_index.tolist()])
    c_g2a = np.array([cnt[(v, a, g)] for v, g, a in corr.g2a_index.tolist()])
    np.testing.assert_allclose(corr.a2g_weight * a_tot[a_key], c_a2g, rtol=2e-3)
    np.testing.assert_allclose(corr.g2a_weight * g_tot[g_key], c_g2a, rtol=2e-3)
    supervised = a_tot >= t.min_app_coverage * pixels_per_token
    assert set(np.unique(a_key)) == set(np.flatnonzero(supervised))
    assert len(corr.g2a_index) == len(corr.pair_index)  # min_geo_pixels = 1: every pair counts for g2a
    n, r, c = np.nonzero(corr.visible)
    assert corr.pair_count.sum() == len(n)


def test_targets_normalised_and_consistent(sphere, tmp_path):
    verts, layout, cams = sphere
    corr = compute_correspondences(verts, layout, cams, TokenGrid(16, 8, min_app_coverage=0.6), "sphere")
    check_targets(corr, 64)
    assert len(corr.a2g_index) < len(corr.pair_index)  # silhouette tokens are unsupervised
    back = load_correspondences(save_correspondences(tmp_path / "c.npz", corr))
    assert back.a2g_weight.dtype == np.float32 and back.views == corr.views and back.tokens == corr.tokens
    check_targets(back, 64)
    np.testing.assert_array_equal(back.visible, corr.visible)
    np.testing.assert_allclose(back.uv, corr.uv, atol=5e-4)
    with np.load(tmp_path / "c.npz") as z:
        assert z["a2g_index"].dtype == np.int32 and z["a2g_weight"].dtype == np.float16
    # the token-level arrays alone (what the dataset stage reads): the same, without the per-pixel maps
    tokens_only = load_correspondences(tmp_path / "c.npz", maps=False)
    for k in ("a2g_index", "a2g_weight", "g2a_index", "g2a_weight", "pair_index", "pair_count"):
        np.testing.assert_array_equal(getattr(tokens_only, k), getattr(back, k))
    assert tokens_only.views == back.views and tokens_only.tokens == back.tokens and tokens_only.uv.size == 0
    # a file written without the maps (correspondences.save_maps first / none): the same token-level arrays, a
    # fraction of the bytes, and a clear error when the maps are asked for
    save_correspondences(tmp_path / "t.npz", corr, maps=False)
    lean = load_correspondences(tmp_path / "t.npz", maps=False)
    for k in ("a2g_index", "a2g_weight", "g2a_index", "g2a_weight", "pair_index", "pair_count"):
        np.testing.assert_array_equal(getattr(lean, k), getattr(back, k))
    assert (tmp_path / "t.npz").stat().st_size < 0.1 * (tmp_path / "c.npz").stat().st_size
    with pytest.raises(CorrespondenceError, match=r"t\.npz: no per-pixel maps .*maps=False"):
        load_correspondences(tmp_path / "t.npz")


def test_empty_views_recorded_not_errors(sphere):
    verts, layout, cams = sphere
    behind = Camera(cams[0].K, look_at(np.array([0, 0, 0.5]), np.array([0, 0, 1.0])), 128, 128, name="behind")
    aside = Camera(cams[0].K, look_at(np.array([0, 0, 0.5]), np.array([0.3, 0, 0.0])), 128, 128, name="aside")
    corr = compute_correspondences(verts, layout, [cams[0], behind, aside], TokenGrid(8, 8), "f7")
    assert corr.empty == {"behind": "behind the camera", "aside": "off-screen"}
    assert not corr.visible[1:].any() and corr.visible[0].any()
    assert set(corr.a2g_index[:, 0]) == {0} and set(corr.g2a_index[:, 0]) == {0}


def test_bad_inputs_refused(sphere):
    verts, layout, cams = sphere
    bad = verts.copy()
    bad[3] = np.nan
    with pytest.raises(CorrespondenceError, match="frame subj/seq/00009.*NaN"):
        compute_correspondences(bad, layout, cams, TokenGrid(8, 8), "subj/seq/00009")
    distorted = Camera(cams[0].K, cams[0].world_to_cam, 128, 128, dist=[0.1, 0, 0, 0], name="d")
    with pytest.raises(CorrespondenceError, match="distortion"):
        compute_correspondences(verts, layout, [distorted], TokenGrid(8, 8), "f")
    with pytest.raises(CorrespondenceError, match="divisible"):
        compute_correspondences(verts, layout, cams, TokenGrid(48, 8), "f")


def test_cameras_and_tokens_of_the_wrong_kind_are_refused_in_one_line(sphere):
    """A {name: Camera} dict (what Capture.cameras gives), one Camera, camera names or a bare token count failed
    from deep inside (KeyError: 0, TypeError, AttributeError); each is now a CorrespondenceError naming the frame
    and saying what to pass. The list the message asks for gives the same correspondences."""
    verts, layout, cams = sphere
    by_name = {c.name: c for c in cams}
    for cameras, got in ((by_name, "got dict"), (cams[0], "got Camera"), ([c.name for c in cams], r"holding \['str'\]")):
        with pytest.raises(CorrespondenceError, match=rf"frame f3: cameras must be a list of Camera .*{got}"):
            compute_correspondences(verts, layout, cameras, TokenGrid(8, 8), "f3")
    with pytest.raises(CorrespondenceError, match="frame f3: tokens must be a TokenGrid .*got int"):
        compute_correspondences(verts, layout, cams, 8, "f3")
    a = compute_correspondences(verts, layout, list(by_name.values()), TokenGrid(8, 8), "f3")
    b = compute_correspondences(verts, layout, cams, TokenGrid(8, 8), "f3")
    assert a.views == b.views and np.array_equal(a.uv, b.uv) and np.array_equal(a.a2g_index, b.a2g_index)


def test_cycle_error_and_gt_accuracy_on_standin(head, tmp_path):
    canonical, posed, layout, cams = head
    R, t, resid = rigid_fit(canonical, posed)
    assert resid < 1e-6  # canonical keeps neck/jaw/eyes: posed = R canonical + t exactly
    baked = bake_posmap(canonical, layout, 256)
    corr = compute_correspondences(posed, layout, cams, TokenGrid(16, 16), "s/q/00003")
    check_targets(corr, 256)
    K, w2c = np.stack([c.K for c in cams]), np.stack([c.world_to_cam for c in cams])
    gt = rasterize(posed, layout.faces, K, w2c, 256, 256)
    # ground truth as the synthetic capture writes it (gt.npz camera order reversed, float16 barycentrics)
    names = [c.name for c in cams][::-1]
    np.savez(tmp_path / "gt.npz", cameras=np.array(names))
    np.savez_compressed(tmp_path / "gt_raster.npz", face_id=gt.face_id[::-1], bary=gt.bary[::-1].astype(np.float16))
    gt_face_id, gt_bary = load_gt_raster(tmp_path, corr.views)
    np.testing.assert_array_equal(gt_face_id, gt.face_id)
    m = frame_metrics(corr, baked.posmap, cams, canonical, posed, layout, gt=(gt_face_id, gt_bary))
    assert m["cycle_error_px_median"] < 0.05 and m["cycle_error_px_p95"] < 0.5, m
    assert all(v["median"] < 0.1 for v in m["cycle_per_view"].values())
    assert m["gt_uv_accuracy"] > 0.999 and m["gt_uv_error_texels"] < 0.05 and m["coverage"] > 0.98
    assert m["empty_views"] == 0 and m["uv_overlap_fraction"] == 0.0
    summary = aggregate([m, dict(m, cycle_error_px_p95=2.0, empty_views=1, gt_uv_accuracy=None)])
    assert summary["frames"] == 2 and summary["empty_views"] == 1 and summary["cycle_error_px_p95_worst_frame"] == 2.0
    assert summary["gt_uv_accuracy"] == m["gt_uv_accuracy"]
    # a mis-fitted mesh (2 cm off) is caught by the ground-truth comparison
    moved = compute_correspondences(posed + np.float32([0.02, 0, 0]), layout, cams, TokenGrid(16, 16), "s/q/00003")
    assert gt_uv_accuracy(moved, gt.face_id, gt.bary, layout, 256)["gt_uv_accuracy"] < 0.2
    # a wrong rigid pose shows in the cycle error
    errs = cycle_errors(corr, baked.posmap, cams, R, t + [0.01, 0, 0])
    assert np.median(np.concatenate(errs)) > 5


def test_previews(head, tmp_path):
    canonical, posed, layout, cams = head
    baked = bake_posmap(canonical, layout, 128)
    pm = posmap_rgb(baked.posmap, baked.mask)
    assert (pm[~baked.mask] == 40).all() and pm.dtype == np.uint8
    corr = compute_correspondences(posed, layout, cams, TokenGrid(16, 16), "f")
    images = np.full((len(cams), 256, 256, 3), 90, np.uint8)
    over = correspondence_overlay(images[2], corr.uv[2], corr.visible[2])
    assert (over[~corr.visible[2]] == 90).all() and (over[corr.visible[2]] != 90).any(-1).mean() > 0.9
    grid = figure9(images, corr.uv, corr.visible, pm, query_view=2, names=list(corr.views))
    assert grid.shape == (2 * 256, 4 * 256, 3)
    q = corr.uv[2][corr.visible[2]][len(corr.uv[2][corr.visible[2]]) // 2]
    hit = matches(corr.uv[1], corr.visible[1], q, 1.0 / 128)
    assert (np.linalg.norm(corr.uv[1][hit] - q, axis=-1) < 1.0 / 128).all()
    import cv2
    path = write_png(tmp_path / "fig9.png", grid)
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), grid)
