"""COLMAP ≥ 3.12 rigs and frames: a multi-camera rig filmed over several timesteps imports as one geoface frame per
COLMAP frame with one camera per rig camera (poses exact, images identical, dots on the projected points); COLMAP's
trivial one-rig-per-camera files change nothing; a moving rig, a stray or unframed image, a frame missing a camera,
IMU sensors and damaged files are refused or skipped with a clear reason."""
import struct

import numpy as np
import pytest
from colmap_rig_writer import write_colmap_rig
from writers import Scene, make_cameras, projection_error, write_colmap

from flame_fitting.formats.capture import CaptureError, load_capture
from pipelines.colmap import import_capture
from pipelines.import_config import ImportConfig

FRAMES = (1, 2, 3, 5)  # COLMAP frame ids (4 never registered)


def check_rig_capture(out, scene, frames=FRAMES, missing=(), name="rig1/{cam}/{f:04d}.png"):
    cap = load_capture(out, check_hashes=True)
    (subject, sequence), = cap.sequences()
    cams = cap.cameras(subject, sequence)
    assert sorted(cams) == sorted(scene.cameras)
    want = {(f, c) for f in frames for c in scene.cameras} - set(missing)
    assert {(r["frame"], r["camera"]) for r in cap.manifest.to_dict("records")} == want
    for row in cap.manifest.to_dict("records"):
        cam, ref = cams[row["camera"]], scene.cameras[row["camera"]]
        np.testing.assert_allclose(cam.K.astype(np.float64), ref.K.astype(np.float64), atol=1e-6)
        np.testing.assert_allclose(cam.world_to_cam.astype(np.float64), ref.world_to_cam.astype(np.float64), atol=1e-6)
        assert row["source_path"] == "images/" + name.format(cam=row["camera"], f=row["frame"])
        img = cap.image(row)
        np.testing.assert_array_equal(img, scene.image(row["camera"], FRAMES.index(row["frame"])))
        assert projection_error(cam, img, scene.points) < 0.3
    return cap


@pytest.mark.parametrize("binary", [False, True])
def test_rig_frames_become_frames_and_rig_cameras_cameras(tmp_path, binary):
    """Before: the 12 images of 3 rig cameras × 4 timesteps became 12 cameras of frame 0."""
    scene = Scene(make_cameras(3))
    write_colmap_rig(tmp_path / "p", scene, binary=binary, imu=True, strays=(2,))
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig(subject="anna"))
    assert report.n_images == 12
    ext = ".bin" if binary else ".txt"
    assert report.skipped == [{"item": f"sparse/0/images{ext} [image 7 extra/0002.png]",
                               "reason": "its frame 10002 is of rig 2, not of the multi-camera rig 1"}]
    assert report.warnings == [f"sparse/0/rigs{ext}, sparse/0/frames{ext}: 1 non-camera sensors of rig 1 and 4 "
                               f"non-camera measurements in frames are not read (geoface imports images)"]
    cap = check_rig_capture(tmp_path / "cap", scene)
    assert cap.info["colmap_rig"] == {"rig_id": 1, "cameras": {"cam0": 1, "cam1": 2, "cam2": 3}}
    # frame selection works on COLMAP frame ids
    import_capture(tmp_path / "p", tmp_path / "cap2", ImportConfig(frame_start=2, max_frames=2, cameras=["cam0", "cam2"]))
    rows = load_capture(tmp_path / "cap2").manifest
    assert sorted(set(rows.frame)) == [2, 3] and sorted(set(rows.camera)) == ["cam0", "cam2"] and len(rows) == 4


