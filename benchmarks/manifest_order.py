"""Benchmark of what putting the manifest in canonical row order costs `load_capture` (formats/capture_order.py
`in_canonical_order`, after the checks, which give it each row's sequence number).

A manifest of --sequences × --frames × --cameras rows (default 2000 × 50 × 16 = 1.6 M, NeRSemble's order of
magnitude) with the columns a capture has; no file is read. Each variant --runs times (median):
  sorted_ms    rows in the writer's order: the check that finds them in order (no sort, the manifest returned as it is)
  shuffled_ms  rows in random order: the check, the sort and the reordered copy
  group_ms     the sequence numbers it is given (`groupby(...).ngroup()`, computed by check_sequence_splits anyway)
  same         the shuffled manifest reordered equals the writer's

Run: `nice python benchmarks/manifest_order.py` (~30 s, ~1 GB). The last line is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from _timing import timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def manifest(n_seq: int, n_frames: int, n_cams: int) -> pd.DataFrame:
    """The writer's order: subjects of 2 sequences each, frames, cameras `cam_<serial>`."""
    seq = np.repeat(np.arange(n_seq), n_frames * n_cams)
    frame = np.tile(np.repeat(np.arange(n_frames), n_cams), n_seq)
    cam = np.tile(np.arange(n_cams), n_seq * n_frames)
    subjects = np.array([f"{i // 2:03d}" for i in range(n_seq)], object)
    sequences = np.array([f"EXP-{i % 2}" for i in range(n_seq)], object)
    cams = np.array([f"cam_{222200037 + c}" for c in range(n_cams)], object)
    m = pd.DataFrame({"subject": subjects[seq], "sequence": sequences[seq], "frame": frame, "camera": cams[cam]})
    m["path"] = m.subject + "/" + m.sequence + "/" + m.frame.map("{:05d}".format) + "/" + m.camera + ".png"
    m["width"], m["height"], m["sha256"], m["split"], m["source"] = 1100, 1604, "0" * 64, "train", "nersemble"
    return m.sort_values(["subject", "sequence", "frame", "camera"]).reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    from flame_fitting.formats.capture_order import in_canonical_order

    m = manifest(a.sequences, a.frames, a.cameras)
    shuffled = m.iloc[np.random.default_rng(0).permutation(len(m))].reset_index(drop=True)
    ngroup = lambda df: df.groupby(["subject", "sequence"]).ngroup().to_numpy(np.int64)  # noqa: E731
    g_sorted, g_shuffled = ngroup(m), ngroup(shuffled)
    group_ms = timed(lambda: ngroup(shuffled), a.runs)
    sorted_ms = timed(lambda: in_canonical_order(m, g_sorted), a.runs)
    shuffled_ms = timed(lambda: in_canonical_order(shuffled, g_shuffled), a.runs)
    same = in_canonical_order(m, g_sorted) is m and in_canonical_order(shuffled, g_shuffled).equals(m)
    print(json.dumps({"rows": len(m), "sorted_ms": round(sorted_ms, 1), "shuffled_ms": round(shuffled_ms, 1),
                      "group_ms": round(group_ms, 1), "same": bool(same)}))


if __name__ == "__main__":
    main()
