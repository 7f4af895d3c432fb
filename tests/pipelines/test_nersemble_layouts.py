"""NeRSemble as users have it: the benchmark release (one K per camera for its own downscaled videos,
no size keys, alpha-map videos), v2 with a shared full-resolution K, v1's alpha maps and sRGB colour
correction .npy files, v2's truncating colour calibration, VHAP's extracted frames (images/, images_2/),
calibrated cameras without images, and the intrinsics-size rule's refusals."""
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from writers import Scene, make_cameras, projection_error, silhouette, srgb_to_linear, write_nersemble

from flame_fitting.formats.capture import CaptureError, load_capture
from pipelines.import_config import ImportConfig
from pipelines.nersemble import correct_color, correct_color_affine, import_capture
from pipelines.nersemble_cameras import FULL_SIZE, intrinsics_size


def serial_cameras(n=3, **kw):
    return {f"2222000{i}": c for i, c in enumerate(make_cameras(n, **kw).values())}


def stored_cameras(scene, scale):
    return {s: c.resized(round(c.width * scale), round(c.height * scale)) for s, c in scene.cameras.items()}


def check_cameras(cap, expected, scene, tol=1.0):
    """Every imported camera equals `expected` (K, pose) and projects the scene's points onto its dots."""
    (subject, sequence), = cap.sequences()
    cams = cap.cameras(subject, sequence)
    assert sorted(cams) == sorted(expected)
    for s, cam in cams.items():
        np.testing.assert_allclose(cam.K.astype(np.float64), expected[s].K.astype(np.float64), rtol=0, atol=1e-4)
        np.testing.assert_allclose(cam.world_to_cam, expected[s].world_to_cam, atol=1e-6)
    for row in cap.manifest.to_dict("records"):
        assert projection_error(cams[row["camera"]], cap.image(row), scene.points) < tol
    return cams


def mask_mismatch(cap, row, expected) -> float:
    m = cv2.imread(str(cap.root / row["mask_path"]), cv2.IMREAD_GRAYSCALE)
    assert m.shape == expected.shape
    return float(np.mean((m > 127) != (expected > 127)))


@pytest.mark.parametrize("size", [(1100, 1604), (1604, 1100)])
def test_benchmark_release_K_and_alpha_maps(tmp_path, size, capsys):
    """Regression: the benchmark's per-camera K is for its own 1604×1100 videos; it is used as is (the old
    reader scaled it by 0.5 silently, or refused the landscape size), and alpha_maps/*.mp4 become masks."""
    w, h = size
    scene = Scene(serial_cameras(2, width=w, height=h, f=1.2 * max(w, h)))
    write_nersemble(tmp_path / "nvs", scene, pid="388", seq="GLASSES", frames=[0, 1], per_serial_intrinsics=True,
                    size_keys=False, alpha=True)
    report = import_capture(tmp_path / "nvs", tmp_path / "cap", ImportConfig())
    assert report.n_images == 4 and not report.skipped
    cap = load_capture(tmp_path / "cap", check_hashes=True)
    check_cameras(cap, scene.cameras, scene)  # the ground-truth K the test wrote, dots within 1 px
    rec = cap.info["intrinsics"]["388/GLASSES/22220000"]
    assert rec["size"] == [w, h] and rec["image_size"] == [w, h] and rec["rule"].startswith("principal point")
    assert f"intrinsics are for {w}×{h} (principal point); images are {w}×{h}: K used as is" in capsys.readouterr().err
    for row in cap.manifest.to_dict("records"):
        assert mask_mismatch(cap, row, silhouette(scene.cameras[row["camera"]])) < 0.01


def test_v2_shared_full_resolution_K_is_scaled_and_said(tmp_path, capsys):
    """nersemble-data v2: one K for 2200×3208, no size keys, videos at 1/4: K × 0.25, printed and recorded."""
    scene = Scene(serial_cameras(2, width=FULL_SIZE[0], height=FULL_SIZE[1], f=2400.0))
    write_nersemble(tmp_path / "ns", scene, frames=[0], scale=0.25, size_keys=False)
    import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig())
    cap = load_capture(tmp_path / "cap")
    check_cameras(cap, stored_cameras(scene, 0.25), scene)
    rec = cap.info["intrinsics"]["017/EMO-1/22220001"]
    assert rec["size"] == [2200, 3208] and rec["image_size"] == [550, 802] and rec["scale"] == [0.25, 0.25]
    assert "intrinsics are for 2200×3208 (principal point); images are 550×802: K scaled by 0.25 × 0.25" in capsys.readouterr().err


