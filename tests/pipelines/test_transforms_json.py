"""transforms.json reader: OpenGL camera→world poses and NeRF-style intrinsics become OpenCV cameras
that project known 3D points onto the drawn dots; reading OpenGL as OpenCV provably fails that check;
bad input is skipped with a reason or refused naming the file."""
import json
import os
import re

import cv2
import numpy as np
import pytest
from writers import (GL_FLIP, WIDE_POINTS, Scene, cam_to_world64, flipped, make_cameras, projection_error, silhouette,
                     write_transforms)

from flame_fitting.formats.capture import CaptureError, load_capture
from pipelines.import_config import ImportConfig
from pipelines.transforms_json import import_capture


def check(out, scene, exact=True, tol=0.3):
    cap = load_capture(out, check_hashes=True)
    (subject, sequence), = cap.sequences()
    cams = cap.cameras(subject, sequence)
    assert sorted(cams) == sorted(scene.cameras) and len(cap.manifest) == len(scene.cameras)
    for row in cap.manifest.to_dict("records"):
        cam, ref = cams[row["camera"]], scene.cameras[row["camera"]]
        np.testing.assert_allclose(cam.K.astype(np.float64), ref.K.astype(np.float64), rtol=0, atol=1e-6)
        np.testing.assert_allclose(cam.world_to_cam.astype(np.float64), ref.world_to_cam.astype(np.float64), atol=1e-6)
        img = cap.image(row)
        if exact:
            np.testing.assert_array_equal(img, scene.image(row["camera"]))
        assert projection_error(cam, img, scene.points) < tol
        # the same file read as if it were OpenCV camera→world: the check must catch it
        c2w_gl = cam_to_world64(ref) @ GL_FLIP
        assert projection_error(flipped(cam, np.linalg.inv(c2w_gl)), img, scene.points) > 10
    return cap


@pytest.mark.parametrize("per_frame,angle_x,with_ext,size_keys", [(False, False, True, True), (True, False, False, True),
                                                                  (False, True, True, False)])
def test_roundtrip(tmp_path, per_frame, angle_x, with_ext, size_keys):
    scene = Scene(make_cameras(4, square=angle_x))
    write_transforms(tmp_path / "nerf", scene, per_frame=per_frame, angle_x=angle_x, with_ext=with_ext, size_keys=size_keys)
    report = import_capture(tmp_path / "nerf", tmp_path / "cap", ImportConfig(sequence="s0"))
    assert report.n_images == 4 and not report.skipped and report.sequences == ["nerf/s0"]
    cap = check(tmp_path / "cap", scene)
    assert set(cap.manifest.source_path) == {f"images/{n}.png" for n in scene.cameras}


def test_distortion_keys_are_undistorted(tmp_path):
    scene = Scene(make_cameras(3, dist=lambda i: np.array([-0.3, 0.1, 0.003, -0.002])), points=WIDE_POINTS)
    write_transforms(tmp_path / "nerf", scene)  # shared intrinsics incl. k1, k2, p1, p2
    import_capture(tmp_path / "nerf" / "transforms.json", tmp_path / "cap", ImportConfig())
    check(tmp_path / "cap", scene, exact=False, tol=0.4)


def test_alpha_becomes_the_mask(tmp_path):
    scene = Scene(make_cameras(2))
    write_transforms(tmp_path / "nerf", scene)
    p = tmp_path / "nerf/images/cam0.png"
    bgr = cv2.imread(str(p))
    alpha = np.zeros(bgr.shape[:2], np.uint8)
    alpha[40:120, 50:150] = 255
    cv2.imwrite(str(p), np.dstack([bgr, alpha]))
    import_capture(tmp_path / "nerf", tmp_path / "cap", ImportConfig())
    cap = load_capture(tmp_path / "cap")
    row = cap.manifest.set_index("camera").loc["cam0"]
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "cap" / row.mask_path), cv2.IMREAD_GRAYSCALE), alpha)
    np.testing.assert_array_equal(cap.image(row), scene.image("cam0"))


