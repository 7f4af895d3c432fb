"""DVC stage `fit`: multi-view FLAME fitting by Levenberg–Marquardt bundle adjustment, one work unit per sequence
on the `executor` (flame_fitting/fit/run.py, `fit_folder`; params section `fit` documented in
flame_fitting/fit/config.py). A sequence whose inputs did not change keeps its fit as it is.

Writes the fits (parameters, vertices, refined cameras, residual tables per sequence), overlays, the cost per
iteration of the first sequence (CSV) and the metrics JSON. A sequence or frame that fails is recorded and
skipped. Run: `dvc repro fit` (the paths are on its cmd line in dvc.yaml).
"""
from __future__ import annotations

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import num, paths, run, start_pool_early

if __name__ == "__main__":
    start_pool_early("flame_fitting.fit.run")  # the pool imports while this script does

from flame_fitting.core.executor import ExecutorConfig, executor_params  # noqa: E402
from flame_fitting.core.params import build_config, read_params  # noqa: E402
from flame_fitting.fit import FitConfig  # noqa: E402
from flame_fitting.fit.run import fit_folder  # noqa: E402


def load_params(params: dict) -> tuple[FitConfig, ExecutorConfig]:
    return build_config(FitConfig, params.get("fit"), "params.yaml:fit"), executor_params(params)


def main() -> None:
    a = paths(__doc__, "captures", "landmarks", "head_model", "--out", "--overlays", "--cost-csv", "--metrics")
    cfg, ex = load_params(read_params())
    m = fit_folder(a.captures, a.landmarks, a.head_model, a.out, cfg, a.overlays, a.cost_csv, metrics_path=a.metrics,
                   executor=ex)
    print(f"fit: {m['frames_ok']} frames ok ({m['units_run']} sequences fitted, {m['units_kept']} unchanged), "
          f"reprojection median {num(m['reprojection_px_median'])} px")


if __name__ == "__main__":
    run(main)
