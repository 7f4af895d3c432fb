"""COLMAP reader: text and binary sparse models round-trip to the canonical capture (cameras exact,
images identical, known 3D points project onto the drawn dots), distortion is undistorted away,
and bad input is skipped with a reason or refused naming the file."""
import shutil
import struct

import numpy as np
import pytest
from writers import WIDE_POINTS, Scene, flipped, make_cameras, projection_error, write_colmap

from flame_fitting.formats.capture import CaptureError, load_capture
from pipelines.colmap import import_capture
from pipelines.import_config import ImportConfig


def check_capture(out, scene, exact_images=True, tol=0.3):
    cap = load_capture(out, check_hashes=True)
    (subject, sequence), = cap.sequences()
    cams = cap.cameras(subject, sequence)
    assert len(cap.manifest) == len(scene.cameras)
    for row in cap.manifest.to_dict("records"):
        cam, ref = cams[row["camera"]], scene.cameras[row["camera"]]
        np.testing.assert_allclose(cam.K.astype(np.float64), ref.K.astype(np.float64), rtol=0, atol=1e-6)
        np.testing.assert_allclose(cam.world_to_cam.astype(np.float64), ref.world_to_cam.astype(np.float64), atol=1e-6)
        assert cam.dist is None and row["frame"] == 0 and row["source_path"] == f"images/{row['camera']}.png"
        img = cap.image(row)
        if exact_images:
            np.testing.assert_array_equal(img, scene.image(row["camera"]))
        assert projection_error(cam, img, scene.points) < tol
        # reading COLMAP's world→camera (q, t) as camera→world misses the dots
        assert projection_error(flipped(cam, np.linalg.inv(cam.world_to_cam.astype(np.float64))), img, scene.points) > 10
    return cap


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("model", ["PINHOLE", "SIMPLE_PINHOLE"])
def test_roundtrip_pinhole(tmp_path, binary, model):
    scene = Scene(make_cameras(4, square=model == "SIMPLE_PINHOLE"))
    write_colmap(tmp_path / "proj", scene, binary=binary, model=model)
    report = import_capture(tmp_path / "proj", tmp_path / "cap", ImportConfig(subject="anna"))
    assert report.n_images == 4 and report.skipped == [] and report.sequences == ["anna/default"]
    cap = check_capture(tmp_path / "cap", scene)
    assert cap.info["source"] == "colmap" and cap.info["colmap_model"][0].endswith("cameras.bin" if binary else "cameras.txt")


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("model", ["OPENCV", "SIMPLE_RADIAL"])
def test_distortion_is_undistorted(tmp_path, binary, model):
    dist = (lambda i: np.array([-0.3 + 0.03 * i, 0.1, 0.004, -0.003])) if model == "OPENCV" else (lambda i: np.array([-0.3, 0, 0, 0]))
    scene = Scene(make_cameras(3, square=model == "SIMPLE_RADIAL", dist=dist), points=WIDE_POINTS)
    write_colmap(tmp_path / "proj", scene, binary=binary, model=model)
    import_capture(tmp_path / "proj", tmp_path / "cap", ImportConfig())
    check_capture(tmp_path / "cap", scene, exact_images=False, tol=0.4)


def test_partial_import_and_bad_images(tmp_path):
    scene = Scene(make_cameras(4))
    wrong = {"cam2": np.zeros((100, 100, 3), np.uint8)}
    write_colmap(tmp_path / "proj", scene, binary=False, images=wrong, camera_ids={"cam0": 1, "cam1": 9, "cam2": 3, "cam3": 4})
    report = import_capture(tmp_path / "proj", tmp_path / "cap", ImportConfig())
    assert report.n_images == 2
    reasons = {s["item"]: s["reason"] for s in report.skipped}
    assert reasons["sparse/0/images.txt [image 2 cam1.png]"] == "camera_id 9 is not in sparse/0/cameras.txt"
    assert reasons["images/cam2.png"] == "image is 100×100, camera 'cam2' is calibrated for 200×160"
    assert load_capture(tmp_path / "cap").info["skipped"] == report.skipped
    with pytest.raises(CaptureError, match=r"images.txt \[image 2 cam1.png\]: camera_id 9 is not in"):
        import_capture(tmp_path / "proj", tmp_path / "cap2", ImportConfig(strict=True))
    # nothing valid at all: a clear error, no capture written
    all_wrong = {n: np.zeros((100, 100, 3), np.uint8) for n in scene.cameras}
    write_colmap(tmp_path / "bad", scene, binary=True, images=all_wrong)
    with pytest.raises(CaptureError, match="nothing imported.*4 items skipped.*cam0.png: image is 100×100"):
        import_capture(tmp_path / "bad", tmp_path / "cap3", ImportConfig())
    assert not (tmp_path / "cap3").exists()