def test_intrinsics_size_rule():
    K = np.array([[1000.0, 0, 551.0], [0, 1000.0, 799.0], [0, 0, 1]])  # centre of 1100×1604
    assert intrinsics_size(K, (1100, 1604), None, None, "x")[0] == (1100, 1604)
    assert intrinsics_size(K, (550, 802), None, None, "x")[0] == (1100, 1604)
    assert intrinsics_size(K * [[2], [2], [1]], (550, 802), None, None, "x")[0] == FULL_SIZE
    assert intrinsics_size(K, (10, 10), (1100, 1604), None, "x") == ((1100, 1604), "captures.nersemble_intrinsics_size")
    assert intrinsics_size(K, (10, 10), None, (1100, 1604), "x") == ((1100, 1604), "camera_params.json width/height")
    with pytest.raises(CaptureError, match=r"cam.json \[camera 7\] intrinsics: the principal point \(551.0, 799.0\) is not "
                                           r"near the centre.*set captures.nersemble_intrinsics_size"):
        intrinsics_size(K, (300, 300), None, None, "cam.json [camera 7] intrinsics")
    K2 = np.array([[1000.0, 0, 1050.0], [0, 1000.0, 1530.0], [0, 0, 1]])
    with pytest.raises(CaptureError, match="near the centre of several candidate sizes \\(2000×2916, 2200×3208\\)"):
        intrinsics_size(K2, (2000, 2916), None, None, "x")  # a 0.91× copy: its centre and the full size's are 10 % apart


def test_unknown_intrinsics_size_is_refused_naming_the_option(tmp_path):
    scene = Scene(serial_cameras(2))
    write_nersemble(tmp_path / "ns", scene, frames=[0], size_keys=False, per_serial_intrinsics=True)
    cal = tmp_path / "ns/017/calibration/camera_params.json"
    params = json.loads(cal.read_text())
    params["intrinsics"]["22220001"][0][2] = 20.0  # principal point far off every candidate's centre
    cal.write_text(json.dumps(params))
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig())
    reason = {s["item"]: s["reason"] for s in report.skipped}["017/sequences/EMO-1/images/cam_22220001.mp4 [camera 22220001]"]
    assert reason.startswith("017/calibration/camera_params.json [camera 22220001] intrinsics: the principal point (20.0, 77.5)")
    assert reason.endswith("set captures.nersemble_intrinsics_size: [width, height]") and report.n_images == 1
    with pytest.raises(CaptureError, match="camera 22220001.*nersemble_intrinsics_size"):
        import_capture(tmp_path / "ns", tmp_path / "cap2", ImportConfig(strict=True))
    report = import_capture(tmp_path / "ns", tmp_path / "cap3", ImportConfig(nersemble_intrinsics_size=[200, 160]))
    assert report.n_images == 2 and not report.skipped


def affines(serials):
    rng = np.random.default_rng(3)  # non-symmetric: reading M transposed would show
    return {s: np.vstack([np.hstack([np.eye(3) * 1.2 + np.triu(rng.uniform(0.02, 0.06, (3, 3)), 1), rng.uniform(-0.03, 0, (3, 1))]),
                          [0, 0, 0, 1]]) for s in serials}


