"""NeRSemble reader: v2 videos (frame selection, codec tolerance), v2 extracted images with per-serial
intrinsics and colour calibration, v1 downscaled image folders (K scaled from the image size), and
bad input (short video, unknown camera, truncated JSON, non-rigid pose, wrong aspect)."""
import json

import cv2
import numpy as np
import pytest
from writers import Scene, flipped, make_cameras, projection_error, write_nersemble

from flame_fitting.formats.capture import CaptureError, load_capture
from pipelines.import_config import ImportConfig
from pipelines.nersemble import correct_color, import_capture


def serial_cameras(n=3, **kw):
    cams = make_cameras(n, **kw)
    return {f"2222000{i}": c for i, c in enumerate(cams.values())}


def cameras_match(cap, scene, scale=1.0):
    for (subject, sequence) in cap.sequences():
        for serial, cam in cap.cameras(subject, sequence).items():
            ref = scene.cameras[serial]
            K = ref.K.astype(np.float64) * np.array([[scale], [scale], [1.0]])
            np.testing.assert_allclose(cam.K.astype(np.float64), K, rtol=0, atol=1e-6)
            np.testing.assert_allclose(cam.world_to_cam.astype(np.float64), ref.world_to_cam.astype(np.float64), atol=1e-6)


def test_v2_video_frame_selection(tmp_path):
    scene = Scene(serial_cameras())
    write_nersemble(tmp_path / "ns", scene, frames=range(6))
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig(frame_start=1, frame_stride=2, max_frames=2))
    assert report.skipped == [] and report.sequences == ["017/EMO-1"]
    cap = load_capture(tmp_path / "cap", check_hashes=True)
    cameras_match(cap, scene)
    assert cap.frames("017", "EMO-1") == [1, 3] and len(cap.manifest) == 6
    cams = cap.cameras("017", "EMO-1")
    for row in cap.manifest.to_dict("records"):
        img = cap.image(row).astype(np.float64)
        errors = [np.abs(img - scene.image(row["camera"], t)).mean() for t in range(6)]
        assert errors[row["frame"]] < 3.0 and int(np.argmin(errors)) == row["frame"]  # right frame, codec tolerance
        assert row["source_path"] == f"017/sequences/EMO-1/images/cam_{row['camera']}.mp4"
        assert row["source_key"] == f"frame {row['frame']}" and row["source_sha256"] is None
        cam = cams[row["camera"]]
        assert projection_error(cam, cap.image(row), scene.points) < 1.0
        # world_2_cam read as camera→world misses the dots
        assert projection_error(flipped(cam, np.linalg.inv(cam.world_to_cam.astype(np.float64))), cap.image(row), scene.points) > 10


def test_v2_images_colour_calibration(tmp_path):
    scene = Scene(serial_cameras(3))
    rng = np.random.default_rng(0)
    # gains ≥ 1 so the recorded (uncorrected) images stay inside [0, 255]
    ccm = {s: np.hstack([np.diag([1.25, 1.05, 1.15]) + rng.uniform(0, 0.04, (3, 3)), rng.uniform(0, 0.01, (3, 1))])
           for s in scene.cameras}
    write_nersemble(tmp_path / "ns", scene, media="images", per_serial_intrinsics=True, ccm=ccm, frames=[0, 1])
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig(cameras=["22220000", "22220002"]))
    assert report.n_images == 4 and not report.skipped
    cap = load_capture(tmp_path / "cap", check_hashes=True)
    assert cap.info["color_calibration"] == ["017/calibration/color_calibration.json"]
    cams = cap.cameras("017", "EMO-1")
    assert sorted(cams) == ["22220000", "22220002"]
    cameras_match(cap, scene)
    for row in cap.manifest.to_dict("records"):
        img, true = cap.image(row), scene.image(row["camera"], row["frame"])
        raw = cv2.imread(str(tmp_path / "ns" / row["source_path"]))[..., ::-1]
        assert np.abs(img.astype(int) - true).max() <= 2  # the calibration undoes the camera's colour response
        assert np.abs(raw.astype(int) - true).mean() > 5  # ... which was far from identity
        assert row["source_sha256"] is not None
        assert projection_error(cams[row["camera"]], img, scene.points) < 0.3
    # an identity 3×3 matrix changes nothing but the truncation of sRGB -> linear -> sRGB (as nersemble-data)
    img = scene.image("22220000")
    assert np.abs(correct_color(img, np.eye(3)).astype(int) - img).max() <= 1


