"""DVC stage `landmarks`: MediaPipe FaceMesh (478 points) on every image of the capture
(flame_fitting/landmarks/capture.py, `detect_folder`), one work unit per sequence on the `executor`.

Writes the landmark folder (<subject>/<sequence>/detections.parquet + points.npy; a sequence whose images did not
change is kept as it is) and the metrics JSON (detection rate overall and per yaw band, failure reasons, on
synthetic captures the pixel error against the ground truth, units run / kept). One bad image or unit is recorded
and never stops the stage. Run: `dvc repro landmarks` (the paths are on its cmd line in dvc.yaml).
"""
from __future__ import annotations

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import paths, run, start_pool_early

if __name__ == "__main__":
    start_pool_early("flame_fitting.landmarks.capture")  # the pool imports while this script does

from flame_fitting.core.executor import ExecutorConfig, executor_params  # noqa: E402
from flame_fitting.core.params import build_config, read_params  # noqa: E402
from flame_fitting.landmarks.capture import LandmarksParams, detect_folder  # noqa: E402


def load_params(params: dict) -> tuple[LandmarksParams, ExecutorConfig]:
    return build_config(LandmarksParams, params.get("landmarks"), "params.yaml:landmarks"), executor_params(params)


def main() -> None:
    a = paths(__doc__, "captures", "--out", "--metrics")
    cfg, ex = load_params(read_params())
    m = detect_folder(a.captures, a.out, cfg, metrics_path=a.metrics, executor=ex)
    print(f"landmarks: detected {m['n_detected']}/{m['n_images']} images ({m['units_run']} sequences run, "
          f"{m['units_kept']} unchanged), {m['multiple_faces']} with more than one face")


if __name__ == "__main__":
    run(main)
