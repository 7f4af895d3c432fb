"""Benchmark of the landmarks stage's metrics from its units' records (`landmarks.capture.units_metrics`, what
`detect_folder` returns after running its units) against the loop over every manifest row it replaced (kept in
tests/flame_fitting/test_landmark_metrics.py as the parity reference, `loop_reference`, imported here).

A manifest in the writer's order of --sequences × --rows-per-sequence rows (default 2000 × 500 = 1 M, NeRSemble's
order of magnitude: 1.6 M views in ~2000 sequences) with yaws, and one record per sequence as `detect_unit` writes it
(random detections, errors, failure reasons); no image is read. Each variant --runs times (median):
  loop_ms          the rows of the done units by a Python loop over every manifest row (the code before)
  grouped_ms       units_metrics with the capture's `sequence_rows` already grouped (as in detect_folder: the unit
                   keys grouped them before the units ran)
  grouped_cold_ms  units_metrics on a capture whose `sequence_rows` is grouped inside the timing
  speedup          loop_ms / grouped_ms;  speedup_cold  loop_ms / grouped_cold_ms
  same             the two give the same metrics (JSON text equal)

Run: `nice python benchmarks/landmark_metrics.py` (~25 s, ~0.35 GB). The last line is the JSON.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "flame_fitting"))

from flame_fitting.formats.capture import Capture  # noqa: E402
from flame_fitting.landmarks.capture import units_metrics  # noqa: E402
from test_landmark_metrics import loop_reference as loop_metrics  # noqa: E402  (the loop, the tests' reference)


def make(sequences: int, per: int, seed: int = 0) -> tuple[pd.DataFrame, dict[str, dict]]:
    rng = np.random.default_rng(seed)
    n = sequences * per
    seq = np.repeat(np.arange(sequences), per)
    m = pd.DataFrame({"subject": pd.Series(seq // 4).map("p{:04d}".format), "sequence": pd.Series(seq % 4).map(
        "EXP-{}".format), "frame": np.tile(np.arange(per) // 16, sequences), "camera": np.tile(np.arange(per) % 16,
        sequences).astype(str), "yaw_deg": rng.uniform(-90, 90, n)})
    det = rng.random(n) < 0.8
    err = np.where(det, rng.uniform(0, 5, n), np.nan)
    records = {}
    for i in range(sequences):
        d, e = det[i * per:(i + 1) * per], err[i * per:(i + 1) * per]
        records[f"p{i // 4:04d}/EXP-{i % 4}"] = {
            "n_images": per, "gt_error_px": [None if np.isnan(x) else float(x) for x in e],
            "detected": (d.astype(np.uint8) + ord("0")).tobytes().decode("ascii"),
            "failures": {"no_face": int((~d).sum())} if (~d).any() else {}}
    return m, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", type=int, default=2000)
    ap.add_argument("--rows-per-sequence", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3, help="calls timed per variant (median)")
    a = ap.parse_args()
    m, records = make(a.sequences, a.rows_per_sequence)
    cap = Capture(Path("unused"), m, {})
    cap.sequence_rows  # noqa: B018 - grouped once, as the unit keys do in detect_folder
    same = json.dumps(units_metrics(cap, records)) == json.dumps(loop_metrics(cap, records))
    loop = timed(lambda: loop_metrics(cap, records), a.runs)
    grouped = timed(lambda: units_metrics(cap, records), a.runs)
    cold = timed(lambda: units_metrics(Capture(cap.root, m, {}), records), a.runs)
    print(json.dumps({"rows": len(m), "sequences": a.sequences, "loop_ms": round(loop, 1),
                      "grouped_ms": round(grouped, 1), "grouped_cold_ms": round(cold, 1),
                      "speedup": round(loop / grouped, 1), "speedup_cold": round(loop / cold, 1), "same": same}))


if __name__ == "__main__":
    main()
