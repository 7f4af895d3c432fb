"""Step 5 acceptance: a capture written in each source format and imported back gives the same head.

A small synthetic capture (stand-in head, 6 cameras, 1 frame) is fitted once (real MediaPipe
landmarks + `fit_sequence`) as the reference. Its images and cameras are then written in every
source format with the test-side writers (each with its own on-disk convention: camera→world RT
for RenderMe-360, OpenGL camera→world for transforms.json, quaternions for COLMAP, ...), imported
with `pipelines.registry.import_capture`, landmarked and fitted again: the imported cameras must be
the originals, the images identical (lossless PNG) and the fitted vertices the reference's. Two
negative cases write the awkward conventions the wrong way round (RenderMe-360 RT as world→camera,
transforms.json as OpenCV camera→world) and show that the check catches a flipped convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from writers import (Scene, cam_to_world64, write_colmap, write_folder, write_nersemble, write_renderme360,
                     write_transforms)

from flame_fitting.geometry.camera import Camera
from flame_fitting.formats.capture import load_capture
from flame_fitting.fit import FitConfig, FitInputError, fit_sequence
from flame_fitting.head.head_model import HeadModel, load_head_model
from flame_fitting.landmarks.capture import detect_capture
from standin_cache import standin_copy
from pipelines.registry import import_capture
from pipelines.synthetic import SyntheticConfig, generate

SAME_MM = 0.5  # lossless images + identical cameras: the refit must be the reference fit
FLIPPED_MM = 20.0  # a flipped convention moves the head by far more than this (or the fit fails)
CAM_TOL = 1e-6


@dataclass
class Refit:
    """Cameras, images and frame-0 fit of one capture (vertices None when the fit failed: `failure` says why)."""

    cameras: dict[str, Camera]
    images: dict[str, np.ndarray]  # camera -> (H,W,3) uint8 RGB
    vertices: np.ndarray | None  # (V,3) float32 world
    failure: str = ""


def refit(root: Path, model: HeadModel) -> Refit:
    """Load the (single-sequence, single-frame) capture at root, detect landmarks with MediaPipe and fit."""
    cap = load_capture(root, check_hashes=True)
    (subject, sequence), = cap.sequences()
    assert cap.frames(subject, sequence) == [0]
    cams = cap.cameras(subject, sequence)
    images = {row["camera"]: cap.image(row) for row in cap.manifest.to_dict("records")}
    ls = detect_capture(cap, workers=1, progress=False)
    try:
        fit = fit_sequence(model, cams, ls.for_sequence(subject, sequence), FitConfig(), progress=False)
    except FitInputError as e:
        return Refit(cams, images, None, f"FitInputError: {e}")
    status = fit.status.get(0)
    if status is None or status.status != "ok":
        return Refit(cams, images, None, f"frame 0: {status}")
    return Refit(cams, images, fit.vertices[0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Refit, HeadModel]:
    tmp = tmp_path_factory.mktemp("refit")
    standin_copy(tmp / "head", seed=0, n_shape=10, n_expr=10)
    generate(tmp / "head", tmp / "orig", SyntheticConfig(subjects=1, frames=1, cameras=6, resolution=256,
                                                         yaw_range_deg=[-45, 45], seed=0), progress=False)
    model = load_head_model(tmp / "head")
    ref = refit(tmp / "orig", model)
    assert ref.vertices is not None, f"reference fit failed: {ref.failure}"
    cap = load_capture(tmp / "orig")
    with np.load(cap.root / cap.manifest.gt_path.iat[0]) as z:  # the reference itself is a sane fit
        assert np.linalg.norm(ref.vertices - z["vertices"], axis=1).mean() * 1e3 < 10.0
    return ref, model


def scene_of(ref: Refit) -> Scene:
    return Scene(cameras=ref.cameras, images=ref.images)


def renderme360(root: Path, scene: Scene, rt_world_to_cam: bool = False) -> Path:
    write_renderme360(root, scene, frames=(0,), flame=False, masks=False, rt_world_to_cam=rt_world_to_cam)
    return root


# format id -> (registry source, writer(root, scene) -> the folder to import)
FORMATS = {
    "nersemble_v2": ("nersemble", lambda root, sc: write_nersemble(root, sc, frames=(0,), version=2, media="images",
                                                                   per_serial_intrinsics=True)),
    "nersemble_v1": ("nersemble", lambda root, sc: write_nersemble(root, sc, frames=(0,), version=1,
                                                                   per_serial_intrinsics=True)),
    "renderme360": ("renderme360", renderme360),
    "colmap_text": ("colmap", lambda root, sc: write_colmap(root, sc, binary=False)),
    "colmap_binary": ("colmap", lambda root, sc: write_colmap(root, sc, binary=True)),
    "transforms_json": ("transforms_json", lambda root, sc: write_transforms(root, sc, per_frame=True)),
    "folder_nested": ("folder", lambda root, sc: write_folder(root, sc, nested=True)),
    "folder_flat": ("folder", lambda root, sc: write_folder(root, sc, nested=False)),
}


def assert_same_cameras(got: dict[str, Camera], want: dict[str, Camera]) -> None:
    assert sorted(got) == sorted(want)
    for name, cam in want.items():
        g = got[name]
        assert (g.width, g.height, g.dist) == (cam.width, cam.height, None), name
        np.testing.assert_allclose(g.K, cam.K, rtol=0, atol=CAM_TOL * max(1.0, float(np.abs(cam.K).max())), err_msg=name)
        np.testing.assert_allclose(g.world_to_cam, cam.world_to_cam, rtol=0, atol=CAM_TOL, err_msg=name)


def vertex_distance_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a.astype(np.float64) - b.astype(np.float64), axis=1) * 1e3


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_imported_capture_refits_to_the_same_head(fmt, reference, tmp_path):
    """Written in `fmt`, imported back: same cameras (1e-6), same pixels, same fitted head (< 0.5 mm)."""
    ref, model = reference
    source, write = FORMATS[fmt]
    root_in = write(tmp_path / "src", scene_of(ref))
    report = import_capture(source, root_in, tmp_path / "imported")
    assert report.n_images == len(ref.images) and report.skipped == []
    got = refit(tmp_path / "imported", model)
    assert_same_cameras(got.cameras, ref.cameras)
    for name, img in ref.images.items():  # lossless: the very same pixels reach MediaPipe
        np.testing.assert_array_equal(got.images[name], img, err_msg=name)
    assert got.vertices is not None, f"{fmt}: refit failed: {got.failure}"
    d = vertex_distance_mm(got.vertices, ref.vertices)
    assert d.mean() < SAME_MM and d.max() < 2 * SAME_MM, f"{fmt}: mean {d.mean():.4f} mm, max {d.max():.4f} mm"


# a deliberately flipped convention: (registry source, writer(root, scene) -> folder to import);
# transforms_json_opencv writes OpenCV camera→world, i.e. leaves out the OpenGL axis flip diag(1, -1, -1, 1)
FLIPPED = {
    "renderme360_rt_world_to_cam": ("renderme360", lambda root, sc: renderme360(root, sc, rt_world_to_cam=True)),
    "transforms_json_opencv": ("transforms_json", lambda root, sc: write_transforms(
        root, sc, per_frame=True, matrices={n: cam_to_world64(c) for n, c in sc.cameras.items()})),
}


@pytest.mark.parametrize("case", list(FLIPPED))
def test_flipped_convention_is_caught(case, reference, tmp_path):
    """A file in the wrong convention gives other cameras, and the refit fails or lands > 20 mm away."""
    ref, model = reference
    source, write = FLIPPED[case]
    import_capture(source, write(tmp_path / "src", scene_of(ref)), tmp_path / "imported")
    got = refit(tmp_path / "imported", model)
    moved = max(float(np.abs(got.cameras[n].world_to_cam - c.world_to_cam).max()) for n, c in ref.cameras.items())
    assert moved > 0.1, "the flipped file must give different cameras"
    if got.vertices is not None:  # the fit may 'succeed' on wrong cameras, but not on the same head
        d = vertex_distance_mm(got.vertices, ref.vertices)
        assert d.mean() > FLIPPED_MM, f"{case}: a flipped convention went unnoticed (mean {d.mean():.2f} mm)"
