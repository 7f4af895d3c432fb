"""Benchmark of the fit at high resolution (docs/fitting.md "Failures"): the decision thresholds in pixels scale
with the image side above 512 px, the robust and silhouette scales do not. In one run.

A synthetic capture (stand-in head model; --subjects × --frames frames, --cameras views at --resolution², seed 0),
its landmarks detected once, then the fit stage's library call (`fit_folder`, one process) three times:
  scaled        this checkout's fit (max_median_px and triangulation_px × side / 512)
  fixed_25px    the same with the thresholds held at their 512-px values (max_median_px 25 px whatever the side):
                the fit before the scaling — how many good frames it flagged `diverged` (the dataset leaves them out)
  all_scales    the robust and silhouette scales scaled with the side too (the variant that was measured and not taken)
each with frames_ok, frames_diverged, the median reprojection error and the ground-truth vertex error.

Run: `nice python benchmarks/fit_resolution.py` (~2 min on 2 cores at 3072²; rendering the capture takes several GB).
The last line is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _capture_args import add_capture_args, make_capture

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_capture_args(ap, 1, frames=2)
    ap.set_defaults(cameras=12, resolution=3072)
    a = ap.parse_args()
    from flame_fitting.core.executor import ExecutorConfig
    from flame_fitting.fit import FitConfig
    from flame_fitting.fit.fitter import PIXEL_REFERENCE
    from flame_fitting.fit.run import fit_folder
    from flame_fitting.landmarks.capture import LandmarksParams, detect_folder

    s = max(1.0, a.resolution / PIXEL_REFERENCE)
    base = FitConfig()
    variants = {
        "scaled": base,
        "fixed_25px": replace(base, max_median_px=base.max_median_px / s, triangulation_px=base.triangulation_px / s),
        "all_scales": replace(base, robust_scale_px=base.robust_scale_px * s,
                              silhouette_scale_px=base.silhouette_scale_px * s,
                              silhouette_step_px=max(1, round(base.silhouette_step_px * s)),
                              silhouette_max_px=base.silhouette_max_px * s),
    }
    out = {"resolution": a.resolution, "cameras": a.cameras, "frames": a.subjects * a.frames, "side_scale": s}
    with tempfile.TemporaryDirectory(prefix="geoface-fitres-") as tmp:
        root = Path(tmp)
        head, cap = make_capture(root, a)
        detect_folder(cap, root / "lmk", LandmarksParams(workers=2), executor=ExecutorConfig(workers=1))
        for name, cfg in variants.items():
            t = time.perf_counter()
            m = fit_folder(cap, root / "lmk", head, root / f"fit_{name}", cfg, executor=ExecutorConfig(workers=1))
            out[name] = {"fit_s": round(time.perf_counter() - t, 1), "frames_ok": m["frames_ok"],
                         "frames_diverged": m["frames_diverged"],
                         "reprojection_px_median": round(m["reprojection_px_median"], 2),
                         "vertex_error_mm": round(m["vertex_error_mm"], 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
