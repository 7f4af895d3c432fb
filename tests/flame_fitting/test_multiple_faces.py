"""A second face in a capture view (issue 12, item 6): flagged `multiple_faces` in the landmark records, and the
face kept is the one consistent with the other calibrated views, not the first one MediaPipe lists.

The real test pastes matplotlib's public-domain photo `grace_hopper.jpg` (a real face, which the detector ranks
about as confidently as the rendered one) into the background of one view of a small synthetic capture, and
checks that the rendered subject's face is kept. `choose_faces` itself is checked on exact projections of 3D
points, with the decoy listed first and last, and without any single-face view (then the largest face is kept).
"""
import cv2
import numpy as np
import pytest
from matplotlib import cbook
from robust_capture import copy_capture, small_capture  # noqa: F401  (session fixture)

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.formats.capture import load_capture
from flame_fitting.landmarks.capture import choose_faces, detect_capture, landmark_metrics
from flame_fitting.landmarks.detector import LandmarkResult

DECOY_WIDTH = 0.36  # of the image width: about the size of the rendered face, in the top-left background


def paste_decoy(rgb: np.ndarray) -> np.ndarray:
    photo = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), cv2.IMREAD_COLOR_RGB)
    crop = photo[40:330, 80:440]                                  # her face and cap
    w = int(DECOY_WIDTH * rgb.shape[1])
    crop = cv2.resize(crop, (w, int(w * crop.shape[0] / crop.shape[1])), interpolation=cv2.INTER_AREA)
    out = rgb.copy()
    out[:crop.shape[0], :crop.shape[1]] = crop
    return out


def test_second_face_is_flagged_and_the_consistent_one_kept(small_capture, tmp_path):  # noqa: F811
    root = copy_capture(small_capture.capture, tmp_path / "cap")
    cap = load_capture(root)
    clean = detect_capture(cap, workers=1, progress=False)
    assert clean.table.detected.all()
    m = cap.manifest
    i = int(np.flatnonzero((m.frame == 0).to_numpy() & (np.abs(m.yaw_deg.to_numpy()) < 15))[0])  # a frontal view
    path = root / m.path.iat[i]
    cv2.imwrite(str(path), cv2.cvtColor(paste_decoy(cv2.imread(str(path), cv2.IMREAD_COLOR_RGB)), cv2.COLOR_RGB2BGR))
    ls = detect_capture(cap, workers=1, progress=False)
    t = ls.table
    assert t.multiple_faces.tolist() == [j == i for j in range(len(t))]
    assert t.n_faces.iat[i] == 2 and t.face_choice.iat[i] == "consistent" and t.face_choice_px.iat[i] < 5.0
    # the kept face is the rendered subject's: where MediaPipe put it on the clean image, not on the photo
    d = np.linalg.norm(ls.points[i] - clean.points[i], axis=1)
    assert np.median(d) < 2.0, f"kept face is {np.median(d):.1f} px (median) from the subject's"
    assert ls.table.box_x1.iat[i] > DECOY_WIDTH * m.width.iat[i]  # not inside the pasted photo
    others = np.arange(len(t)) != i
    np.testing.assert_array_equal(ls.points[others], clean.points[others])
    metrics = landmark_metrics(cap, ls)
    assert metrics["multiple_faces"] == 1 and metrics["multiple_faces_choice"] == {"consistent": 1}


def _ring(n: int = 5) -> dict[str, Camera]:
    out = {}
    for k, yaw in enumerate(np.linspace(-0.6, 0.6, n)):
        eye = np.array([np.sin(yaw), 0.05 * k, np.cos(yaw)])
        out[f"c{k}"] = Camera(K=intrinsics(800, 800, 320, 240), world_to_cam=look_at(eye, [0, 0, 0]), width=640,
                              height=480, name=f"c{k}")
    return out


def _result(*faces: np.ndarray) -> LandmarkResult:
    f = np.stack(faces).astype(np.float32)
    return LandmarkResult(True, "", f[0], 0.9, np.zeros(4, np.float32), f, np.full(len(f), 0.9, np.float32))


@pytest.mark.parametrize("decoy_first", [True, False])
def test_choose_faces_uses_the_calibrated_views(decoy_first):
    rng = np.random.default_rng(0)
    cams = _ring()
    head = rng.normal(0, 0.05, (478, 3))                          # the subject, at the rig's centre
    proj = {c: cam.project(head)[0] for c, cam in cams.items()}
    decoy = proj["c2"] * 0.5 + 10.0                               # a smaller face in the corner, wrong for the rig
    views = {c: _result(p) for c, p in proj.items()}
    views["c2"] = _result(decoy, proj["c2"]) if decoy_first else _result(proj["c2"], decoy)
    k, how, px = choose_faces(cams, views)["c2"]
    assert (k, how) == ((1, "consistent") if decoy_first else (0, "consistent")) and px < 1e-2
    # only one other single-face view: two-view triangulation still tells them apart
    two = {"c0": views["c0"], "c2": views["c2"]}
    assert choose_faces(cams, two)["c2"][:2] == (1 if decoy_first else 0, "consistent")
    # no single-face view to compare with: the largest face is kept, and said so
    both = {"c1": _result(proj["c1"] * 0.5, proj["c1"]), "c2": views["c2"]}
    got = choose_faces(cams, both)
    assert got["c1"][:2] == (1, "largest") and got["c2"][:2] == (1 if decoy_first else 0, "largest")
    assert np.isnan(got["c1"][2])
    assert choose_faces(cams, {c: _result(p) for c, p in proj.items()}) == {}
