"""RenderMe-360 reader: camera→world calibration, encoded images and masks in HDF5 .smc files, FLAME and
2D keypoint side files; reading RT as world→camera provably fails the projection check; corrupt files,
non-rigid RT and uncalibrated cameras are refused or recorded naming the file."""
import re

import cv2
import h5py
import numpy as np
import pytest
from writers import FLAME_KEYS, WIDE_POINTS, Scene, cam_to_world64, flipped, make_cameras, projection_error, write_renderme360

from flame_fitting.formats.capture import CaptureError, load_capture
from pipelines.import_config import ImportConfig
from pipelines.renderme360 import import_capture

KEYPOINTS = np.random.default_rng(3).uniform(-0.2, 0.2, (106, 3)) * [1, 1, 0.3]


def scene_with_distortion():
    d = lambda i: np.array([-0.3, 0.1, 0.003, -0.002, 0.0]) if i == 1 else None  # noqa: E731
    return Scene(make_cameras(4, prefix="", dist=d), points=WIDE_POINTS)


def test_roundtrip_with_side_files(tmp_path):
    scene = scene_with_distortion()
    write_renderme360(tmp_path / "rm", scene, frames=range(3), keypoints=KEYPOINTS)
    report = import_capture(tmp_path / "rm", tmp_path / "cap", ImportConfig(frames=[0, 2]))
    assert report.n_images == 8 and not report.skipped and report.sequences == ["0026/e0"]
    cap = load_capture(tmp_path / "cap", check_hashes=True)
    cams = cap.cameras("0026", "e0")
    for row in cap.manifest.to_dict("records"):
        cam, ref = cams[row["camera"]], scene.cameras[row["camera"]]
        np.testing.assert_allclose(cam.K.astype(np.float64), ref.K.astype(np.float64), rtol=0, atol=1e-6)
        np.testing.assert_allclose(cam.world_to_cam.astype(np.float64), ref.world_to_cam.astype(np.float64), atol=1e-6)
        assert cam.dist is None
        img, true = cap.image(row), scene.image(row["camera"], row["frame"])
        if ref.dist is None:
            np.testing.assert_array_equal(img, true)
            mask = cv2.imread(str(tmp_path / "cap" / row["mask_path"]), cv2.IMREAD_GRAYSCALE)
            np.testing.assert_array_equal(mask, ((true.mean(2) > 60) * 255).astype(np.uint8))
        assert projection_error(cam, img, scene.points) < 0.4
        # RT is camera→world: using it directly as world→camera misses the dots
        assert projection_error(flipped(cam, cam_to_world64(ref)), img, scene.points) > 10
        assert row["source_path"] == "raw/0026/0026_e0_raw.smc" and row["source_key"] == f"Camera/{row['camera']}/color/{row['frame']}"
    # FLAME parameters and keypoints of the selected frames, as side files
    assert report.side_files == [f"0026/e0/renderme360_{k}/{t:05d}.npz" for t in (0, 2) for k in ("flame", "keypoints2d")]
    with h5py.File(tmp_path / "rm/anno/0026/0026_e0_anno.smc") as f:
        flame = np.load(tmp_path / "cap/0026/e0/renderme360_flame/00002.npz")
        assert sorted(flame.files) == sorted(FLAME_KEYS)  # albedos left out
        for k in FLAME_KEYS:
            np.testing.assert_array_equal(flame[k], f[f"FLAME/2/{k}"][()])
    kp = np.load(tmp_path / "cap/0026/e0/renderme360_keypoints2d/00000.npz")
    assert list(kp["cameras"]) == ["00", "01", "02", "03"] and kp["uv"].shape == (4, 106, 2)
    for i, c in enumerate(kp["cameras"]):  # keypoints follow the undistortion into the stored images
        np.testing.assert_allclose(kp["uv"][i], cams[c].project(KEYPOINTS)[0], atol=2e-3)
        np.testing.assert_allclose(kp["uv_source"][i], scene.cameras[c].project(KEYPOINTS)[0], atol=1e-4)


def test_keypoints_follow_the_pixel_center_offset(tmp_path):
    """`pixel_center_offset` 0.5 says the source counts pixel centres from 0: its K and its keypoints both move by
    half a pixel (the keypoints stayed, half a pixel off their own camera, before 2026-12-07)."""
    scene = scene_with_distortion()
    write_renderme360(tmp_path / "rm", scene, frames=[0], keypoints=KEYPOINTS, flame=False, masks=False)
    import_capture(tmp_path / "rm", tmp_path / "cap", ImportConfig(pixel_center_offset=0.5))
    cams = load_capture(tmp_path / "cap").cameras("0026", "e0")
    kp = np.load(tmp_path / "cap/0026/e0/renderme360_keypoints2d/00000.npz")
    for i, c in enumerate(kp["cameras"]):
        np.testing.assert_allclose(cams[c].K[:2, 2], scene.cameras[c].K[:2, 2] + 0.5, atol=1e-4)
        np.testing.assert_allclose(kp["uv"][i], cams[c].project(KEYPOINTS)[0], atol=2e-3)


