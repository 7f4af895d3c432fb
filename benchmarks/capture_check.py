"""Benchmark of the per-image check a data stage no longer makes on every run (issue 16 item 1): `load_capture` with
the image files checked (present, header size = camera's: what each of the landmarks, fit, correspondences and
dataset stages did on every run, every unit kept or not) against without (what a stage does now; the units that run
check their own sequence's images, `formats.units.unit_capture`).

A synthetic capture (stand-in head model; --subjects × --frames frames, --cameras views at --resolution²; default
the incremental benchmark's 7 × 3 × 16 at 512²), then `load_capture(check_files=True / False)`, --runs times each
(median; the page cache warm after the first):
  checked_ms, unchecked_ms   median wall time of one load
  ms_per_image               (checked_ms - unchecked_ms) / images: the check's cost per image
  nersemble_min_per_stage    that cost × 1.6 million images (NeRSemble: ~10^5 frames × 16 views), in minutes: what
                             one incremental run paid per stage before (a warm page cache; a network file system
                             pays a round trip per file on top)

Run: `nice python benchmarks/capture_check.py` (~1 min). The last line is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _capture_args import add_capture_args, make_capture
from _timing import timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_capture_args(ap, 7)
    ap.add_argument("--runs", type=int, default=5, help="loads timed per variant (median)")
    a = ap.parse_args()
    from flame_fitting.formats.capture import load_capture

    with tempfile.TemporaryDirectory(prefix="geoface-capture-check-") as tmp:
        _, cap = make_capture(Path(tmp), a)
        images = len(load_capture(cap, check_files=False).manifest)
        checked = timed(lambda: load_capture(cap, check_files=True), a.runs)
        unchecked = timed(lambda: load_capture(cap, check_files=False), a.runs)
    per = (checked - unchecked) / images
    print(json.dumps({"images": images, "checked_ms": round(checked, 1), "unchecked_ms": round(unchecked, 1),
                      "ms_per_image": round(per, 3), "nersemble_min_per_stage": round(per * 1.6e6 / 6e4, 1)}))


if __name__ == "__main__":
    main()
