"""DVC stage `uv`: the canonical UV position map of every fitted frame (flame_fitting/uv/batch.py, `bake_fits`).

Writes OUT/<subject>/<sequence>/<frame:05d>.npz (+ .canonical.npy), previews of the first frame of every
sequence and the metrics JSON (round trip, clipped texels, UV-layout overlap, bake time); one work unit per
sequence on the `executor`, a sequence whose fit did not change kept as it is.
Run: `dvc repro uv` (the paths are on its cmd line in dvc.yaml).
"""
from __future__ import annotations

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import num, paths, run, start_pool_early

if __name__ == "__main__":
    start_pool_early("flame_fitting.uv.batch")  # the pool imports while this script does

from flame_fitting.core.executor import ExecutorConfig, executor_params  # noqa: E402
from flame_fitting.core.params import build_config, read_params  # noqa: E402
from flame_fitting.uv.batch import UVParams, bake_fits  # noqa: E402


def load_params(params: dict) -> tuple[UVParams, ExecutorConfig]:
    return build_config(UVParams, params.get("uv"), "params.yaml:uv"), executor_params(params)


def main() -> None:
    a = paths(__doc__, "fits", "head_model", "--out", "--previews", "--metrics")
    cfg, ex = load_params(read_params())
    m = bake_fits(a.fits, a.head_model, a.out, a.previews, cfg, metrics_path=a.metrics, executor=ex)
    print(f"uv: {m['n_frames']} position maps at {cfg.resolution}², round trip {num(m['roundtrip_mm_mean'])} mm")


if __name__ == "__main__":
    run(main)