def test_v1_colour_correction_npy_and_alpha_maps(tmp_path):
    scene = Scene(serial_cameras(3, width=400, height=320, f=460.0))
    aff = affines(scene.cameras)
    write_nersemble(tmp_path / "ns", scene, pid="18", version=1, scale=0.5, frames=[0, 2], alpha=True, affine=aff)
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig())
    assert report.n_images == 6 and not report.skipped and not report.warnings
    cap = load_capture(tmp_path / "cap", check_hashes=True)
    assert cap.info["color_correction"] == ["18/annotations/EMO-1/color_correction"]
    cams = check_cameras(cap, stored_cameras(scene, 0.5), scene, tol=0.3)
    for row in cap.manifest.to_dict("records"):
        img, true = cap.image(row).astype(int), scene.image(row["camera"], row["frame"], cams[row["camera"]])
        raw = cv2.imread(str(tmp_path / "ns" / row["source_path"]))[..., ::-1].astype(int)
        assert np.abs(img - true).max() <= 2 and np.abs(raw - true).mean() > 5  # corrected, and the correction mattered
        assert mask_mismatch(cap, row, silhouette(cams[row["camera"]])) == 0.0
    # the formula, against an independent float64 version (sRGB in [0,1], row vector @ M, truncated)
    img = scene.image("22220000")
    M = aff["22220000"]
    ref = np.floor(np.clip((img / 255.0) @ M[:3, :3] + M[:3, 3], 0, 1) * 255)
    np.testing.assert_array_equal(correct_color_affine(img, M), ref)
    # a .npy that is a pickle (object array), or of the wrong shape: that camera is skipped, naming the file
    npy = tmp_path / "ns/18/annotations/EMO-1/color_correction"
    np.save(npy / "22220001.npy", np.array([{"M": 1}], dtype=object), allow_pickle=True)
    np.save(npy / "22220002.npy", np.eye(3))
    report = import_capture(tmp_path / "ns", tmp_path / "cap2", ImportConfig())
    reasons = {s["item"]: s["reason"] for s in report.skipped}
    assert "not a readable numeric .npy" in reasons["18/annotations/EMO-1/color_correction/22220001.npy"]
    assert "expected shape (3, 4)" in reasons["18/annotations/EMO-1/color_correction/22220002.npy"]
    assert report.n_images == 2