def test_bad_input(tmp_path):
    scene = Scene(make_cameras(4))
    nonrigid = cam_to_world64(scene.cameras["cam1"]) @ GL_FLIP @ np.diag([1.5, 1.5, 1.5, 1])
    write_transforms(tmp_path / "nerf", scene, matrices={"cam1": nonrigid}, images={"cam3": np.zeros((50, 60, 3), np.uint8)})
    report = import_capture(tmp_path / "nerf", tmp_path / "cap", ImportConfig())
    assert report.n_images == 2
    reasons = {s["item"]: s["reason"] for s in report.skipped}
    assert "not a rotation" in reasons["transforms.json [frames[1] ./images/cam1.png]"]
    assert reasons["images/cam3.png"] == "image is 60×50, camera 'cam3' is calibrated for 200×160"
    with pytest.raises(CaptureError, match=r"transforms.json \[frames\[1\] ./images/cam1.png\]: transform_matrix .* not a rotation"):
        import_capture(tmp_path / "nerf", tmp_path / "cap2", ImportConfig(strict=True))
    # a frame whose image file does not exist
    (tmp_path / "nerf/images/cam2.png").unlink()
    report = import_capture(tmp_path / "nerf", tmp_path / "cap", ImportConfig())
    assert report.n_images == 1 and any("cam2.png: image file is missing" in s["reason"] for s in report.skipped)
    # one that is a named pipe: skipped with that reason, never opened (opening a FIFO blocks)
    os.mkfifo(tmp_path / "nerf/images/cam2.png")
    report = import_capture(tmp_path / "nerf", tmp_path / "cap", ImportConfig())
    assert report.n_images == 1 and any("cam2.png: not a regular file" in s["reason"] for s in report.skipped)
    # truncated JSON
    path = tmp_path / "nerf/transforms.json"
    path.write_text(path.read_text()[:200])
    with pytest.raises(CaptureError, match=r"transforms.json: not valid JSON"):
        import_capture(tmp_path / "nerf", tmp_path / "cap3", ImportConfig())
    path.write_text(json.dumps({"camera_model": "OPENCV_FISHEYE", "frames": [{"file_path": "x"}]}))
    with pytest.raises(CaptureError, match="camera_model OPENCV_FISHEYE is not supported"):
        import_capture(tmp_path / "nerf", tmp_path / "cap3", ImportConfig())


@pytest.mark.parametrize("model,dist", [("PINHOLE", None), ("SIMPLE_PINHOLE", None), ("SIMPLE_RADIAL", [-0.3, 0, 0, 0]),
                                        ("RADIAL", [-0.3, 0.1, 0, 0]), ("OPENCV", [-0.3, 0.1, 0.003, -0.002])])
def test_nerfstudio_camera_models(tmp_path, model, dist):
    """nerfstudio writes PINHOLE (and SIMPLE_PINHOLE / SIMPLE_RADIAL / RADIAL from COLMAP); radial ones undistorted."""
    scene = Scene(make_cameras(3, square=model.startswith("SIMPLE"), dist=None if dist is None else lambda i: np.array(dist)),
                  points=WIDE_POINTS)
    write_transforms(tmp_path / "ns", scene, model=model)
    assert json.loads((tmp_path / "ns/transforms.json").read_text())["camera_model"] == model
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig())
    assert report.n_images == 3 and not report.skipped
    check(tmp_path / "cap", scene, exact=dist is None, tol=0.4)


