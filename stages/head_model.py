"""DVC stage `head_model`: the head model every later stage uses, in FLAME's folder layout
(geoface/steps/head_model.py, `build_head_model`; docs/head_model.md).

`head_model.path: null` builds the stand-in (NOT FLAME), a path validates and copies a real FLAME folder;
`head_model.calibrate_landmarks` calibrates the MediaPipe landmark embedding. Writes the folder, a preview PNG
and the metrics JSON. Run: `dvc repro head_model` (the paths are on its cmd line in dvc.yaml).
"""
from __future__ import annotations

import os

# One BLAS thread, set before numpy loads its BLAS: OpenBLAS's and MKL's sums differ in their last bits with the
# number of threads, and the folder must be the same bytes in every run — its hash is the head model's version in
# every lineage record after it (docs/lineage.md "The stand-in head model is the same bytes in every run").
os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import common  # noqa: E402,F401  (puts this checkout first on sys.path)
from common import paths, run  # noqa: E402

from flame_fitting.core.params import build_config, read_params  # noqa: E402
from geoface.steps.head_model import HeadModelParams, build_head_model  # noqa: E402


def load_params(params: dict) -> HeadModelParams:
    return build_config(HeadModelParams, params.get("head_model"), "params.yaml:head_model")


def main() -> None:
    a = paths(__doc__, "--out", "--preview", "--metrics")
    m = build_head_model(a.out, a.preview, load_params(read_params()), metrics_path=a.metrics)
    note = (f"; MediaPipe embedding calibrated ({m['calibration_n_calibrated']} points, mean shift "
            f"{m['calibration_mean_shift_mm']} mm)") if m["landmark_calibration"] else ""
    print(f"head_model: {m['kind']} with {m['n_vertices']} vertices, preview at {a.preview}{note}")


if __name__ == "__main__":
    run(main)
