"""DVC stage `correspondences`: per view of every fitted frame, pixel → (u, v) with visibility and depth, and
the token-level targets of the attention alignment loss (flame_fitting/uv/batch.py, `correspondences_for_fits`).

Token grids come from the `tokens` params section shared with the model, so the targets and the model cannot
disagree. Writes OUT/<subject>/<sequence>/<frame:05d>.npz, previews and the metrics JSON (self-checks); one work
unit per sequence on the `executor`, a sequence whose inputs did not change kept as it is.
Run: `dvc repro correspondences` (the paths are on its cmd line in dvc.yaml).
"""
from __future__ import annotations

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import num, paths, run, start_pool_early

if __name__ == "__main__":
    start_pool_early("flame_fitting.uv.batch")  # the pool imports while this script does

from flame_fitting.core.executor import ExecutorConfig, executor_params  # noqa: E402
from flame_fitting.core.params import build_config, read_params  # noqa: E402
from flame_fitting.uv.batch import CorrespondenceParams, correspondences_for_fits  # noqa: E402
from geoface_model.config import TokensConfig  # noqa: E402


def load_params(params: dict) -> tuple[CorrespondenceParams, TokensConfig, ExecutorConfig]:
    return (build_config(CorrespondenceParams, params.get("correspondences"), "params.yaml:correspondences"),
            build_config(TokensConfig, params.get("tokens"), "params.yaml:tokens"), executor_params(params))


def main() -> None:
    a = paths(__doc__, "fits", "uv", "captures", "head_model", "--out", "--previews", "--metrics")
    cfg, tok, ex = load_params(read_params())
    m = correspondences_for_fits(a.fits, a.uv, a.captures, a.head_model, a.out, a.previews, cfg, tok.app_tokens,
                                 tok.geo_tokens, metrics_path=a.metrics, executor=ex)
    print(f"correspondences: {m['frames']} frames, cycle error median {num(m['cycle_error_px_median'])} px")


if __name__ == "__main__":
    run(main)