@pytest.mark.parametrize("model,key,value,match", [
    ("PINHOLE", "k1", 0.1, "camera_model PINHOLE has no k1 distortion, but the file gives k1 = 0.1"),
    ("SIMPLE_RADIAL", "p1", 0.01, "camera_model SIMPLE_RADIAL has no p1 distortion, but the file gives p1 = 0.01"),
    ("RADIAL", "k3", 0.2, "camera_model RADIAL has no k3 distortion"),
    ("SIMPLE_PINHOLE", "fl_y", 250.0, "camera_model SIMPLE_PINHOLE has one focal length, but fl_x = 230.0 and fl_y = 250.0"),
    ("FISHEYE624", "k1", 0.0, "camera_model FISHEYE624 is not supported")])
def test_camera_model_contradictions_are_refused(tmp_path, model, key, value, match):
    scene = Scene(make_cameras(2, square=True))
    write_transforms(tmp_path / "ns", scene, per_frame=True)
    path = tmp_path / "ns/transforms.json"
    meta = json.loads(path.read_text())
    meta["frames"][1].update({"camera_model": model, key: value})
    path.write_text(json.dumps(meta))
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig())
    assert report.n_images == 1
    assert match in {s["item"]: s["reason"] for s in report.skipped}["transforms.json [frames[1] ./images/cam1.png]"]


def test_mask_path(tmp_path):
    scene = Scene(make_cameras(3))
    masks = {n: silhouette(c) for n, c in scene.cameras.items()}
    write_transforms(tmp_path / "ns", scene, masks=masks)
    import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig())
    cap = check(tmp_path / "cap", scene)
    for row in cap.manifest.to_dict("records"):
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "cap" / row["mask_path"]), cv2.IMREAD_GRAYSCALE), masks[row["camera"]])
    # a missing or unreadable mask is recorded (naming the file) and its image kept without a mask
    (tmp_path / "ns/masks/cam1.png").unlink()
    (tmp_path / "ns/masks/cam2.png").write_bytes(b"not a png")
    report = import_capture(tmp_path / "ns", tmp_path / "cap2", ImportConfig())
    reasons = {s["item"]: s["reason"] for s in report.skipped}
    assert reasons["transforms.json [frames[1] ./images/cam1.png] mask_path"].endswith("masks/cam1.png: mask file is missing")
    assert reasons["transforms.json [frames[2] ./images/cam2.png] mask_path"].endswith("masks/cam2.png: not a readable mask image")
    cap = load_capture(tmp_path / "cap2")
    assert report.n_images == 3 and cap.manifest.set_index("camera").mask_path.notna().to_dict() == {"cam0": True, "cam1": False, "cam2": False}
    assert import_capture(tmp_path / "ns", tmp_path / "cap3", ImportConfig(masks=False)).skipped == []


@pytest.mark.parametrize("escape", ["../outside.png", "images/../../outside.png", "ABSOLUTE"])
def test_a_file_path_outside_the_folder_is_refused(tmp_path, escape):
    """A downloaded transforms.json whose file_path leaves its folder (`..`, an absolute path) pulled that file into
    the capture; now the frame is skipped with the reason (refused with strict) and the file is never read."""
    scene = Scene(make_cameras(3))
    write_transforms(tmp_path / "nerf", scene)
    cv2.imwrite(str(tmp_path / "outside.png"), scene.image("cam1")[..., ::-1])
    path = tmp_path / "nerf" / "transforms.json"
    meta = json.loads(path.read_text())
    bad = str(tmp_path / "outside.png") if escape == "ABSOLUTE" else escape
    meta["frames"][1]["file_path"] = bad
    path.write_text(json.dumps(meta))
    report = import_capture(tmp_path / "nerf", tmp_path / "cap", ImportConfig())
    assert report.n_images == 2
    reasons = [s["reason"] for s in report.skipped]
    assert any(f"file_path {bad!r} is outside {tmp_path}" in r for r in reasons), reasons
    with pytest.raises(CaptureError, match="is outside .*; refused"):
        import_capture(tmp_path / "nerf", tmp_path / "cap2", ImportConfig(strict=True))


