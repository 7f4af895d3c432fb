"""Benchmark: seconds per synthetic frame (16 views at 512²: render + ground truth + PNG / npz writes).

    python benchmarks/captures.py [--head-model data/head_model] [--subjects 2] [--frames 4] [--cameras 16]

Builds the stand-in head model in a temporary folder unless --head-model is given, warms the numba
kernels up on a tiny capture, precomputes the photo warp (timed apart: a one-off per head model),
then times `write_capture` over subjects × frames (per-subject set-up — rig, backgrounds, texture —
and the final manifest write included) and divides by the number of frames. The machine's load
average before and after is printed, since other work on a shared machine slows this down.
`cpu_s_per_frame` is the process's CPU time (all threads) per frame: what the frame costs, whatever
else runs. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402

from pipelines.synthetic import SyntheticConfig, generate  # noqa: E402
from pipelines.synthetic.generate import load_head, write_capture  # noqa: E402
from pipelines.synthetic.sampling import sample_subjects  # noqa: E402
from pipelines.synthetic.texture import build_face_warp  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head-model", type=Path, default=None)
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="geoface_bench_") as tmp:
        tmp = Path(tmp)
        head = args.head_model
        if head is None:
            from flame_fitting.head.standin import build_standin

            head = tmp / "head_model"
            build_standin(head, seed=0)
        generate(head, tmp / "warmup", SyntheticConfig(subjects=1, frames=1, cameras=2, resolution=64,
                                                       texture_resolution=128), progress=False)
        cfg = SyntheticConfig(subjects=args.subjects, frames=args.frames, cameras=args.cameras,
                              resolution=args.resolution)
        model, names = load_head(head, cfg)
        subjects = sample_subjects(cfg, model.n_shape, model.n_expr, names)
        t0 = time.perf_counter()
        warp = build_face_warp(head, cfg.texture_resolution)
        texture_s = time.perf_counter() - t0
        load_before = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        summary = write_capture(model, warp, subjects, tmp / "capture", cfg, progress=False)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        load_after = os.getloadavg()[0]
    result = {
        "s_per_frame": round(elapsed / summary["n_frames"], 4),
        "cpu_s_per_frame": round(cpu / summary["n_frames"], 4),
        "frames": summary["n_frames"], "views_per_frame": args.cameras, "resolution": args.resolution,
        "total_s": round(elapsed, 3), "render_s": summary["render_s"], "texture_precompute_s": round(texture_s, 3),
        "cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(load_after, 2),
    }
    print(f"{summary['n_frames']} frames × {args.cameras} views at {args.resolution}²: {elapsed:.2f} s "
          f"({result['s_per_frame']:.3f} s/frame; render part {summary['render_s']:.2f} s); texture precompute "
          f"{texture_s:.2f} s; load average {load_before:.2f} → {load_after:.2f} on {os.cpu_count()} cores")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