def test_v2_colour_truncates_like_nersemble_data():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    ccm = np.hstack([np.eye(3) * 1.1 + rng.uniform(-0.05, 0.05, (3, 3)), rng.uniform(-0.02, 0.02, (3, 1))])
    lin = srgb_to_linear(img / 255.0) @ ccm[:, :3].T + ccm[:, 3]
    # colour's cctf_encoding (no clipping before it, sign-preserving power), then clip and astype as nersemble-data
    enc = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.sign(lin) * np.abs(lin) ** (1 / 2.4) - 0.055)
    ref = np.clip(enc * 255, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(correct_color(img, ccm), ref)


def test_vhap_frames(tmp_path, capsys):
    scene = Scene(serial_cameras(2, width=400, height=320, f=460.0))
    write_nersemble(tmp_path / "vhap", scene, media="vhap", frames=[0, 1], size_keys=False, vhap_downsample=(2,), alpha=True)
    report = import_capture(tmp_path / "vhap", tmp_path / "cap", ImportConfig())
    assert report.n_images == 4 and not report.skipped
    cap = load_capture(tmp_path / "cap")
    check_cameras(cap, scene.cameras, scene)
    assert cap.info["layouts"] == {"017/EMO-1": "VHAP frames (images/)"} and cap.frames("017", "EMO-1") == [0, 1]
    assert set(cap.manifest.source_path) == {f"017/sequences/EMO-1/images/cam_{s}_{t:06d}.jpg" for s in scene.cameras for t in (0, 1)}
    for row in cap.manifest.to_dict("records"):
        assert mask_mismatch(cap, row, silhouette(scene.cameras[row["camera"]])) < 0.002
    # images_2/: K scaled to its size (the base size is images/'s), said, and the full-size masks resized
    import_capture(tmp_path / "vhap", tmp_path / "cap2", ImportConfig(nersemble_images_downsample=2))
    cap = load_capture(tmp_path / "cap2")
    half = stored_cameras(scene, 0.5)
    check_cameras(cap, half, scene)
    assert cap.info["intrinsics"]["017/EMO-1/22220000"]["scale"] == [0.5, 0.5]
    assert "images are 200×160: K scaled by 0.5 × 0.5" in capsys.readouterr().err
    for row in cap.manifest.to_dict("records"):
        assert mask_mismatch(cap, row, silhouette(half[row["camera"]])) < 0.01
    # a missing or unreadable alpha map: recorded, naming it, and the image imported without a mask
    (tmp_path / "vhap/017/sequences/EMO-1/alpha_maps/cam_22220000_000001.jpg").unlink()
    (tmp_path / "vhap/017/sequences/EMO-1/alpha_maps/cam_22220001_000000.jpg").write_bytes(b"broken")
    report = import_capture(tmp_path / "vhap", tmp_path / "cap4", ImportConfig())
    assert report.n_images == 4 and {s["item"]: s["reason"] for s in report.skipped} == {
        "017/sequences/EMO-1 [camera 22220000] [frame 1] (mask)": "no alpha map for this frame; imported without a mask",
        "017/sequences/EMO-1/alpha_maps/cam_22220001_000000.jpg": "not a readable alpha map"}
    assert load_capture(tmp_path / "cap4").manifest.mask_path.notna().sum() == 2
    with pytest.raises(CaptureError, match="images_4: no VHAP frames.*nersemble_images_downsample is 4"):
        import_capture(tmp_path / "vhap", tmp_path / "cap3", ImportConfig(nersemble_images_downsample=4, strict=True))


def test_calibrated_camera_without_video_is_reported(tmp_path, capsys):
    scene = Scene(serial_cameras(2))
    write_nersemble(tmp_path / "ns", scene, frames=[0], extra_serials=["22229999"])
    report = import_capture(tmp_path / "ns", tmp_path / "cap", ImportConfig())
    assert report.n_images == 2
    msg = ("017/sequences/EMO-1: calibrated camera(s) 22229999 of 017/calibration/camera_params.json have no images "
           "in this sequence (videos / frame folders (images/)); set captures.cameras to the others to import without them")
    assert report.warnings == [msg] and f"warning: {msg}" in capsys.readouterr().err
    cap = load_capture(tmp_path / "cap")
    assert cap.info["missing_cameras"] == {"017/EMO-1": ["22229999"]} and msg in cap.info["warnings"]
    with pytest.raises(CaptureError, match="calibrated camera\\(s\\) 22229999 .* have no images"):
        import_capture(tmp_path / "ns", tmp_path / "cap2", ImportConfig(strict=True))
    # selecting the cameras that exist is not a warning
    report = import_capture(tmp_path / "ns", tmp_path / "cap3", ImportConfig(strict=True, cameras=["22220000", "22220001"]))
    assert report.n_images == 2 and not report.warnings


def test_vhap_copy_of_v1(tmp_path):
    """VHAP's v1 layout: camera_params/<id>/camera_params.json, color_correction/<id>/<serial>.npy, <id>/<seq>/images/."""
    scene = Scene(serial_cameras(2, width=400, height=320, f=460.0))
    aff = affines(scene.cameras)
    pdir = write_nersemble(tmp_path / "w", scene, media="vhap", frames=[0, 3], size_keys=False, affine=aff, alpha=True)
    root = tmp_path / "vhap"
    (root / "camera_params" / "017").mkdir(parents=True)
    (root / "color_correction").mkdir()
    (pdir / "calibration/camera_params.json").rename(root / "camera_params/017/camera_params.json")
    (pdir / "annotations/EMO-1/color_correction").rename(root / "color_correction/017")
    (root / "017").mkdir()
    (pdir / "sequences/EMO-1").rename(root / "017/EMO-1")
    report = import_capture(root, tmp_path / "cap", ImportConfig())
    assert report.n_images == 4 and not report.skipped and not report.warnings
    cap = load_capture(tmp_path / "cap")
    assert cap.info["versions"] == {"017": 1} and cap.info["color_correction"] == ["color_correction/017"]
    assert cap.frames("017", "EMO-1") == [0, 3]
    check_cameras(cap, scene.cameras, scene)
    for row in cap.manifest.to_dict("records"):
        assert np.abs(cap.image(row).astype(int) - scene.image(row["camera"], row["frame"])).mean() < 2  # colour corrected
        assert row["mask_path"]


def test_a_video_declaring_billions_of_frames_is_refused(tmp_path):
    """A few bytes of AVI header can declare 2^31 - 1 frames; the reader built the set of every frame index (about
    100 GB, found by an audit). video_length refuses a count beyond any real take, naming the file."""
    import struct

    from pipelines.nersemble_layouts import video_length

    path = tmp_path / "cam_222200037.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for i in range(2):
        w.write(np.full((32, 32, 3), 40 * i, np.uint8))
    w.release()
    assert video_length(path) == 2
    data = bytearray(path.read_bytes())
    for tag, offset in ((b"avih", 24), (b"strh", 40)):  # avih dwTotalFrames, strh dwLength
        i = data.index(tag)
        data[i + offset:i + offset + 4] = struct.pack("<I", 2**31 - 1)
    path.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match=r"cam_222200037.avi: the video declares \d+ frames, more than"):
        video_length(path)


