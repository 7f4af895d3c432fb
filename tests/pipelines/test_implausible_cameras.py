"""Implausible intrinsics and image sizes in a source's own files (a principal point a billion pixels off, an image
width of infinity) are caught where every reader's cameras pass (`Camera`): the camera is skipped with a reason
naming the file and the camera, the other cameras are imported, and a capture's cameras.json holding one is refused
naming the file. Each case writes the source's real files (tests/pipelines/writers.py) and corrupts one camera."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from flame_fitting.formats.capture import CaptureError, CaptureWriter, load_capture
from flame_fitting.geometry.camera import Camera, CameraError, intrinsics, look_at
from pipelines.common import ImportConfig
from pipelines.registry import import_capture
from writers import Scene, make_cameras, write_colmap, write_folder, write_nersemble, write_renderme360, write_transforms

FAR = 1e9  # the principal point's x: far outside a 200-pixel-wide image


def _json_edit(path: Path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))  # json writes inf as Infinity, which Python's json reads back


def folder(tmp: Path, case: str):
    write_folder(tmp / "in", Scene(make_cameras(2)))

    def edit(d):
        c = d["cameras"]["cam0"]
        if case == "cx":
            c["K"][0][2] = FAR
        else:
            c["width"] = float("inf")
    _json_edit(tmp / "in/s1/seq/cameras.json", edit)
    return "folder", "cameras.json", "cam0"


def nersemble(tmp: Path, case: str):
    write_nersemble(tmp / "in", Scene(make_cameras(2, prefix="22")), media="images", frames=range(1),
                    per_serial_intrinsics=True)

    def edit(d):
        if case == "cx":
            d["intrinsics"]["220"][0][2] = FAR
        else:
            d["width"] = {"220": float("inf"), "221": d["width"]}
    _json_edit(tmp / "in/017/calibration/camera_params.json", edit)
    return "nersemble", "camera_params.json", "220"


def renderme360(tmp: Path, case: str):
    write_renderme360(tmp / "in", Scene(make_cameras(2, prefix="")), frames=range(1), flame=False)
    with h5py.File(tmp / "in/anno/0026/0026_e0_anno.smc", "a") as f:
        K = f["Calibration/00/K"][()]
        K[0, 2] = FAR
        del f["Calibration/00/K"]
        f["Calibration/00/K"] = K
    return "renderme360", "0026_e0_anno.smc", "00"


def colmap(binary: bool):
    def write(tmp: Path, case: str):
        write_colmap(tmp / "in", Scene(make_cameras(2)), binary=binary)
        path = tmp / "in/sparse/0" / f"cameras.{'bin' if binary else 'txt'}"
        if binary:  # count (Q), then camera 1: id, model (ii), width, height (QQ), PINHOLE fx, fy, cx, cy (4d)
            b = bytearray(path.read_bytes())
            struct.pack_into("<d", b, 8 + 24 + 16, FAR)
            path.write_bytes(bytes(b))
        else:
            lines = path.read_text().splitlines()
            i = next(k for k, line in enumerate(lines) if line.startswith("1 "))
            e = lines[i].split()
            e[6] = repr(FAR)  # CAMERA_ID MODEL WIDTH HEIGHT fx fy cx cy
            lines[i] = " ".join(e)
            path.write_text("\n".join(lines) + "\n")
        return "colmap", f"images.{'bin' if binary else 'txt'}", "cam0"
    return write


def transforms(vhap: bool):
    def write(tmp: Path, case: str):
        write_transforms(tmp / "in", Scene(make_cameras(2)), per_frame=True)

        def edit(d):
            if vhap:  # VHAP's dynamic export: one timestep, camera_id per entry
                for fr in d["frames"]:
                    fr.update(timestep_index=0, camera_id=Path(fr["file_path"]).stem)
            if case == "cx":
                d["frames"][0]["cx"] = FAR
            else:
                d["frames"][0]["w"] = float("inf")
        _json_edit(tmp / "in/transforms.json", edit)
        return "transforms_json", "transforms.json", "cam0"
    return write


READERS = {"folder": folder, "nersemble": nersemble, "renderme360": renderme360, "colmap_text": colmap(False),
           "colmap_binary": colmap(True), "transforms_json": transforms(False), "vhap": transforms(True)}
CASES = [(r, "cx") for r in READERS] + [(r, "width") for r in ("folder", "nersemble", "transforms_json", "vhap")]


@pytest.mark.parametrize("reader,case", CASES)
def test_an_implausible_camera_is_skipped_naming_the_file_and_camera(tmp_path, reader, case):
    source, file_name, camera = READERS[reader](tmp_path, case)
    report = import_capture(source, tmp_path / "in", tmp_path / "out", ImportConfig())
    lines = [f"{s['item']}: {s['reason']}" for s in report.skipped]
    bad = [line for line in lines if file_name in line and camera in line
           and ("optical axis" in line if case == "cx" else "inf" in line)]
    assert bad, lines
    assert all("\n" not in line for line in bad)
    cap = load_capture(tmp_path / "out")
    (seq,) = cap.sequences()
    cams = cap.cameras(*seq)
    assert camera not in cams and len(cams) == 1  # the other camera is imported
    for cam in cams.values():
        assert np.all(np.isfinite(cam.K)) and abs(cam.K[0, 2] - cam.width / 2) < 10


@pytest.mark.parametrize("case", ["cx", "width", "dist"])
def test_a_capture_whose_cameras_json_holds_an_implausible_camera_is_refused(tmp_path, case):
    cams = make_cameras(2)
    scene = Scene(cams)
    with CaptureWriter(tmp_path / "cap", source="test") as w:
        w.set_cameras("s", "q", cams)
        for n in cams:
            w.add_image("s", "q", 0, n, scene.image(n), split="train")

    def edit(d):
        c = d["cameras"]["cam0"]
        if case == "cx":
            c["K"][0][2] = FAR
        elif case == "width":
            c["width"] = float("inf")
        else:
            c["dist"] = [0.1, float("nan"), 0.0, 0.0]
    path = tmp_path / "cap/s/q/cameras.json"
    _json_edit(path, edit)
    with pytest.raises(CaptureError) as e:
        load_capture(tmp_path / "cap").cameras("s", "q")
    msg = str(e.value)
    assert str(path) in msg and msg.count("'cam0'") == 1 and "\n" not in msg  # the camera named once


def _cam(K, width=200, height=160, dist=None) -> Camera:
    return Camera(K=K, world_to_cam=look_at([0, 0, 1], [0, 0, 0]), width=width, height=height, dist=dist, name="c")


@pytest.mark.parametrize("kw,words", [
    (dict(K=intrinsics(230, 230, FAR, 80)), "optical axis"),
    (dict(K=intrinsics(1e-3, 1e-3, 100, 80)), "optical axis"),     # a focal length in metres, not pixels
    (dict(K=[[1e39, 0, 100], [0, 1e39, 80], [0, 0, 1]]), "float32"),  # finite in float64, inf once stored
    (dict(K=intrinsics(230, 230, 100, 80), width=float("nan")), "whole numbers"),
    (dict(K=intrinsics(230, 230, 100, 80), width=200.5), "whole numbers"),
    (dict(K=intrinsics(230, 230, 100, 80), width=True), "whole numbers"),
    (dict(K=intrinsics(230, 230, 100, 80), height="160"), "whole numbers"),
    (dict(K=intrinsics(230, 230, 100, 80), dist=[0.1, float("inf"), 0, 0]), "dist"),
])
def test_camera_refuses_implausible_values_in_one_line(kw, words):
    with pytest.raises(CameraError) as e:
        _cam(**kw)
    assert words in str(e.value) and "'c'" in str(e.value) and "\n" not in str(e.value)


def test_off_centre_principal_points_of_crops_and_wide_lenses_are_kept():
    cam = _cam(intrinsics(230, 230, 103.0, 77.0))
    corner = cam.cropped(0, 0, 20, 20)  # a small crop in the corner: the principal point is far outside it
    assert corner.K[0, 2] > 5 * corner.width and corner.size == (20, 20)
    assert corner.resized(8, 8).K[0, 2] == pytest.approx(103.0 * 8 / 20, rel=1e-5)
    wide = _cam(intrinsics(30, 30, 100.0, 80.0))  # a 147° diagonal field of view (an undistorted fisheye)
    assert wide.width == 200
    assert _cam(intrinsics(230, 230, 100, 80), width=200.0, height=np.int64(160)).size == (200, 160)