def test_corrupt_models_are_refused_naming_the_file(tmp_path):
    scene = Scene(make_cameras(2))
    write_colmap(tmp_path / "p", scene, binary=True)
    path = tmp_path / "p/sparse/0/images.bin"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(CaptureError, match=r"images.bin: truncated at byte"):
        import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    # every camera of an unsupported model (OPENCV_FISHEYE = 5): nothing to import, refused naming the models
    write_colmap(tmp_path / "f", scene, binary=True, model="OPENCV")
    cams = tmp_path / "f/sparse/0/cameras.bin"
    data = bytearray(cams.read_bytes())
    struct.pack_into("<i", data, 8 + 4, 5)
    struct.pack_into("<i", data, 8 + 24 + 8 * 8 + 4, 5)
    cams.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match=r"cameras.bin: no image uses a supported camera model \(found OPENCV_FISHEYE "
                                           r"\(camera 1, 2\); supported: SIMPLE_PINHOLE, PINHOLE"):
        import_capture(tmp_path / "f", tmp_path / "cap", ImportConfig())
    assert not (tmp_path / "cap").exists()
    # a non-unit quaternion is not a rotation: that image is skipped
    write_colmap(tmp_path / "q", scene, binary=False)
    txt = tmp_path / "q/sparse/0/images.txt"
    lines = txt.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("1 "))
    e = lines[i].split()
    e[1] = str(float(e[1]) * 1.5)
    lines[i] = " ".join(e)
    txt.write_text("\n".join(lines) + "\n")
    report = import_capture(tmp_path / "q", tmp_path / "cap", ImportConfig())
    assert report.n_images == 1 and "not a unit quaternion" in report.skipped[0]["reason"]
    assert not (tmp_path / "empty").exists()
    with pytest.raises(CaptureError, match="no COLMAP model"):
        import_capture(tmp_path, tmp_path / "cap4", ImportConfig())


def test_an_images_txt_without_its_points2d_lines_is_refused_naming_the_line(tmp_path):
    """COLMAP's images.txt has two lines per image, the second (POINTS2D) empty when the image has no points. One
    written by hand or by a script for known poses (a calibrated dome) often leaves the second line out: the reader
    took every other image line for points, so half the images vanished without a reason in `skipped` (and a rig's
    cameras lost their folder names). Now the first image line found where POINTS2D belongs is one error."""
    scene = Scene(make_cameras(4))
    write_colmap(tmp_path / "proj", scene, binary=False)
    txt = tmp_path / "proj/sparse/0/images.txt"
    rows = [ln for ln in txt.read_text().splitlines() if ln.startswith("#") or ln.endswith(".png")]
    txt.write_text("\n".join(rows) + "\n")  # comments and image lines only
    n_comments = sum(ln.startswith("#") for ln in rows)
    with pytest.raises(CaptureError, match=rf"images.txt:{n_comments + 2}: not a POINTS2D line 'X Y POINT3D_ID \.\.\.' "
                                           r"after image 1 \(COLMAP's images.txt has two lines per image"):
        import_capture(tmp_path / "proj", tmp_path / "cap", ImportConfig())
    assert not (tmp_path / "cap").exists()
    txt.write_text("\n".join(ln if ln.startswith("#") else ln + "\n" for ln in rows) + "\n")  # empty POINTS2D lines
    assert import_capture(tmp_path / "proj", tmp_path / "cap", ImportConfig()).n_images == 4