def test_a_frames_own_camera_angle_x_wins_over_the_top_level_fl_x(tmp_path):
    """Per-frame keys override the top-level ones, also when the frame gives its focal length as an angle."""
    from dataclasses import replace
    cams = make_cameras(2, square=True)
    K = cams["cam1"].K.astype(np.float64).copy()
    K[0, 0] = K[1, 1] = 300.0
    cams["cam1"] = replace(cams["cam1"], K=K.astype(np.float32))
    scene = Scene(cams)
    write_transforms(tmp_path / "ns", scene)  # top level: cam0's fl_x, fl_y
    path = tmp_path / "ns/transforms.json"
    meta = json.loads(path.read_text())
    meta["frames"][1]["camera_angle_x"] = 2 * np.arctan(0.5 * cams["cam1"].width / 300.0)
    path.write_text(json.dumps(meta))
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig())
    assert report.n_images == 2 and not report.skipped
    cap = check(tmp_path / "cap", scene)  # K of each camera, and the dots where the cameras put them
    assert cap.cameras(*cap.sequences()[0])["cam1"].K[0, 0] == pytest.approx(300.0)


def test_nerfstudios_k4_is_refused(tmp_path):
    """nerfstudio's k4 is an r⁸ radial term that OpenCV's distortion cannot express: refused, never dropped."""
    scene = Scene(make_cameras(2, square=True))
    write_transforms(tmp_path / "ns", scene, model="OPENCV")
    path = tmp_path / "ns/transforms.json"
    meta = json.loads(path.read_text())
    meta["frames"][1]["k4"] = 0.1
    path.write_text(json.dumps(meta))
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig())
    assert report.n_images == 1
    reason, = [s["reason"] for s in report.skipped]
    assert "k4 = 0.1 (nerfstudio's r⁸ radial term) has no OpenCV counterpart" in reason
    meta["frames"][1]["k4"] = 0.0  # a zero k4 is no distortion
    path.write_text(json.dumps(meta))
    assert import_capture(tmp_path / "ns", tmp_path / "cap2", ImportConfig()).n_images == 2


