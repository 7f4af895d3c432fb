"""Benchmark of the landmark stage's detection path: images per second including decode and start-up.

Runs `flame_fitting.landmarks.detector.detect_files` (PNG decode + MediaPipe FaceMesh 478 points, whose own
face detection gives the score, in `workers` threads) over every image of data/captures (run
`dvc repro captures` first). The first call runs in a process that has not imported MediaPipe
yet, exactly as the landmarks stage does: `images_per_s` = images / that whole call, start-up
(MediaPipe import + graph construction) included. Then `--repeat` more calls reuse the loaded
graphs: `steady_images_per_s` = images / their median time, and `startup_s` = first call - that
median. `cpu_ms_per_image` is the process CPU time (all threads) of the first call per image. The
machine's load average is recorded before and after (other jobs sharing the cores slow every
figure down: repeat when `load_avg_1min_before` is low). Also reports the detection rate, and on
synthetic captures the mean pixel error against the ground-truth projections.
Run: python benchmarks/landmarks.py [CAPTURE_DIR] [--workers N] [--repeat R]   (last line: JSON)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flame_fitting.formats.capture import load_capture  # noqa: E402
from flame_fitting.formats.landmarks import LandmarkSet  # noqa: E402
from flame_fitting.landmarks.capture import landmark_metrics  # noqa: E402
from flame_fitting.landmarks.detector import detect_files, results_to_arrays  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("capture", nargs="?", default=str(ROOT / "data/captures"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3, help="warm calls for the steady rate")
    args = ap.parse_args()
    cap = load_capture(args.capture)
    m = cap.manifest
    paths = [cap.root / p for p in m.path]
    sizes = list(zip(m.width.astype(int), m.height.astype(int)))
    preloaded = "mediapipe" in sys.modules
    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), cpu_seconds()
    results = detect_files(paths, sizes=sizes, workers=args.workers, progress=False)
    total, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    warm = []
    for _ in range(args.repeat):
        t1 = time.perf_counter()
        detect_files(paths, sizes=sizes, workers=args.workers, progress=False)
        warm.append(time.perf_counter() - t1)
    load_after = os.getloadavg()
    steady = statistics.median(warm) if warm else None
    arr = results_to_arrays(results)
    table = m[["subject", "sequence", "frame", "camera", "path"]].copy()
    table["detected"], table["reason"] = arr["detected"], arr["reason"]
    metrics = landmark_metrics(cap, LandmarkSet(table, arr["points"]))
    out = {
        "images": len(paths), "workers": args.workers, "resolution": int(m.width.iloc[0]),
        "images_per_s": round(len(paths) / total, 1), "seconds_total": round(total, 3),
        "startup_s": round(total - steady, 3) if steady else None,
        "steady_images_per_s": round(len(paths) / steady, 1) if steady else None,
        "steady_seconds": [round(w, 3) for w in warm],
        "cpu_ms_per_image": round(1000 * cpu / len(paths), 2),
        "mediapipe_preloaded": preloaded,
        "detection_rate": round(metrics["detection_rate"], 4),
        "pixel_error_mean": metrics.get("pixel_error_mean"),
        "load_avg_1min_before": round(load_before[0], 2), "load_avg_1min_after": round(load_after[0], 2),
        "load_avg_before": [round(x, 2) for x in load_before],
    }
    print(f"{out['images']} images in {total:.2f} s with {args.workers} threads: {out['images_per_s']} images/s "
          f"(steady {out['steady_images_per_s']})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