@pytest.mark.parametrize("size_keys", [True, False])
def test_v1_downscaled_folder_scales_K(tmp_path, size_keys):
    scene = Scene(serial_cameras(3, width=400, height=320, f=460.0))
    write_nersemble(tmp_path / "ns", scene, pid="18", version=1, scale=0.5, size_keys=size_keys, frames=[0, 2])
    cfg = ImportConfig() if size_keys else ImportConfig(nersemble_intrinsics_size=[400, 320])
    report = import_capture(tmp_path / "ns", tmp_path / "cap", cfg)
    assert report.n_images == 6 and not report.skipped
    cap = load_capture(tmp_path / "cap")
    assert cap.info["versions"] == {"18": 1} and set(cap.info["intrinsics_scaled"].values()) == {0.5}
    cameras_match(cap, scene, scale=0.5)
    cams = cap.cameras("18", "EMO-1")
    for row in cap.manifest.to_dict("records"):
        img = cap.image(row)
        assert img.shape == (160, 200, 3) and row["source_path"].startswith(f"18/sequences/EMO-1/frame_{row['frame']:05d}/images-2x-73fps/")
        assert projection_error(cams[row["camera"]], img, scene.points) < 0.3
    if not size_keys:  # without the size, the principal point (at the centre of 400×320) tells the same
        import_capture(tmp_path / "ns", tmp_path / "cap2", ImportConfig())
        cameras_match(load_capture(tmp_path / "cap2"), scene, scale=0.5)
        # an explicit size of another aspect ratio is refused, naming the option
        with pytest.raises(CaptureError, match="nothing imported.*not the same aspect ratio.*nersemble_intrinsics_size"):
            import_capture(tmp_path / "ns", tmp_path / "cap3", ImportConfig(nersemble_intrinsics_size=[2200, 3208]))


def test_bad_input(tmp_path):
    scene = Scene(serial_cameras(3))
    write_nersemble(tmp_path / "ns", scene, frames=range(3))
    # a video whose camera is not calibrated, and a non-rigid pose
    cal = tmp_path / "ns/017/calibration/camera_params.json"
    params = json.loads(cal.read_text())
    del params["world_2_cam"]["22220001"]
    params["world_2_cam"]["22220002"][0][0] *= 2
    cal.write_text(json.dumps(params))
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig(frames=[0, 2, 7]))
    reasons = {s["item"]: s["reason"] for s in report.skipped}
    assert reasons["017/sequences/EMO-1/images/cam_22220001.mp4 [camera 22220001]"] == \
        "camera 22220001 is not in 017/calibration/camera_params.json"
    assert "not a rotation" in reasons["017/calibration/camera_params.json [camera 22220002]"]
    # the video is shorter than the selected frames: frames 0 and 2 imported, 7 recorded
    assert reasons["017/sequences/EMO-1/images/cam_22220000.mp4"] == "video has only 3 frames; selected frames [7] are missing"
    assert report.n_images == 2
    with pytest.raises(CaptureError, match="cam_22220001.mp4 \\[camera 22220001\\]: camera 22220001 is not in"):
        import_capture(tmp_path / "ns", tmp_path / "cap2", ImportConfig(strict=True))
    with pytest.raises(CaptureError, match="cam_22220000.mp4: video has only 3 frames"):
        import_capture(tmp_path / "ns", tmp_path / "cap2", ImportConfig(strict=True, cameras=["22220000"], frames=[1, 5]))
    # a truncated camera_params.json: nothing can be imported, the error names the file
    cal.write_text(cal.read_text()[:100])
    with pytest.raises(CaptureError, match="nothing imported.*017/calibration/camera_params.json: not valid JSON"):
        import_capture(tmp_path / "ns", tmp_path / "cap3", ImportConfig())
    with pytest.raises(CaptureError, match="no NeRSemble participant folders"):
        import_capture(tmp_path / "ns" / "017" / "sequences", tmp_path / "cap3", ImportConfig())


def test_the_background_sequence_is_left_out_with_a_warning(tmp_path, capsys):
    """nersemble-data ships BACKGROUND (the empty studio, every camera) beside the sequences: no head to fit."""
    scene = Scene(serial_cameras(2))
    write_nersemble(tmp_path / "ns", scene, media="images", frames=[0])
    write_nersemble(tmp_path / "ns", scene, seq="BACKGROUND", media="images", frames=[0])
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig())
    assert report.sequences == ["017/EMO-1"] and report.n_images == 2 and not report.skipped
    assert any("017/sequences/BACKGROUND" in w and "background" in w for w in report.warnings)
    assert "BACKGROUND" in capsys.readouterr().err


def test_subjects_are_given_as_written_and_an_absent_one_is_named(tmp_path, capsys):
    """`--set subjects=[017]` is the id '017' (YAML alone reads it as octal 15), and an id the source does not hold
    is named in the warning (or the error, when nothing else was imported)."""
    import typing

    from geoface.cli.config import parse_value

    wanted = parse_value("subjects", "[017, 018]", typing.get_type_hints(ImportConfig)["subjects"])
    assert wanted == ["017", "018"] and parse_value("subjects", "17", list[str] | None) == ["17"]
    scene = Scene(serial_cameras(2))
    write_nersemble(tmp_path / "ns", scene, media="images", frames=[0])
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig(subjects=wanted))
    assert report.sequences == ["017/EMO-1"]
    assert any(w.startswith("subjects 018 (the `subjects` setting) were not imported") for w in report.warnings)
    with pytest.raises(CaptureError, match="nothing imported from this nersemble source .*subjects asked for: 018"):
        import_capture(tmp_path / "ns", tmp_path / "cap2", ImportConfig(subjects=["018"]))
