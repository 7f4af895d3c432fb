"""Exports of fits (flame_fitting.formats.export_vhap / export_nerfstudio), read back by readers that know only the
target formats' conventions: VHAP's (OpenGL camera→world, cy from the bottom, flame_param npz keys, zero-padded
FLAME widths) written here, nerfstudio's through geoface's own transforms.json importer (pipelines.transforms_json).
The round trip must give back our cameras (OpenCV K, world_to_cam) and, through our head model, our vertices."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from export_testdata import DIVERGED, FRAMES, MIXED, N_EXPR, N_SHAPE, SEQUENCE, SUBJECT, UNMASKED, head_vertices, \
    make_export_data

from flame_fitting.core.readers import read_image
from flame_fitting.formats.capture import load_capture
from flame_fitting.formats.export_nerfstudio import export_nerfstudio
from flame_fitting.formats.export_vhap import export_vhap, val_index
from flame_fitting.formats.fit_export import ExportError
from flame_fitting.geometry.camera import opengl_cam_to_world, world_to_cam_from_opengl
from pipelines.import_config import ImportConfig
from pipelines.registry import import_capture

GL = np.diag([1.0, -1.0, -1.0, 1.0])
CAM_TOL = 1e-5   # K in pixels (relative to its largest entry) and world_to_cam
VERT_TOL = 1e-5  # metres
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_export_data(tmp_path_factory.mktemp("export"))


def vhap_camera(f: dict) -> tuple[np.ndarray, np.ndarray]:
    """A VHAP frame entry -> (K, world_to_cam) float64 in OpenCV's convention (written from VHAP's, not ours)."""
    c2w_cv = np.asarray(f["transform_matrix"], np.float64) @ GL  # OpenGL camera axes (y up, z back) -> OpenCV's
    K = np.array([[f["fl_x"], 0, f["cx"]], [0, f["fl_y"], f["h"] - f["cy"]], [0, 0, 1]], np.float64)
    return K, np.linalg.inv(c2w_cv)


def vhap_params(path, n_shape=N_SHAPE, n_expr=N_EXPR) -> dict[str, np.ndarray]:
    """A flame_param npz -> our parameter names (the padding beyond our widths must be zero)."""
    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    assert a["shape"].ndim == 1 and not a["shape"][n_shape:].any() and not a["expr"][0, n_expr:].any()
    return {"shape": a["shape"][:n_shape], "expr": a["expr"][0, :n_expr], "global_orient": a["rotation"][0],
            "transl": a["translation"][0], "neck_pose": a["neck_pose"][0], "jaw_pose": a["jaw_pose"][0],
            "eye_pose": a["eyes_pose"][0]}


def camera_error(K, w2c, cam) -> float:
    return max(float(np.abs(K - cam.K).max() / np.abs(cam.K).max()), float(np.abs(w2c - cam.world_to_cam).max()))


def test_opengl_conversion_inverts_and_flips_the_axes(data):
    cam = data.capture_cameras["c1"]
    c2w = opengl_cam_to_world(cam)
    np.testing.assert_allclose(world_to_cam_from_opengl(c2w), cam.world_to_cam, atol=1e-6)
    # an OpenGL camera looks down its -z axis: the point in front of an OpenCV camera is at z < 0 in OpenGL axes
    front = cam.cam_to_world.astype(np.float64) @ np.array([0, 0, 0.5, 1])
    assert (np.linalg.inv(c2w) @ front)[2] < 0


def test_vhap_round_trip(data, tmp_path):
    s = export_vhap(data.capture, data.fits, tmp_path / "vhap")
    seq = tmp_path / "vhap" / SUBJECT / SEQUENCE
    db = json.loads((seq / "transforms.json").read_text())
    ok_frames = [f for f in FRAMES if f != DIVERGED]
    assert db["timestep_indices"] == [0, 1] and db["camera_indices"] == [0, 1, 2, 3]
    assert len(db["timestep_indices"]) == max(db["timestep_indices"]) + 1  # VHAP's NeRFDataset asserts it
    assert len(db["frames"]) == len(ok_frames) * 4 and s["timesteps"] == 2 and s["images"] == 8
    assert s["sequences"][0]["skipped"] == [{"frame": DIVERGED, "reason": "fit not ok (diverged; see status.json)"}]
    cap = load_capture(data.capture)
    man = cap.manifest.set_index(["frame", "camera"])
    cam_err = 0.0
    for f in db["frames"]:
        frame, name = int(f["timestep_id"]), f["camera_id"]
        assert frame == ok_frames[f["timestep_index"]] and name == f"c{f['camera_index']}"
        assert f["file_path"] == f"images/{f['timestep_index']:05d}_{f['camera_index']:02d}.png"
        assert f["flame_param_path"] == f"flame_param/{f['timestep_index']:05d}.npz"
        K, w2c = vhap_camera(f)
        cam_err = max(cam_err, camera_error(K, w2c, data.fit_cameras[name]))
        assert f["camera_angle_x"] == pytest.approx(2 * np.arctan(f["w"] / (2 * f["fl_x"])))
        row = man.loc[(frame, name)]
        assert (seq / f["file_path"]).read_bytes() == (cap.root / row.path).read_bytes()
        if (frame, name) == UNMASKED:
            assert "fg_mask_path" not in f
        else:
            assert (seq / f["fg_mask_path"]).read_bytes() == (cap.root / row.mask_path).read_bytes()
    assert cam_err < CAM_TOL, cam_err
    vert_err = 0.0
    for ti, frame in enumerate(ok_frames):
        p = vhap_params(seq / f"flame_param/{ti:05d}.npz")
        for k, v in data.params[frame].items():
            np.testing.assert_array_equal(p[k], v, err_msg=k)
        vert_err = max(vert_err, float(np.abs(head_vertices(data.model, p) - data.vertices[frame]).max()))
    assert vert_err < VERT_TOL, vert_err
    with np.load(seq / "flame_param/00000.npz") as z:
        V = len(data.vertices[0])
        assert {k: z[k].shape for k in z.files} == {
            "translation": (1, 3), "rotation": (1, 3), "neck_pose": (1, 3), "jaw_pose": (1, 3), "eyes_pose": (1, 6),
            "shape": (300,), "expr": (1, 100), "static_offset": (1, V, 3)}
        assert all(z[k].dtype == np.float32 for k in z.files) and not z["static_offset"].any()
    with np.load(seq / "canonical_flame_param.npz") as z:
        assert z["jaw_pose"].tolist() == [[pytest.approx(0.3), 0, 0]] and not z["rotation"].any()
        np.testing.assert_array_equal(z["shape"][:N_SHAPE], data.params[0]["shape"])
    FIGURES.update(vhap_max_camera_error=cam_err, vhap_max_vertex_error_m=vert_err)


def test_vhap_translation_is_added_after_the_rotation(data):
    """VHAP's FlameHead adds `translation` to the skinned vertices, rotation about the root joint, as smplx does."""
    p = dict(data.params[0])
    moved = head_vertices(data.model, p)
    p0 = {**p, "transl": np.zeros(3, np.float32)}
    np.testing.assert_allclose(moved, head_vertices(data.model, p0) + p["transl"], atol=1e-6)


