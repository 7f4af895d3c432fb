"""In-the-wild generation: the photo camera estimate recovers a known camera, orbit / crop geometry, and
`generate_from_photo` on matplotlib's grace_hopper.jpg with a tiny random model (2 views, 2 steps) writes every
output, while refusing non-images, faceless images, tiny faces and a non-empty output folder, writing nothing."""
import json

import cv2
import matplotlib.cbook as cbook
import numpy as np
import pytest
import torch

from flame_fitting.geometry.camera import Camera, look_at
from flame_fitting.formats.capture import load_cameras
from flame_fitting.core.fileio import OutputError
from flame_fitting.head.head_model import load_head_model
from flame_fitting.head.standin import build_standin
from flame_fitting.uv import UVLayout
from geoface_model.config import tiny
from geoface_model.generate import GenerateError, generate_from_photo, read_photo
from geoface_model.model import GeoFaceTransformer, model_kwargs
from geoface_model.orbit import assumed_intrinsics, crop_view, estimate_photo_camera, head_crop, orbit_cameras
from geoface_model.pipeline import GeoFacePipeline, head_info_of

PHOTO = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gen")
    build_standin(root / "head", seed=0, n_shape=10, n_expr=10)
    head = load_head_model(root / "head")
    torch.manual_seed(0)
    cfg = tiny()
    pipe = GeoFacePipeline.build(GeoFaceTransformer(**model_kwargs(cfg, 3, 1)), layout=UVLayout.from_head_model(head),
                                 head_info=head_info_of(head))
    pipe.save_pretrained(root / "model")
    yield root, head
    torch.set_num_threads(n)


def _yaw_deg(c: np.ndarray, centre: np.ndarray) -> float:
    d = c - centre
    return float(np.degrees(np.arctan2(d[0], d[2])))


def test_photo_camera_recovers_a_known_camera(env):
    _, head = env
    W, H = 480, 560
    with torch.no_grad():
        lmk = head().landmarks_mp[0].double().numpy()
    centre = lmk.mean(0)
    eye = centre + 0.7 * np.array([np.sin(np.radians(20)), 0.1, np.cos(np.radians(20))])
    true = Camera(K=assumed_intrinsics(W, H), world_to_cam=look_at(eye, centre), width=W, height=H)
    pts = np.full((478, 2), np.nan)
    pts[head.mp_landmark_indices.numpy()] = true.project(lmk)[0]
    est = estimate_photo_camera(head, pts, W, H)
    assert est.method == "fit" and est.rms_px < 0.5, (est.method, est.note, est.rms_px)
    R_err = est.camera.R.astype(np.float64) @ true.R.T.astype(np.float64)
    assert np.degrees(np.arccos(np.clip((np.trace(R_err) - 1) / 2, -1, 1))) < 0.5
    assert np.linalg.norm(est.camera.center - true.center) < 0.01  # metres, from the head's metric size
    pnp = estimate_photo_camera(head, pts, W, H, fit=False)  # neutral head landmarks: PnP alone is exact too
    assert pnp.method == "pnp" and pnp.rms_px < 1e-2


def test_orbit_and_crop_geometry(env):
    _, head = env
    with torch.no_grad():
        v = head().vertices[0].numpy()
    centre = np.array([0.0, 0.01, 0.02])
    # the photo's camera looks past the head: the head is off the photo's centre, the crop's principal point is not
    # the crop's centre
    ref = Camera(K=assumed_intrinsics(400, 300), world_to_cam=look_at(centre + [0.1, 0.15, 0.8], centre + [0.05, -0.06, 0]),
                 width=400, height=300)
    box = head_crop(ref, centre, 0.23, fill=0.5)
    img, cam = crop_view(np.zeros((300, 400, 3), np.uint8), ref, box, 64)
    assert img.shape == (64, 64, 3) and (cam.width, cam.height) == (64, 64)
    np.testing.assert_allclose(cam.project(centre[None])[0][0], [32, 32], atol=0.6)  # head centre at the crop centre
    f = cam.K[0, 0]
    assert f * 0.23 / ref.project(centre[None])[1][0] == pytest.approx(0.5 * 64, rel=0.02)  # head fills half the side
    views = orbit_cameras(cam, centre, 5, (-60, 60))
    d_ref = np.linalg.norm(cam.center - centre)
    for c, yaw in zip(views, np.linspace(-60, 60, 5)):
        assert np.linalg.norm(c.center - centre) == pytest.approx(d_ref, rel=1e-5)
        assert _yaw_deg(c.center, centre) == pytest.approx(yaw, abs=1e-3)
        # looks at the head, and the head centre is in the middle of the view as in the reference crop (the crop's
        # principal point, off-centre by the photo's, put it 7 px low in a 32² view of a portrait)
        np.testing.assert_allclose(c.project(centre[None])[0][0], [32, 32], atol=1e-3)
        np.testing.assert_allclose(c.K[[0, 1], [0, 1]], cam.K[[0, 1], [0, 1]])
    assert len(v) == head.n_vertices


