"""The manifest rows of each work unit, grouped once per capture (issue 16 item 1): the same rows as a boolean mask
over the whole manifest per unit (what `formats.units.unit_manifest` did, units × rows per stage), and the same unit
keys to the byte, so no existing output is re-run; a unit's worker works on the rows its stage keyed and handed it
(`formats.units.unit_payload`), without reading the manifest again."""
import os
import shutil
from functools import partial

import numpy as np
import pandas as pd
import pytest

from flame_fitting.core.executor import ExecutorConfig, open_executor
from flame_fitting.core.unit_keys import Unit, digest, tree_hashes
from flame_fitting.core.units import run_units
from flame_fitting.formats.capture import Capture, CaptureError, CaptureWriter, load_capture
from flame_fitting.formats.units import (capture_unit_hashes, capture_units, sub_capture, unit_capture, unit_manifest,
                                         unit_payload)
from test_capture import cams

# "a" is a prefix of "a-b" and "ab"; "s" of "s2": a unit must not take another's rows by a name's prefix
SEQUENCES = [("ab", "s"), ("a", "s2"), ("b", "s"), ("a-b", "s"), ("a", "s")]
ABSENT = [("a", "s3"), ("a-b", "s2"), ("c", "s")]


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """A 5-sequence capture (2-3 frames × 2 views at 16×12, masks on some, an extra float column with NaNs) and the
    same capture with its manifest rows shuffled under a permuted index (a manifest in no particular order)."""
    root = tmp_path_factory.mktemp("units") / "cap"
    rng = np.random.default_rng(0)
    with CaptureWriter(root, source="test") as w:
        for i, (subject, sequence) in enumerate(SEQUENCES):
            c = cams(2, 16, 12)
            w.set_cameras(subject, sequence, c)
            for f in range(2 + i % 2):
                for name in c:
                    img = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
                    w.add_image(subject, sequence, f, name, img, split="test" if subject == "b" else "train",
                                mask=img[..., 0] if i % 2 else None, yaw_deg=float("nan") if f else 10.0 * i)
    cap = load_capture(root)
    shuffled = Capture(cap.root, cap.manifest.sample(frac=1.0, random_state=1).set_axis(
        rng.permutation(len(cap.manifest)) + 100), cap.info)
    return cap, shuffled


def masked(cap, subject, sequence):
    """The rows of one sequence as the boolean masks over the whole manifest selected them (before)."""
    m = cap.manifest
    return m[(m.subject == subject) & (m.sequence == sequence)]


def old_capture_unit_hashes(cap, subject, sequence):
    """`capture_unit_hashes` as it was computed before the rows were grouped (the reference for its value)."""
    rows = masked(cap, subject, sequence).sort_values(["frame", "camera"]).drop(columns=["split"])
    prefix = f"{subject}/{sequence}/"
    images = {p[len(prefix):] for p in rows.path if p.startswith(prefix)}
    others = tree_hashes(cap.root / subject / sequence, skip=images)
    return digest({"rows": rows.to_dict("records"), "files": others, "source": cap.info.get("source")})


def test_each_units_rows_are_its_boolean_mask_rows(capture):
    cap, shuffled = capture  # each sequence's rows one block (taken as a slice), and scattered (gathered)
    assert all(np.all(np.diff(p) == 1) for p in cap.sequence_rows.values())
    assert any(np.any(np.diff(p) != 1) for p in shuffled.sequence_rows.values())
    for cap in capture:
        assert sorted(cap.sequence_rows) == sorted(SEQUENCES) == [(u.subject, u.sequence) for u in capture_units(cap)]
        assert sum(len(p) for p in cap.sequence_rows.values()) == len(cap.manifest)
        for subject, sequence in SEQUENCES + ABSENT:
            want, m = masked(cap, subject, sequence), cap.manifest
            assert np.array_equal(cap.sequence_rows.get((subject, sequence), []),
                                  np.flatnonzero((m.subject == subject) & (m.sequence == sequence)))
            pd.testing.assert_frame_equal(unit_manifest(cap, subject, sequence), want)  # same order, index, dtypes
            pd.testing.assert_frame_equal(sub_capture(cap, subject, sequence).manifest, want.reset_index(drop=True))
            frames = 0 if (subject, sequence) in ABSENT else 2 + SEQUENCES.index((subject, sequence)) % 2
            assert len(want) == 2 * frames  # 2 views a frame


