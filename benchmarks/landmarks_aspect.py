"""Check of MediaPipe's landmarks on non-square images (NeRSemble's 1100×1604 frames, its benchmark's 1604×1100).

MediaPipe prints "landmark_projection_calculator.cc … Using NORM_RECT without IMAGE_DIMENSIONS is only supported
for the square ROI" when its face mesh starts, whatever the image. Does a non-square frame bias the landmarks? Each
face image of a synthetic capture (stand-in head, --subjects × 1 frame, --cameras views at --resolution², rolled by
0° and 25°) is detected as it is, then again with --pad rows of its border added above and below ("tall"), left
and right ("wide") or on all four sides ("square"); the shift of the landmarks (back in the original image's pixels)
is framing alone in "square", framing plus any non-square effect in "tall" and "wide":
  <roll>_<pad>_median_px  median over the images of each image's median shift of its 478 landmarks
  non_square_excess_px    the largest of tall − square and wide − square over both rolls (≈ 0: no bias)

Run: `python benchmarks/landmarks_aspect.py` (~1 min). The last line is the JSON. Measured: README (the MediaPipe log lines).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _capture_args import add_capture_args, make_capture

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def padded(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    import cv2

    return np.ascontiguousarray(cv2.copyMakeBorder(img, rows // 2, rows - rows // 2, cols // 2, cols - cols // 2,
                                                   cv2.BORDER_REPLICATE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_capture_args(ap, 3, frames=1)
    ap.add_argument("--pad", type=int, default=234, help="border added (rows and/or columns; 234 at 512: 1100×1604)")
    a = ap.parse_args()
    import cv2

    from flame_fitting.landmarks.detector import detect_rgb

    pads = {"tall": (a.pad, 0), "wide": (0, a.pad), "square": (a.pad, a.pad)}
    shifts: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="geoface-aspect-") as tmp:
        _, cap = make_capture(tmp, a)
        for path in sorted(cap.glob("*/*/*/*.png")):
            if path.parent.name == "masks":
                continue
            img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            h, w = img.shape[:2]
            for roll in (0, 25):
                im = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), roll, 1.0), (w, h),
                                    borderMode=cv2.BORDER_REPLICATE)
                ref = detect_rgb(im)
                if not ref.detected:
                    continue
                for name, (rows, cols) in pads.items():
                    res = detect_rgb(padded(im, rows, cols))
                    if res.detected:
                        d = np.linalg.norm(res.points - (cols // 2, rows // 2) - ref.points, axis=1)
                        shifts.setdefault(f"{roll}_{name}", []).append(float(np.median(d)))
    out = {f"{k}_median_px": round(float(np.median(v)), 3) for k, v in sorted(shifts.items())}
    excess = max(out[f"{r}_{p}_median_px"] - out[f"{r}_square_median_px"] for r in (0, 25) for p in ("tall", "wide"))
    print(json.dumps({"images": {k: len(v) for k, v in sorted(shifts.items())}, "pad": a.pad}))
    print(json.dumps({**out, "non_square_excess_px": round(excess, 3)}))


if __name__ == "__main__":
    main()