def test_vhap_splits(data, tmp_path):
    export_vhap(data.capture, data.fits, tmp_path / "vhap", train_ratio=0.5, val_camera="c1")
    seq = tmp_path / "vhap" / SUBJECT / SEQUENCE
    d = {n: json.loads((seq / f"transforms_{n}.json").read_text()) for n in ("train", "val", "test")}
    key = lambda f: (f["timestep_index"], f["camera_index"])  # noqa: E731
    assert d["val"]["camera_indices"] == [1] and {f["camera_id"] for f in d["val"]["frames"]} == {"c1"}
    assert d["train"]["timestep_indices"] == [0] and d["test"]["timestep_indices"] == [1]
    every = sorted(key(f) for n in d for f in d[n]["frames"])
    assert every == sorted(key(f) for f in json.loads((seq / "transforms.json").read_text())["frames"])
    assert len(set(every)) == len(every) and d["train"]["fl_x"] == d["test"]["fl_x"]


def test_vhap_default_val_camera_is_vhaps():
    """VHAP's split_json validates on camera index 8 when there is one (NeRSemble's frontal camera), else the last."""
    names = [f"2220000{i:02d}" for i in range(16)]
    assert val_index(names, None) == 8 and val_index(names[:9], None) == 8 and val_index(names[:8], None) == 7
    assert val_index(names, names[3]) == 3 and val_index(["a"], None) == 0