def test_vhap_export_reads_back_as_its_capture(tmp_path):
    """VHAP's dynamic export (here geoface's `export fits --format vhap`, VHAP's keys and conventions: cy from the
    bottom edge, one entry per timestep and camera) imports as the capture it came from: its frames, cameras
    (fx ≠ fy, off-centre principal point), images and masks. Read as a static scene it made 8 cameras of one frame
    with cy mirrored by 5 px."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flame_fitting"))
    from export_testdata import DIVERGED, FRAMES, SEQUENCE, SUBJECT, UNMASKED, make_export_data

    from flame_fitting.formats.export_vhap import export_vhap

    data = make_export_data(tmp_path / "data")
    export_vhap(data.capture, data.fits, tmp_path / "vhap", cameras="capture")
    report = import_capture(tmp_path / "vhap" / SUBJECT / SEQUENCE, tmp_path / "cap", ImportConfig(sequence="s"))
    assert not report.skipped
    cap, src = load_capture(tmp_path / "cap", check_hashes=True), load_capture(data.capture)
    (subject, sequence), = cap.sequences()
    cams = cap.cameras(subject, sequence)
    assert sorted(cams) == sorted(data.capture_cameras)
    for name, ref in data.capture_cameras.items():
        assert abs(ref.K[1, 2] - ref.height / 2) > 2                      # a mirrored cy would show
        np.testing.assert_allclose(cams[name].K, ref.K, atol=1e-4)
        np.testing.assert_allclose(cams[name].world_to_cam, ref.world_to_cam, atol=1e-5)
    frames = [f for f in FRAMES if f != DIVERGED]
    assert sorted(set(cap.manifest.frame)) == frames and len(cap.manifest) == len(frames) * len(cams)
    for row in cap.manifest.to_dict("records"):
        ref = src.manifest[(src.manifest.frame == row["frame"]) & (src.manifest.camera == row["camera"])].iloc[0]
        np.testing.assert_array_equal(cap.image(row), src.image(ref))
        assert isinstance(row["mask_path"], str) != ((row["frame"], row["camera"]) == UNMASKED)
    # the frame options pick timesteps
    import_capture(tmp_path / "vhap" / SUBJECT / SEQUENCE, tmp_path / "cap2", ImportConfig(frames=[frames[-1]]))
    assert sorted(set(load_capture(tmp_path / "cap2").manifest.frame)) == [frames[-1]]


def test_vhap_camera_that_moves_is_skipped(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flame_fitting"))
    from export_testdata import SEQUENCE, SUBJECT, make_export_data

    from flame_fitting.formats.export_vhap import export_vhap

    data = make_export_data(tmp_path / "data")
    export_vhap(data.capture, data.fits, tmp_path / "vhap", cameras="capture")
    path = tmp_path / "vhap" / SUBJECT / SEQUENCE / "transforms.json"
    meta = json.loads(path.read_text())
    meta["frames"][-1]["transform_matrix"][0][3] += 0.01
    meta["frames"][0].pop("timestep_index")
    meta["frames"][0].pop("timestep_id")
    meta["frames"][1].update(timestep_id="\u00b2", timestep_index=None)  # a non-ASCII digit: int() raised
    path.write_text(json.dumps(meta))
    report = import_capture(path, tmp_path / "cap", ImportConfig())
    reasons = [s["reason"] for s in report.skipped]
    assert len(reasons) == 3 and "differs from" in reasons[2] and all("timestep_index" in r for r in reasons[:2]), \
        reasons


@pytest.mark.parametrize("key,value", [("is_fisheye", True), ("equirectangular", True), ("latlong", True),
                                       ("orthographic", True), ("ftheta_p0", 0.0)])
def test_instant_ngp_lens_keys_are_refused(tmp_path, key, value):
    """instant-ngp's colmap2nerf.py writes `is_fisheye: true` (k1..k4 then OpenCV-fisheye angle terms) and its loader
    takes `equirectangular`/`latlong`/`orthographic`/`ftheta_p0` as other lenses; all were read as a pinhole (with
    OpenCV radial k1) without a word (found by an audit). Now: refused at the top level, a frame skipped."""
    scene = Scene(make_cameras(2))
    src = write_transforms(tmp_path / "nerf", scene)
    meta = json.loads((src / "transforms.json").read_text())
    (src / "transforms.json").write_text(json.dumps({**meta, key: value, "k1": -0.05, "is_fisheye": key == "is_fisheye"}))
    with pytest.raises(CaptureError, match=f"transforms.json: '?{key}'? .*not supported"):
        import_capture(src, tmp_path / "cap", ImportConfig())
    meta["frames"][1][key] = value
    (src / "transforms.json").write_text(json.dumps({**meta, "is_fisheye": False}))
    report = import_capture(src, tmp_path / "cap2", ImportConfig())
    assert report.n_images == 1 and key in report.skipped[0]["reason"]


@pytest.mark.parametrize("per_frame", [False, True])
def test_nerfstudios_distortion_params_list_is_read(tmp_path, per_frame):
    """nerfstudio's dataparser reads `distortion_params` [k1, k2, k3, k4, p1, p2] in place of the single keys; it was
    ignored, so the images kept their distortion (2 px off; found by an audit)."""
    scene = Scene(make_cameras(3, dist=lambda i: np.array([-0.3, 0.1, 0.003, -0.002])), points=WIDE_POINTS)
    src = write_transforms(tmp_path / "nerf", scene, per_frame=per_frame)
    meta = json.loads((src / "transforms.json").read_text())
    for d in meta["frames"] if per_frame else [meta]:
        k1, k2, p1, p2 = (d.pop(k) for k in ("k1", "k2", "p1", "p2"))
        d["distortion_params"] = [k1, k2, 0.0, 0.0, p1, p2]
    (src / "transforms.json").write_text(json.dumps(meta))
    import_capture(src, tmp_path / "cap", ImportConfig())
    check(tmp_path / "cap", scene, exact=False, tol=0.4)
    meta["frames"][0]["distortion_params"] = [-0.3, 0.1]
    (src / "transforms.json").write_text(json.dumps(meta))
    report = import_capture(src, tmp_path / "cap2", ImportConfig())
    assert report.n_images == 2 and "distortion_params must be a list [k1, k2, k3, k4, p1, p2]" in report.skipped[0]["reason"]


def test_a_windows_file_path_with_backslashes_is_read(tmp_path):
    """colmap2nerf.py run on Windows writes `.\\images\\0001.jpg`-style paths, which instant-ngp's loader reads;
    they were skipped as missing files on Linux (found by an audit)."""
    scene = Scene(make_cameras(2))
    src = write_transforms(tmp_path / "nerf", scene)
    meta = json.loads((src / "transforms.json").read_text())
    for fr in meta["frames"]:
        fr["file_path"] = "." + "\\" + fr["file_path"].replace("/", "\\")
    (src / "transforms.json").write_text(json.dumps(meta))
    report = import_capture(src, tmp_path / "cap", ImportConfig())
    assert report.n_images == 2 and not report.skipped
    check(tmp_path / "cap", scene)


def _as_fov(src: dict, axes: str) -> None:
    """Replace fl_x / fl_y of `src` by instant-ngp's x_fov / y_fov (degrees) for the given axes, dropping the others'."""
    fl = {"x": src.pop("fl_x"), "y": src.pop("fl_y")}
    for a in axes:
        src[f"{a}_fov"] = float(np.degrees(2 * np.arctan(0.5 * src["w" if a == "x" else "h"] / fl[a])))


@pytest.mark.parametrize("per_frame,axes,square", [(False, "x", True), (False, "xy", False), (True, "xy", False),
                                                   (True, "y", True)])
def test_instant_ngps_x_fov_in_degrees_gives_the_fl_x_camera(tmp_path, per_frame, axes, square):
    """instant-ngp's own focal keys x_fov / y_fov (field of view in degrees; nerf_loader.cu: "x_fov is in degrees,
    camera_angle_x in radians") were not read: a file giving its focal length only as x_fov imported nothing ('no
    focal length'). Now fl = 0.5 w / tan(radians(x_fov) / 2), an axis without a key takes the other's focal length,
    top level or per frame, and the cameras equal those of the same file written with fl_x / fl_y (1e-6 relative)."""
    scene = Scene(make_cameras(3, square=square))
    write_transforms(tmp_path / "fl", scene, per_frame=per_frame)
    import_capture(tmp_path / "fl", tmp_path / "cap_fl", ImportConfig())
    write_transforms(tmp_path / "fov", scene, per_frame=per_frame)
    path = tmp_path / "fov/transforms.json"
    meta = json.loads(path.read_text())
    for src in meta["frames"] if per_frame else [meta]:
        _as_fov(src, axes)
    path.write_text(json.dumps(meta))
    report = import_capture(tmp_path / "fov", tmp_path / "cap_fov", ImportConfig())
    assert report.n_images == 3 and not report.skipped
    cap = check(tmp_path / "cap_fov", scene)
    ref = load_capture(tmp_path / "cap_fl")
    for name, cam in cap.cameras(*cap.sequences()[0]).items():
        np.testing.assert_allclose(cam.K.astype(np.float64), ref.cameras(*ref.sequences()[0])[name].K.astype(np.float64),
                                   rtol=1e-6, atol=0)


def test_focal_keys_follow_instant_ngps_precedence(tmp_path):
    """Several focal keys in one object: x_fov over fl_x over camera_angle_x, as instant-ngp's read_focal_length."""
    scene = Scene(make_cameras(2, square=True))
    write_transforms(tmp_path / "t", scene)
    path = tmp_path / "t/transforms.json"
    meta = json.loads(path.read_text())
    fx, w = meta["fl_x"], meta["w"]
    del meta["fl_y"]  # y takes x's focal length
    meta.update(x_fov=float(np.degrees(2 * np.arctan(0.5 * w / fx))), fl_x=fx * 2, camera_angle_x=1.0)
    path.write_text(json.dumps(meta))
    import_capture(tmp_path / "t", tmp_path / "cap", ImportConfig())
    check(tmp_path / "cap", scene)  # x_fov's K, not fl_x's (2×) nor camera_angle_x's
    del meta["x_fov"]
    meta.update(fl_x=fx, camera_angle_x=1.0)
    path.write_text(json.dumps(meta))
    import_capture(tmp_path / "t", tmp_path / "cap2", ImportConfig())
    check(tmp_path / "cap2", scene)  # fl_x's K, not camera_angle_x's


