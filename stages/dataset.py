"""DVC stage `dataset`: training samples in safetensors shards, one split each (geoface_model/dataset_build.py).

One sample = one fitted frame (views at `tokens.resolution`, cameras, UV position map at `tokens.uv_resolution`,
correspondence targets); diverged frames are left out and counted. Writes OUT/<subject>/<sequence>/*.safetensors
(one work unit per sequence on the `executor`; unchanged sequences kept) and the metrics JSON. Run: `dvc repro dataset` (the paths are on its cmd line in dvc.yaml).
"""
from __future__ import annotations

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import paths, run, start_pool_early

if __name__ == "__main__":
    start_pool_early("geoface_model.dataset_build")  # the pool imports while this script does

from flame_fitting.core.executor import ExecutorConfig, executor_params  # noqa: E402
from flame_fitting.core.params import build_config, read_params  # noqa: E402
from geoface_model.config import TokensConfig  # noqa: E402
from flame_fitting.uv.batch import UVParams  # noqa: E402
from geoface_model.dataset_build import DatasetParams, build_dataset  # noqa: E402


def load_params(params: dict) -> tuple[DatasetParams, TokensConfig, ExecutorConfig, UVParams]:
    return (build_config(DatasetParams, params.get("dataset"), "params.yaml:dataset"),
            build_config(TokensConfig, params.get("tokens"), "params.yaml:tokens"), executor_params(params),
            build_config(UVParams, params.get("uv"), "params.yaml:uv"))


def main() -> None:
    a = paths(__doc__, "captures", "fits", "uv", "correspondences", "head_model", "--out", "--metrics")
    cfg, tok, ex, uv = load_params(read_params())
    m = build_dataset(a.captures, a.fits, a.uv, a.correspondences, a.head_model, a.out, cfg, tok,
                      metrics_path=a.metrics, executor=ex, gutter=uv.gutter)
    print("dataset: " + ", ".join(f"{s} {m[f'samples_{s}']}" for s in ("train", "val", "test")))


if __name__ == "__main__":
    run(main)