def test_unit_keys_are_unchanged(capture):
    """Every unit's capture hash is the one the boolean-mask code computed, to the byte (a changed value would re-run
    every unit of every user's outputs), whatever the manifest's row order."""
    cap, shuffled = capture
    for subject, sequence in SEQUENCES:
        want = old_capture_unit_hashes(cap, subject, sequence)
        assert capture_unit_hashes(cap, subject, sequence) == want
        assert capture_unit_hashes(shuffled, subject, sequence) == want == old_capture_unit_hashes(shuffled, subject,
                                                                                                  sequence)
    assert len({capture_unit_hashes(cap, s, q) for s, q in SEQUENCES}) == len(SEQUENCES)


def test_masks_and_ground_truth_outside_the_sequence_folder_are_in_the_key(tmp_path):
    """A hand-made manifest may name masks and ground truth anywhere in the capture. The key hashed the sequence's
    folder and the manifest's rows only, so a mask elsewhere without `mask_sha256` (captures written before it) or a
    ground-truth file elsewhere (no hash column) could change and re-run no unit that reads it."""
    import shutil

    from flame_fitting.core.fileio import write_image

    root = tmp_path / "cap"
    rng = np.random.default_rng(0)
    with CaptureWriter(root, source="test") as w:
        for subject in ("a", "b"):
            w.set_cameras(subject, "s", cams(2, 16, 12))
            for name in ("cam0", "cam1"):
                w.add_image(subject, "s", 0, name, rng.integers(0, 255, (12, 16, 3), dtype=np.uint8),
                            mask=rng.integers(0, 255, (12, 16), dtype=np.uint8))
    m = pd.read_parquet(root / "manifest.parquet")
    moved = [f"elsewhere/{r.subject}_{r.camera}.png" for r in m.itertuples()]
    (root / "elsewhere").mkdir()
    for old, new in zip(m.mask_path, moved):
        shutil.move(root / old, root / new)
    m = m.assign(mask_path=moved, gt_path=[f"elsewhere/{s}_gt.npz" for s in m.subject]).drop(columns=["mask_sha256"])
    m.to_parquet(root / "manifest.parquet", index=False)
    for s in ("a", "b"):
        np.savez(root / f"elsewhere/{s}_gt.npz", vertices=np.zeros((3, 3)))
    key = lambda: {s: capture_unit_hashes(load_capture(root), s, "s") for s in ("a", "b")}  # noqa: E731
    before = key()
    write_image(root / moved[0], np.zeros((12, 16), np.uint8))  # subject a's mask of cam0
    after_mask = key()
    assert after_mask["a"] != before["a"] and after_mask["b"] == before["b"]
    np.savez(root / "elsewhere/b_gt.npz", vertices=np.ones((3, 3)))
    after_gt = key()
    assert after_gt["b"] != after_mask["b"] and after_gt["a"] == after_mask["a"]
    (root / "elsewhere/b_gt.npz").unlink()  # a missing file changes the key too (its unit then fails on it)
    assert key()["b"] not in (after_gt["b"], after_mask["b"])