@pytest.mark.parametrize("escape", ["../private/passport_scan.png", "ABSOLUTE"])
def test_an_image_name_outside_the_image_folder_is_refused(tmp_path, escape):
    """COLMAP's images.txt NAME is a path relative to the image folder: one that leaves it ('..', absolute) pulled
    that file into the capture (found by an audit); now the image is skipped with the reason, and never read."""
    scene = Scene(make_cameras(3))
    write_colmap(tmp_path / "proj", scene, binary=False)
    private = tmp_path / "proj" / "private" / "passport_scan.png"
    private.parent.mkdir()
    shutil.copy(tmp_path / "proj" / "images" / "cam1.png", private)
    bad = str(private) if escape == "ABSOLUTE" else escape
    txt = tmp_path / "proj" / "sparse" / "0" / "images.txt"
    txt.write_text(txt.read_text().replace(" cam1.png\n", f" {bad}\n"))
    report = import_capture(tmp_path / "proj", tmp_path / "cap", ImportConfig())
    assert report.n_images == 2
    assert any(f"image NAME {bad!r} is outside" in s["reason"] for s in report.skipped), report.skipped
    cap = load_capture(tmp_path / "cap")
    assert not (cap.manifest.source_path.str.contains("passport")).any()


@pytest.mark.parametrize("model_id,name,n_params", [(12, "SIMPLE_DIVISION", 4), (13, "DIVISION", 5), (14, "SIMPLE_FISHEYE", 3),
                                                    (15, "FISHEYE", 4), (16, "EUCM", 6), (17, "EQUIRECTANGULAR", 2)])
def test_colmap4_camera_models_are_parsed_and_their_images_skipped_by_name(tmp_path, model_id, name, n_params):
    """COLMAP 4.0 added model ids 12-17 (src/colmap/sensor/models.h); a cameras.bin holding one was refused whole as
    'unknown model id' (found by an audit), even when no image used that camera. Now an unused one is parsed past,
    and the images of a used one are skipped naming it."""
    scene = Scene(make_cameras(2))
    write_colmap(tmp_path / "p", scene, binary=True)
    cams = tmp_path / "p/sparse/0/cameras.bin"
    data = cams.read_bytes()
    extra = struct.pack("<iiQQ", 77, model_id, 200, 160) + struct.pack(f"<{n_params}d", *([100.0] * n_params))
    cams.write_bytes(struct.pack("<Q", 3) + data[8:] + extra)  # appended after the 2 cameras images use
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    assert report.n_images == 2 and report.skipped == []
    check_capture(tmp_path / "cap", scene)
    cams.write_bytes(struct.pack("<Q", 3) + extra + data[8:])  # first: parsed past, the 2 cameras still read
    import_capture(tmp_path / "p", tmp_path / "cap2", ImportConfig())
    imgs = tmp_path / "p/sparse/0/images.bin"
    raw = bytearray(imgs.read_bytes())
    struct.pack_into("<i", raw, 8 + 4 + 7 * 8, 77)  # image 1 now uses camera 77
    imgs.write_bytes(bytes(raw))
    report = import_capture(tmp_path / "p", tmp_path / "cap3", ImportConfig())  # image 1 skipped, image 2 kept
    assert report.n_images == 1 and [s["item"] for s in report.skipped] == ["sparse/0/images.bin [image 1 cam0.png]"]
    assert f"camera 77 in sparse/0/cameras.bin has camera model {name}, which geoface does not read" in \
        report.skipped[0]["reason"]


def test_a_points2d_count_past_the_end_is_refused_naming_the_file(tmp_path):
    """images.bin's uint64 points2D count was turned into a struct format of 3 × count letters: a corrupt count
    (2^61) raised MemoryError, not a CaptureError naming the file (found by an audit)."""
    write_colmap(tmp_path / "p", Scene(make_cameras(2)), binary=True)
    path = tmp_path / "p/sparse/0/images.bin"
    raw = bytearray(path.read_bytes())
    struct.pack_into("<Q", raw, raw.index(b"\x00", 8 + 64) + 1, 2**61)
    path.write_bytes(bytes(raw))
    with pytest.raises(CaptureError, match=r"images.bin: truncated at byte 89 .*image 1's 2305843009213693952 points2D"):
        import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())


