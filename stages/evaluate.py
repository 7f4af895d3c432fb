"""DVC stage `evaluate`: generate views + geometry for held-out subjects and measure them
(geoface_model/evaluate_run.py, `evaluate_model`; docs/evaluation.md).

Reads params sections `eval` (EvalParams) and `uv.gutter`; writes the sample folders, the plots folder
(samples, overlay, views.csv, report.html) and the metrics JSON. Run: `dvc repro evaluate`.
"""
from __future__ import annotations

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import num, paths, run

from flame_fitting.core.params import build_config, read_params
from flame_fitting.uv.batch import UVParams
from geoface_model.evaluate import EvalParams
from geoface_model.evaluate_run import evaluate_model


def load_params(params: dict) -> tuple[EvalParams, UVParams]:
    return (build_config(EvalParams, params.get("eval"), "params.yaml:eval"),
            build_config(UVParams, params.get("uv"), "params.yaml:uv"))


def main() -> None:
    a = paths(__doc__, "model", "dataset", "fits", "head_model", "--loss-csv", "--train-metrics", "--out", "--plots",
              "--metrics")
    p, uv = load_params(read_params())
    s = evaluate_model(a.model, a.dataset, a.fits, a.head_model, a.out, a.plots, p, uv.gutter, a.loss_csv,
                       a.train_metrics, metrics_path=a.metrics)
    print(f"evaluate: {s['n_samples']} sample(s), {s['n_failed']} failed; psnr {num(s['psnr'])}, ssim "
          f"{num(s['ssim'])}, tsed {num(s['tsed'])} (gt {num(s['gt_tsed'])}), geometry {num(s['geometry_error_mm'])} "
          f"mm, attention hit rate {num(s['attention_hit_rate'])} (chance {num(s['attention_chance'])}); report "
          f"{a.plots / 'report.html'}")


if __name__ == "__main__":
    run(main)
