"""pipelines.common: subject split rule, selection, config validation, and the per-view processing
(undistortion, crops, resizes) checked geometrically: the stored camera projects known 3D points onto
the dots drawn in the raw image."""
from dataclasses import replace

import numpy as np
import pytest
from writers import WIDE_POINTS, Scene, make_cameras, projection_error

from flame_fitting.formats.capture import CaptureError
from flame_fitting.core.params import ParamsError, build_config
from pipelines.common import CaptureImport
from pipelines.import_config import camera_names, ImportConfig, select_frames, subject_split
from pipelines.views import scale_to_image, ViewProcessor


def dist(i):
    return np.array([-0.35 + 0.03 * i, 0.12, 0.004, -0.003])


def test_subject_split_is_a_stable_hash_rule():
    subjects = [f"{i:04d}" for i in range(3000)]
    splits = [subject_split(s, (0.7, 0.2, 0.1), seed=0) for s in subjects]
    frac = {k: splits.count(k) / len(splits) for k in ("train", "val", "test")}
    assert abs(frac["train"] - 0.7) < 0.03 and abs(frac["val"] - 0.2) < 0.03 and abs(frac["test"] - 0.1) < 0.03
    assert splits == [subject_split(s, (0.7, 0.2, 0.1), seed=0) for s in subjects]  # deterministic
    assert splits != [subject_split(s, (0.7, 0.2, 0.1), seed=1) for s in subjects]  # the seed matters
    assert {subject_split(s, (1.0, 0.0, 0.0)) for s in subjects[:200]} == {"train"}
    assert {subject_split(s, (0.0, 0.0, 1.0)) for s in subjects[:200]} == {"test"}


def test_frame_selection():
    cfg = ImportConfig(frame_start=2, frame_stride=3, max_frames=3)
    assert select_frames(range(20), cfg) == [2, 5, 8]
    assert select_frames(range(6), cfg) == [2, 5]
    assert select_frames(range(20), ImportConfig(frames=[7, 3, 3])) == [3, 7]


def test_camera_names_are_stems_unless_they_repeat():
    assert camera_names(["./images/a.png", "images/b.JPG", "c"]) == ["a", "b", "c"]
    assert camera_names(["cam0/000.png", "cam1/000.png"]) == ["cam0_000", "cam1_000"]


def test_config_validation_and_params_section():
    cfg = build_config(ImportConfig, {"crop_aspect": 1.0, "resize": [64, 64], "cameras": ["a"]}, "params.yaml:captures")
    assert cfg.resize == [64, 64] and cfg.cameras == ["a"]
    with pytest.raises(ParamsError, match="at most one of crop_box, crop_aspect, crop_head"):
        build_config(ImportConfig, {"crop_aspect": 1.0, "crop_box": [0, 0, 4, 4]}, "captures")
    with pytest.raises(ParamsError, match="unknown keys"):
        build_config(ImportConfig, {"crop": 1}, "captures")
    with pytest.raises(ParamsError, match="split_fractions"):
        ImportConfig(split_fractions=[0.5, 0.1, 0.1]).validate()


def test_undistortion_puts_points_on_the_dots():
    scene = Scene(make_cameras(4, dist=dist), points=WIDE_POINTS)
    ignored = []
    for name, cam in scene.cameras.items():
        raw = scene.image(name)
        view = ViewProcessor(cam, ImportConfig())
        assert view.camera.dist is None and np.array_equal(view.camera.K, cam.K)
        assert projection_error(view.camera, view.image(raw), scene.points) < 0.4
        # raw pixel coordinates map to where the stored camera projects
        uv = view.points(cam.project(scene.points)[0])
        np.testing.assert_allclose(uv, view.camera.project(scene.points)[0], atol=1e-3)
        # the check sees the distortion: a pinhole camera on the raw image misses the dots
        ignored.append(projection_error(replace(cam, dist=None), raw, scene.points))
        # undistort: false keeps the distortion in the stored camera instead
        kept = ViewProcessor(cam, ImportConfig(undistort=False))
        assert np.array_equal(kept.camera.dist, cam.dist) and np.array_equal(kept.image(raw), raw)
    assert max(ignored) > 1.5


@pytest.mark.parametrize("cfg", [ImportConfig(crop_box=[30, 20, 120, 110]), ImportConfig(crop_aspect=1.0),
                                 ImportConfig(crop_head=[0, 0, 0, 0.2]), ImportConfig(downscale=2),
                                 ImportConfig(crop_aspect=1.0, resize=[96, 96]),
                                 ImportConfig(crop_head=[0, 0, 0, 0.2], resize=[120, 120])])
def test_crop_and_resize_keep_the_camera_consistent(cfg):
    scene = Scene(make_cameras(3, dist=dist))
    for name, cam in scene.cameras.items():
        view = ViewProcessor(cam, cfg)
        out = view.image(scene.image(name))
        assert out.shape[:2] == (view.camera.height, view.camera.width)
        if cfg.resize:
            assert (view.camera.width, view.camera.height) == tuple(cfg.resize)
        if cfg.crop_aspect:
            assert abs(view.camera.width / view.camera.height - cfg.crop_aspect) < 0.02
        assert projection_error(view.camera, out, scene.points) < 0.5
        np.testing.assert_allclose(view.points(cam.project(scene.points)[0]), view.camera.project(scene.points)[0], atol=1e-3)


def test_crop_without_resize_is_an_exact_window():
    scene = Scene(make_cameras(2))
    for name, cam in scene.cameras.items():
        view = ViewProcessor(cam, ImportConfig(crop_head=[0, 0, 0, 0.15]))
        x0, y0, w, h = view.crop
        assert w == h and np.array_equal(view.image(scene.image(name)), scene.image(name)[y0:y0 + h, x0:x0 + w])
        assert np.allclose(view.camera.K[:2, 2], cam.K[:2, 2] - [x0, y0])


def test_bad_crop_and_scaling_are_refused():
    cam = make_cameras(1)["cam0"]
    with pytest.raises(CaptureError, match="does not fit the 200×160 image"):
        ViewProcessor(cam, ImportConfig(crop_box=[100, 0, 150, 50]))
    with pytest.raises(CaptureError, match="not in front of the camera"):
        ViewProcessor(cam, ImportConfig(crop_head=[0, 0, 5.0, 0.1]))
    assert np.allclose(scale_to_image(cam, 100, 80, "x").K[:2], cam.K[:2] * 0.5)
    with pytest.raises(CaptureError, match="not the same aspect ratio"):
        scale_to_image(cam, 100, 100, "cam0.png")


def test_pixel_center_offset_and_nothing_imported(tmp_path):
    cfg = ImportConfig(pixel_center_offset=0.5)
    cam = make_cameras(1)["cam0"]
    raw = tmp_path / "raw"  # beside the output: an output inside its input is refused
    raw.mkdir()
    with pytest.raises(CaptureError, match="nothing imported.*1 items skipped.*img.png: broken"):
        with CaptureImport("test", raw, tmp_path / "out", cfg) as imp:
            made = imp.camera("c", cam.K, cam.world_to_cam, cam.width, cam.height, None, "cams.json")
            assert np.allclose(made.K[:2, 2], cam.K[:2, 2] + 0.5)
            imp.skip("img.png", "broken")
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no capture, no temporary folder left behind
    with pytest.raises(CaptureError, match="img.png: broken"):
        with CaptureImport("test", raw, tmp_path / "out", ImportConfig(strict=True)) as imp:
            imp.skip("img.png", "broken")
