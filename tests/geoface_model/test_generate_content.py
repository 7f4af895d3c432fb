"""What `geoface generate` does with the photo's content, on matplotlib's grace_hopper.jpg pasted, cut, scaled and
turned: a head crop reaching outside the photo keeps the photo camera's K (shifted, scaled) and is noted; a small
face in a large photo is found on tiles; the face used is the largest detected one and gets its own landmarks
(not those of a smaller face beside it); a sideways or upside-down photo is refused with how to turn it; a face in
profile is refused in one line saying why; nothing is written on a refusal."""
import json
import shutil

import cv2
import matplotlib.cbook as cbook
import numpy as np
import pytest
import torch

from flame_fitting.formats.capture_checks import load_cameras
from geoface_model.generate import GenerateError, crop_notes, detect_face, generate_from_photo
from geoface_model.orbit import assumed_intrinsics
from pipelines.synthetic import SyntheticConfig, generate as synthesise
from test_generate import tiny_model

PHOTO = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), cv2.IMREAD_COLOR_RGB)  # (600, 512)
FACE = PHOTO[40:330, 80:440]  # her face and cap


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("content")
    tiny_model(root)
    yield root
    torch.set_num_threads(n)


def _write(path, rgb: np.ndarray):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _generate(env, photo, out):
    return generate_from_photo(photo, env / "model", 1, out, head_model_dir=env / "head", num_inference_steps=1,
                               progress=False)


def _refused(env, tmp_path, photo, match):
    before = sorted(tmp_path.iterdir())
    with pytest.raises(GenerateError, match=match) as e:
        _generate(env, photo, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert sorted(tmp_path.iterdir()) == before  # nothing written, no temporary folder


def _iou(a, b) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0, iw) * max(0, ih)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _paste(canvas: np.ndarray, img: np.ndarray, x: int, y: int) -> np.ndarray:
    canvas[y:y + img.shape[0], x:x + img.shape[1]] = img
    return canvas


def test_head_crop_outside_the_photo_keeps_its_camera_and_is_noted(env, tmp_path):
    """A tight face crop (300² around her face): the head crop reaches past all four edges; the reference is the
    crop of the edge-replicated photo, its K the photo's assumed K shifted by the crop's corner and scaled, so the
    face's landmarks land where they are in reference.png."""
    tight = PHOTO[60:360, 110:410]
    rep = _generate(env, _write(tmp_path / "tight.png", tight), tmp_path / "out")
    x0, y0, side = rep["crop_box"]
    assert x0 < 0 and y0 < 0 and x0 + side > 300 and y0 + side > 300
    note = [n for n in rep["notes"] if "extends outside the photo" in n]
    assert len(note) == 1 and all(f"{k} " in note[0] for k in ("left", "top", "right", "bottom")), rep["notes"]
    S = rep["resolution"]
    s = S / side
    ref = load_cameras(tmp_path / "out" / "cameras.json")["reference"]
    K = assumed_intrinsics(300, 300).astype(np.float64)
    np.testing.assert_allclose(ref.K, [[K[0, 0] * s, 0, (K[0, 2] - x0) * s], [0, K[1, 1] * s, (K[1, 2] - y0) * s],
                                       [0, 0, 1]], rtol=1e-5)
    padded = cv2.copyMakeBorder(tight, -y0, y0 + side - 300, -x0, x0 + side - 300, cv2.BORDER_REPLICATE)
    expect = cv2.resize(padded, (S, S), interpolation=cv2.INTER_AREA)
    got = cv2.imread(str(tmp_path / "out" / "reference.png"), cv2.IMREAD_COLOR_RGB)
    assert np.abs(got.astype(int) - expect).mean() < 1.0
    # the face's landmarks, mapped by the crop camera (photo pixel -> reference pixel), sit on the face in the crop
    lm = detect_face(tight).landmarks
    on_ref = (lm - [x0, y0]) * s  # the affine map K_ref K_photo^-1
    box = on_ref.min(0), on_ref.max(0)
    assert np.all(box[0] > 0) and np.all(box[1] < S)  # the whole face inside the reference
    assert json.loads((tmp_path / "out" / "report.json").read_text())["crop_box"] == [x0, y0, side]


