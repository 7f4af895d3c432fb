"""In-the-wild generation: the photo camera estimate recovers a known camera, orbit / crop geometry, and
`generate_from_photo` on matplotlib's grace_hopper.jpg with a tiny random model (2 views, 2 steps) writes every
output, while refusing non-images, faceless images, tiny faces and a non-empty output folder, writing nothing; the
photo is read as a viewer shows it (EXIF orientation, first frame, every pixel format) and a damaged file is refused
in one line."""
import json
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import matplotlib.cbook as cbook
import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

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



def _upright() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def _close(img: np.ndarray, ref: np.ndarray, tol: float = 2.0) -> bool:
    """Same shape and a mean |difference| of a JPEG/WebP re-encode (a sideways image differs by ~50)."""
    return img.shape == ref.shape and float(np.abs(img.astype(float) - ref).mean()) < tol


@pytest.mark.parametrize("ext,orientation", [("jpg", 6), ("jpg", 8), ("png", 6), ("webp", 6), ("webp", 8)])
def test_phone_photo_stored_sideways_is_read_upright(tmp_path, ext, orientation):
    """A phone portrait: pixels stored rotated, EXIF Orientation 6 / 8 says how to show them; read as every viewer
    shows it (OpenCV applied it to JPEG and PNG only: a WebP came out sideways and its face was not found)."""
    up = Image.fromarray(_upright())
    stored = up.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    stored.save(tmp_path / f"phone.{ext}", exif=exif, **({} if ext == "png" else {"quality": 95}))
    img, notes, size = read_photo(tmp_path / f"phone.{ext}")
    assert size == up.size and _close(img, _upright())
    assert f"turned upright by its EXIF orientation ({orientation})" in notes


def test_sideways_cut_out_keeps_its_transparency(tmp_path):
    """An RGBA PNG stored sideways (Orientation 6): the alpha turns with the colour (it was dropped, the cut-out's
    black background kept, when OpenCV turned the colour but not the alpha)."""
    rgb = _upright()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0
    rgba = Image.fromarray(np.dstack([np.where(alpha[..., None] == 0, 0, rgb), alpha]))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    rgba.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "cut.png", exif=exif)
    img, notes, _ = read_photo(tmp_path / "cut.png")
    assert (img[:, :100] == 255).all()
    np.testing.assert_array_equal(img[:, 100:], rgb[:, 100:])
    assert any("composited over white" in n for n in notes)


def test_multi_frame_file_uses_its_first_frame(tmp_path):
    """An animated GIF (OpenCV refused it: 'not a readable image') and a two-page TIFF: the first frame, noted."""
    other = Image.new("RGB", (512, 600), (0, 128, 255))
    Image.fromarray(_upright()).save(tmp_path / "anim.gif", save_all=True, append_images=[other], duration=100)
    Image.fromarray(_upright()).save(tmp_path / "pages.tiff", save_all=True, append_images=[other])
    for name, fmt, tol in (("anim.gif", "GIF", 4.0), ("pages.tiff", "TIFF", 0.5)):
        img, notes, _ = read_photo(tmp_path / name)
        assert _close(img, _upright(), tol) and f"2 frames ({fmt}); using the first" in notes


@pytest.mark.parametrize("mode", ["L", "I;16", "LA", "P", "CMYK", "RGB16"])
def test_grey_palette_16_bit_and_cmyk_photos(tmp_path, mode):
    """Every pixel format a photo comes in is read as RGB uint8 (16-bit scaled, not clipped; a palette's transparent
    entry and LA's alpha composited over white)."""
    rgb = _upright()
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    clear = np.zeros(rgb.shape[:2], bool)
    clear[:, :60] = True
    if mode == "RGB16":
        cv2.imwrite(str(tmp_path / "p.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
        want = rgb
    elif mode == "I;16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "p.png")
        want = np.dstack([grey] * 3)
    elif mode == "LA":
        Image.fromarray(np.dstack([grey, np.where(clear, 0, 255).astype(np.uint8)]), "LA").save(tmp_path / "p.png")
        want = np.where(clear[..., None], 255, np.dstack([grey] * 3))
    elif mode == "P":
        p = Image.fromarray(rgb).quantize(255)
        idx = np.where(clear, 255, np.asarray(p)).astype(np.uint8)
        q = Image.fromarray(idx, "P")
        q.putpalette(p.getpalette()[:255 * 3] + [0, 0, 0])
        q.save(tmp_path / "p.png", transparency=255)
        want = np.where(clear[..., None], 255, np.asarray(p.convert("RGB")))
    elif mode == "CMYK":
        Image.fromarray(rgb).convert("CMYK").save(tmp_path / "p.png", "JPEG", quality=95)  # content decides, not name
        want = rgb
    else:
        Image.fromarray(grey).save(tmp_path / "p.png")
        want = np.dstack([grey] * 3)
    img, _, _ = read_photo(tmp_path / "p.png")
    assert img.dtype == np.uint8 and _close(img, want, 1.0 if mode != "CMYK" else 2.0)


def test_refuses_damaged_files_in_one_line(env, tmp_path):
    """A truncated JPEG (OpenCV decoded it with the missing part grey, and generate ran on it), an empty file and a
    folder (said to be 'missing') are refused naming the file; a header declaring a huge image is refused without
    PIL's DecompressionBombWarning on stderr."""
    raw = Path(PHOTO).read_bytes()
    (tmp_path / "cut short.jpg").write_bytes(raw[:len(raw) * 6 // 10])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "photo_dir.jpg").mkdir()
    _refused(env, tmp_path, tmp_path / "cut short.jpg", r"cut short.jpg: truncated or damaged image \(image file is "
                                                         r"truncated")
    _refused(env, tmp_path, tmp_path / "empty.jpg", r"empty.jpg: the file is empty \(0 bytes\)")
    _refused(env, tmp_path, tmp_path / "photo_dir.jpg", "photo_dir.jpg: is a folder, not an image file")
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0))  # 432 MB of RGB once decoded
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                                        + chunk(b"IEND", b""))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _refused(env, tmp_path, tmp_path / "bomb.png", r"bomb.png: the image declares 12000×12000 pixels")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_generate_from_a_sideways_webp(env, tmp_path):
    """End to end: a phone WebP stored sideways (OpenCV: 'no face found') gives the upright face's report."""
    root, _ = env
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(_upright()).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone photo ü.webp",
                                                                          quality=95, exif=exif)
    rep = generate_from_photo(tmp_path / "phone photo ü.webp", root / "model", 1, tmp_path / "out",
                              head_model_dir=root / "head", num_inference_steps=1, max_side=400, progress=False)
    assert rep["photo_size"] == [512, 600] and rep["used_size"] == [341, 400] and rep["faces_found"] == 1
    assert "turned upright by its EXIF orientation (6)" in rep["notes"]
    ref = load_cameras(tmp_path / "out" / "cameras.json")["reference"]
    assert abs(_yaw_deg(ref.center, np.array(rep["camera"]["head_centre"]))) < 25  # the frontal portrait, upright