@pytest.mark.parametrize("binary", [False, True])
def test_trivial_rigs_of_colmap_3_12_change_nothing(tmp_path, binary):
    """Without a rig configuration COLMAP ≥ 3.12 writes one rig per camera and one frame per image: not timesteps."""
    scene = Scene(make_cameras(4))
    write_colmap(tmp_path / "p", scene, binary=binary)
    mdir = tmp_path / "p/sparse/0"
    if binary:
        (mdir / "rigs.bin").write_bytes(struct.pack("<Q", 4) + b"".join(struct.pack("<IIiI", i, 1, 0, i) for i in range(1, 5)))
        (mdir / "frames.bin").write_bytes(struct.pack("<Q", 4) + b"".join(
            struct.pack("<II7dIiIQ", i, i, 1, 0, 0, 0, 0, 0, 0, 1, 0, i, i) for i in range(1, 5)))
    else:
        (mdir / "rigs.txt").write_text("# Rig calib list\n" + "".join(f"{i} 1 CAMERA {i}\n" for i in range(1, 5)))
        (mdir / "frames.txt").write_text("# Frame list\n" + "".join(f"{i} {i} 1 0 0 0 0 0 0 1 CAMERA {i} {i}\n" for i in range(1, 5)))
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    assert report.n_images == 4 and report.skipped == [] and report.warnings == []
    cap = load_capture(tmp_path / "cap")
    assert set(cap.manifest.frame) == {0} and sorted(cap.manifest.camera) == ["cam0", "cam1", "cam2", "cam3"]
    assert "colmap_rig" not in cap.info


def test_a_moving_rig_is_refused_unless_frames_are_ignored(tmp_path):
    """cameras.json holds one pose per camera and sequence: a rig that moves between frames cannot be one."""
    scene = Scene(make_cameras(3))
    turn = np.eye(4)
    turn[:3, :3] = [[np.cos(0.01), 0, np.sin(0.01)], [0, 1, 0], [-np.sin(0.01), 0, np.cos(0.01)]]
    write_colmap_rig(tmp_path / "p", scene, binary=True, moves={3: turn})
    with pytest.raises(CaptureError, match=r"images.bin: the rig moves between frames \(camera 'cam0' in frame 3 is "
                                           r"0.573° .*colmap_rig_frames: false"):
        import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    assert not (tmp_path / "cap").exists()
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig(colmap_rig_frames=False))
    cap = load_capture(tmp_path / "cap")
    assert report.n_images == 12 and set(cap.manifest.frame) == {0} and len(cap.cameras(*cap.sequences()[0])) == 12
    # a jitter far below the tolerance is one rig pose (the first frame's is kept)
    nudge = np.eye(4)
    nudge[:3, 3] = [1e-5, 0, 0]
    write_colmap_rig(tmp_path / "q", scene, binary=False, moves={3: nudge})
    import_capture(tmp_path / "q", tmp_path / "cap2", ImportConfig())
    check_rig_capture(tmp_path / "cap2", scene)


def test_missing_and_unframed_images(tmp_path):
    """A frame without one camera's image is imported without it (one warning); an image in no frame is skipped."""
    scene = Scene(make_cameras(3))
    write_colmap_rig(tmp_path / "p", scene, binary=True, drop=((2, "cam1"), (5, "cam0")), unframed=((3, "cam2"),))
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    assert report.n_images == 9
    assert report.skipped == [{"item": "sparse/0/images.bin [image 8 rig1/cam2/0003.png]",
                               "reason": "not in any frame of sparse/0/frames.bin"}]
    assert report.warnings == ["sparse/0/frames.bin: 3 of 4 frames lack cameras of the rig (frame 2: cam1)"]
    check_rig_capture(tmp_path / "cap", scene, missing=((2, "cam1"), (5, "cam0"), (3, "cam2")))


def test_camera_names_without_a_folder_per_camera(tmp_path):
    scene = Scene(make_cameras(2))
    write_colmap_rig(tmp_path / "p", scene, binary=False, name="{f:04d}_{cam}.png")
    import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    cap = load_capture(tmp_path / "cap")
    assert sorted(set(cap.manifest.camera)) == ["camera1", "camera2"] and sorted(set(cap.manifest.frame)) == list(FRAMES)
    assert cap.info["colmap_rig"]["cameras"] == {"camera1": 1, "camera2": 2}