@pytest.mark.parametrize("scale, canvas", [(0.5, (4000, 3000)), (0.75, (3000, 2000))])
def test_small_face_in_a_large_photo_is_found(env, tmp_path, scale, canvas):
    """A 100-150 px face in a 3000-4000 px photo: MediaPipe's detector (192² input) misses it on the whole photo
    ("no face found" before); it is found on tiles, where it is, and generation runs."""
    s = cv2.resize(PHOTO, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    x, y = canvas[0] // 2 - 100, canvas[1] // 2 - 150
    big = _paste(np.full((canvas[1], canvas[0], 3), 110, np.uint8), s, x, y)
    face = detect_face(big)
    truth = detect_face(s).box + [x, y, x, y]  # where her landmarks are, found on the pasted photo alone
    assert _iou(face.box, truth) > 0.8, (face.box, truth)
    assert any("tiles" in n for n in face.notes)
    rep = _generate(env, _write(tmp_path / "wide.jpg", big), tmp_path / "out")
    assert rep["faces_found"] == 1 and any("tiles" in n for n in rep["notes"])
    side = rep["crop_box"][2]  # ~250-400 px: a 512² model would see it upsampled, which is noted
    assert [n for n in crop_notes(tuple(rep["crop_box"]), *canvas, 512) if "upsampled" in n] == [
        f"the head crop is {side} px, upsampled x{512 / side:.1f} to the model's 512 px: a low-resolution reference "
        "(a larger or closer photo of the face gives a sharper one)"]
    assert not any("upsampled" in n for n in rep["notes"])  # the tiny model's 64² is smaller than the crop


def test_tiny_face_in_a_large_photo_is_refused_as_too_small(env, tmp_path):
    """A 60 px face in a 4000 px photo: found (on tiles) and refused for its size, not "no face found"."""
    s = cv2.resize(PHOTO, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)
    big = _paste(np.full((3000, 4000, 3), 110, np.uint8), s, 1800, 1300)
    _refused(env, tmp_path, _write(tmp_path / "tiny.png", big), r"tiny.png: the face is only \d+ px (across|tall) "
             r"\(need >= 64 px\)")


def test_the_largest_face_gets_its_own_landmarks(env, tmp_path):
    """A smaller face just above-right of hers lies in the square FaceMesh is run on, and FaceMesh lists it first:
    its landmarks were used (face_box on the small face) while the note said "using the largest"."""
    g = _paste(np.full((700, 1000, 3), 120, np.uint8), PHOTO, 0, 50)
    small = cv2.resize(FACE, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    g = _paste(g, small, 370, 60)
    truth = detect_face(PHOTO).box + [0, 50, 0, 50]
    rep = _generate(env, _write(tmp_path / "pair.png", g), tmp_path / "out")
    assert rep["faces_found"] == 2
    assert _iou(rep["face_box"], truth) > 0.8, (rep["face_box"], truth)
    assert any(n.startswith("2 faces found") and "using the largest, at x" in n for n in rep["notes"]), rep["notes"]


@pytest.mark.parametrize("k, turn", [(1, "90° clockwise"), (2, "180°"), (3, "90° counter-clockwise")])
def test_sideways_photo_is_refused_with_how_to_turn_it(env, tmp_path, k, turn):
    """A photo turned by np.rot90(k) (no EXIF orientation): the detector finds no face; the line says how to turn
    it, and turning it so finds the face."""
    rot = np.ascontiguousarray(np.rot90(PHOTO, k))
    _refused(env, tmp_path, _write(tmp_path / "turned.png", rot), f"turned.png: no upright face found, but one is "
             f"with the photo turned {turn} .*turn it upright")
    back = {"90° clockwise": -1, "180°": 2, "90° counter-clockwise": 1}[turn]
    assert detect_face(np.ascontiguousarray(np.rot90(rot, back))).n_faces == 1


def test_face_in_profile_is_refused_in_one_line(env, tmp_path):
    """A rendered head seen from 88° to its side (the stand-in textured with her photo): detected, but FaceMesh
    finds no landmarks; one line says it is a profile problem."""
    synthesise(env / "head", tmp_path / "cap", SyntheticConfig(subjects=1, frames=1, cameras=1, resolution=320,
                                                                camera_rows=1, yaw_range_deg=[88, 88], seed=0,
                                                                workers=1), progress=False)
    view = next((tmp_path / "cap").rglob("cam00.png"))
    photo = tmp_path / "profile.png"
    photo.write_bytes(view.read_bytes())
    shutil.rmtree(tmp_path / "cap")
    _refused(env, tmp_path, photo, r"profile.png: a face was detected but MediaPipe FaceMesh found no landmarks on "
             r"it \(a face in profile")
