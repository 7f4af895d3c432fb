"""DVC stage `correspondences`: per view of every fitted frame, pixel → (u, v) with visibility and depth, and
the token-level targets of the attention alignment loss (flame_fitting/uv/batch.py, `correspondences_for_fits`).

Token grids come from the `tokens` params section shared with the model, so the targets and the model cannot
disagree. Writes OUT/<subject>/<sequence>/<frame:05d>.npz, previews and the metrics JSON (self-checks).
Run: `dvc repro correspondences` (the paths are on its cmd line in dvc.yaml).
"""
from __future__ import annotations

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import paths, run

from flame_fitting.core.params import build_config, read_params
from flame_fitting.uv.batch import CorrespondenceParams, correspondences_for_fits
from geoface_model.config import TokensConfig


def load_params(params: dict) -> tuple[CorrespondenceParams, TokensConfig]:
    return (build_config(CorrespondenceParams, params.get("correspondences"), "params.yaml:correspondences"),
            build_config(TokensConfig, params.get("tokens"), "params.yaml:tokens"))


def main() -> None:
    a = paths(__doc__, "fits", "uv", "captures", "head_model", "--out", "--previews", "--metrics")
    cfg, tok = load_params(read_params())
    m = correspondences_for_fits(a.fits, a.uv, a.captures, a.head_model, a.out, a.previews, cfg, tok.app_tokens,
                                 tok.geo_tokens, metrics_path=a.metrics)
    print(f"correspondences: {m['frames']} frames, cycle error median {m['cycle_error_px_median']} px")


if __name__ == "__main__":
    run(main)
