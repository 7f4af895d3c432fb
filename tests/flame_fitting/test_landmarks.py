"""flame_fitting.landmarks.detector: threaded FaceMesh on files against the slow reference (MediaPipe's own
FaceMesh + FaceDetection solutions, one image at a time), bad files recorded with their reason,
input order kept for any thread count, and the yaw-band helpers."""
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import flame_fitting.landmarks.detector as landmarks
from flame_fitting.landmarks.detector import MeshPool, detect_files, detect_rgb, rates_by_yaw, results_to_arrays
from standin_cache import standin_copy
from pipelines.synthetic import SyntheticConfig, generate


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> list[Path]:
    """Six 512² synthetic views of one head, yaw from -90° to 90° (profile views find no face),
    plus a blank grey image."""
    root = tmp_path_factory.mktemp("landmarks")
    standin_copy(root / "head", seed=0, n_shape=20, n_expr=24)
    cfg = SyntheticConfig(seed=0, subjects=1, frames=1, cameras=6, resolution=512, workers=1)
    generate(root / "head", root / "cap", cfg, progress=False)
    paths = sorted((root / "cap").glob("*/*/*/cam*.png"))
    blank = root / "blank.png"
    cv2.imwrite(str(blank), np.full((512, 512, 3), 128, np.uint8))
    return paths + [blank]


def reference_detect(path: Path) -> tuple[bool, np.ndarray, float]:
    """The former implementation: FaceMesh solution for the points, a second short-range FaceDetection
    pass for the score (max over its detections)."""
    import mediapipe as mpipe

    rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    with mpipe.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                            min_detection_confidence=0.5) as mesh:
        res = mesh.process(rgb)
    if not res.multi_face_landmarks:
        return False, np.full((478, 2), np.nan, np.float32), 0.0
    pts = np.array([[p.x * w + 0.5, p.y * h + 0.5] for p in res.multi_face_landmarks[0].landmark], np.float32)
    with mpipe.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.2) as det:
        dets = det.process(rgb).detections or []
    return True, pts, max((d.score[0] for d in dets), default=0.0)


def test_matches_the_two_pass_reference(views):
    ref = [reference_detect(p) for p in views]
    # a fresh pool: the calling thread builds its graph while the helper decodes ahead
    got = results_to_arrays(detect_files(views, workers=2, progress=False, pool=MeshPool()))
    det = np.array([r[0] for r in ref])
    assert 2 <= det.sum() < len(views) - 1, "the views should mix found and missed faces"
    np.testing.assert_array_equal(got["detected"], det)
    np.testing.assert_array_equal(got["reason"], np.where(det, "", "no_face"))
    ref_pts = np.stack([r[1] for r in ref])
    assert np.abs(got["points"][det] - ref_pts[det]).max() <= 1e-3
    assert np.isnan(got["points"][~det]).all() and np.isnan(got["box"][~det]).all()
    np.testing.assert_allclose(got["score"], [r[2] for r in ref], atol=1e-6)
    assert (got["score"][det] >= 0.5).all() and (got["score"][det] <= 1.0).all()
    np.testing.assert_array_equal(got["box"][det, :2], ref_pts[det].min(1))
    np.testing.assert_array_equal(got["box"][det, 2:], ref_pts[det].max(1))


def test_landmarks_follow_the_pixel_centre_convention(views):
    """The same view at twice the size (pixel duplication) and at half (area averaging) must give landmarks that
    scale by exactly 2 in the +0.5 convention: d_2S − 2·d_S = 0. MediaPipe's x·W counts pixel centres from 0, and
    without the +0.5 the difference was +0.5 px in x and y (every landmark half a pixel up and left)."""
    diffs = []
    for p in views:
        rgb = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        half = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        for small, big in ((rgb, np.repeat(np.repeat(rgb, 2, 0), 2, 1)), (half, rgb)):
            a, b = detect_rgb(np.ascontiguousarray(small)), detect_rgb(np.ascontiguousarray(big))
            if a.detected and b.detected:
                diffs.append((b.points.astype(np.float64) - 2 * a.points).mean(0))
    d = np.array(diffs)
    assert len(d) >= 4, "the frontal views should be found at every size"
    assert np.abs(d.mean(0)).max() < 0.25, d  # 0.07 now; 0.55 before


