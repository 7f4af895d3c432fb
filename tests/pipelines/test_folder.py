"""Folder reader: flat and nested layouts with a canonical cameras.json, masks, re-import of a canonical
capture (e.g. to downscale it), and bad input (unknown camera, truncated cameras.json)."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from writers import Scene, flipped, make_cameras, projection_error, write_folder, write_png

from flame_fitting.formats.capture import CaptureError, load_capture
from pipelines.import_config import ImportConfig
from pipelines.folder import import_capture


def check(cap, scene, subject, sequence, frames):
    cams = cap.cameras(subject, sequence)
    assert cap.frames(subject, sequence) == list(frames) and len(cap.manifest) == len(frames) * len(scene.cameras)
    for row in cap.manifest.to_dict("records"):
        cam, ref = cams[row["camera"]], scene.cameras[row["camera"]]
        np.testing.assert_allclose(cam.K, ref.K, rtol=0, atol=1e-6)
        np.testing.assert_allclose(cam.world_to_cam, ref.world_to_cam, atol=1e-6)
        img = cap.image(row)
        np.testing.assert_array_equal(img, scene.image(row["camera"], row["frame"]))
        assert projection_error(cam, img, scene.points) < 0.3
        assert projection_error(flipped(cam, np.linalg.inv(cam.world_to_cam.astype(np.float64))), img, scene.points) > 10


def test_nested_layout_and_reimport(tmp_path):
    scene = Scene(make_cameras(3))
    write_folder(tmp_path / "in", scene, frames=(0, 1, 4))
    mask = np.zeros((160, 200), np.uint8)
    mask[10:90, 20:120] = 255
    (tmp_path / "in/s1/seq/00004/masks").mkdir()
    cv2.imwrite(str(tmp_path / "in/s1/seq/00004/masks/cam1.png"), mask)
    report = import_capture(tmp_path / "in", tmp_path / "cap", ImportConfig(frames=[1, 4]))
    assert report.n_images == 6 and not report.skipped
    cap = load_capture(tmp_path / "cap", check_hashes=True)
    check(cap, scene, "s1", "seq", [1, 4])
    row = cap.manifest[(cap.manifest.camera == "cam1") & (cap.manifest.frame == 4)].iloc[0]
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "cap" / row.mask_path), cv2.IMREAD_GRAYSCALE), mask)
    assert row.source_path == "s1/seq/00004/cam1.png"
    # a canonical capture is itself a nested folder: re-import it downscaled
    import_capture(tmp_path / "cap", tmp_path / "small", ImportConfig(downscale=2))
    small = load_capture(tmp_path / "small")
    cams = small.cameras("s1", "seq")
    assert len(small.manifest) == 6 and all((c.width, c.height) == (100, 80) for c in cams.values())
    for r in small.manifest.to_dict("records"):
        assert projection_error(cams[r["camera"]], small.image(r), scene.points) < 0.5


def test_flat_layout(tmp_path):
    scene = Scene(make_cameras(4))
    write_folder(tmp_path / "shot", scene, nested=False)
    report = import_capture(tmp_path / "shot", tmp_path / "cap", ImportConfig())
    assert report.sequences == ["shot/default"] and report.n_images == 4
    cap = load_capture(tmp_path / "cap")
    check(cap, scene, "shot", "default", [0])
    assert cap.info["layout"] == "flat"


def test_bad_input(tmp_path):
    scene = Scene(make_cameras(3))
    write_folder(tmp_path / "in", scene, nested=False, cameras_json={n: c for n, c in scene.cameras.items() if n != "cam2"})
    report = import_capture(tmp_path / "in", tmp_path / "cap", ImportConfig())
    assert report.n_images == 2 and report.skipped == [{"item": "cam2.png", "reason": "camera 'cam2' is not in cameras.json"}]
    with pytest.raises(CaptureError, match="cam2.png: camera 'cam2' is not in cameras.json"):
        import_capture(tmp_path / "in", tmp_path / "cap2", ImportConfig(strict=True))
    # no image has a camera: nothing imported is an error naming what was skipped
    with pytest.raises(CaptureError, match="nothing imported.*cam2.png: camera 'cam2' is not in cameras.json"):
        import_capture(tmp_path / "in", tmp_path / "cap2", ImportConfig(cameras=["cam2"]))
    # an unreadable image file is skipped
    (tmp_path / "in/cam1.png").write_bytes(b"\x89PNG broken")
    report = import_capture(tmp_path / "in", tmp_path / "cap", ImportConfig())
    assert report.n_images == 1 and {"item": "cam1.png", "reason": f"{tmp_path}/in/cam1.png: not a readable image"} in report.skipped
    cj = tmp_path / "in/cameras.json"
    cj.write_text(cj.read_text()[:150])
    with pytest.raises(CaptureError, match="cameras.json: not valid JSON"):
        import_capture(tmp_path / "in", tmp_path / "cap3", ImportConfig())


def test_cameras_in_other_units_than_metres_are_refused(tmp_path):
    """A hand-written cameras.json in millimetres would be a 1000× scale error if read as metres."""
    scene = Scene(make_cameras(2))
    write_folder(tmp_path / "in", scene, nested=False)
    cj = tmp_path / "in/cameras.json"
    cj.write_text(json.dumps({**json.loads(cj.read_text()), "units": "mm"}))
    with pytest.raises(CaptureError, match=r"cameras.json: units must be 'm' \(translations in metres\), got 'mm'"):
        import_capture(tmp_path / "in", tmp_path / "cap", ImportConfig())
    assert not (tmp_path / "cap").exists()
    # a capture's own cameras.json is checked the same way
    from flame_fitting.formats.capture_checks import load_cameras
    with pytest.raises(CaptureError, match="units must be 'm'"):
        load_cameras(cj)


def test_truncated_jpeg_is_skipped(tmp_path):
    """A JPEG cut short (OpenCV decodes it with grey rows and no error) is a skipped frame, not a grey one."""
    scene = Scene(make_cameras(3))
    write_folder(tmp_path / "in", scene, nested=False)
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(scene.image("cam1", 0), cv2.COLOR_RGB2BGR))
    (tmp_path / "in/cam1.png").unlink()
    (tmp_path / "in/cam1.jpg").write_bytes(enc.tobytes()[:len(enc) // 2])
    report = import_capture(tmp_path / "in", tmp_path / "cap", ImportConfig())
    assert report.n_images == 2
    assert [s["item"] for s in report.skipped] == ["cam1.jpg"] and "truncated JPEG" in report.skipped[0]["reason"]
    (tmp_path / "in/cam1.jpg").write_bytes(enc.tobytes())  # the whole file imports
    assert import_capture(tmp_path / "in", tmp_path / "cap2", ImportConfig()).n_images == 3


def _import_in_child(src, out, **cfg) -> dict:
    """import_capture in a child process (a read of a FIFO would block it, not the test): {"n", "skipped"} or
    {"error"}."""
    code = ("import json, sys; from pipelines.folder import import_capture; from pipelines.import_config import ImportConfig\n"
            "from flame_fitting.formats.capture import CaptureError\n"
            f"try: r = import_capture({str(src)!r}, {str(out)!r}, ImportConfig(**{cfg!r}))\n"
            "except CaptureError as e: print(json.dumps({'error': str(e)}))\n"
            "else: print(json.dumps({'n': r.n_images, 'skipped': r.skipped}))")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the import waits on a FIFO")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_a_fifo_or_broken_link_named_as_an_image_is_a_skipped_record(tmp_path):
    """A named pipe named as an image (or mask) is recorded as skipped with one line naming it, never opened. Before:
    the listing kept regular files only, so cam1.png vanished from the import without a word (and a source of FIFOs
    alone imported 'nothing, 0 items skipped'); a FIFO mask was ignored the same way."""
    scene = Scene(make_cameras(4))
    src = write_folder(tmp_path / "in", scene, nested=False)
    (src / "cam1.png").unlink()
    os.mkfifo(src / "cam1.png")
    (src / "cam3.png").unlink()
    (src / "cam3.png").symlink_to(src / "gone.png")  # a broken link
    (src / "masks").mkdir()
    os.mkfifo(src / "masks/cam0.png")
    got = _import_in_child(src, tmp_path / "cap")
    assert got == {"n": 2, "skipped": [
        {"item": "masks/cam0.png", "reason": "not a regular file but a named pipe (FIFO); not read"},
        {"item": "cam1.png", "reason": "not a regular file but a named pipe (FIFO); not read"},
        {"item": "cam3.png", "reason": "not a regular file but a broken symbolic link; not read"}]}
    cap = load_capture(tmp_path / "cap")
    assert sorted(cap.manifest.camera) == ["cam0", "cam2"] and "mask_path" not in cap.manifest
    # the FIFO alone, asked for: the error quotes it; strict: the first bad item is the error
    got = _import_in_child(src, tmp_path / "cap2", cameras=["cam1"])
    assert "(1 items skipped: cam1.png: not a regular file but a named pipe (FIFO); not read)" in got["error"]
    got = _import_in_child(src, tmp_path / "cap3", strict=True, masks=False)
    assert got == {"error": "cam1.png: not a regular file but a named pipe (FIFO); not read"}
    # a regular image of the camera is read instead of the FIFO (png preferred over jpg only among regular files)
    write_png(src / "cam1.jpg", scene.image("cam1", 0))
    assert _import_in_child(src, tmp_path / "cap4", masks=False)["n"] == 3


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_a_cameras_json_that_is_not_a_regular_file_is_one_error_naming_it(tmp_path, layout):
    """A sequence's cameras.json that is a named pipe (or a folder) is refused with one line naming it, never opened,
    never passed over. Before: the nested layout took the cameras.json one folder up instead (other cameras, silently),
    and the flat layout said the file was missing."""
    scene = Scene(make_cameras(2))
    src = write_folder(tmp_path / "in", scene, nested=layout == "nested")
    here = src / "s1/seq/cameras.json" if layout == "nested" else src / "cameras.json"
    if layout == "nested":
        (src / "s1/seq/cameras.json").replace(src / "cameras.json")  # a usable one further up
    else:
        here.unlink()
    os.mkfifo(here)
    with pytest.raises(CaptureError) as e:
        import_capture(src, tmp_path / "cap", ImportConfig())
    assert str(e.value) == f"{here}: not a regular file but a named pipe (FIFO); not read"
    here.unlink()
    here.mkdir()
    with pytest.raises(CaptureError, match="cameras.json: not a regular file but a folder; not read"):
        import_capture(src, tmp_path / "cap", ImportConfig())
