"""Implausible intrinsics and image sizes in a source's own files (a principal point a billion pixels off, an image
width of infinity, a skew that undistortion and the exports would drop, a focal length of a billion pixels) are
caught where every reader's cameras pass (`Camera`): the camera is skipped with a reason naming the file and the
camera, the other cameras are imported, and a capture's cameras.json holding one is refused naming the file. Each
case writes the source's real files (tests/pipelines/writers.py) and corrupts one camera."""
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
FOCAL = 1e9  # a focal length of a billion pixels: a 1e-5° field of view
WORDS = {"cx": "optical axis", "width": "inf", "skew": "skew", "focal": "field of view"}


def _edit_K(K, case: str) -> None:
    """Corrupt K (a nested list or an array) in place as `case` says."""
    if case == "cx":
        K[0][2] = FAR
    elif case == "skew":  # 5 % of fx: a pixel 80 rows off the principal point moves 4 px where skew is dropped
        K[0][1] = 0.05 * K[0][0]
    else:
        K[0][0] = K[1][1] = FOCAL


def _json_edit(path: Path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))  # json writes inf as Infinity, which Python's json reads back


def folder(tmp: Path, case: str):
    write_folder(tmp / "in", Scene(make_cameras(2)))

    def edit(d):
        c = d["cameras"]["cam0"]
        if case == "width":
            c["width"] = float("inf")
        else:
            _edit_K(c["K"], case)
    _json_edit(tmp / "in/s1/seq/cameras.json", edit)
    return "folder", "cameras.json", "cam0"


def nersemble(tmp: Path, case: str):
    write_nersemble(tmp / "in", Scene(make_cameras(2, prefix="22")), media="images", frames=range(1),
                    per_serial_intrinsics=True)

    def edit(d):
        if case == "width":
            d["width"] = {"220": float("inf"), "221": d["width"]}
        else:
            _edit_K(d["intrinsics"]["220"], case)
    _json_edit(tmp / "in/017/calibration/camera_params.json", edit)
    return "nersemble", "camera_params.json", "220"


def renderme360(tmp: Path, case: str):
    write_renderme360(tmp / "in", Scene(make_cameras(2, prefix="")), frames=range(1), flame=False)
    with h5py.File(tmp / "in/anno/0026/0026_e0_anno.smc", "a") as f:
        K = f["Calibration/00/K"][()]
        _edit_K(K, case)
        del f["Calibration/00/K"]
        f["Calibration/00/K"] = K
    return "renderme360", "0026_e0_anno.smc", "00"


def colmap(binary: bool):
    def write(tmp: Path, case: str):
        write_colmap(tmp / "in", Scene(make_cameras(2)), binary=binary)
        path = tmp / "in/sparse/0" / f"cameras.{'bin' if binary else 'txt'}"
        if binary:  # count (Q), then camera 1: id, model (ii), width, height (QQ), PINHOLE fx, fy, cx, cy (4d)
            b = bytearray(path.read_bytes())
            struct.pack_into("<d", b, 8 + 24 + (16 if case == "cx" else 0), FAR if case == "cx" else FOCAL)
            path.write_bytes(bytes(b))
        else:
            lines = path.read_text().splitlines()
            i = next(k for k, line in enumerate(lines) if line.startswith("1 "))
            e = lines[i].split()
            e[6 if case == "cx" else 4] = repr(FAR if case == "cx" else FOCAL)  # CAMERA_ID MODEL WIDTH HEIGHT fx fy cx cy
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
            elif case == "focal":
                d["frames"][0]["fl_x"] = FOCAL
            else:
                d["frames"][0]["w"] = float("inf")
        _json_edit(tmp / "in/transforms.json", edit)
        return "transforms_json", "transforms.json", "cam0"
    return write


READERS = {"folder": folder, "nersemble": nersemble, "renderme360": renderme360, "colmap_text": colmap(False),
           "colmap_binary": colmap(True), "transforms_json": transforms(False), "vhap": transforms(True)}
CASES = ([(r, "cx") for r in READERS] + [(r, "width") for r in ("folder", "nersemble", "transforms_json", "vhap")]
         + [(r, "skew") for r in ("folder", "nersemble", "renderme360")] + [(r, "focal") for r in READERS])


@pytest.mark.parametrize("reader,case", CASES)
def test_an_implausible_camera_is_skipped_naming_the_file_and_camera(tmp_path, reader, case):
    source, file_name, camera = READERS[reader](tmp_path, case)
    report = import_capture(source, tmp_path / "in", tmp_path / "out", ImportConfig())
    lines = [f"{s['item']}: {s['reason']}" for s in report.skipped]
    bad = [line for line in lines if file_name in line and camera in line and WORDS[case] in line]
    assert bad, lines
    assert all("\n" not in line for line in bad)
    cap = load_capture(tmp_path / "out")
    (seq,) = cap.sequences()
    cams = cap.cameras(*seq)
    assert camera not in cams and len(cams) == 1  # the other camera is imported
    for cam in cams.values():
        assert np.all(np.isfinite(cam.K)) and abs(cam.K[0, 2] - cam.width / 2) < 10
        assert cam.K[0, 1] == 0 and cam.K[0, 0] == pytest.approx(230, rel=1e-6)


