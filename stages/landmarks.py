"""DVC stage `landmarks`: MediaPipe FaceMesh (478 points) on every image of the capture.

Reads data/captures (canonical capture format); writes data/landmarks/ (detections.parquet +
points.npy) and metrics/landmarks.json (detection rate overall and per yaw band, failure
reasons, and on synthetic captures the pixel error against the ground-truth projections).
One bad image is recorded (detected=false, reason) and never stops the stage; a view with a second face is
flagged (multiple_faces) and keeps the face consistent with the other views.
Run: `dvc repro landmarks`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import run, write_json

from flame_fitting.formats.capture import load_capture
from flame_fitting.formats.landmarks import save_landmarks
from flame_fitting.landmarks.capture import detect_capture, landmark_metrics
from flame_fitting.core.params import build_config, read_params, spec


@dataclass
class LandmarksParams:
    workers: int = spec(2, "threads decoding and running FaceMesh (one graph each; the calling thread is one)", lo=1, hi=256)


def load_params(params: dict) -> LandmarksParams:
    return build_config(LandmarksParams, params.get("landmarks"), "params.yaml:landmarks")


def main() -> None:
    cfg = load_params(read_params())
    cap = load_capture("data/captures")
    ls = detect_capture(cap, workers=cfg.workers)
    save_landmarks(ls, Path("data/landmarks"))
    metrics = landmark_metrics(cap, ls)
    write_json("metrics/landmarks.json", metrics)
    print(f"landmarks: detected {metrics['n_detected']}/{metrics['n_images']} images, "
          f"{metrics['multiple_faces']} with more than one face")


if __name__ == "__main__":
    run(main)
