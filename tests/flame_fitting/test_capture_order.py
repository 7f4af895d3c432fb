"""load_capture hands every reader the manifest in canonical row order (subject, sequence, frame, camera; names in
code-point order) whatever order the file's rows are in (formats/capture_order.py): a hand-made manifest (a pandas
sort, imports concatenated) gave the landmarks stage other bytes and every fit unit another key for the same capture
(tests/stages/test_manifest_order.py runs the stages). The fast path (rows already in order: no sort) and the sort
are compared with Python's `sorted` of the row tuples on random manifests."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flame_fitting.core.unit_keys import Unit
from flame_fitting.formats.capture import CaptureWriter, load_capture
from flame_fitting.formats.capture_order import canonical_positions
from flame_fitting.formats.units import unit_payload
from flame_fitting.geometry.camera import Camera, intrinsics, look_at

# names whose code-point order differs from other plausible orders: 'B' < 'a' (not case-folded), the tuple
# ('a', 'x') < ('a-b', 'x') though "a-b/x" < "a/x", 'cam10' < 'cam9' (text, not numbers), frame 9 < 10 (numbers)
SEQUENCES = [("a", "x"), ("a", "x-2"), ("a-b", "x"), ("B", "x")]
CAMERAS = ["cam9", "cam10", "cam2"]
FRAMES = [10, 9, 0]


def write_capture(root):
    rng = np.random.default_rng(0)
    cams = {n: Camera(K=intrinsics(20, 20, 8, 6), world_to_cam=look_at([np.sin(i), 0, np.cos(i)], [0, 0, 0]),
                      width=16, height=12, name=n) for i, n in enumerate(CAMERAS)}
    with CaptureWriter(root, source="test") as w:
        for s, q in SEQUENCES:
            w.set_cameras(s, q, cams)
            for f in FRAMES:
                for c in CAMERAS:
                    w.add_image(s, q, f, c, rng.integers(0, 255, (12, 16, 3), dtype=np.uint8),
                                split="test" if s == "B" else "train")
    return root


ORDERS = {
    "shuffled": lambda m: m.iloc[np.random.default_rng(1).permutation(len(m))],
    "reversed": lambda m: m.iloc[::-1],
    "frame-major": lambda m: m.sort_values(["frame", "camera", "subject", "sequence"]),
    "two imports concatenated": lambda m: pd.concat([m[m.subject == "a-b"], m[m.subject != "a-b"]]),
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_load_capture_reads_the_rows_in_canonical_order(tmp_path, order):
    root = write_capture(tmp_path / "cap")
    written = pd.read_parquet(root / "manifest.parquet")  # the writer's order: canonical
    assert [tuple(r) for r in written[["subject", "sequence", "frame", "camera"]].itertuples(index=False)] == sorted(
        (s, q, f, c) for s, q in SEQUENCES for f in FRAMES for c in CAMERAS)
    ORDERS[order](written).reset_index(drop=True).to_parquet(root / "manifest.parquet", index=False)
    cap = load_capture(root, check_hashes=True)
    pd.testing.assert_frame_equal(cap.manifest, written)
    assert cap.sequences() == sorted(SEQUENCES) and cap.frames("a", "x") == sorted(FRAMES)
    for s, q in SEQUENCES:  # what a data stage hands a unit: its rows by frame, then camera
        rows = unit_payload(cap, Unit(s, q)).manifest
        assert list(zip(rows.frame, rows.camera)) == sorted((f, c) for f in FRAMES for c in CAMERAS)


@pytest.mark.parametrize("seed", range(6))
def test_canonical_positions_sort_as_python_sorts(seed):
    rng = np.random.default_rng(seed)
    names = ["a", "a-b", "a_b", "B", "b", "é", "z", "cam10", "cam9"]
    keys = {(str(rng.choice(names)), str(rng.choice(names)), int(rng.integers(0, 12)), str(rng.choice(names)))
            for _ in range(int(rng.integers(1, 300)))}
    m = pd.DataFrame(sorted(keys), columns=["subject", "sequence", "frame", "camera"])

    def positions(df):
        group = df.groupby(["subject", "sequence"]).ngroup().to_numpy()  # as check_sequence_splits numbers them
        return canonical_positions(df, group)

    assert positions(m) is None  # in order already: no sort
    shuffled = m.iloc[rng.permutation(len(m))].reset_index(drop=True)
    rows = list(shuffled.itertuples(index=False))
    want = sorted(range(len(rows)), key=lambda i: tuple(rows[i]))
    got = positions(shuffled)
    np.testing.assert_array_equal(np.arange(len(m)) if got is None else got, want)
