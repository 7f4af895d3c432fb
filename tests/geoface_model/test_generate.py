"""In-the-wild generation: the photo camera estimate recovers a known camera, orbit / crop geometry, and
`generate_from_photo` on matplotlib's grace_hopper.jpg with a tiny random model (2 views, 2 steps) writes every
output, while refusing non-images, faceless images, tiny faces and a non-empty output folder, writing nothing; the
photo is read as a viewer shows it (EXIF orientation, first frame, every pixel format, its ICC profile converted to
sRGB, a 200 MP JPEG decoded at reduced scale) and a damaged file is refused in one line."""
import io
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
from PIL import ExifTags, Image, ImageCms

from flame_fitting.geometry.camera import Camera, look_at
from flame_fitting.formats.capture_checks import load_cameras
from flame_fitting.core.fileio import OutputError
from flame_fitting.head.head_model import load_head_model
from standin_cache import standin_copy
from flame_fitting.uv import UVLayout
from geoface_model import photo
from geoface_model.generate import GenerateError, generate_from_photo, read_photo
from geoface_model.model import GeoFaceTransformer, model_kwargs
from geoface_model.orbit import assumed_intrinsics, crop_view, estimate_photo_camera, head_crop, orbit_cameras
from geoface_model.pipeline import GeoFacePipeline, head_info_of
from geoface_model.presets import tiny

PHOTO = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


def tiny_model(root: Path):
    """A stand-in head model at root/head and a random tiny GeoFace pipeline at root/model; returns the head."""
    standin_copy(root / "head", seed=0, n_shape=10, n_expr=10)
    head = load_head_model(root / "head")
    torch.manual_seed(0)
    pipe = GeoFacePipeline.build(GeoFaceTransformer(**model_kwargs(tiny(), 3, 1)), layout=UVLayout.from_head_model(head),
                                 head_info=head_info_of(head))
    pipe.save_pretrained(root / "model")
    return head


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gen")
    yield root, tiny_model(root)
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
    with pytest.raises(OutputError, match="pass overwrite=True to replace it"):
        generate_from_photo(PHOTO, root / "model", 2, out, head_model_dir=root / "head", progress=False)