def test_camera_names_do_not_depend_on_a_camera_without_images(tmp_path):
    """A rig camera none of whose images was registered (camera 3 here) keeps the others' folder names. Before: all
    of them became camera<id>, so the same rig's cameras were named differently when one camera failed to register."""
    scene = Scene(make_cameras(3))
    write_colmap_rig(tmp_path / "p", scene, binary=True, drop=tuple((f, "cam2") for f in FRAMES))
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    assert report.n_images == 8 and report.skipped == []
    cap = load_capture(tmp_path / "cap")
    assert sorted(set(cap.manifest.camera)) == ["cam0", "cam1"]
    assert cap.info["colmap_rig"]["cameras"] == {"cam0": 1, "cam1": 2, "camera3": 3}


def test_damaged_rig_files_are_refused_naming_the_file(tmp_path):
    scene = Scene(make_cameras(2))
    write_colmap_rig(tmp_path / "b", scene, binary=True)
    frames = tmp_path / "b/sparse/0/frames.bin"
    good = frames.read_bytes()
    frames.write_bytes(good[:-5])
    with pytest.raises(CaptureError, match=r"frames.bin: truncated at byte"):
        import_capture(tmp_path / "b", tmp_path / "cap", ImportConfig())
    bad = bytearray(good)
    struct.pack_into("<i", bad, 8 + 4 + 4 + 56 + 4, 7)  # frame 1's first sensor type
    frames.write_bytes(bytes(bad))
    with pytest.raises(CaptureError, match=r"frames.bin: frame 1 has sensor type 7 \(expected CAMERA or IMU\)"):
        import_capture(tmp_path / "b", tmp_path / "cap", ImportConfig())
    frames.write_bytes(good)
    (tmp_path / "b/sparse/0/rigs.bin").unlink()
    with pytest.raises(CaptureError, match=r"frames.bin: frames without rigs.bin"):
        import_capture(tmp_path / "b", tmp_path / "cap", ImportConfig())
    write_colmap_rig(tmp_path / "t", scene, binary=False)
    rigs = tmp_path / "t/sparse/0/rigs.txt"
    rigs.write_text(rigs.read_text().replace(" CAMERA 2 1 ", " CAMERA 2 "))
    with pytest.raises(CaptureError, match=r"rigs.txt:4: not a rig line"):
        import_capture(tmp_path / "t", tmp_path / "cap", ImportConfig())
    two = tmp_path / "t/sparse/0/rigs.txt"
    lines = two.read_text().replace(" CAMERA 2 ", " CAMERA 2 1 ").splitlines()
    two.write_text("\n".join(lines + ["7 2 CAMERA 5 CAMERA 6 0"]) + "\n")
    frames_t = tmp_path / "t/sparse/0/frames.txt"
    frames_t.write_text(frames_t.read_text() + "99 7 1 0 0 0 0 0 0 0\n")  # a registered frame of rig 7 (no images)
    with pytest.raises(CaptureError, match=r"rigs.txt: rigs 1, 7 each have several cameras.*colmap_rig_frames: false"):
        import_capture(tmp_path / "t", tmp_path / "cap", ImportConfig())
    assert not (tmp_path / "cap").exists()


def test_frames_that_contradict_images(tmp_path):
    """An image listed under another camera than images.txt gives it is skipped; an image in two frames is refused."""
    scene = Scene(make_cameras(3))
    write_colmap_rig(tmp_path / "p", scene, binary=False)
    frames = tmp_path / "p/sparse/0/frames.txt"
    text = frames.read_text()
    assert " CAMERA 2 5 " in text
    frames.write_text(text.replace(" CAMERA 2 5 ", " CAMERA 3 5 "))
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    assert report.n_images == 11 and report.skipped == [
        {"item": "sparse/0/images.txt [image 5 rig1/cam1/0002.png]",
         "reason": "sparse/0/frames.txt frame 2 lists it as camera 3, images lists camera 2"}]
    frames.write_text(text.replace(" CAMERA 1 4 ", " CAMERA 1 1 "))
    with pytest.raises(CaptureError, match=r"frames.txt: image 1 is in frame 1 and frame 2"):
        import_capture(tmp_path / "p", tmp_path / "cap2", ImportConfig())


