"""Synthetic captures (pipelines/synthetic): ground truth self-consistency, format, determinism,
splits, bad input, failure recording, and real MediaPipe on a frontal render."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from flame_fitting.formats.capture import load_capture
from flame_fitting.formats.capture_checks import load_cameras
from flame_fitting.core.params import ParamsError, build_config
from flame_fitting.geometry.render import antialias_silhouette, antialias_views
from standin_cache import standin_copy
from pipelines.synthetic import SyntheticConfig, contact_sheet, detection_report, generate
from pipelines.synthetic.generate import load_head, write_capture
from pipelines.synthetic.sampling import sample_subjects, split_subjects
from pipelines.synthetic.texture import build_face_warp

SMALL = dict(subjects=2, frames=2, cameras=4, resolution=128, texture_resolution=256, workers=2)


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "head_model"
    standin_copy(out, seed=0, n_shape=20, n_expr=24)
    return out


@pytest.fixture(scope="module")
def capture(head_dir) -> tuple[Path, dict]:
    out = head_dir.parent / "capture"
    summary = generate(head_dir, out, SyntheticConfig(seed=3, **SMALL), progress=False)
    return out, summary


def frames_of(root: Path):
    """(frame dir, gt arrays, raster arrays, cameras) of every frame of a capture."""
    for gt_path in sorted(root.glob("*/*/*/gt.npz")):
        cams = load_cameras(gt_path.parents[1] / "cameras.json")
        with np.load(gt_path) as g, np.load(gt_path.parent / "gt_raster.npz") as r:
            yield gt_path.parent, dict(g), dict(r), cams


def test_capture_loads_and_records_everything(capture):
    root, summary = capture
    cap = load_capture(root, check_hashes=True)
    m = cap.manifest
    assert summary["n_images"] == len(m) == 2 * 2 * 4 and summary["n_failures"] == 0
    assert {"yaw_deg", "pitch_deg", "gt_path", "mask_path"} <= set(m.columns)
    info = json.loads((root / "capture.json").read_text())
    assert info["failures"] == [] and info["source"] == "synthetic"
    for subject, group in m.groupby("subject"):  # one split per subject, as capture.json says
        assert group.split.nunique() == 1 and group.split.iloc[0] == info["subjects"][subject]["split"]
    assert set(m.split) == {"train", "test"}  # two subjects: one train, one test
    for row in m.itertuples():
        assert (root / row.gt_path).is_file() and (root / row.gt_path).parent == (root / row.path).parent


def test_landmarks_match_the_pixel_to_surface_map(capture):
    """At a visible landmark's pixel, the stored face id + barycentrics give a surface point that projects
    within ~1 px of the landmark, at the stored depth."""
    root, _ = capture
    n_checked = 0
    for _, g, r, cams in frames_of(root):
        faces = load_head_faces(root)
        for v, name in enumerate(g["cameras"]):
            cam = cams[name]
            vis = g["lmk_mp_visible"][v]
            uv = g["lmk_mp_2d"][v][vis]
            col, row = np.floor(uv).astype(int).T
            fid = r["face_id"][v, row, col]
            assert (fid >= 0).all()
            p = np.einsum("nk,nkd->nd", r["bary"][v, row, col].astype(np.float64), g["vertices"][faces[fid]])
            proj, z = cam.project(p)
            assert np.abs(proj - uv).max() < 1.0
            assert np.abs(z - r["depth"][v, row, col].astype(np.float64)).max() < 2e-3  # float16 depth
            n_checked += vis.sum()
    assert n_checked > 500


def load_head_faces(root: Path) -> np.ndarray:
    info = json.loads((root / "capture.json").read_text())
    from flame_fitting.head.flame_io import load_flame_folder

    return load_flame_folder(info["head_model"]).template.faces


def test_masks_cameras_and_projections_agree(capture, head_dir):
    root, _ = capture
    model, _ = load_head(head_dir, SyntheticConfig(**SMALL))
    faces = model.faces.numpy()
    fi, bary = model.mp_face_idx.numpy(), model.mp_bary.numpy().astype(np.float64)
    for fdir, g, r, cams in frames_of(root):
        lmk3d = np.einsum("lk,lkd->ld", bary, g["vertices"][faces[fi]])
        for v, name in enumerate(g["cameras"]):
            mask = cv2.imread(str(fdir / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
            assert np.array_equal(mask > 0, r["face_id"][v] >= 0) and set(np.unique(mask)) <= {0, 255}
            uv, _ = cams[name].project(lmk3d)
            assert np.abs(uv - g["lmk_mp_2d"][v]).max() < 1e-3  # cameras.json reproduces the ground truth
            assert np.array_equal(r["depth"][v] > 0, r["face_id"][v] >= 0)
        assert g["lmk68_2d"].shape == (len(g["cameras"]), 68, 2)
        for k in ("shape", "expr", "jaw_pose", "neck_pose", "eye_pose", "global_orient", "transl"):
            assert g[k].dtype == np.float32


def test_neutral_frame_yaw_matches_the_rig(capture):
    """Frame 0 has no head rotation: the manifest yaw is the camera's own azimuth, sorted by name."""
    root, _ = capture
    m = load_capture(root).manifest
    f0 = m[m.frame == 0].sort_values(["subject", "camera"])
    for _, group in f0.groupby("subject"):
        assert np.all(np.diff(group.yaw_deg.to_numpy()) > 0)
        assert group.yaw_deg.min() >= -92 and group.yaw_deg.max() <= 92
        assert group.pitch_deg.abs().max() <= 27


