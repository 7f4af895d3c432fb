"""Benchmark of the landmark stage's detection path: images per second including decode.

Runs `flame_fitting.landmarks.detect_files` (PNG decode + MediaPipe FaceMesh 478 points + the
short-range face detector for the score, in `workers` processes) over every image of
data/captures (run `dvc repro captures` first); the worker
start-up (process spawn + model load) is estimated separately from a second, smaller run:
`images_per_s` includes it, `images_per_s_steady` does not. Also reports the detection
rate, and on synthetic captures the mean pixel error against the ground-truth projections.
Run: python benchmarks/landmarks.py [CAPTURE_DIR] [--workers N]   (last line: JSON)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flame_fitting.capture import load_capture  # noqa: E402
from flame_fitting.landmark_set import LandmarkSet, landmark_metrics  # noqa: E402
from flame_fitting.landmarks import detect_files, results_to_arrays  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("capture", nargs="?", default=str(ROOT / "data/captures"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    cap = load_capture(args.capture)
    m = cap.manifest
    paths = [cap.root / p for p in m.path]
    sizes = list(zip(m.width.astype(int), m.height.astype(int)))
    t0 = time.perf_counter()
    results = detect_files(paths, sizes=sizes, workers=args.workers, progress=False)
    total = time.perf_counter() - t0
    # the same with a small batch: total = startup + N·t and small = startup + n·t give t and startup
    n = min(len(paths) // 4, 8 * args.workers)
    t1 = time.perf_counter()
    detect_files(paths[:n], sizes=sizes[:n], workers=args.workers, progress=False)
    small = time.perf_counter() - t1
    per_image = (total - small) / max(1, len(paths) - n)
    startup = max(0.0, small - n * per_image)
    arr = results_to_arrays(results)
    table = m[["subject", "sequence", "frame", "camera", "path"]].copy()
    table["detected"], table["reason"] = arr["detected"], arr["reason"]
    metrics = landmark_metrics(cap, LandmarkSet(table, arr["points"]))
    out = {
        "images": len(paths), "workers": args.workers, "resolution": int(m.width.iloc[0]),
        "images_per_s": round(len(paths) / total, 1),
        "images_per_s_steady": round(1.0 / per_image, 1) if per_image > 0 else None,
        "startup_s": round(startup, 2), "seconds_total": round(total, 2),
        "detection_rate": round(metrics["detection_rate"], 4),
        "pixel_error_mean": metrics.get("pixel_error_mean"),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(f"{out['images']} images in {total:.2f} s with {args.workers} workers: {out['images_per_s']} images/s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