def rows_of_unit(root: str, unit: Unit, tmp, extras) -> tuple[dict, list]:
    """A unit function reading its sequence as the data stages' do (`unit_capture`): its rows' hashes and paths."""
    m = unit_capture(root, unit).manifest
    return {"sha256": m.sha256.tolist(), "path": m.path.tolist(), "pid": os.getpid()}, []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_units_worker_reads_the_rows_its_stage_keyed_not_the_manifest(capture, tmp_path, workers):
    """Each worker process (the stage's own, each pool process, each Ray worker) loaded and validated the whole
    manifest again for its first unit (1.9 s of CPU and 0.66 GB a process at 1.6 million rows): a unit now works on
    the rows its stage validated, keyed and handed it. A manifest replaced on disk after the stage loaded it (every
    image's hash changed, a valid capture still) is not what the units read: each reads the rows of its key."""
    root = tmp_path / "cap"
    shutil.copytree(capture[0].root, root)
    cap = load_capture(root, check_files=False)
    units = [Unit(u.subject, u.sequence, capture_unit_hashes(cap, u.subject, u.sequence)) for u in capture_units(cap)]
    m = pd.read_parquet(root / "manifest.parquet")
    m.assign(sha256=["0" * 64] * len(m)).to_parquet(root / "manifest.parquet", index=False)
    with open_executor(ExecutorConfig(kind="local", workers=workers)) as ex:
        run = run_units(ex, partial(rows_of_unit, str(root)), units, tmp_path / "out", "rows",
                        payload=partial(unit_payload, cap), progress=False)
    assert not run.failures and len(run.ran) == len(SEQUENCES)
    for u in units:
        want = unit_manifest(cap, u.subject, u.sequence)
        assert run.records[u.rel]["sha256"] == want.sha256.tolist() != ["0" * 64] * len(want)
        assert run.records[u.rel]["path"] == want.path.tolist()


def test_a_unit_still_checks_its_images_and_reads_its_rows_when_handed_none(capture, tmp_path):
    """The rows handed over skip no check of the unit's images (a missing one fails the unit, named); a unit given
    without them (a caller of a unit function of its own) reads its sequence from the capture."""
    root = tmp_path / "cap"
    shutil.copytree(capture[0].root, root)
    cap = load_capture(root)
    for subject, sequence in SEQUENCES:
        plain = unit_capture(root, Unit(subject, sequence))
        pd.testing.assert_frame_equal(plain.manifest, sub_capture(cap, subject, sequence).manifest)
        assert plain.info == unit_payload(cap, Unit(subject, sequence)).info  # the same, handed or not
    unit = Unit("a", "s")
    unit = Unit("a", "s", payload=unit_payload(cap, unit))
    gone = root / unit.payload.manifest.path.iloc[1]
    gone.unlink()
    with pytest.raises(CaptureError, match=f"{gone}: image file is missing"):
        unit_capture(root, unit)


def test_a_units_payload_carries_its_rows_not_the_whole_captures_records(capture, tmp_path):
    """capture.json holds records of the whole capture: an import's per-camera `intrinsics` (~170 bytes a camera:
    10 MB at 2000 NeRSemble sequences), `skipped`, `splits`. Every unit's payload carried all of them (5.4 MB a unit
    there, not its 0.16 MB of rows; on Ray every unit's arguments go to the object store at once: 10 GB). A unit gets
    its rows and the capture's single values (the source, which the fit reads), the same with or without a payload."""
    import json
    import pickle

    root = tmp_path / "cap"
    shutil.copytree(capture[0].root, root)
    small = load_capture(root)
    info = json.loads((root / "capture.json").read_text())
    info["intrinsics"] = {f"s{i:04d}/seq/cam{c:02d}": {"size": [2200, 3208], "image_size": [1100, 1604],
                                                       "scale": [0.5, 0.5], "rule": "camera_params.json width/height"}
                          for i in range(500) for c in range(16)}
    info["skipped"] = [{"item": f"s{i:04d}/seq/cam00.mp4", "reason": "unreadable video"} for i in range(500)]
    (root / "capture.json").write_text(json.dumps(info))
    big = load_capture(root)
    assert (root / "capture.json").stat().st_size > 10**6
    for subject, sequence in SEQUENCES:
        unit = Unit(subject, sequence)
        handed = unit_payload(big, unit)
        sizes = [len(pickle.dumps(Unit(subject, sequence, payload=unit_payload(c, unit)))) for c in (small, big)]
        assert sizes[1] < 1.01 * sizes[0] < 20_000  # its rows, whatever capture.json records
        assert handed.info["source"] == "test" and handed.info["version_id"] == big.info["version_id"]
        assert "intrinsics" not in handed.info and "skipped" not in handed.info
        assert unit_capture(root, unit).info == handed.info
        pd.testing.assert_frame_equal(handed.manifest, sub_capture(big, subject, sequence).manifest)