@pytest.mark.parametrize("key,value", [("x_fov", 0.0), ("x_fov", 180.0), ("x_fov", -40.0), ("y_fov", 200.0),
                                       ("camera_angle_x", 0.0), ("camera_angle_x", 50.0)])
def test_a_field_of_view_outside_its_range_is_refused_naming_the_file(tmp_path, key, value):
    """x_fov / y_fov in (0, 180) degrees, camera_angle_x / _y in (0, π) radians: another value is no pinhole camera
    (camera_angle_x = 0 was a ZeroDivisionError traceback). At the top level: one error naming the file; in a frame:
    that frame skipped with the reason."""
    scene = Scene(make_cameras(2, square=True))
    write_transforms(tmp_path / "t", scene)
    path = tmp_path / "t/transforms.json"
    meta = json.loads(path.read_text())
    meta[key] = value
    path.write_text(json.dumps(meta))
    unit = "degrees" if key.endswith("fov") else "radians"
    with pytest.raises(CaptureError, match=rf"^{re.escape(str(path))}: {key} = {value} is not a field of view in {unit} \(0 < {key} <"):
        import_capture(tmp_path / "t", tmp_path / "cap", ImportConfig())
    assert not (tmp_path / "cap").exists()
    del meta[key]
    meta["frames"][1][key] = value
    path.write_text(json.dumps(meta))
    report = import_capture(tmp_path / "t", tmp_path / "cap", ImportConfig())
    assert report.n_images == 1 and len(report.skipped) == 1
    assert f"{key} = {value} is not a field of view in {unit}" in report.skipped[0]["reason"]