def test_far_side_landmarks_are_hidden(capture):
    """Seen from the side, the eye corner on the far side is self-occluded and the near one visible;
    from the front the nose tip and the near eye corner are visible."""
    root, _ = capture
    m = load_capture(root).manifest
    seen = set()
    for row in m[m.frame == 0].itertuples():
        with np.load(root / row.gt_path) as g:
            vis = g["lmk_mp_visible"][list(g["cameras"]).index(row.camera)]
        if row.yaw_deg < -70:  # camera on the subject's right (-x): right eye corner 33 visible, left 263 not
            assert vis[33] and not vis[263]
            seen.add("right")
        elif row.yaw_deg > 70:
            assert vis[263] and not vis[33]
            seen.add("left")
        elif abs(row.yaw_deg) < 50:  # the nose tip and the near eye's outer corner
            assert vis[1] and vis[33 if row.yaw_deg < 0 else 263]
            seen.add("front")
    assert seen == {"right", "left", "front"}


def test_deterministic_for_a_seed(head_dir, tmp_path):
    cfg = SyntheticConfig(seed=5, subjects=1, frames=2, cameras=2, resolution=64, texture_resolution=128)
    a = generate(head_dir, tmp_path / "a", cfg, progress=False)
    b = generate(head_dir, tmp_path / "b", cfg, progress=False)
    c = generate(head_dir, tmp_path / "c", replace(cfg, seed=6), progress=False)
    assert a["n_images"] == b["n_images"] == c["n_images"] == 4
    ma, mb, mc = (load_capture(tmp_path / x).manifest for x in "abc")
    assert ma.sha256.tolist() == mb.sha256.tolist()
    assert ma.sha256.tolist() != mc.sha256.tolist()
    with np.load(tmp_path / "a" / ma.gt_path[0]) as ga, np.load(tmp_path / "b" / mb.gt_path[0]) as gb:
        assert np.array_equal(ga["vertices"], gb["vertices"])


def test_split_rule():
    names = [f"s{i}" for i in range(5)]
    split = split_subjects(names, [0.6, 0.2, 0.2], seed=0)
    assert split == split_subjects(list(reversed(names)), [0.6, 0.2, 0.2], seed=0)  # order-independent
    assert sorted(split.values()) == ["test", "train", "train", "train", "val"]
    assert list(split_subjects(["only"], [0.6, 0.2, 0.2], 0).values()) == ["train"]
    many = [split_subjects(names, [0.6, 0.2, 0.2], seed=s) for s in range(6)]
    assert len({tuple(sorted(d.items())) for d in many}) > 1  # the seed shuffles


def test_bad_config_fails_before_rendering(head_dir, tmp_path):
    for bad in ({"distance_m": [1.2, 0.9]}, {"split_fractions": [0.5, 0.2, 0.2]}, {"backgrounds": ["faces"]},
                {"subjects": 0}, {"resolution": "big"}, {"nonsense": 1}):
        with pytest.raises(ParamsError):
            build_config(SyntheticConfig, bad, "captures.synthetic")
    with pytest.raises(ParamsError, match="head_fill"):
        generate(head_dir, tmp_path / "x", SyntheticConfig(head_fill=[0.7, 0.2]), progress=False)
    with pytest.raises(ParamsError, match="subjects"):
        generate(head_dir, tmp_path / "x", SyntheticConfig(subjects=2.5), progress=False)
    assert not (tmp_path / "x").exists()