def test_one_file_per_part(tmp_path):
    """Calibration, FLAME and keypoints in the raw file itself (no anno file): the side files are still written."""
    scene = scene_with_distortion()
    raw, anno = write_renderme360(tmp_path / "rm", scene, frames=[0], keypoints=KEYPOINTS, masks=False)
    with h5py.File(anno) as a, h5py.File(raw, "a") as r:
        for g in ("Calibration", "FLAME", "Keypoints2d"):
            a.copy(a[g], r, g)
    anno.unlink()
    report = import_capture(tmp_path / "rm", tmp_path / "cap", ImportConfig())
    assert report.side_files == [f"0026/e0/renderme360_{k}/00000.npz" for k in ("flame", "keypoints2d")]
    cams = load_capture(tmp_path / "cap").cameras("0026", "e0")
    kp = np.load(tmp_path / "cap/0026/e0/renderme360_keypoints2d/00000.npz")
    for i, c in enumerate(kp["cameras"]):
        np.testing.assert_allclose(kp["uv"][i], cams[c].project(KEYPOINTS)[0], atol=2e-3)


def test_crop_and_resize_follow_keypoints(tmp_path):
    scene = scene_with_distortion()
    write_renderme360(tmp_path / "rm", scene, frames=[0], keypoints=KEYPOINTS, flame=False, masks=False)
    import_capture(tmp_path / "rm", tmp_path / "cap", ImportConfig(crop_head=[0, 0, 0, 0.3], resize=[128, 128], cameras=["01", "02"]))
    cap = load_capture(tmp_path / "cap")
    cams = cap.cameras("0026", "e0")
    assert sorted(cams) == ["01", "02"] and all((c.width, c.height) == (128, 128) for c in cams.values())
    for row in cap.manifest.to_dict("records"):
        assert projection_error(cams[row["camera"]], cap.image(row), scene.points) < 0.5
    kp = np.load(tmp_path / "cap/0026/e0/renderme360_keypoints2d/00000.npz")
    for i, c in enumerate(kp["cameras"]):
        np.testing.assert_allclose(kp["uv"][i], cams[c].project(KEYPOINTS)[0], atol=2e-3)


def test_bad_input(tmp_path):
    scene = Scene(make_cameras(3, prefix=""))
    raw, anno = write_renderme360(tmp_path / "rm", scene, frames=[0], flame=False)
    with h5py.File(anno, "a") as f:
        rt = f["Calibration/01/RT"][()]
        rt[:3, :3] *= 1.2
        f["Calibration/01/RT"][...] = rt
        del f["Calibration/02"]
    report = import_capture(tmp_path / "rm", tmp_path / "cap", ImportConfig())
    reasons = {s["item"]: s["reason"] for s in report.skipped}
    assert report.n_images == 1
    assert "not a rotation" in reasons["anno/0026/0026_e0_anno.smc [Calibration/01]"]
    assert reasons["anno/0026/0026_e0_anno.smc [Calibration/02]"] == "camera 02 has images but no calibration"
    with pytest.raises(CaptureError, match=r"0026_e0_anno.smc \[Calibration/01\]: RT \(camera→world\): rotation part"):
        import_capture(tmp_path / "rm", tmp_path / "cap2", ImportConfig(strict=True))
    # a truncated raw file: the error names it
    data = raw.read_bytes()
    raw.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaptureError, match="nothing imported.*0026_e0_raw.smc.*(not a readable HDF5|damaged HDF5)"):
        import_capture(tmp_path / "rm", tmp_path / "cap3", ImportConfig())
    # garbage instead of HDF5
    raw.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(CaptureError, match="0026_e0_raw.smc: not a readable HDF5"):
        import_capture(tmp_path / "rm", tmp_path / "cap3", ImportConfig(strict=True))
    with pytest.raises(CaptureError, match="no RenderMe-360 raw files"):
        import_capture(tmp_path / "rm" / "anno", tmp_path / "cap3", ImportConfig())


@pytest.mark.parametrize("hostile", ["external_storage", "external_link", "virtual", "declared_terabytes"])
def test_a_file_that_reads_elsewhere_or_declares_terabytes_is_refused(tmp_path, hostile):
    """A hostile .smc must not pull another file of this machine into the capture (HDF5 external storage, external
    links and virtual datasets read other files: found by an audit, a dataset stored in /abs/secret_key was copied
    into the capture's FLAME side file), nor allocate what a tiny compressed dataset declares."""
    secret = tmp_path / "secret_key"
    secret.write_bytes(b"ssh-rsa PRIVATE KEY MATERIAL\n" + bytes(3 * 8 * 100))
    scene = Scene(make_cameras(2, prefix=""))
    raw, anno = write_renderme360(tmp_path / "rm", scene, frames=[0], flame=True)
    with h5py.File(anno, "a") as f:
        del f["FLAME/0/shape"]
        if hostile == "external_storage":
            f.create_dataset("FLAME/0/shape", shape=(100,), dtype="<u1", external=[(str(secret), 0, 100)])
        elif hostile == "external_link":
            f["FLAME/0/shape"] = h5py.ExternalLink(str(secret), "/data")
        elif hostile == "virtual":
            layout = h5py.VirtualLayout(shape=(100,), dtype="<u1")
            layout[:] = h5py.VirtualSource(str(secret), "data", shape=(100,))
            f.create_virtual_dataset("FLAME/0/shape", layout)
        else:
            f.create_dataset("FLAME/0/shape", shape=(10**7, 10**6), dtype="<f8", chunks=(1, 1000), compression="gzip")
    words = {"external_storage": "stored outside the file", "external_link": "an external link",
             "virtual": "stored outside the file", "declared_terabytes": "declares (10000000, 1000000)"}[hostile]
    for strict in (True, False):  # not strict: the part is skipped, and it was the only one
        with pytest.raises(CaptureError, match=r"0026_e0_anno.smc \[FLAME/0/shape\]: " + re.escape(words)):
            import_capture(tmp_path / "rm", tmp_path / "cap", ImportConfig(strict=strict))
        assert not (tmp_path / "cap").exists()
