"""Benchmark of the landmarks' pixel-centre convention (flame_fitting/landmarks/detector.py, docs/conventions.md):
do MediaPipe's landmarks, as the detector returns them, follow geoface's +0.5 convention?

Two measurements on a synthetic capture (stand-in head, generator seed 0, --subjects × --frames × --cameras views at
--resolution²; default 2 × 2 × 16 at 512²), over the views where a face is found at every size:
  resample_dx / _dy   the same view detected at twice its size (pixel duplication) and at half (area averaging):
                      the mean of d_2S − 2·d_S over the landmarks, x and y. 0 in a consistent convention; a detector
                      that counts pixel centres from 0 gives +0.5 (what the detector returned before 2026-12-06)
  gt_dx / _dy         the median signed offset of the detected landmarks from the rendered ground truth (views with
                      |yaw| ≤ 45°, visible landmarks); MediaPipe's own bias is in it too
  *_without_offset    the same figures for the coordinates MediaPipe gives (the detector's minus 0.5)

Run: `nice python benchmarks/landmark_pixel_centre.py` (~1 min on 2 cores). The last line is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _capture_args import add_capture_args, make_capture

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_capture_args(ap, 2, frames=2)
    a = ap.parse_args()
    import cv2

    from flame_fitting.core.readers import read_image
    from flame_fitting.formats.capture import load_capture, read_gt_landmarks
    from flame_fitting.landmarks.detector import detect_rgb

    resample, gt_off = [], []
    with tempfile.TemporaryDirectory(prefix="geoface-pixel-centre-") as tmp:
        _, folder = make_capture(tmp, a)
        cap = load_capture(folder)
        for row in cap.manifest.itertuples():
            rgb = read_image(cap.root / row.path)
            half = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
            double = np.repeat(np.repeat(rgb, 2, 0), 2, 1)
            d_half, d, d_double = (detect_rgb(np.ascontiguousarray(x)) for x in (half, rgb, double))
            if d_half.detected and d.detected and d_double.detected:
                for small, big in ((d_half, d), (d, d_double)):
                    resample.append((big.points.astype(np.float64) - 2 * small.points).mean(0))
            if d.detected and abs(row.yaw_deg) <= 45:
                gt = read_gt_landmarks(cap.root / row.gt_path)
                i = gt["cameras"].index(row.camera)
                vis = gt["vis"][i].astype(bool)
                gt_off.append(d.points[vis].astype(np.float64) - gt["p"][i][vis])
    r, g = np.mean(resample, 0), np.median(np.concatenate(gt_off), 0)
    out = {"resample_dx": round(float(r[0]), 3), "resample_dy": round(float(r[1]), 3),
           "resample_dx_without_offset": round(float(r[0]) + 0.5, 3),
           "resample_dy_without_offset": round(float(r[1]) + 0.5, 3),
           "gt_dx": round(float(g[0]), 3), "gt_dy": round(float(g[1]), 3),
           "gt_dx_without_offset": round(float(g[0]) - 0.5, 3), "gt_dy_without_offset": round(float(g[1]) - 0.5, 3),
           "resample_pairs": len(resample), "gt_views": len(gt_off), "resolution": a.resolution}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
