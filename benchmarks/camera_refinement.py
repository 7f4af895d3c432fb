"""Benchmark of camera refinement (issue 12 item 3) on a synthetic capture of your choice, default the pipeline's
default capture (generator seed 0, 6 subjects × 3 frames × 16 views at 512²).

The same measurement as `mediapipe_camera_refinement` of benchmarks/fit.py (`run_camera_refinement`: exact cameras,
cameras perturbed by 2° / 20 mm without and with `refine_cameras`, MediaPipe landmarks, masks), on a stand-in head
model built by the script (seed 0, 50 shape / 30 expression components, its own MediaPipe embedding: no
calibration). The baseline printed beside: `exact_cameras_vertex_error_mm`, the default fit with the true cameras,
which the perturbed-and-refined fit must come within 0.3 mm of (`perturbed.vertex_error_mm_minus_exact_cameras`);
`perturbed_no_refine` is the trivial "keep the given cameras" result. Per setting also: the face error of each
sequence (`vertex_error_mm_per_sequence`), and its split into one rigid shift of the head relative to the rig
(`face_mean_shift_mm`) and the rest (`vertex_error_mm_shift_removed`).

Run: `python benchmarks/camera_refinement.py [--seed 0 --subjects 6 --frames 3]` (~3 min on 2 cores). The last line
is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _capture_args import add_capture_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="synthetic generator seed (0: the pipeline's default capture)")
    add_capture_args(ap, 6)
    a = ap.parse_args()
    from fit import face_region, run_camera_refinement

    from flame_fitting.fit import FitConfig
    from flame_fitting.fit.capture import fit_capture_sequence
    from flame_fitting.fit.capture_results import gt_vertex_errors
    from flame_fitting.formats.capture import load_capture
    from flame_fitting.head.head_model import HeadModel
    from flame_fitting.head.standin.build import build_standin
    from flame_fitting.landmarks.capture import detect_capture
    from pipelines.synthetic import SyntheticConfig, generate

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geoface-camref-") as tmp:
        root = Path(tmp)
        build_standin(root / "head", seed=0, n_shape=50, n_expr=30)
        generate(root / "head", root / "cap", SyntheticConfig(seed=a.seed, subjects=a.subjects, frames=a.frames,
                                                               cameras=a.cameras, resolution=a.resolution),
                 progress=False)
        head = HeadModel.from_folder(root / "head", 50, 30)
        face, _ = face_region(head)
        cap = load_capture(root / "cap")
        ls = detect_capture(cap, progress=False)
        errors = [r["vertex_error_mm_face"] for sq in cap.sequences()
                  for r in gt_vertex_errors(cap, *sq, fit_capture_sequence(cap, ls, head, FitConfig(), *sq), face)]
        exact = float(np.mean(errors))
        out = run_camera_refinement(head, face, cap, ls, exact)["mediapipe_camera_refinement"]
    print(json.dumps({"capture": vars(a), "exact_cameras_vertex_error_mm": round(exact, 4), **out,
                      "total_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