def _fisheye_camera_3(mdir, binary: bool) -> None:
    """Camera 3 of write_colmap's model becomes OPENCV_FISHEYE (COLMAP id 5: fx fy cx cy k1 k2 k3 k4)."""
    if binary:
        data = (mdir / "cameras.bin").read_bytes()
        rec = 24 + 4 * 8  # PINHOLE: id, model, w, h + 4 doubles
        cid, _, w, h = struct.unpack_from("<iiQQ", data, 8 + 2 * rec)
        p = struct.unpack_from("<4d", data, 8 + 2 * rec + 24)
        (mdir / "cameras.bin").write_bytes(data[:8 + 2 * rec] + struct.pack("<iiQQ", cid, 5, w, h)
                                           + struct.pack("<8d", *p, 0.01, 0.0, 0.0, 0.0))
    else:
        lines = (mdir / "cameras.txt").read_text().splitlines()
        e = lines[-1].split()
        lines[-1] = " ".join([e[0], "OPENCV_FISHEYE", *e[2:], "0.01", "0.0", "0.0", "0.0"])
        (mdir / "cameras.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("binary", [False, True])
def test_a_camera_of_an_unsupported_model_skips_its_images_not_the_import(tmp_path, binary):
    """A model with two PINHOLE cameras and one OPENCV_FISHEYE camera was refused whole ('camera model OPENCV_FISHEYE
    is not supported'), although one bad camera is recorded and skipped, not fatal. Now the fisheye camera's image is
    skipped with the reason, and the other two import exactly; strict mode still refuses."""
    scene = Scene(make_cameras(3))
    write_colmap(tmp_path / "p", scene, binary=binary)
    _fisheye_camera_3(tmp_path / "p/sparse/0", binary)
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    ext = ".bin" if binary else ".txt"
    assert report.n_images == 2 and report.skipped == [
        {"item": f"sparse/0/images{ext} [image 3 cam2.png]",
         "reason": f"camera 3 in sparse/0/cameras{ext} has camera model OPENCV_FISHEYE, which geoface does not read "
                   "(supported: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV)"}]
    cap = load_capture(tmp_path / "cap", check_hashes=True)
    assert cap.info["skipped"] == report.skipped and sorted(cap.manifest.camera) == ["cam0", "cam1"]
    del scene.cameras["cam2"]
    check_capture(tmp_path / "cap", scene)
    with pytest.raises(CaptureError, match=rf"images{ext} \[image 3 cam2.png\]: camera 3 .* OPENCV_FISHEYE"):
        import_capture(tmp_path / "p", tmp_path / "cap2", ImportConfig(strict=True))
    # selecting only the fisheye camera leaves nothing: refused naming the file and the model
    with pytest.raises(CaptureError, match=rf"cameras{ext}: no image uses a supported camera model \(found "
                                           r"OPENCV_FISHEYE \(camera 3\)"):
        import_capture(tmp_path / "p", tmp_path / "cap3", ImportConfig(cameras=["cam2"]))


def test_a_wrong_parameter_count_is_a_malformed_file_not_an_unsupported_model(tmp_path):
    """PINHOLE has 4 parameters: a line with 3 is a malformed cameras.txt, refused naming the file and camera (a
    camera of an unsupported model would only skip its images)."""
    write_colmap(tmp_path / "p", Scene(make_cameras(3)), binary=False)
    txt = tmp_path / "p/sparse/0/cameras.txt"
    lines = txt.read_text().splitlines()
    lines[-1] = " ".join(lines[-1].split()[:-1])
    txt.write_text("\n".join(lines) + "\n")
    with pytest.raises(CaptureError, match=r"cameras.txt \[camera 3\]: PINHOLE needs 4 params, got 3"):
        import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    lines[-1] = lines[-1].replace("PINHOLE", "OPENCV_FISHEYE")  # 3 params for an 8-parameter model: malformed too
    txt.write_text("\n".join(lines) + "\n")
    with pytest.raises(CaptureError, match=r"cameras.txt \[camera 3\]: OPENCV_FISHEYE needs 8 params, got 3"):
        import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
