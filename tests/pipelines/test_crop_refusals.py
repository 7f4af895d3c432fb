"""A crop setting that leaves one camera an implausible camera (a small `crop_box` on a long lens: a field of view
under 1°) skips that camera with one line naming the setting and the camera, and imports the others; when the
setting refuses every camera, the import stops with one line naming the setting (not the first five of the many
skipped images). Each case writes a source's real files (tests/pipelines/writers.py); the long lens is in the
calibration only, so the images are the ordinary scene's."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flame_fitting.formats.capture import CaptureError, load_capture
from flame_fitting.geometry.camera import CameraError, intrinsics
from geoface.cli import main
from pipelines.common import ImportConfig
from pipelines.registry import import_capture
from writers import Scene, make_cameras, write_colmap, write_folder, write_nersemble, write_transforms

LONG = 5000.0  # px: a 2.3° × 1.8° field of view over the 200×160 image (accepted), 0.46° over a 40-px crop (not)
CROP = [80, 60, 40, 40]
SEQUENCE = {"folder": "s1/seq", "colmap": "in/default", "transforms_json": "in/default"}  # subject/sequence


def folder(root: Path) -> tuple[str, str]:
    cams = make_cameras(3)
    calib = dict(cams, cam0=replace(cams["cam0"], K=intrinsics(LONG, LONG, 103.25, 77.5)))
    write_folder(root, Scene(cams), cameras_json=calib)
    return "folder", "s1/seq/cameras.json"


def colmap_text(root: Path) -> tuple[str, str]:
    write_colmap(root, Scene(make_cameras(3)), binary=False)
    path = root / "sparse/0/cameras.txt"
    lines = path.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("1 "))  # CAMERA_ID MODEL WIDTH HEIGHT fx fy cx cy
    e = lines[i].split()
    e[4] = e[5] = repr(LONG)
    lines[i] = " ".join(e)
    path.write_text("\n".join(lines) + "\n")
    return "colmap", "sparse/0/cameras.txt"


def transforms(root: Path) -> tuple[str, str]:
    write_transforms(root, Scene(make_cameras(3)), per_frame=True)
    meta = json.loads((root / "transforms.json").read_text())
    meta["frames"][0].update(fl_x=LONG, fl_y=LONG)  # frames[0] is cam0
    (root / "transforms.json").write_text(json.dumps(meta))
    return "transforms_json", "transforms.json"


@pytest.mark.parametrize("write", [folder, colmap_text])
def test_a_crop_too_narrow_for_one_camera_skips_that_camera(tmp_path, write):
    source, file_name = write(tmp_path / "in")
    report = import_capture(source, tmp_path / "in", tmp_path / "out", ImportConfig(crop_box=CROP))
    lines = [f"{s['item']}: {s['reason']}" for s in report.skipped]
    bad = [line for line in lines if "crop_box [80, 60, 40, 40]" in line]
    assert len(bad) == 1 and file_name in bad[0] and "'cam0'" in bad[0] and "field of view" in bad[0], lines
    assert "the crop, not the calibration" in bad[0] and "\n" not in bad[0]
    cap = load_capture(tmp_path / "out")
    (seq,) = cap.sequences()
    cams = cap.cameras(*seq)
    assert sorted(cams) == ["cam1", "cam2"]  # the other cameras imported, cropped
    assert all(c.size == (40, 40) and c.K[0, 2] == pytest.approx(103.25 - 80, abs=1e-3) for c in cams.values())
    assert sorted(cap.manifest.camera) == ["cam1", "cam2"]
    assert all(cap.image(r).shape == (40, 40, 3) for _, r in cap.manifest.iterrows())


@pytest.mark.parametrize("setting,value,words", [("crop_box", [90, 70, 3, 3], "field of view"),
                                                 ("crop_aspect", 1e-3, "0×160")])
def test_a_crop_setting_that_refuses_every_camera_stops_with_one_line_naming_it(tmp_path, capsys, setting, value, words):
    folder(tmp_path / "in")
    with pytest.raises(CaptureError) as e:
        import_capture("folder", tmp_path / "in", tmp_path / "out", ImportConfig(**{setting: value}))
    msg = str(e.value)
    assert "every calibrated camera (3 cameras" in msg and f"{setting} {value}" in msg and "\n" not in msg
    assert "s1/seq/cameras.json [camera cam0]" in msg and msg.count("[camera") == 1  # the first camera, once
    assert not (tmp_path / "out").exists()
    rc = main(["import", "folder", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--set", f"{setting}={value}"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and setting in err and "Traceback" not in err


def test_strict_names_the_setting_and_the_camera(tmp_path):
    folder(tmp_path / "in")
    with pytest.raises(CaptureError, match=r"\[camera cam0\]: crop_box \[80, 60, 40, 40\]: camera 'cam0' cropped"):
        import_capture("folder", tmp_path / "in", tmp_path / "out", ImportConfig(crop_box=CROP, strict=True))


def test_camera_cropped_blames_the_crop_not_the_calibration():
    cam = make_cameras(1)["cam0"]
    with pytest.raises(CameraError) as e:
        cam.cropped(90, 70, 3, 3)  # 3 px at f = 230: 0.75°
    msg = str(e.value)
    assert "cropped to 3×3 at (90, 70)" in msg and "the crop, not the calibration" in msg and "another size" not in msg
    with pytest.raises(CameraError, match="optical axis.*the crop, not the calibration"):
        cam.cropped(-5000, 0, 20, 20)  # far outside the image: the principal point 5000 px off a 20-px crop
    assert cam.cropped(90, 70, 20, 20).size == (20, 20) and np.isfinite(cam.cropped(0, 0, 20, 20).K).all()


@pytest.mark.parametrize("write", [folder, colmap_text, transforms])
def test_a_refused_cameras_images_are_never_decoded(tmp_path, write):
    """The crop refuses cam0 before its images are read: its files here are not images at all, and the import names
    only the refusal (its image: no usable calibration), never a decode error. Before: every image of the refused
    camera was decoded and then skipped (here 1 of 3 decodes; 4 of 12 for a 3-camera COLMAP rig over 4 frames)."""
    source, _ = write(tmp_path / "in")
    (bad,) = [p for p in (tmp_path / "in").rglob("cam0.png")]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)  # a PNG signature, then garbage: any decode fails
    report = import_capture(source, tmp_path / "in", tmp_path / "out", ImportConfig(crop_box=CROP))
    mine = [s for s in report.skipped if s["item"].endswith("cam0.png")]
    assert mine == [{"item": bad.relative_to(tmp_path / "in").as_posix(),
                     "reason": f"no usable calibration for camera 'cam0' of {SEQUENCE[source]}"}]
    assert report.n_images == 2 and sorted(load_capture(tmp_path / "out").manifest.camera) == ["cam1", "cam2"]


# NeRSemble layouts (write_nersemble options; the refused camera's files, relative to the sequence, t = 0..3), and the
# files of it made garbage: all but what its image size is read from (the video's header, its first image)
SERIAL, SEQ = "22220000", "017/sequences/EMO-1"
NERSEMBLE = {
    "video": (dict(alpha=True), lambda t: "images/cam_22220000.mp4", lambda t: ["alpha_maps/cam_22220000.mp4"]),
    "images": (dict(media="images"), lambda t: f"images/cam_22220000/{t:05d}.png",
               lambda t: [f"images/cam_22220000/{t:05d}.png"] if t else []),
    "vhap": (dict(media="vhap", alpha=True), lambda t: f"images/cam_22220000_{t:06d}.jpg",
             lambda t: [f"alpha_maps/cam_22220000_{t:06d}.jpg"] + ([f"images/cam_22220000_{t:06d}.jpg"] if t else [])),
    "v1": (dict(version=1, alpha=True), lambda t: f"frame_{t:05d}/images-2x-73fps/cam_22220000.png",
           lambda t: [f"frame_{t:05d}/alpha_map-73fps/cam_22220000.png"]
           + ([f"frame_{t:05d}/images-2x-73fps/cam_22220000.png"] if t else [])),
}
SIGNATURE = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff\xe0", ".mp4": b"\x00\x00\x00\x18ftypmp42"}


@pytest.mark.parametrize("layout", list(NERSEMBLE))
def test_a_refused_nersemble_cameras_frames_and_masks_are_never_decoded(tmp_path, layout):
    """NeRSemble: the crop refuses camera 22220000 (a long lens in camera_params.json) once its image size is read;
    its other frames and its masks are garbage here, and the import records each of its files (its video, or each
    selected frame's image) as skipped for the refusal, never as unreadable. Before: every selected frame and mask of
    it was decoded, then skipped (3 cameras × 4 frames: 24 video frames decoded for 16 used; 18 images + 12 masks
    for 14 + 8), and these files were reported as not readable."""
    options, file_of, garbage_of = NERSEMBLE[layout]
    cams = {f"2222000{i}": c for i, c in enumerate(make_cameras(3).values())}
    pdir = write_nersemble(tmp_path / "ns", Scene(cams), frames=range(4), per_serial_intrinsics=True, **options)
    cal = pdir / ("calibration" if options.get("version", 2) == 2 else "") / "camera_params.json"
    params = json.loads(cal.read_text())
    params["intrinsics"][SERIAL][0][0] = params["intrinsics"][SERIAL][1][1] = LONG
    cal.write_text(json.dumps(params))
    for t in range(4):
        for name in garbage_of(t):
            path = pdir / "sequences/EMO-1" / name
            assert path.is_file()
            path.write_bytes(SIGNATURE[path.suffix] + b"not an image" * 10)  # a signature, then garbage
    report = import_capture("nersemble", tmp_path / "ns", tmp_path / "out", ImportConfig(crop_box=CROP))
    refusal, *files = report.skipped  # nothing else is skipped: the other cameras' files are sound
    assert refusal["item"] == f"{cal.relative_to(tmp_path / 'ns').as_posix()} [camera {SERIAL}]"
    assert "crop_box [80, 60, 40, 40]" in refusal["reason"] and "field of view" in refusal["reason"]
    why = f"no usable calibration for camera '{SERIAL}' of 017/EMO-1"
    assert files == [{"item": f"{SEQ}/{name}", "reason": why} for name in dict.fromkeys(file_of(t) for t in range(4))]
    cap = load_capture(tmp_path / "out")
    assert report.n_images == 8 and sorted(set(cap.manifest.camera)) == ["22220001", "22220002"]
    masks = cap.manifest.get("mask_path")  # the other cameras' masks are imported (the column absent without masks)
    assert masks.notna().all() if options.get("alpha") else masks is None


def test_a_refused_nersemble_v1_cameras_colour_file_is_never_read(tmp_path):
    """NeRSemble v1: the crop refuses camera 22220000; its annotations/<seq>/color_correction/<serial>.npy is never
    read (garbage here), as its images are not: the import records the refusal and its images' skips, nothing about
    the .npy, and corrects the other cameras' colours with theirs. Before: the .npy was read before the crop was
    applied, its camera skipped as 'not a readable numeric .npy' and the refusal never recorded."""
    cams = {f"2222000{i}": c for i, c in enumerate(make_cameras(3).values())}
    scene = Scene(cams)
    rng = np.random.default_rng(3)  # as test_nersemble_layouts.affines: a gain of 1.2, small cross terms and offsets
    affine = {s: np.vstack([np.hstack([np.eye(3) * 1.2 + np.triu(rng.uniform(0.02, 0.06, (3, 3)), 1),
                                       rng.uniform(-0.03, 0, (3, 1))]), [0, 0, 0, 1]]) for s in cams}
    pdir = write_nersemble(tmp_path / "ns", scene, frames=range(2), version=1, affine=affine, per_serial_intrinsics=True)
    params = json.loads((pdir / "camera_params.json").read_text())
    params["intrinsics"][SERIAL][0][0] = params["intrinsics"][SERIAL][1][1] = LONG
    (pdir / "camera_params.json").write_text(json.dumps(params))
    npy = pdir / f"annotations/EMO-1/color_correction/{SERIAL}.npy"
    npy.write_bytes(b"\x93NUMPY garbage, not an array")
    report = import_capture("nersemble", tmp_path / "ns", tmp_path / "out", ImportConfig(crop_box=CROP))
    assert not [s for s in report.skipped if ".npy" in s["item"] or ".npy" in s["reason"]], report.skipped
    refusal, *files = report.skipped
    assert refusal["item"] == f"017/camera_params.json [camera {SERIAL}]" and "crop_box [80, 60, 40, 40]" in refusal["reason"]
    why = f"no usable calibration for camera '{SERIAL}' of 017/EMO-1"
    assert files == [{"item": f"{SEQ}/frame_{t:05d}/images-2x-73fps/cam_{SERIAL}.png", "reason": why} for t in range(2)]
    cap = load_capture(tmp_path / "out")
    assert report.n_images == 4 and sorted(set(cap.manifest.camera)) == ["22220001", "22220002"]
    assert cap.info["color_correction"] == ["017/annotations/EMO-1/color_correction"]
    x0, y0, w, h = CROP
    for row in cap.manifest.to_dict("records"):  # the others' colours corrected (stored uncorrected: raw differs)
        true = scene.image(row["camera"], row["frame"])[y0:y0 + h, x0:x0 + w].astype(int)
        raw = np.asarray(Image.open(tmp_path / "ns" / row["source_path"]))[y0:y0 + h, x0:x0 + w].astype(int)
        assert np.abs(cap.image(row).astype(int) - true).max() <= 2 and np.abs(raw - true).mean() > 5