def test_bad_files_get_their_reason_and_the_run_goes_on(views, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all" * 10)
    good = views[2]
    paths = [good, tmp_path / "missing.png", garbage, good, views[-1], good]
    sizes = [(512, 512), (512, 512), (512, 512), (256, 512), (512, 512), (512, 512)]
    for workers in (1, 2):
        res = detect_files(paths, sizes=sizes, workers=workers, progress=False)
        assert [r.reason for r in res] == ["", "unreadable", "unreadable", "wrong_size", "no_face", ""]
        assert [r.detected for r in res] == [True, False, False, False, False, True]
        assert [r.score for r in res][1:5] == [0.0] * 4
        np.testing.assert_array_equal(res[0].points, res[5].points)


@pytest.mark.parametrize("lookahead_bytes", [1, landmarks.LOOKAHEAD_BYTES])
def test_thread_counts_agree_and_keep_the_input_order(views, monkeypatch, lookahead_bytes):
    """Also with helpers that may decode only one image ahead while the calling thread builds its graph."""
    monkeypatch.setattr(landmarks, "LOOKAHEAD_BYTES", lookahead_bytes)
    rng = np.random.default_rng(0)
    paths = [views[i] for i in rng.integers(0, len(views), 40)]
    per_image = [detect_rgb(cv2.imread(str(p), cv2.IMREAD_COLOR_RGB)) for p in paths]
    for workers in (1, 2, 3):
        got = detect_files(paths, workers=workers, progress=False, pool=MeshPool())
        assert [r.detected for r in got] == [r.detected for r in per_image]
        for a, b in zip(got, per_image):
            np.testing.assert_array_equal(a.points, b.points)
            assert a.score == b.score


def test_bad_arguments_are_refused(views):
    with pytest.raises(ValueError, match="sizes for"):
        detect_files(views[:2], sizes=[(512, 512)], progress=False)
    with pytest.raises(ValueError, match="uint8 RGB"):
        detect_rgb(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        detect_rgb(np.zeros((64, 64, 3), np.float32))


def test_rates_by_yaw_bands():
    yaw = np.array([0.0, -45.0, 50.0, -70.0, 80.0, 90.0])
    det = np.array([True, False, True, True, False, True])
    assert rates_by_yaw(det, yaw) == {"yaw_0_45": 0.5, "yaw_45_70": 1.0, "yaw_70_90": 0.5}
    assert rates_by_yaw(det[:1], yaw[:1])["yaw_45_70"] is None


def _rename_subjects(cap: Path, names: dict[str, str], drop: tuple[str, str] | None = None) -> None:
    """Rename subjects of a canonical capture in place (folders, manifest paths); `drop` (subject, camera): leave
    that camera's rows out of the manifest."""
    import pandas as pd

    m = pd.read_parquet(cap / "manifest.parquet")
    for old, new in names.items():
        (cap / old).rename(cap / new)
    for col in [c for c in m.columns if c == "subject" or c.endswith("path")]:
        for old, new in names.items():
            m[col] = m[col].map(lambda v: (new + v[len(old):]) if isinstance(v, str) and
                                (v == old or v.startswith(old + "/")) else v)
    if drop is not None:
        m = m[~((m.subject == drop[0]) & (m.camera == drop[1]))]
    m.sort_values(["subject", "sequence", "frame", "camera"]).reset_index(drop=True).to_parquet(
        cap / "manifest.parquet", index=False)


def test_band_errors_follow_the_manifest_order_of_units(tmp_path):
    """The per-yaw-band pixel errors of metrics/landmarks.json pair each view's ground-truth error with that view's
    yaw. The units' errors were joined in the order of their "subject/sequence" strings, which is not the
    manifest's when a subject's name continues with a character sorting before '/' ('a-b/x' < 'a/x'): the bands
    then mixed one subject's errors with another's yaws."""
    from flame_fitting.formats.capture import load_capture
    from flame_fitting.formats.landmarks import load_landmarks
    from flame_fitting.landmarks.capture import LandmarksParams, detect_folder, landmark_metrics

    standin_copy(tmp_path / "head", seed=0, n_shape=10, n_expr=10)
    cfg = SyntheticConfig(seed=3, subjects=2, frames=1, cameras=4, resolution=256, workers=1,
                          yaw_range_deg=[-60.0, 60.0], texture_resolution=256)
    generate(tmp_path / "head", tmp_path / "cap", cfg, progress=False)
    # one camera fewer for "a": the two units' error lists differ in length, so a wrong join shifts every view
    _rename_subjects(tmp_path / "cap", {"synth000": "a", "synth001": "a-b"}, drop=("a", "cam03"))
    m = detect_folder(tmp_path / "cap", tmp_path / "lmk", LandmarksParams(workers=1))
    cap = load_capture(tmp_path / "cap")
    assert list(dict.fromkeys(cap.manifest.subject)) == ["a", "a-b"]
    ref = landmark_metrics(cap, load_landmarks(tmp_path / "lmk"))  # errors recomputed row by row
    bands = [k for k in ref if k.startswith("pixel_error_") and ref[k] is not None]
    assert len(bands) >= 3 and all(m[k] == pytest.approx(ref[k], rel=1e-6) for k in bands), \
        {k: (m[k], ref[k]) for k in bands}


def test_band_metrics_pair_views_with_their_yaws_in_an_interleaved_manifest(tmp_path):
    """A manifest whose rows interleave two sequences (hand-made; load_capture takes it, in canonical row order now):
    the stage's per-yaw-band rates and errors are those of the same views in the writer's order. The metrics took
    the rows of the done units by a loop over the manifest, in its order, and paired them with the units' detections
    concatenated sequence by sequence: each view's detection and error met another view's yaw."""
    from flame_fitting.formats.capture import Capture, load_capture
    from flame_fitting.formats.landmarks import load_landmarks
    from flame_fitting.landmarks.capture import LandmarksParams, detect_folder, landmark_metrics

    standin_copy(tmp_path / "head", seed=0, n_shape=10, n_expr=10)
    cfg = SyntheticConfig(seed=3, subjects=2, frames=1, cameras=4, resolution=256, workers=1,
                          yaw_range_deg=[-80.0, 80.0], texture_resolution=256)
    generate(tmp_path / "head", tmp_path / "cap", cfg, progress=False)
    man = tmp_path / "cap" / "manifest.parquet"
    writer = pd.read_parquet(man)
    writer.sort_values(["frame", "camera", "subject"]).to_parquet(man, index=False)  # s0 c0, s1 c0, s0 c1, ...
    m = detect_folder(tmp_path / "cap", tmp_path / "lmk", LandmarksParams(workers=1))
    assert list(pd.read_parquet(man).subject[:2]) == ["synth000", "synth001"]
    cap = load_capture(tmp_path / "cap")
    pd.testing.assert_frame_equal(cap.manifest, writer)  # the readers see the rows in canonical order (capture_order.py)
    ref = landmark_metrics(Capture(cap.root, writer, cap.info), load_landmarks(tmp_path / "lmk"))  # row by row
    bands = [k for k in ref if k.startswith(("detection_rate_yaw", "pixel_error_yaw")) and ref[k] is not None]
    assert len(bands) >= 4 and all(m[k] == pytest.approx(ref[k], rel=1e-6) for k in bands), \
        {k: (m[k], ref[k]) for k in bands}


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "points.npy").write_bytes((d / "points.npy").read_bytes()[:200]), "points.npy: not a readable .npy"),
    (lambda d: np.save(d / "points.npy", np.array([{"a": 1}], dtype=object)), "points.npy: not a readable .npy"),
    (lambda d: (d / "detections.parquet").write_bytes(b"PAR1 garbage"), "detections.parquet: not a readable parquet"),
    (lambda d: pd.read_parquet(d / "detections.parquet").drop(columns=["camera"]).to_parquet(d / "detections.parquet"),
     r"detections.parquet: missing columns \['camera'\]"),
    (lambda d: pd.read_parquet(d / "detections.parquet").assign(detected="yes").to_parquet(d / "detections.parquet"),
     "column 'detected' is .*, expected bool"),
    (lambda d: np.save(d / "points.npy", np.full_like(np.load(d / "points.npy"), 1e30)), "beyond 1e6 px"),
    (lambda d: np.save(d / "points.npy", np.zeros((2, 478, 2), np.int64)), "int64"),
])
def test_a_damaged_landmark_file_is_refused_naming_it(tmp_path, damage, message):
    """A truncated or pickled points.npy, a damaged table, a missing column, a non-boolean `detected` (every row
    counted as detected) or absurd points raised numpy/pyarrow errors without the file, or were read as landmarks."""
    from flame_fitting.formats.capture import CaptureError
    from flame_fitting.formats.landmarks import KEYS, LandmarkSet, load_landmarks, save_landmarks

    table = pd.DataFrame({"subject": ["s"] * 2, "sequence": ["q"] * 2, "frame": [0, 0], "camera": ["a", "b"],
                          "path": ["x.png", "y.png"], "detected": [True, False]})
    pts = np.full((2, 478, 2), np.nan, np.float32)
    pts[0] = np.random.default_rng(0).uniform(0, 512, (478, 2))
    folder = save_landmarks(LandmarkSet(table, pts), tmp_path / "lmk")
    assert load_landmarks(folder).table[KEYS].equals(table[KEYS])
    damage(folder)
    with pytest.raises(CaptureError, match=message) as e:
        load_landmarks(folder)
    assert str(folder) in str(e.value) and "\n" not in str(e.value)