@pytest.mark.parametrize("binary", [False, True])
def test_a_rig_filmed_over_time_without_rig_frames_is_named(tmp_path, binary):
    """COLMAP < 3.12 (no rigs / frames files): 3 cameras × 4 timesteps can only be 12 cameras of frame 0. The 9 images
    whose pose repeats an earlier image's are one camera at other timesteps: one warning says so (before: none, the
    timesteps silently became cameras of one instant). 4 distinct poses (test_trivial_rigs_...) warn nothing."""
    scene = Scene(make_cameras(3))
    write_colmap_rig(tmp_path / "p", scene, binary=binary)
    ext = ".bin" if binary else ".txt"
    for f in ("rigs", "frames"):
        (tmp_path / f"p/sparse/0/{f}{ext}").unlink()
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    cap = load_capture(tmp_path / "cap")
    assert report.n_images == 12 and set(cap.manifest.frame) == {0} and len(set(cap.manifest.camera)) == 12
    (warning,) = report.warnings
    assert warning.startswith(f"sparse/0/images{ext}: 9 images have the pose of another image (camera 'rig1_cam0_0002' = "
                              f"'rig1_cam0_0001')") and "rig_configurator" in warning and "\n" not in warning
    assert cap.info["warnings"] == [warning]


@pytest.mark.parametrize("binary", [False, True])
def test_a_multi_camera_rig_without_registered_frames_is_not_a_second_rig(tmp_path, binary):
    """rigs.bin|txt lists every configured rig, frames.bin|txt only registered frames: a second multi-camera rig none
    of whose images were registered (cameras 5 and 6, not even in cameras) has nothing to import. Before: it refused the
    import as 'rigs 1, 7 each have several cameras'."""
    scene = Scene(make_cameras(3))
    write_colmap_rig(tmp_path / "p", scene, binary=binary)
    rigs = tmp_path / f"p/sparse/0/rigs{'.bin' if binary else '.txt'}"
    if binary:
        data = bytearray(rigs.read_bytes())
        struct.pack_into("<Q", data, 0, 2)
        data += struct.pack("<IIiI", 7, 2, 0, 5) + struct.pack("<iIB", 0, 6, 0)
        rigs.write_bytes(bytes(data))
    else:
        rigs.write_text(rigs.read_text() + "7 2 CAMERA 5 CAMERA 6 0\n")
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    assert report.n_images == 12 and report.skipped == [] and report.warnings == []
    cap = check_rig_capture(tmp_path / "cap", scene)
    assert cap.info["colmap_rig"] == {"rig_id": 1, "cameras": {"cam0": 1, "cam1": 2, "cam2": 3}}


@pytest.mark.parametrize("binary", [False, True])
def test_ids_from_2_31_are_read_unsigned(tmp_path, binary):
    """COLMAP's camera_t and image_t are uint32: ids ≥ 2**31 (here from 3_000_000_000) are read as written, in the binary
    files as in the text ones. Before: cameras.bin and images.bin read them signed (negative), so no image matched its
    frame in frames.bin (read unsigned) and the rig imported nothing."""
    from pipelines.colmap import read_cameras_binary, read_images_binary
    base = 3_000_000_000
    scene = Scene(make_cameras(3))
    write_colmap_rig(tmp_path / "p", scene, binary=binary, id_base=base)
    if binary:
        mdir = tmp_path / "p/sparse/0"
        assert sorted(read_cameras_binary(mdir / "cameras.bin")) == [base + 1, base + 2, base + 3]
        images = read_images_binary(mdir / "images.bin")
        assert [im[0] for im in images] == [base + k for k in range(1, 13)]
        assert [im[3] for im in images] == [base + 1, base + 2, base + 3] * 4
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    assert report.n_images == 12 and report.skipped == []
    cap = check_rig_capture(tmp_path / "cap", scene)
    assert cap.info["colmap_rig"]["cameras"] == {"cam0": base + 1, "cam1": base + 2, "cam2": base + 3}


