"""DVC stage `fit`: multi-view FLAME fitting by Levenberg–Marquardt bundle adjustment, per sequence.

Reads data/captures, data/landmarks, data/head_model and params section `fit`
(flame_fitting/fit/config.py documents every key; `fit.refine_cameras: true` refines each camera's
extrinsics, and with `fit.refine_focal` its focal, jointly with the head). Writes data/fits/
(parameters, vertices, refined cameras, residual tables per sequence), overlays of the fitted mesh
and landmarks on a few views (plots/fit/overlays/), the cost per iteration of a sample sequence
(plots/fit/cost.csv), and metrics/fit.json (reprojection error median/p95 over views, seconds per
frame, on synthetic data the vertex error against ground truth in mm, face region and whole head).
A sequence or frame that fails is recorded and skipped. Run: `dvc repro fit`.
"""
from __future__ import annotations

from pathlib import Path

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import run, write_csv, write_json

from flame_fitting.formats.capture import load_capture
from flame_fitting.fit import FitConfig
from flame_fitting.fit.capture import fit_capture
from flame_fitting.head.head_model import load_head_model
from flame_fitting.formats.landmarks import load_landmarks
from flame_fitting.core.params import build_config, read_params


def load_params(params: dict) -> FitConfig:
    return build_config(FitConfig, params.get("fit"), "params.yaml:fit")


def main() -> None:
    cfg = load_params(read_params())
    cap = load_capture("data/captures")
    ls = load_landmarks("data/landmarks")
    model = load_head_model("data/head_model", n_shape=cfg.n_shape, n_expr=cfg.n_expr)
    metrics = fit_capture(cap, ls, model, cfg, Path("data/fits"), overlay_dir=Path("plots/fit/overlays"))
    history = metrics.pop("_history")
    write_csv("plots/fit/cost.csv", history)
    for k in [k for k in metrics if k.startswith("_")]:
        metrics.pop(k)
    write_json("metrics/fit.json", metrics)
    print(f"fit: {metrics['frames_ok']} frames ok, reprojection median {metrics['reprojection_px_median']} px")


if __name__ == "__main__":
    run(main)