def test_nerfstudio_round_trip(data, tmp_path):
    s = export_nerfstudio(data.capture, data.fits, tmp_path / "ns")
    assert s["scenes"] == 2 and s["images"] == 8 and s["masks"] == 4
    cap = load_capture(data.capture)
    man = cap.manifest.set_index(["frame", "camera"])
    cam_err = pts_err = 0.0
    for frame in (f for f in FRAMES if f != DIVERGED):
        scene = tmp_path / "ns" / SUBJECT / SEQUENCE / f"{frame:05d}"
        meta = json.loads((scene / "transforms.json").read_text())
        assert meta["camera_model"] == "OPENCV" and meta["ply_file_path"] == "points3d.ply"
        # geoface's own nerfstudio reader gives the cameras back
        import_capture("transforms_json", scene, tmp_path / f"back{frame}", ImportConfig(subject="s"))
        back = load_capture(tmp_path / f"back{frame}")
        cams = back.cameras("s", "default")
        assert sorted(cams) == sorted(data.fit_cameras)
        for name, want in data.fit_cameras.items():
            f = next(e for e in meta["frames"] if e["file_path"].startswith(f"images/{name}."))
            K = np.array([[f["fl_x"], 0, f["cx"]], [0, f["fl_y"], f["cy"]], [0, 0, 1]])
            cam_err = max(cam_err, camera_error(K, world_to_cam_from_gl(f["transform_matrix"]), want),
                          camera_error(cams[name].K, cams[name].world_to_cam, want))
            row = man.loc[(frame, name)]
            assert (scene / f["file_path"]).read_bytes() == (cap.root / row.path).read_bytes()
            if frame == UNMASKED[0]:  # one view has no mask: nerfstudio needs all or none
                assert "mask_path" not in f
                continue
            assert (scene / f["mask_path"]).is_file()
            assert (scene / f["mask_path"]).read_bytes() == (cap.root / row.mask_path).read_bytes()
            brow = back.manifest[back.manifest.camera == name].iloc[0]  # the reader takes the mask too
            np.testing.assert_array_equal(read_image(back.root / brow.mask_path)[..., 0],
                                          read_image(cap.root / row.mask_path)[..., 0])
        pts = read_ply_xyz(scene / "points3d.ply")
        pts_err = max(pts_err, float(np.abs(pts - data.vertices[frame]).max()))
    assert cam_err < CAM_TOL and pts_err == 0.0, (cam_err, pts_err)
    left = s["sequences"][0]["scenes"][1]
    assert left["frame"] == UNMASKED[0] and left["masks"] == 0 and UNMASKED[1] in left["masks_left_out"]
    FIGURES.update(nerfstudio_max_camera_error=cam_err, nerfstudio_max_point_error_m=pts_err)
    print("\nexport round trip:", json.dumps(FIGURES))


def world_to_cam_from_gl(m) -> np.ndarray:
    return np.linalg.inv(np.asarray(m, np.float64) @ GL)