@pytest.mark.parametrize("options, downsample", [(dict(media="images"), 1), (dict(media="vhap"), 1),
                                                 (dict(media="vhap", vhap_downsample=(2,), size_keys=False), 2),
                                                 (dict(version=1), 1)])
def test_each_image_is_decoded_once(tmp_path, monkeypatch, options, downsample):
    """Every imported image is decoded exactly once, and no other image at all: a camera's size comes from its first
    image's header. Counted through cv2.imread, the real decoder, wrapped for the import. Before: the first image of
    each camera was decoded three times (twice for its size, stored_size called by base_size and again, then once
    imported: 8 decodes for the 4 images of 2 cameras × 2 frames), and with images_2/ each camera's full-size images/
    frame once more (10). Now 4."""
    scene = Scene(serial_cameras(2, width=400, height=320, f=460.0))
    root = tmp_path / "ns"
    write_nersemble(root, scene, frames=[0, 1], **options)
    decoded, imread = Counter(), cv2.imread

    def counting_imread(path, *flags):
        decoded[Path(path).relative_to(root).as_posix()] += 1
        return imread(path, *flags)

    monkeypatch.setattr(cv2, "imread", counting_imread)
    report = import_capture(root, tmp_path / "cap", ImportConfig(nersemble_images_downsample=downsample))
    monkeypatch.undo()
    assert report.n_images == 4 and not report.skipped
    rows = load_capture(tmp_path / "cap").manifest
    assert decoded == Counter(rows.source_path) and set(decoded.values()) == {1}
    if downsample == 2:
        assert all("/images_2/" in p for p in decoded)


def test_image_file_size_is_the_decoded_size(tmp_path):
    """The header's size is the size read_image_file decodes, for 16-bit PNG, grey and RGBA files and a JPEG whose
    EXIF turns it (cv2.IMREAD_UNCHANGED does not apply the turn, and neither does the header read); a file whose
    header is not an image is refused with the decoder's error, naming it."""
    from PIL import Image

    from pipelines.views import image_file_size, read_image_file
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "deep.png"), rng.integers(0, 65535, (30, 50, 3), dtype=np.uint16))
    cv2.imwrite(str(tmp_path / "grey.png"), rng.integers(0, 255, (31, 17), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "rgba.png"), rng.integers(0, 255, (12, 40, 4), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    Image.fromarray(rng.integers(0, 255, (20, 44, 3), dtype=np.uint8)).save(tmp_path / "turned.jpg", exif=exif)
    for name, size in [("deep.png", (50, 30)), ("grey.png", (17, 31)), ("rgba.png", (40, 12)), ("turned.jpg", (44, 20))]:
        rgb, _ = read_image_file(tmp_path / name)
        assert image_file_size(tmp_path / name) == (rgb.shape[1], rgb.shape[0]) == size, name
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(CaptureError, match="bad.png: not a readable image"):
        image_file_size(tmp_path / "bad.png")


def test_image_file_size_refuses_a_fifo_and_a_huge_header_naming_the_file(tmp_path):
    """One implementation (readers.decoded_size) holds the checks both header reads had: a named pipe is refused
    before PIL opens it (before: PIL's open waited on it forever; only the decode fallback checked for regular
    files), a missing file is named, and a header beyond PIL's own limit is refused before decoding."""
    import os
    import subprocess
    import sys
    import zlib
    os.mkfifo(tmp_path / "cam_1.png")
    code = ("from pathlib import Path; from pipelines.views import image_file_size\n"
            f"image_file_size(Path({str(tmp_path / 'cam_1.png')!r}))")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("image_file_size waits forever on a FIFO")
    assert f"CaptureError: {tmp_path / 'cam_1.png'}: not a regular file (a named pipe, device or folder)" in r.stderr
    from pipelines.views import image_file_size
    with pytest.raises(CaptureError, match=r"gone\.png: image file is missing"):
        image_file_size(tmp_path / "gone.png")
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((1, 1), np.uint8))
    data = bytearray((tmp_path / "big.png").read_bytes())
    data[16:24] = (32767).to_bytes(4, "big") * 2  # IHDR width, height: PIL refuses to size it (2 × 89 MP)
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # the IHDR chunk's CRC
    (tmp_path / "big.png").write_bytes(bytes(data))
    with pytest.raises(CaptureError, match=r"big\.png: the image declares over 178 million pixels"):
        image_file_size(tmp_path / "big.png")
