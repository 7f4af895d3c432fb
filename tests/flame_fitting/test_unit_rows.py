"""The manifest rows of each work unit, grouped once per capture (issue 16 item 1): the same rows as a boolean mask
over the whole manifest per unit (what `formats.units.unit_manifest` did, units × rows per stage), and the same unit
keys to the byte, so no existing output is re-run."""
import numpy as np
import pandas as pd
import pytest

from flame_fitting.core.unit_keys import digest, tree_hashes
from flame_fitting.formats.capture import Capture, CaptureWriter, load_capture
from flame_fitting.formats.units import capture_unit_hashes, capture_units, sub_capture, unit_manifest
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