def read_ply_xyz(path) -> np.ndarray:
    raw = path.read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    n = int(next(line.split()[2] for line in head.decode().splitlines() if line.startswith("element vertex")))
    rec = np.frombuffer(body, np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)]), count=n)
    return rec["xyz"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return make_export_data(tmp_path_factory.mktemp("export_mixed"), MIXED)


def test_a_mixed_rig_round_trips(mixed, tmp_path):
    """A mixed rig (cameras of different sizes and aspects in one frame: 44×60, 60×44, 48×48, 72×40, off-centre
    principal points): every exported view carries its own camera's size and intrinsics (VHAP's NeRFDataset and
    nerfstudio read them per frame; GaussianAvatars reads w, h, camera_angle_x per frame), its image and mask are
    its own size, and both layouts read back (VHAP reader above, geoface's transforms.json importer) to every
    camera of the fit (K, world_to_cam, size) and the fitted vertices."""
    assert len({(c.width, c.height) for c in mixed.fit_cameras.values()}) == 4
    cap = load_capture(mixed.capture)
    man = cap.manifest.set_index(["frame", "camera"])
    ok_frames = [f for f in FRAMES if f != DIVERGED]
    export_vhap(mixed.capture, mixed.fits, tmp_path / "vhap")
    seq = tmp_path / "vhap" / SUBJECT / SEQUENCE
    cam_err = vert_err = 0.0
    for split in ("", "_train", "_val", "_test"):
        for f in json.loads((seq / f"transforms{split}.json").read_text())["frames"]:
            want = mixed.fit_cameras[f["camera_id"]]
            frame = ok_frames[f["timestep_index"]]
            assert (f["w"], f["h"]) == (want.width, want.height), (split, f["camera_id"])
            cam_err = max(cam_err, camera_error(*vhap_camera(f), want))
            # GaussianAvatars: fx from camera_angle_x and the frame's w (its fy = fx, principal point centred)
            assert f["w"] / (2 * np.tan(f["camera_angle_x"] / 2)) == pytest.approx(want.K[0, 0], rel=1e-9)
            assert f["h"] / (2 * np.tan(f["camera_angle_y"] / 2)) == pytest.approx(want.K[1, 1], rel=1e-9)
            assert read_image(seq / f["file_path"]).shape[:2] == (want.height, want.width)
            row = man.loc[(frame, f["camera_id"])]
            assert (seq / f["file_path"]).read_bytes() == (cap.root / row.path).read_bytes()
            if "fg_mask_path" in f:
                assert read_image(seq / f["fg_mask_path"]).shape[:2] == (want.height, want.width)
    for ti, frame in enumerate(ok_frames):
        p = vhap_params(seq / f"flame_param/{ti:05d}.npz")
        vert_err = max(vert_err, float(np.abs(head_vertices(mixed.model, p) - mixed.vertices[frame]).max()))
    import_capture("transforms_json", seq, tmp_path / "vhap_back", ImportConfig(sequence="s"))
    back = load_capture(tmp_path / "vhap_back")
    (subject, sequence), = back.sequences()
    for name, got in back.cameras(subject, sequence).items():
        want = mixed.fit_cameras[name]
        assert (got.width, got.height) == (want.width, want.height), name
        cam_err = max(cam_err, camera_error(got.K, got.world_to_cam, want))
    for row in back.manifest.to_dict("records"):
        assert back.image(row).shape[:2] == (mixed.fit_cameras[row["camera"]].height,
                                             mixed.fit_cameras[row["camera"]].width)
    export_nerfstudio(mixed.capture, mixed.fits, tmp_path / "ns")
    pts_err = 0.0
    for frame in ok_frames:
        scene = tmp_path / "ns" / SUBJECT / SEQUENCE / f"{frame:05d}"
        meta = json.loads((scene / "transforms.json").read_text())
        # nerfstudio's dataparser takes a top-level fl_x / cx / w / h as every frame's: there must be none
        assert not {"fl_x", "fl_y", "cx", "cy", "w", "h"} & set(meta)
        for f in meta["frames"]:
            name = f["file_path"].split("/")[1].split(".")[0]
            want = mixed.fit_cameras[name]
            assert (f["w"], f["h"]) == (want.width, want.height), name
            assert read_image(scene / f["file_path"]).shape[:2] == (want.height, want.width)
            if "mask_path" in f:
                assert read_image(scene / f["mask_path"]).shape[:2] == (want.height, want.width)
        import_capture("transforms_json", scene, tmp_path / f"ns_back{frame}", ImportConfig(subject="s"))
        cams = load_capture(tmp_path / f"ns_back{frame}").cameras("s", "default")
        assert sorted(cams) == sorted(mixed.fit_cameras)
        for name, got in cams.items():
            want = mixed.fit_cameras[name]
            assert (got.width, got.height) == (want.width, want.height), name
            cam_err = max(cam_err, camera_error(got.K, got.world_to_cam, want))
        pts_err = max(pts_err, float(np.abs(read_ply_xyz(scene / "points3d.ply") - mixed.vertices[frame]).max()))
    assert cam_err < CAM_TOL and vert_err < VERT_TOL and pts_err == 0.0, (cam_err, vert_err, pts_err)
    print("\nmixed rig export round trip:", json.dumps({"max_camera_error": cam_err, "vhap_max_vertex_error_m": vert_err,
                                                       "nerfstudio_max_point_error_m": pts_err}))


def test_capture_cameras_option(data, tmp_path):
    export_vhap(data.capture, data.fits, tmp_path / "vhap", cameras="capture")
    db = json.loads((tmp_path / "vhap" / SUBJECT / SEQUENCE / "transforms.json").read_text())
    for f in db["frames"]:
        K, w2c = vhap_camera(f)
        assert camera_error(K, w2c, data.capture_cameras[f["camera_id"]]) < CAM_TOL
        assert camera_error(K, w2c, data.fit_cameras[f["camera_id"]]) > 1e-3  # the refined ones differ by mm


def test_widths_beyond_the_export_are_refused(data, tmp_path):
    with pytest.raises(ExportError, match="the fit has 10 components, more than the 5"):
        export_vhap(data.capture, data.fits, tmp_path / "vhap", n_shape=5)
    assert not (tmp_path / "vhap").exists()


def copy_fits(data, tmp_path):
    dst = tmp_path / "fits"
    shutil.copytree(data.fits, dst)
    return dst, dst / SUBJECT / SEQUENCE


@pytest.mark.parametrize("case,message", [
    ("other_sequence", "sequence p001/EMO-2 is not in the capture"),
    ("other_frame", "frame 7 is not in the capture's p001/EMO-1"),
    ("other_camera", "no camera 'c3' that the capture's images use"),
    ("other_size", "camera 'c0' is 61×44, the capture's is 60×44"),
    ("missing_array", "missing arrays ['eye_pose']"),
    ("bad_shape", "array 'jaw_pose' has shape (3, 2)"),
    ("no_fits", "no <subject>/<sequence>/fit.npz"),
])
def test_fits_that_do_not_match_the_capture(data, tmp_path, case, message):
    from flame_fitting.core.fileio import write_npz
    from flame_fitting.formats.capture import save_cameras
    from flame_fitting.formats.capture_checks import load_cameras

    fits, seq = copy_fits(data, tmp_path)
    with np.load(seq / "fit.npz") as z:
        arrays = {k: z[k] for k in z.files}
    cams = load_cameras(seq / "cameras.json")
    if case == "other_sequence":
        seq.rename(seq.parent / "EMO-2")
    elif case == "other_frame":
        write_npz(seq / "fit.npz", **{**arrays, "frame": np.array([0, 1, 7])})
    elif case == "other_camera":
        save_cameras(seq / "cameras.json", {n: c for n, c in cams.items() if n != "c3"})
    elif case == "other_size":
        from dataclasses import replace

        save_cameras(seq / "cameras.json", {**cams, "c0": replace(cams["c0"], width=61)})
    elif case == "missing_array":
        write_npz(seq / "fit.npz", **{k: v for k, v in arrays.items() if k != "eye_pose"})
    elif case == "bad_shape":
        write_npz(seq / "fit.npz", **{**arrays, "jaw_pose": arrays["jaw_pose"][:, :2]})
    elif case == "no_fits":
        (seq / "fit.npz").unlink()
    for export in (export_vhap, export_nerfstudio):
        with pytest.raises(ExportError) as e:
            export(data.capture, fits, tmp_path / "out")
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert not (tmp_path / "out").exists()


def test_a_camera_whose_skew_is_rounding_is_exported_without_it(data, tmp_path):
    """`Camera` refuses a skew beyond 1e-6 of fx (tests/pipelines/test_implausible_cameras.py); what it keeps, the
    exports keep too (an import that succeeds is not refused at export), writing fx, fy, cx, cy unchanged."""
    from dataclasses import replace

    from flame_fitting.formats.capture import save_cameras
    from flame_fitting.formats.capture_checks import load_cameras

    fits, seq = copy_fits(data, tmp_path)
    cams = load_cameras(seq / "cameras.json")
    K = cams["c0"].K.astype(np.float64)
    K[0, 1] = 1e-7 * K[0, 0]  # a pixel 1000 rows off the principal point moves 1e-4 px without it
    save_cameras(seq / "cameras.json", {**cams, "c0": replace(cams["c0"], K=K)})
    export_nerfstudio(data.capture, fits, tmp_path / "ns")
    export_vhap(data.capture, fits, tmp_path / "vhap")
    frame = next(f for f in FRAMES if f != DIVERGED)
    scene = tmp_path / "ns" / SUBJECT / SEQUENCE / f"{frame:05d}"
    f = next(e for e in json.loads((scene / "transforms.json").read_text())["frames"]
             if e["file_path"].startswith("images/c0."))
    assert [f["fl_x"], f["fl_y"], f["cx"], f["cy"]] == pytest.approx([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], rel=1e-6)
    db = json.loads((tmp_path / "vhap" / SUBJECT / SEQUENCE / "transforms.json").read_text())
    Kv, _ = vhap_camera(next(e for e in db["frames"] if e["camera_id"] == "c0"))
    K[0, 1] = 0.0
    np.testing.assert_allclose(Kv, K, rtol=1e-6)


def test_an_output_geoface_did_not_write_is_kept(data, tmp_path):
    from flame_fitting.core.fileio import OutputError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="not written by geoface"):
        export_nerfstudio(data.capture, data.fits, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    export_vhap(data.capture, data.fits, tmp_path / "vhap")
    with pytest.raises(OutputError, match="pass overwrite=True to replace it"):
        export_vhap(data.capture, data.fits, tmp_path / "vhap")
    export_vhap(data.capture, data.fits, tmp_path / "vhap", overwrite=True)


@pytest.mark.parametrize("inside", ["capture", "fits"])
def test_an_output_inside_an_input_is_refused(data, inside):
    """`--out FITS/vhap` was written into the fit folder, and the next `geoface fit --force` swept it away as a
    sequence no longer in the input; `--out CAPTURE/export` added files to the capture."""
    from flame_fitting.core.fileio import OutputError

    root = data.capture if inside == "capture" else data.fits
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for export in (export_vhap, export_nerfstudio):
        with pytest.raises(OutputError, match=f"inside the input {root}"):
            export(data.capture, data.fits, root / "export")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_vertices_need_the_same_head_model(data):
    """Sanity of the vertex check itself: parameters read with a name swapped give other vertices."""
    p = dict(data.params[0])
    swapped = {**p, "global_orient": p["neck_pose"], "neck_pose": p["global_orient"]}
    assert np.abs(head_vertices(data.model, swapped) - data.vertices[0]).max() > 1e-3


def test_the_fit_stage_output_round_trips(data, tmp_path):
    """fit.npz and cameras.json as the fit stage writes them (fit_sequence with camera refinement on exact
    landmarks, save_sequence_fit) export and read back to the fitter's own cameras and vertices."""
    from flame_fitting.fit import FitConfig, fit_sequence
    from flame_fitting.fit.capture_results import save_sequence_fit
    from flame_fitting.fit.report import FrameParams
    from flame_fitting.fit.synthetic import project_landmarks

    obs = {f: project_landmarks(data.model, data.capture_cameras, FrameParams(**p)) for f, p in data.params.items()}
    fit = fit_sequence(data.model, data.capture_cameras, obs, FitConfig(refine_cameras=True, iterations=5),
                       progress=False)
    save_sequence_fit(fit, tmp_path / "fits" / SUBJECT / SEQUENCE)
    export_vhap(data.capture, tmp_path / "fits", tmp_path / "vhap")
    seq = tmp_path / "vhap" / SUBJECT / SEQUENCE
    db = json.loads((seq / "transforms.json").read_text())
    ok = [f for f in fit.frames if fit.status[f].status == "ok"]
    assert [int(t) for t in sorted({f["timestep_id"] for f in db["frames"]})] == ok and ok
    cam_err = max(camera_error(*vhap_camera(f), fit.cameras[f["camera_id"]]) for f in db["frames"])
    vert_err = max(float(np.abs(head_vertices(data.model, vhap_params(seq / f"flame_param/{ti:05d}.npz"))
                                - fit.vertices[frame]).max()) for ti, frame in enumerate(ok))
    assert cam_err < CAM_TOL and vert_err < VERT_TOL, (cam_err, vert_err)
    print("\nfit stage output round trip (vhap):", json.dumps({"max_camera_error": cam_err,
                                                              "max_vertex_error_m": vert_err}))


def linked_capture(data, root):
    """A copy of the test capture inside a DVC repository `root` (a `.dvc` folder beside it), with links: frame 0's
    c0 image -> a private file outside (refused); frame 2's c0 image -> the file moved into the repository's
    `.dvc/cache` (DVC's symlink checkout: followed) and its c1 image -> frame 0's c2 image (inside: followed).
    Returns (capture, the private file)."""
    cap = root / "data" / "capture"
    shutil.copytree(data.capture, cap)
    seq = cap / SUBJECT / SEQUENCE
    secret = root.parent / "secret.txt"
    secret.write_bytes(b"root:x:0:0:private\n")
    (seq / "00000/c0.png").unlink()
    os.symlink(secret, seq / "00000/c0.png")
    cached = root / ".dvc/cache/files/md5/ab/cdef0123"
    cached.parent.mkdir(parents=True)
    (seq / "00002/c0.png").rename(cached)
    os.symlink(cached, seq / "00002/c0.png")
    (seq / "00002/c1.png").unlink()
    os.symlink("../00000/c2.png", seq / "00002/c1.png")
    return cap, secret


def exported_bytes(out) -> list[bytes]:
    return [p.read_bytes() for p in out.rglob("*") if p.is_file()]


@pytest.mark.parametrize("fmt", ["vhap", "nerfstudio"])
def test_a_capture_file_linked_from_outside_is_not_exported(data, tmp_path, capsys, fmt):
    """Regression (security): a hand-made capture whose image is a symbolic link to a file elsewhere on the machine
    (/etc/passwd, a private picture) had that file's bytes copied into the export. The frame is now skipped with a
    warning naming the file, as the importers do (captures.follow_symlinks); links inside the capture and into the
    DVC cache of the repository holding it are followed; follow_symlinks exports the outside file too."""
    cap, secret = linked_capture(data, tmp_path / "repo")
    export = export_vhap if fmt == "vhap" else export_nerfstudio
    s = export(cap, data.fits, tmp_path / "out")
    assert secret.read_bytes() not in exported_bytes(tmp_path / "out")
    skipped = s["sequences"][0]["skipped"]
    assert [d["frame"] for d in skipped] == [0, DIVERGED]
    link = cap / SUBJECT / SEQUENCE / "00000" / "c0.png"
    assert skipped[0]["reason"].startswith(f"{link}: a symbolic link to {secret}, outside the capture {cap}")
    assert "--follow-symlinks" in skipped[0]["reason"]
    err = capsys.readouterr().err
    assert err == f"warning: {skipped[0]['reason']}\n", err
    # frame 2 is exported, its links into the capture and the repository's DVC cache followed
    seq = cap / SUBJECT / SEQUENCE
    got = exported_bytes(tmp_path / "out")
    assert (seq / "00002/c0.png").read_bytes() in got and (seq / "00000/c2.png").read_bytes() in got
    assert (s["timesteps"] if fmt == "vhap" else s["scenes"]) == 1
    # opted in: the outside file is exported as the link says
    s = export(cap, data.fits, tmp_path / "out2", follow_symlinks=True)
    assert s["follow_symlinks"] and [d["frame"] for d in s["sequences"][0]["skipped"]] == [DIVERGED]
    assert secret.read_bytes() in exported_bytes(tmp_path / "out2")


def test_a_link_into_another_repositorys_dvc_cache_is_not_exported(data, tmp_path):
    """Only the DVC cache of a repository holding the capture is DVC's checkout; another one's is somebody's data."""
    cap, _ = linked_capture(data, tmp_path / "repo")
    other = tmp_path / "other" / ".dvc/cache/files/md5/12/3456"
    other.parent.mkdir(parents=True)
    mask = cap / SUBJECT / SEQUENCE / "00002/masks/c1.png"
    mask.rename(other)
    os.symlink(other, mask)
    s = export_nerfstudio(cap, data.fits, tmp_path / "out")
    assert s["scenes"] == 0 and [d["frame"] for d in s["sequences"][0]["skipped"]] == [0, DIVERGED, 2]
    assert s["sequences"][0]["skipped"][2]["reason"].startswith(f"{mask}: a symbolic link to {other}, outside")