def test_the_command_generates_the_requested_yaws(env, tmp_path, capsys):
    """`geoface generate --yaw-range MIN MAX`: the views' yaws about the head, first to last (before, the command
    had no such option: every view lay on the library's default -60..60)."""
    from geoface.cli import main

    root, _ = env
    out = tmp_path / "out"
    assert main(["generate", PHOTO, "--model", str(root / "model"), "--head-model", str(root / "head"), "--views", "3",
                 "--steps", "1", "--yaw-range", "-30", "90", "--device", "cpu", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    cams, centre = load_cameras(out / "cameras.json"), np.array(rep["camera"]["head_centre"])
    yaws = [_yaw_deg(cams[f"view_0{i}"].center, centre) for i in range(3)]
    np.testing.assert_allclose(yaws, [-30, 30, 90], atol=1e-2)
    assert rep["yaw_range_deg"] == [-30, 90]


def test_the_command_generates_the_requested_pitch(env, tmp_path, capsys):
    """`geoface generate --pitch DEG`: every view's elevation about the head centre is DEG, at the requested yaws and
    the reference's distance (before, the command had no such option: the views kept the photo's own elevation)."""
    from geoface.cli import main

    root, _ = env
    out = tmp_path / "out"
    assert main(["generate", PHOTO, "--model", str(root / "model"), "--head-model", str(root / "head"), "--views", "3",
                 "--steps", "1", "--yaw-range", "-40", "40", "--pitch", "25", "--device", "cpu", "--out",
                 str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    cams, centre = load_cameras(out / "cameras.json"), np.array(rep["camera"]["head_centre"])
    views = [cams[f"view_0{i}"].center - centre for i in range(3)]
    pitches = [np.degrees(np.arctan2(d[1], np.hypot(d[0], d[2]))) for d in views]
    np.testing.assert_allclose(pitches, [25, 25, 25], atol=1e-2)
    np.testing.assert_allclose([_yaw_deg(cams[f"view_0{i}"].center, centre) for i in range(3)], [-40, 0, 40],
                               atol=1e-2)
    np.testing.assert_allclose([np.linalg.norm(d) for d in views], rep["camera"]["distance_m"], rtol=1e-3)
    assert rep["pitch_deg"] == 25


def _refused(env, tmp_path, photo, match):
    root, _ = env
    before = sorted(tmp_path.iterdir())
    with pytest.raises(GenerateError, match=match):
        generate_from_photo(photo, root / "model", 2, tmp_path / "out", head_model_dir=root / "head",
                            num_inference_steps=1, progress=False)
    assert sorted(tmp_path.iterdir()) == before  # nothing written, no temporary folder


@pytest.mark.parametrize("settings, match", [
    ({"n_views": 2.5}, r"n_views \(an integer\) .*got 2.5"),        # was TypeError from numpy.linspace
    ({"n_views": True}, r"n_views \(an integer\) .*got True"),
    ({"yaw_range_deg": (-30,)}, r"yaw_range_deg must be \(first, last\) degrees, got \(-30,\)"),  # was ValueError
    ({"yaw_range_deg": 30}, r"yaw_range_deg must be \(first, last\) degrees, got 30"),
])
def test_settings_of_the_wrong_kind_are_one_line_before_any_work(env, tmp_path, settings, match):
    root, _ = env
    kw = {"n_views": 2, **settings}
    with pytest.raises(GenerateError, match=match):
        generate_from_photo(tmp_path / "never-read.png", root / "model", out_dir=tmp_path / "out",
                            head_model_dir=root / "head", num_inference_steps=1, progress=False, **kw)
    assert list(tmp_path.iterdir()) == []


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
        _refused(env, tmp_path, tmp_path / "bomb.png", r"bomb.png: the photo declares 12000×12000 pixels; a PNG photo "
                                                       r"is read up to 134217728 pixels \(a JPEG up to 536870912")
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


# ---- ICC profiles: hand-written v2 profiles (tests build their own data) ----

D50 = (0.9642, 1.0, 0.8249)


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _xyz(v) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(c) for c in v)


def _icc(device_class: bytes, space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC v2 profile (PCS XYZ, D50) with a description, a white point and `tags`."""
    desc = b"test profile\0"
    tags = [(b"desc", b"desc" + bytes(4) + struct.pack(">I", len(desc)) + desc + bytes(8 + 3 + 67)),
            (b"wtpt", _xyz(D50))] + tags
    off, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += sig + struct.pack(">II", off + len(body), len(data))
        body += data
    header = (struct.pack(">I", off + len(body)) + b"lcms" + bytes([2, 0x10, 0, 0]) + device_class + space + b"XYZ "
              + bytes(12) + b"acsp" + bytes(28) + b"".join(_s15(c) for c in D50) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + body


def _display_p3() -> bytes:
    """Display P3 as Apple writes it: P3 primaries adapted to D50, the sRGB transfer curve (parametric type 3)."""
    trc = b"para" + bytes(4) + struct.pack(">HH", 3, 0) + b"".join(
        _s15(c) for c in (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045))
    colorants = [(b"rXYZ", (0.5151, 0.2412, -0.0011)), (b"gXYZ", (0.2920, 0.6922, 0.0419)),
                 (b"bXYZ", (0.1571, 0.0666, 0.7841))]
    trcs = [(t, trc) for t in (b"rTRC", b"gTRC", b"bTRC")]
    return _icc(b"mntr", b"RGB ", [(t, _xyz(v)) for t, v in colorants] + trcs)


def _grey_gamma_18() -> bytes:
    """Adobe's 'Gray Gamma 1.8' kind of grey profile."""
    return _icc(b"mntr", b"GRAY", [(b"kTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, round(1.8 * 256)) + bytes(2))])


def _cmyk_profile() -> bytes:
    """A CMYK printer profile whose A2B0 (lut16, 2 grid points) maps the ink corners to sRGB-primaries XYZ."""
    m = np.array([[0.4361, 0.3851, 0.1431], [0.2225, 0.7169, 0.0606], [0.0139, 0.0971, 0.7141]])  # sRGB, D50
    clut = b"".join(struct.pack(">3H", *np.minimum(65535, np.round(m @ ((1 - np.array([c, mg, y])) * (1 - k)) * 32768))
                                .astype(int))
                    for c in (0, 1) for mg in (0, 1) for y in (0, 1) for k in (0, 1))
    ramp = struct.pack(">2H", 0, 65535)
    lut = (b"mft2" + bytes(4) + bytes([4, 3, 2, 0]) + b"".join(_s15(v) for v in np.eye(3).ravel())
           + struct.pack(">HH", 2, 2) + ramp * 4 + clut + ramp * 3)
    return _icc(b"prtr", b"CMYK", [(b"A2B0", lut)])


def _srgb_encode(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return 255 * np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def _srgb_decode(v: np.ndarray) -> np.ndarray:
    v = v / 255.0
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _rgb_to_xyz(primaries) -> np.ndarray:
    """(3, 3) linear RGB -> XYZ of primaries (x, y) with the D65 white."""
    p = np.array([[x / y, 1, (1 - x - y) / y] for x, y in primaries]).T
    return p * np.linalg.solve(p, np.array([0.3127 / 0.3290, 1, (1 - 0.3127 - 0.3290) / 0.3290]))


P3_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [200, 80, 60], [230, 180, 150], [40, 90, 200], [128, 128, 128],
                       [255, 255, 255], [10, 10, 10]], np.uint8)


def _patches(colours: np.ndarray, px: int = 16) -> np.ndarray:
    """One px × px patch per colour, side by side (JPEG blocks never straddle two)."""
    return np.repeat(np.repeat(colours[None], px, 0), px, 1)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_display_p3_photo_reads_as_a_colour_managed_viewer_shows_it(tmp_path, ext):
    """An iPhone photo is Display P3: its pixels read as sRGB were duller and shifted (P3 (200, 80, 60) is sRGB
    (216, 69, 50)). Now converted: the analytic P3 -> sRGB (linear-light matrix from the two sets of primaries, same
    D65 white, clipped to the sRGB gamut, sRGB curve), within a few levels."""
    Image.fromarray(_patches(P3_COLOURS)).save(tmp_path / f"p3.{ext}", icc_profile=_display_p3(),
                                               **({"quality": 100, "subsampling": 0} if ext == "jpg" else {}))
    img, notes, _ = read_photo(tmp_path / f"p3.{ext}")
    a = np.linalg.solve(_rgb_to_xyz([(0.64, 0.33), (0.30, 0.60), (0.15, 0.06)]),
                        _rgb_to_xyz([(0.680, 0.320), (0.265, 0.690), (0.150, 0.060)]))
    want = _srgb_encode(_srgb_decode(P3_COLOURS.astype(float)) @ a.T)
    got = img[8, 8::16].astype(float)
    assert np.abs(got - want).max() <= 2, np.c_[P3_COLOURS, got, want.round()]
    assert np.abs(got[2] - P3_COLOURS[2]).max() > 10  # not read as sRGB
    assert "colours converted from its ICC profile (test profile) to sRGB" in notes


def test_srgb_tagged_photo_reads_unchanged(tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(_upright()).save(tmp_path / "srgb.png", icc_profile=srgb)
    img, notes, _ = read_photo(tmp_path / "srgb.png")
    assert np.abs(img.astype(int) - _upright()).max() <= 1 and any("to sRGB" in n for n in notes)


def test_icc_profile_on_rgba_grey_and_cmyk_photos(tmp_path):
    """RGBA keeps its alpha (the transparent half composited over white, the opaque half converted from P3); grey with
    a 'Gray Gamma 1.8' profile reads as that curve in sRGB (128 -> 146, not 128); a CMYK JPEG with a CMYK profile is
    converted through the profile (as ImageCms does it independently), not PIL's naive 255 - ink."""
    rgba = np.dstack([_patches(P3_COLOURS[2:3]), np.full((16, 16), 255, np.uint8)])
    rgba[:, :8, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png", icc_profile=_display_p3())
    img, notes, _ = read_photo(tmp_path / "cut.png")
    assert (img[:, :8] == 255).all() and np.abs(img[:, 8:].astype(int) - [216, 69, 50]).max() <= 1, img[0, 8]
    assert any("to sRGB" in n for n in notes) and any("composited over white" in n for n in notes)

    ramp = np.array([[0, 64, 128, 192, 255]], np.uint8).repeat(4, 0)
    Image.fromarray(ramp).save(tmp_path / "grey.png", icc_profile=_grey_gamma_18())
    img, notes, _ = read_photo(tmp_path / "grey.png")
    assert np.abs(img[0, :, 0] - _srgb_encode((ramp[0] / 255.0) ** 1.8)).max() <= 1.5
    assert (img[..., 1] == img[..., 0]).all()

    inks = np.array([[0, 0, 0, 0], [255, 0, 0, 0], [0, 128, 0, 64], [50, 100, 150, 20], [0, 0, 0, 255]], np.uint8)
    cmyk = Image.fromarray(_patches(inks), "CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=100, icc_profile=_cmyk_profile())
    img, notes, _ = read_photo(tmp_path / "cmyk.jpg")
    want = np.asarray(ImageCms.profileToProfile(cmyk, ImageCms.ImageCmsProfile(io.BytesIO(_cmyk_profile())),
                                                ImageCms.createProfile("sRGB"), outputMode="RGB"), float)
    assert np.abs(img.astype(float) - want).max() <= 3
    assert np.abs(img.astype(float) - np.asarray(cmyk.convert("RGB"))).max() > 20  # not PIL's naive conversion
    assert any("to sRGB" in n for n in notes)


def test_unusable_icc_profile_is_noted_and_the_pixels_read_as_srgb(tmp_path):
    """A damaged profile, and a grey profile on RGB pixels: noted, not fatal, the pixels as stored."""
    Image.fromarray(_patches(P3_COLOURS)).save(tmp_path / "bad.png", icc_profile=_display_p3()[:200])
    Image.fromarray(_patches(P3_COLOURS)).save(tmp_path / "mismatch.png", icc_profile=_grey_gamma_18())
    for name, note in (("bad.png", "its ICC profile is unreadable ("),
                       ("mismatch.png", "its ICC profile (test profile) is for GRAY pixels, not RGB: colours read as "
                                        "sRGB")):
        img, notes, _ = read_photo(tmp_path / name)
        np.testing.assert_array_equal(img, _patches(P3_COLOURS))
        assert any(n.startswith(note) for n in notes), notes


# ---- photos above readers.MAX_IMAGE_PIXELS ----

def _grey_jpeg(w: int, h: int) -> bytes:
    """A real baseline greyscale JPEG of w × h mid-grey (128) pixels in ~w·h/256 bytes: every 8×8 block is 'DC
    unchanged, end of block', each a 1-bit code of a one-symbol Huffman table (16320×12240: 780 KB, built in ms)."""
    def seg(marker: int, data: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(data) + 2) + data
    one = bytes([1] + [0] * 15)  # one code of length 1, symbol 0 (DC: category 0; AC: end of block)
    bits = 2 * -(-w // 8) * -(-h // 8)
    data = bytes(bits // 8) + (bytes([0xFF >> (bits % 8)]) if bits % 8 else b"")  # padded with 1 bits
    return (b"\xff\xd8" + seg(0xDB, bytes([0]) + bytes([1]) * 64)
            + seg(0xC0, struct.pack(">BHHB", 8, h, w, 1) + b"\x01\x11\x00")
            + seg(0xC4, b"\x00" + one + b"\x00" + b"\x10" + one + b"\x00")
            + seg(0xDA, b"\x01\x01\x00\x00\x3f\x00") + data + b"\xff\xd9")


def test_200_mp_phone_jpeg_is_decoded_at_reduced_scale(tmp_path):
    """Samsung's 200 MP mode (16320×12240) was refused ('more than a capture's image holds'; PIL itself refuses
    above 179 MP): a JPEG is now decoded at 1/2 scale by the decoder (~150 MB, not 600 MB) and downscaled to
    max_side as before; the same size as PNG is still refused (no reduced decode), and so is a JPEG declaring more
    than PHOTO_MAX_PIXELS."""
    (tmp_path / "200mp.jpg").write_bytes(_grey_jpeg(16320, 12240))
    img, notes, size = read_photo(tmp_path / "200mp.jpg")  # the reduced decode: its note, not a timing (loaded hosts)
    assert size == (16320, 12240) and img.shape == (3072, 4096, 3) and (img == 128).all()
    assert notes == ["decoded at 1/2 scale (JPEG DCT scaling; 16320x12240 is more than 134217728 pixels)",
                     "downscaled from 16320x12240 to 4096x3072 (longest side > 4096 px)"]
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16320, 12240, 8, 2, 0, 0, 0))
    (tmp_path / "200mp.png").write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + _png_chunk(b"IEND", b""))
    with pytest.raises(GenerateError, match=r"200mp.png: the photo declares 16320×12240 pixels; a PNG photo is read "
                                            r"up to 134217728 pixels \(a JPEG up to 536870912: it is decoded at "
                                            r"reduced scale\); save it as JPEG, or smaller$"):
        read_photo(tmp_path / "200mp.png")
    (tmp_path / "huge.jpg").write_bytes(_grey_jpeg(30000, 20000)[:4096])  # refused from the header alone
    with pytest.raises(GenerateError, match=r"huge.jpg: the photo declares 30000×20000 pixels, more than a photo "
                                            r"holds \(536870912 pixels\); a damaged or hostile file$"):
        read_photo(tmp_path / "huge.jpg")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("orientation", [1, 6])
def test_big_jpeg_reads_like_a_full_decode_downscaled(tmp_path, monkeypatch, orientation):
    """With the limits made small (grace_hopper, 512×600, above a 100 000-pixel limit): the reduced-scale decode +
    area downscale matches a full decode + area downscale within JPEG's own error, turned upright by EXIF; the size
    is the shown one; a max_side the 1/2..1/8 scales cannot bring under the limit is refused in one line."""
    monkeypatch.setattr(photo, "MAX_IMAGE_PIXELS", 100_000)
    monkeypatch.setattr(photo, "PHOTO_MAX_PIXELS", 400_000)
    up = Image.fromarray(_upright())
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    (up if orientation == 1 else up.transpose(Image.Transpose.ROTATE_90)).save(tmp_path / "big.jpg", quality=95,
                                                                               exif=exif)
    img, notes, size = read_photo(tmp_path / "big.jpg", max_side=200)
    full = cv2.resize(_upright(), (171, 200), interpolation=cv2.INTER_AREA)
    assert size == (512, 600) and img.shape == full.shape and _close(img, full, 2.0)
    assert notes[0].startswith("decoded at 1/2 scale") and "downscaled from 512x600 to 171x200" in notes[-1]
    with pytest.raises(GenerateError, match=r"big.jpg: the photo has \d+×\d+ pixels; at most 100000 are decoded, "
                                            r"\d+×\d+ at the scale max_side=400 needs; use a smaller max_side$"):
        read_photo(tmp_path / "big.jpg", max_side=400)