@pytest.mark.parametrize("case", ["cx", "width", "dist", "skew", "focal"])
def test_a_capture_whose_cameras_json_holds_an_implausible_camera_is_refused(tmp_path, case):
    cams = make_cameras(2)
    scene = Scene(cams)
    with CaptureWriter(tmp_path / "cap", source="test") as w:
        w.set_cameras("s", "q", cams)
        for n in cams:
            w.add_image("s", "q", 0, n, scene.image(n), split="train")

    def edit(d):
        c = d["cameras"]["cam0"]
        if case == "width":
            c["width"] = float("inf")
        elif case == "dist":
            c["dist"] = [0.1, float("nan"), 0.0, 0.0]
        else:
            _edit_K(c["K"], case)
    path = tmp_path / "cap/s/q/cameras.json"
    _json_edit(path, edit)
    with pytest.raises(CaptureError) as e:
        load_capture(tmp_path / "cap").cameras("s", "q")
    msg = str(e.value)
    assert str(path) in msg and msg.count("'cam0'") == 1 and "\n" not in msg  # the camera named once
    assert case not in WORDS or WORDS[case] in msg


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


def _K(**entries) -> list:
    K = intrinsics(230, 230, 100, 80).astype(np.float64)
    for key, v in entries.items():  # k01=… sets K[0, 1]
        K[int(key[1]), int(key[2])] = v
    return K.tolist()


@pytest.mark.parametrize("K,words", [
    (_K(k01=0.05 * 230), "skew K[0, 1] = 11.5"),             # moves a pixel 80 rows from the principal point 4 px
    (_K(k01=-1e-5 * 230), "skew"),                            # ten times the rounding allowed
    (_K(k10=1.0), "K must be"), (_K(k20=1e-3), "K must be"), (_K(k21=-1e-3), "K must be"), (_K(k22=2.0), "K must be"),
    (_K(k00=0.0), "fx, fy > 0"), (_K(k11=-230.0), "fx, fy > 0"),
    (intrinsics(FOCAL, FOCAL, 100, 80), "horizontal field of view of 1.15e-05°"),
    (_K(k11=FOCAL), "vertical field of view"),
    (intrinsics(100 / np.tan(np.radians(0.45)), 230, 100, 80), "horizontal field of view of 0.9°"),  # just under 1°
])
def test_camera_refuses_skew_and_focal_lengths_no_capture_has(K, words):
    with pytest.raises(CameraError) as e:
        _cam(K)
    msg = str(e.value)
    assert words in msg and "'c'" in msg and "\n" not in msg


def test_real_long_and_skew_free_cameras_are_kept():
    nersemble = intrinsics(7000, 7000, 1604, 1100)  # ~7000 px over 3208 × 2200: 25.8° × 17.9°
    assert _cam(nersemble, 3208, 2200).cropped(1300, 800, 512, 512).size == (512, 512)  # a head crop sees 4.2°
    tele = intrinsics(600 / 36 * 6000, 600 / 36 * 6000, 3000, 2000)  # 600 mm on a 36 mm, 6000 × 4000 sensor: 3.4° × 2.3°
    assert _cam(tele, 6000, 4000).resized(1500, 1000).K[0, 0] == pytest.approx(25000, rel=1e-6)
    kept = _cam(_K(k01=1e-7 * 230))  # rounding of a zero skew is kept as it is, not rewritten
    assert kept.K[0, 1] == pytest.approx(2.3e-5, rel=1e-6)


def test_a_nersemble_size_key_is_refused_naming_camera_params_json_relative_to_the_source(tmp_path):
    nersemble(tmp_path, "cx")  # the files; the size key is what is corrupted here
    path = tmp_path / "in/017/calibration/camera_params.json"
    _json_edit(path, lambda d: d.update(width={"220": -5, "221": d["width"]}))
    report = import_capture("nersemble", tmp_path / "in", tmp_path / "out", ImportConfig())
    (bad,) = [s["reason"] for s in report.skipped if "width of camera 220" in s["reason"]]
    assert bad.startswith("017/calibration/camera_params.json: ") and str(tmp_path) not in bad, bad


def test_a_colmap_camera_size_near_2_64_is_refused_naming_cameras_bin_and_the_camera_id(tmp_path):
    write_colmap(tmp_path / "in", Scene(make_cameras(2)), binary=True)
    path = tmp_path / "in/sparse/0/cameras.bin"
    b = bytearray(path.read_bytes())  # count (Q), then camera 1: id, model (ii), width, height (QQ), ...
    struct.pack_into("<QQ", b, 8 + 8, 2**64 - 1, 2**64 - 7)
    path.write_bytes(bytes(b))
    report = import_capture("colmap", tmp_path / "in", tmp_path / "out", ImportConfig())
    lines = [f"{s['item']}: {s['reason']}" for s in report.skipped]
    assert len(lines) == 1 and "sparse/0/cameras.bin [camera 1]: the image declares 18446744073709551615×" in lines[0]
    assert "optical axis" not in lines[0] and "\n" not in lines[0], lines
    assert sorted(load_capture(tmp_path / "out").manifest.camera) == ["cam1"]
