"""fit_capture with bad files (issue 12, item 6), on a small real capture with real MediaPipe landmarks:
an unreadable image in an overlay view is recorded and skipped (the fits are kept), a frame in which no view
finds a face is recorded as skipped with reason "no_landmarks", divergence messages name subject and sequence."""
import json
import logging

import cv2
import numpy as np
import pytest
from robust_capture import copy_capture, small_capture  # noqa: F401  (session fixture)

from flame_fitting.formats.capture import load_capture
from flame_fitting.fit import FitConfig
from flame_fitting.fit.capture import fit_capture
from flame_fitting.head.head_model import load_head_model
from flame_fitting.landmarks.capture import detect_capture

CFG = FitConfig(silhouette_weight=0.0)  # landmarks only: the masks are not what these tests are about


@pytest.fixture(scope="module")
def model(small_capture):  # noqa: F811
    return load_head_model(small_capture.head)


def test_unreadable_overlay_image_is_recorded_and_the_fits_kept(small_capture, model, tmp_path):  # noqa: F811
    root = copy_capture(small_capture.capture, tmp_path / "cap")
    m = load_capture(root).manifest
    row = m[m.frame == 0].sort_values("yaw_deg").iloc[0]          # the first view overlays are drawn on
    bad = root / row.path
    bad.write_bytes(bad.read_bytes()[:300])                      # truncated PNG: its header reads, its pixels don't
    cap = load_capture(root)
    ls = detect_capture(cap, workers=1, progress=False)
    assert ls.table.reason[ls.table.path == row.path].tolist() == ["unreadable"]  # the landmarks stage went on
    out, overlays = tmp_path / "fits", tmp_path / "overlays"
    metrics = fit_capture(cap, ls, model, CFG, out, overlay_dir=overlays, progress=False)
    assert metrics["failed_sequences"] == 0 and metrics["frames_ok"] == 2
    assert metrics["overlays_skipped"] == 1
    skipped = json.loads((out / "overlays_skipped.json").read_text())
    assert len(skipped) == 1 and skipped[0]["path"] == str(bad) and skipped[0]["camera"] == row.camera
    assert skipped[0]["frame"] == 0 and "not a readable image" in skipped[0]["error"]
    seq = out / row.subject / row.sequence
    status = json.loads((seq / "status.json").read_text())
    assert [s["camera"] for s in status["overlays_skipped"]] == [row.camera]
    assert len(status["overlays"]) == 3 and sorted(p.name for p in overlays.glob("*.png")) == sorted(status["overlays"])
    assert row.camera not in " ".join(status["overlays"])
    with np.load(seq / "fit.npz") as z:
        assert z["frame"].tolist() == [0, 1] and z["ok"].all()


def test_frame_without_any_face_is_recorded_as_skipped(small_capture, model, tmp_path):  # noqa: F811
    root = copy_capture(small_capture.capture, tmp_path / "cap")
    m = load_capture(root).manifest
    for r in m[m.frame == 1].itertuples():                       # frame 1: every view shows an empty grey wall
        cv2.imwrite(str(root / r.path), np.full((r.height, r.width, 3), 128, np.uint8))
    cap = load_capture(root)
    ls = detect_capture(cap, workers=1, progress=False)
    assert not ls.table.detected[ls.table.frame == 1].any()
    out = tmp_path / "fits"
    metrics = fit_capture(cap, ls, model, CFG, out, progress=False)
    assert metrics["frames_ok"] == 1
    assert metrics["frames_skipped"] == 1 and metrics["frames_skipped_no_landmarks"] == 1
    st = metrics["_status"]
    row = st[st.frame == 1]
    assert row.status.tolist() == ["skipped"] and row.reason.tolist() == ["no_landmarks"]
    subject, sequence = cap.sequences()[0]
    frames = json.loads((out / subject / sequence / "status.json").read_text())["frames"]
    assert frames["1"]["status"] == "skipped" and frames["1"]["reason"] == "no_landmarks"
    assert "no_face ×5" in frames["1"]["note"]
    assert frames["0"]["status"] == "ok"


def test_divergence_messages_name_subject_and_sequence(small_capture, model, tmp_path, caplog):  # noqa: F811
    cap = load_capture(small_capture.capture)
    ls = detect_capture(cap, workers=1, progress=False)
    strict = FitConfig(silhouette_weight=0.0, max_median_px=1e-3)  # no real fit is this good: every frame diverges
    with caplog.at_level(logging.WARNING, logger="flame_fitting.fit.fitter"):
        metrics = fit_capture(cap, ls, model, strict, tmp_path / "fits", progress=False)
    assert metrics["frames_diverged"] == 2
    subject, sequence = cap.sequences()[0]
    diverged = [r.getMessage() for r in caplog.records if "diverged" in r.getMessage()]
    assert len(diverged) == 2
    assert all(f"subject {subject!r} sequence {sequence!r} frame" in msg for msg in diverged), diverged


def test_mask_of_another_size_is_skipped_not_fatal(small_capture, tmp_path):  # noqa: F811
    """A mask whose size is not its camera's leaves that view without a silhouette term (recorded), instead of
    failing the whole sequence in the fitter."""
    from flame_fitting.fit.capture_masks import load_masks

    root = copy_capture(small_capture.capture, tmp_path / "cap")
    cap = load_capture(root)
    row = cap.manifest.iloc[0]
    cv2.imwrite(str(root / row.mask_path), np.zeros((row.height // 2, row.width // 2), np.uint8))
    skipped = []
    masks = load_masks(cap, row.subject, row.sequence, skipped)
    assert row.camera not in masks[int(row.frame)] and len(masks[int(row.frame)]) == 4
    assert len(skipped) == 1 and skipped[0]["path"] == str(root / row.mask_path)
    assert f"mask is {row.width // 2}×{row.height // 2} but camera {row.camera!r}" in skipped[0]["error"]