@pytest.mark.parametrize("binary", [False, True])
def test_rig_cameras_named_by_a_file_name_prefix(tmp_path, binary):
    """One folder of cam<k>_<frame>.png files: each rig camera is named by the prefix all its images share, the same
    whatever frames and cameras a re-import selects; a camera whose images do not share one keeps camera<id>, without
    renaming the others. Before: camera1, camera2, camera3."""
    scene = Scene(make_cameras(3))
    name = "rig1/{cam}_{f:06d}.png"
    write_colmap_rig(tmp_path / "p", scene, binary=binary, name=name)
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    assert report.n_images == 12 and report.skipped == []
    cap = check_rig_capture(tmp_path / "cap", scene, name=name)
    assert cap.info["colmap_rig"]["cameras"] == {"cam0": 1, "cam1": 2, "cam2": 3}
    # a re-import of some frames and one camera: the same names
    import_capture(tmp_path / "p", tmp_path / "cap2", ImportConfig(frames=[3, 5], cameras=["cam1"]))
    cap2 = load_capture(tmp_path / "cap2")
    assert sorted(zip(cap2.manifest.frame, cap2.manifest.camera)) == [(3, "cam1"), (5, "cam1")]
    assert cap2.info["colmap_rig"]["cameras"] == cap.info["colmap_rig"]["cameras"]
    np.testing.assert_array_equal(cap2.cameras("p", "default")["cam1"].world_to_cam, cap.cameras("p", "default")["cam1"].world_to_cam)


def test_a_rig_camera_whose_images_do_not_share_a_prefix_keeps_camera_id(tmp_path):
    scene = Scene(make_cameras(3))
    write_colmap_rig(tmp_path / "p", scene, binary=False, name="rig1/{cam}_{f:06d}.png")
    txt = tmp_path / "p/sparse/0/images.txt"
    txt.write_text(txt.read_text().replace("rig1/cam2_000005.png", "rig1/side_000005.png"))
    (tmp_path / "p/images/rig1/cam2_000005.png").rename(tmp_path / "p/images/rig1/side_000005.png")
    report = import_capture(tmp_path / "p", tmp_path / "cap", ImportConfig())
    assert report.n_images == 12 and report.skipped == []
    cap = load_capture(tmp_path / "cap")
    assert cap.info["colmap_rig"]["cameras"] == {"cam0": 1, "cam1": 2, "camera3": 3}
    row = cap.manifest[(cap.manifest.camera == "camera3") & (cap.manifest.frame == 5)].iloc[0]
    assert row.source_path == "images/rig1/side_000005.png"
    np.testing.assert_array_equal(cap.image(row), scene.image("cam2", FRAMES.index(5)))


def test_prefix_names():
    """The prefix is the stem before separators and a trailing frame number; a prefix two cameras share (even by
    case), one that is another camera's camera<id>, or one that cannot be a camera name names no camera."""
    from pipelines.colmap_rigs import file_prefix, prefix_names
    assert [file_prefix(p) for p in ("a/cam01_000123.png", "C3-0007.jpg", "img.0001.png", "cam_01_000123.png",
                                     "0001_cam0.png", "cam01.png", "cam01000123.png", "cam01_0001_rgb.png")] == \
        ["cam01", "C3", "img", "cam_01", None, None, None, None]
    paths = {1: ["cam01_1.png", "cam01_2.png"], 2: ["Cam01_1.png"], 3: ["camera1_1.png"], 4: ["left_1.png", "right_2.png"],
             5: ["=sum_1.png"], 6: ["camera6_1.png"], 7: ["top_1.png", "top_2.png"], 8: []}
    assert prefix_names(list(paths), paths) == {6: "camera6", 7: "top"}