def test_landmark_tables_without_points(tmp_path):
    """The stage's metrics read the tables only (load_landmark_tables): the same rows as load_landmarks, in the
    same order across per-sequence folders, and a damaged table is refused naming it."""
    from flame_fitting.formats.capture import CaptureError
    from flame_fitting.formats.landmarks import LandmarkSet, load_landmark_tables, load_landmarks, save_landmarks

    for subject in ("a", "a-b"):
        table = pd.DataFrame({"subject": [subject] * 2, "sequence": ["q"] * 2, "frame": [0, 0], "camera": ["c0", "c1"],
                              "path": ["x.png", "y.png"], "detected": [True, False]})
        pts = np.full((2, 478, 2), np.nan, np.float32)
        pts[0] = 100.0
        save_landmarks(LandmarkSet(table, pts), tmp_path / "lmk" / subject / "q")
    assert load_landmark_tables(tmp_path / "lmk").equals(load_landmarks(tmp_path / "lmk").table)
    (tmp_path / "lmk/a-b/q/points.npy").unlink()  # not read
    assert list(load_landmark_tables(tmp_path / "lmk").subject) == ["a", "a", "a-b", "a-b"]
    (tmp_path / "lmk/a/q/detections.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(CaptureError, match=r"lmk/a/q/detections.parquet: not a readable parquet"):
        load_landmark_tables(tmp_path / "lmk")
    with pytest.raises(CaptureError, match="missing"):
        load_landmark_tables(tmp_path / "nothing")


@pytest.mark.parametrize("seed", range(5))
def test_metrics_from_unit_summaries_equal_those_of_the_whole_table(seed):
    """The landmarks stage takes its metrics from the units' records (`table_summary`, merged by
    `summaries_metrics`), not from the concatenated tables: every value equal to the tables' (value_counts over
    the concatenation, ties included: the counts' order is first appearance, as pandas'), the dicts in the same
    order, on random tables of few reasons (many ties) split into units of different sizes."""
    from flame_fitting.landmarks.capture import summaries_metrics, table_summary
    from flame_fitting.landmarks.detector import band_means, rates_by_yaw

    rng = np.random.default_rng(seed)
    n = 60
    det, many = rng.random(n) < 0.5, rng.random(n) < 0.3
    table = pd.DataFrame({"subject": np.sort(rng.integers(0, 5, n)).astype(str), "sequence": "q", "frame": 0,
                          "camera": [f"c{i}" for i in range(n)], "path": "x.png", "detected": det,
                          "reason": np.where(det, "", np.array(["no_face", "too_small", "inconsistent_face"])[
                              rng.integers(0, 3, n)]),
                          "multiple_faces": many,
                          "face_choice": np.where(many, np.array(["consistent", "largest"])[rng.integers(0, 2, n)], "")})
    manifest = table[["subject", "sequence", "frame", "camera"]].assign(yaw_deg=rng.uniform(-90, 90, n))
    err = np.where(det, rng.uniform(0, 5, n), np.nan).astype(np.float32)
    got = summaries_metrics(manifest, [table_summary(g) for _, g in table.groupby("subject")], err)
    yaw = manifest.yaw_deg.to_numpy()
    ref = {"n_images": n, "n_detected": int(det.sum()), "detection_rate": float(det.mean()),
           "failures": {str(k): int(v) for k, v in table.reason[~det].value_counts().items()},
           "multiple_faces": int(many.sum()),
           "multiple_faces_choice": {str(k): int(v) for k, v in table.face_choice[many].value_counts().items()},
           **{f"detection_rate_{k}": v for k, v in rates_by_yaw(det, yaw).items()},
           "pixel_error_mean": float(np.nanmean(err)),
           **{f"pixel_error_{k}": v for k, v in band_means(err, yaw).items()}}
    assert json.dumps(got) == json.dumps(ref)  # values and the order of every dict