@pytest.mark.parametrize("strict", [False, True])
def test_a_frame_skipped_for_its_intrinsics_says_its_location_once(tmp_path, strict):
    """The intrinsics' errors name the entry (`transforms.json [frames[0] ./images/cam0.png]`) and so did the skip
    item they were recorded under: the location was said twice. Now once, in the record and in strict mode's error."""
    scene = Scene(make_cameras(2))
    write_transforms(tmp_path / "t", scene, per_frame=True)
    path = tmp_path / "t/transforms.json"
    meta = json.loads(path.read_text())
    for key in ("fl_x", "fl_y"):
        del meta["frames"][0][key]
    path.write_text(json.dumps(meta))
    where = "transforms.json [frames[0] ./images/cam0.png]"
    if strict:
        with pytest.raises(CaptureError) as e:
            import_capture(tmp_path / "t", tmp_path / "cap", ImportConfig(strict=True))
        assert str(e.value).startswith(f"{where}: no focal length") and str(e.value).count("frames[0]") == 1
        return
    report = import_capture(tmp_path / "t", tmp_path / "cap", ImportConfig())
    assert report.skipped == [{"item": where, "reason": report.skipped[0]["reason"]}]
    assert report.skipped[0]["reason"].startswith("no focal length (none of x_fov")
