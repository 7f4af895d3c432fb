"""A second face in a capture view (issue 12, item 6): flagged `multiple_faces` in the landmark records, and the
face kept is the one consistent with the other calibrated views, not the first one MediaPipe lists; a view where
only the second face was found is not trusted for being alone (the consensus over the frame's views decides).

The real test pastes matplotlib's public-domain photo `grace_hopper.jpg` (a real face, which the detector ranks
about as confidently as the rendered one) into the background of one view of a small synthetic capture, and
checks that the rendered subject's face is kept; the same with the subject removed from two views (only the photo
is found there). `choose_faces` itself is checked on exact projections of 3D points, with the decoy listed first
and last, without any single-face view, with a second head that some views see alone, and on a 40-camera rig.
"""
import cv2
import numpy as np
import pytest
from matplotlib import cbook
from robust_capture import copy_capture, small_capture  # noqa: F401  (session fixture)

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.formats.capture import load_capture
from flame_fitting.landmarks.capture import INCONSISTENT, detect_capture, landmark_metrics
from flame_fitting.landmarks.detector import LandmarkResult
from flame_fitting.landmarks.faces import MAX_HYPOTHESES, choose_faces

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
    # no single-face view: two views with two faces each agree on the subject
    both = {"c1": _result(proj["c1"] * 0.5, proj["c1"]), "c2": views["c2"]}
    got = choose_faces(cams, both)
    assert got["c1"][:2] == (1, "consistent") and got["c2"][:2] == (1 if decoy_first else 0, "consistent")
    # no head two views agree on: the largest face is kept, and said so
    r1, r2 = rng.uniform(100, 200, (478, 2)), rng.uniform(100, 200, (478, 2)) + [0, 230]  # 230 px off the epipolar
    got = choose_faces(cams, {"c1": _result(r1 * 0.5, r1), "c3": _result(r2, r2 * 0.5 + [0, 85])})
    assert got["c1"][:2] == (1, "largest") and got["c3"][:2] == (0, "largest") and np.isnan(got["c1"][2])
    assert choose_faces(cams, {c: _result(p) for c, p in proj.items()}) == {}


def _heads(n_cams: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cams = _ring(n_cams)
    head = rng.normal(0, 0.05, (478, 3))                          # the subject, at the rig's centre
    other = rng.normal(0, 0.05, (478, 3)) + [0.0, 0.3, -0.5]      # a second head (a poster, a person) above, behind
    return cams, {c: cam.project(head)[0] for c, cam in cams.items()}, {c: cam.project(other)[0]
                                                                         for c, cam in cams.items()}


def test_a_face_alone_in_its_view_is_not_trusted():
    """The subject missed in c0 and c1, where only the second head is found: those views are dropped (they were
    kept as the subject's landmarks, and they were the reference the multi-face views chose against)."""
    cams, subj, other = _heads(7)
    views = {c: _result(subj[c]) for c in cams}
    views["c0"], views["c1"] = _result(other["c0"]), _result(other["c1"])
    views["c2"], views["c3"] = _result(other["c2"], subj["c2"]), _result(other["c3"], subj["c3"])
    got = choose_faces(cams, views)
    assert set(got) == {"c0", "c1", "c2", "c3"}
    assert got["c0"][:2] == got["c1"][:2] == (-1, "inconsistent") and got["c0"][2] > 20
    assert got["c2"][:2] == got["c3"][:2] == (1, "consistent") and got["c2"][2] < 1e-2
    # a noisy detection of the subject is not dropped (3 px of noise on ~100 px faces)
    noisy = {c: _result(subj[c] + np.random.default_rng(1).normal(0, 3, subj[c].shape)) for c in cams}
    assert choose_faces(cams, noisy) == {}
    # two views against two: no head has a majority, nothing is dropped
    few = {c: _result(other[c]) for c in ["c0", "c1"]} | {c: _result(subj[c]) for c in ["c5", "c6"]}
    assert choose_faces(cams, few) == {}
    # the rule is the majority of the detected views: three views that found only the second head outvote two
    few["c2"] = _result(other["c2"])
    assert {c: g[:2] for c, g in choose_faces(cams, few).items()} == {"c5": (-1, "inconsistent"),
                                                                      "c6": (-1, "inconsistent")}
    # undetected views take no part
    missed = LandmarkResult(False, "no_face", np.full((478, 2), np.nan, np.float32), 0.0, np.full(4, np.nan, np.float32))
    got = choose_faces(cams, views | {"c0": missed})
    assert got == {"c1": (-1, "inconsistent", got["c1"][2]), "c2": (1, "consistent", got["c2"][2]),
                   "c3": (1, "consistent", got["c3"][2])}
    # a tie (each head agrees with 4 of the 6 detected views): nothing is dropped
    assert "inconsistent" not in {g[1] for g in choose_faces(cams, views | {"c4": missed}).values()}


def test_choose_faces_on_a_large_rig():
    """40 cameras (780 pairs of candidates, MAX_HYPOTHESES of them tried): the same decisions."""
    cams, subj, other = _heads(40, seed=2)
    views = {c: _result(other[c], subj[c]) if k % 3 == 0 else _result(subj[c]) for k, c in enumerate(cams)}
    views["c1"] = _result(other["c1"])
    assert len(cams) * (len(cams) - 1) // 2 > MAX_HYPOTHESES
    got = choose_faces(cams, views)
    assert got.pop("c1")[:2] == (-1, "inconsistent")
    assert {c: g[:2] for c, g in got.items()} == {c: (1, "consistent") for k, c in enumerate(cams) if k % 3 == 0}


def test_subject_missed_where_only_a_photo_is_found(small_capture, tmp_path):  # noqa: F811
    """The real detector: grace_hopper.jpg pasted into every view of frame 0 and the rendered subject painted out
    of two of them. Before the consensus the photo was the reference: the three views with both faces kept the
    photo, and the two photo-only views were the subject's landmarks."""
    root = copy_capture(small_capture.capture, tmp_path / "cap")
    cap = load_capture(root)
    clean = detect_capture(cap, workers=1, progress=False)
    m = cap.manifest
    rows = np.flatnonzero((m.frame == 0).to_numpy())
    blank = set(rows[[0, -1]])                                    # the two outermost views of frame 0
    for i in rows:
        path = root / m.path.iat[i]
        rgb = cv2.imread(str(path), cv2.IMREAD_COLOR_RGB)
        if i in blank:
            rgb[:] = 128
        cv2.imwrite(str(path), cv2.cvtColor(paste_decoy(rgb), cv2.COLOR_RGB2BGR))
    ls = detect_capture(cap, workers=1, progress=False)
    t = ls.table
    for i in rows:
        if i in blank:
            assert not t.detected.iat[i] and t.reason.iat[i] == INCONSISTENT and t.face_choice.iat[i] == "inconsistent"
            assert t.n_faces.iat[i] == 1
        else:
            assert t.detected.iat[i] and t.n_faces.iat[i] == 2 and t.face_choice.iat[i] == "consistent"
            assert np.median(np.linalg.norm(ls.points[i] - clean.points[i], axis=1)) < 2.0
    others = np.setdiff1d(np.arange(len(t)), rows)
    np.testing.assert_array_equal(ls.points[others], clean.points[others])
    assert landmark_metrics(cap, ls)["failures"] == {INCONSISTENT: 2}