def test_generate_from_photo_writes_everything(env, tmp_path):
    root, head = env
    out = tmp_path / "out"
    rep = generate_from_photo(PHOTO, root / "model", 2, out, head_model_dir=root / "head", num_inference_steps=2,
                              max_side=400, export_gs=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left
    assert rep["faces_found"] == 1 and rep["camera"]["method"] == "fit" and rep["camera"]["landmark_rms_px"] < 3
    assert rep["used_size"] == [341, 400] and any("downscaled from 512x600" in n for n in rep["notes"])
    assert json.loads((out / "report.json").read_text()) == rep
    for name in ("reference.png", "views/view_00.png", "views/view_01.png"):
        assert cv2.imread(str(out / name)).shape == (64, 64, 3)
    assert cv2.imread(str(out / "contact_sheet.png")).shape == (256, 3 * 256, 3)
    lines = (out / "mesh.obj").read_text().splitlines()
    assert sum(ln.startswith("v ") for ln in lines) == head.n_vertices
    assert sum(ln.startswith("f ") for ln in lines) == head.n_faces
    assert np.load(out / "posmap.npy").shape == (64, 64, 3)
    cams = load_cameras(out / "cameras.json")
    assert sorted(cams) == ["reference", "view_00", "view_01"]
    centre = np.array(rep["camera"]["head_centre"])
    dist = [np.linalg.norm(c.center - centre) for c in cams.values()]
    np.testing.assert_allclose(dist, rep["camera"]["distance_m"], rtol=1e-4)
    assert _yaw_deg(cams["view_00"].center, centre) == pytest.approx(-60, abs=1e-2)
    assert _yaw_deg(cams["view_01"].center, centre) == pytest.approx(60, abs=1e-2)
    assert abs(_yaw_deg(cams["reference"].center, centre)) < 25  # a near-frontal portrait
    assert (out / "gs" / "transforms.json").is_file() and (out / "gs" / "points3d.ply").is_file()
    with pytest.raises(OutputError, match="pass --force"):
        generate_from_photo(PHOTO, root / "model", 2, out, head_model_dir=root / "head", progress=False)


def _refused(env, tmp_path, photo, match):
    root, _ = env
    before = sorted(tmp_path.iterdir())
    with pytest.raises(GenerateError, match=match):
        generate_from_photo(photo, root / "model", 2, tmp_path / "out", head_model_dir=root / "head",
                            num_inference_steps=1, progress=False)
    assert sorted(tmp_path.iterdir()) == before  # nothing written, no temporary folder


def test_refuses_non_image(env, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    _refused(env, tmp_path, bad, "notes.jpg: not a readable image")
    _refused(env, tmp_path, tmp_path / "missing.png", "missing.png: image file is missing")


def test_refuses_image_without_face(env, tmp_path):
    y, x = np.mgrid[0:240, 0:320]
    img = np.stack([x * 0.8, y, (x + y) * 0.4], -1).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "gradient.png"), img)
    _refused(env, tmp_path, tmp_path / "gradient.png", "gradient.png: no face found")


def test_refuses_tiny_face(env, tmp_path):
    img = cv2.imread(PHOTO)
    cv2.imwrite(str(tmp_path / "small.png"), cv2.resize(img, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA))
    _refused(env, tmp_path, tmp_path / "small.png", r"small.png: the face is only \d+ px across \(need >= 64 px\)")


def test_transparent_photo_is_composited_over_white(tmp_path):
    """An RGBA cut-out: transparent pixels (black here, as many cutting tools leave them) become white, opaque ones
    stay, half-transparent ones are blended; an opaque photo is read as before."""
    rgb = cv2.imread(PHOTO, cv2.IMREAD_COLOR_RGB)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :100], alpha[:, 100:110] = 0, 128
    rgba = np.dstack([np.where(alpha[..., None] == 0, 0, rgb), alpha])
    cv2.imwrite(str(tmp_path / "cut.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    img, notes, size = read_photo(tmp_path / "cut.png")
    assert size == (rgb.shape[1], rgb.shape[0]) and (img[:, :100] == 255).all()
    np.testing.assert_array_equal(img[:, 110:], rgb[:, 110:])
    np.testing.assert_allclose(img[:, 100:110], rgb[:, 100:110].astype(float) * 128 / 255 + 255 * 127 / 255, atol=1)
    assert any("composited over white" in n for n in notes)
    cv2.imwrite(str(tmp_path / "opaque.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    img, notes, _ = read_photo(tmp_path / "opaque.png")
    np.testing.assert_array_equal(img, rgb)
    assert not any("composited" in n for n in notes)