def test_failed_frame_is_recorded_and_the_run_goes_on(head_dir, tmp_path):
    cfg = SyntheticConfig(seed=1, subjects=1, frames=3, cameras=2, resolution=64, texture_resolution=128)
    model, names = load_head(head_dir, cfg)
    subjects = sample_subjects(cfg, model.n_shape, model.n_expr, names)
    subjects[0].frames[1].params["expr"][:] = np.nan  # a frame the renderer must refuse
    warp = build_face_warp(head_dir, cfg.texture_resolution)
    summary = write_capture(model, warp, subjects, tmp_path / "cap", cfg, progress=False)
    info = json.loads((tmp_path / "cap" / "capture.json").read_text())
    assert [(f["subject"], f["frame"]) for f in info["failures"]] == [("synth000", 1)]
    assert "non-finite" in info["failures"][0]["reason"]
    assert sorted(load_capture(tmp_path / "cap").manifest.frame.unique()) == [0, 2] and summary["n_failures"] == 1


@pytest.mark.parametrize("extras", [True, False])
def test_photo_warp_sends_landmarks_to_the_photo(head_dir, tmp_path, extras):
    """The texel of embedded landmark i shows photo landmark i (piecewise-affine warp), with the stand-in's
    MediaPipe triangles + measured photo landmarks, and without them (the path real FLAME takes:
    MediaPipe on the photo, Delaunay triangles over the embedded points' UVs)."""
    folder = head_dir
    if not extras:
        folder = tmp_path / "no_extras"
        shutil.copytree(head_dir, folder)
        (folder / "standin_extras.npz").unlink()
    warp = build_face_warp(folder, 512)
    model, _ = load_head(folder, SyntheticConfig())
    uv, uvf = model.uv_coords.numpy(), model.uv_faces.numpy()
    lmk_uv = np.einsum("lk,lkd->ld", model.mp_bary.numpy(), uv[uvf[model.mp_face_idx.numpy()]])
    with np.load(head_dir / "standin_extras.npz") as z:
        photo = z["photo_landmarks_px"][model.mp_landmark_indices.numpy()]
    R = warp.resolution
    c = np.clip((lmk_uv[:, 0] * R).astype(int), 0, R - 1)
    r = np.clip(((1 - lmk_uv[:, 1]) * R).astype(int), 0, R - 1)
    got = warp.photo_px[r, c]
    ok = np.isfinite(got).all(1)
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    outline = np.isin(model.mp_landmark_indices.numpy(), np.array(list(FACEMESH_FACE_OVAL)).ravel())
    assert ok[~outline].all()  # only points on the face outline may fall just outside the warped region
    err = np.linalg.norm(got[ok] - photo[ok], axis=1)
    assert np.median(err) < 1.0 and np.percentile(err, 95) < 3.0  # within a texel's footprint in the photo


def test_mediapipe_finds_the_face_on_a_frontal_render(head_dir, tmp_path):
    """Real MediaPipe on a frontal 512² view: detected, landmarks within a few pixels of the ground truth."""
    cfg = SyntheticConfig(seed=0, subjects=1, frames=1, cameras=1, resolution=512, yaw_range_deg=[0.0, 0.0],
                          pitch_range_deg=[0.0, 0.0])
    generate(head_dir, tmp_path / "front", cfg, progress=False)
    rep = detection_report(tmp_path / "front")
    assert rep["detection_rate_yaw_0_45"] == 1.0 and rep["n_views_yaw_0_45"] == 1
    assert rep["pixel_error_yaw_0_45"] < 5.0
    assert rep["detection_rate_yaw_45_70"] is None and rep["pixel_error_yaw_70_90"] is None
    sheet = contact_sheet(tmp_path / "front", "synth000", tmp_path / "sheet.png", tile=128)
    assert cv2.imread(str(sheet)).shape == (128, 128, 3)


def test_antialias_kernel_matches_opencv_reference():
    rng = np.random.default_rng(0)
    fid = np.where(rng.random((3, 20, 30)) < 0.5, -1, 7).astype(np.int32)
    fid[:, :6], fid[:, 14:] = -1, 2
    img = rng.random((3, 20, 30, 3)).astype(np.float32)
    ref = np.stack([antialias_silhouette(img[i], fid[i] >= 0) for i in range(3)])
    out = img.copy()
    antialias_views(out, fid)
    np.testing.assert_allclose(out, ref, atol=1e-6)
