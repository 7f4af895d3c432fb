"""A small synthetic capture for the work-unit tests and benchmarks/incremental.py and scale.py: a stand-in head
model, a capture of several subjects (few low-resolution cameras, one frame), the same capture restricted to some of
its subjects (`subset`: byte-identical files, so the kept subjects' inputs do not change), and the five data stages
run by their library functions into one data folder (`run_data_stages`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from flame_fitting.core.executor import ExecutorConfig
from flame_fitting.fit import FitConfig
from flame_fitting.fit.run import fit_folder
from standin_cache import standin_copy
from flame_fitting.landmarks.capture import LandmarksParams, detect_folder
from flame_fitting.uv.batch import CorrespondenceParams, UVParams, bake_fits, correspondences_for_fits
from geoface_model.config import TokensConfig
from geoface_model.dataset_build import DatasetParams, build_dataset
from pipelines.synthetic import SyntheticConfig, generate

OUTS = {"landmarks": "landmarks", "fit": "fits", "uv": "uv", "correspondences": "correspondences",
        "dataset": "dataset"}
EXTRAS = {"fit": "overlays", "uv": "uv_previews", "correspondences": "corr_previews"}
TOKENS = TokensConfig(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8)


def build(root: Path, subjects: int, cameras: int = 4, resolution: int = 192, frames: int = 1) -> tuple[Path, Path]:
    """(head model folder, capture folder) under `root`."""
    head, cap = root / "head", root / "capture_all"
    standin_copy(head, seed=0, n_shape=10, n_expr=10)
    cfg = SyntheticConfig(seed=0, subjects=subjects, frames=frames, cameras=cameras, resolution=resolution,
                          yaw_range_deg=[-30.0, 30.0], texture_resolution=256, workers=1)
    generate(head, cap, cfg, progress=False)
    return head, cap


def subset(src: Path, dst: Path, subjects: list[str]) -> Path:
    """`dst` := the capture `src` with only `subjects` (files copied byte for byte, manifest filtered)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    m = pd.read_parquet(src / "manifest.parquet")
    m = m[m.subject.isin(subjects)].reset_index(drop=True)
    m.to_parquet(dst / "manifest.parquet", index=False)
    info = json.loads((src / "capture.json").read_text())
    (dst / "capture.json").write_text(json.dumps({**info, "n_images": len(m)}, indent=2))
    for s in subjects:
        shutil.copytree(src / s, dst / s)
    return dst


def subjects_of(cap: Path) -> list[str]:
    return sorted(pd.read_parquet(cap / "manifest.parquet").subject.unique())


def run_data_stages(cap: Path, head: Path, data: Path, executor: ExecutorConfig, stages=tuple(OUTS)) -> dict:
    """Run the data stages on `cap` into `data/<out>` (previews into `data/<extras>`); returns {stage: metrics}."""
    d = {k: data / v for k, v in OUTS.items()}
    e = {k: data / v for k, v in EXTRAS.items()}
    out = {}
    if "landmarks" in stages:
        out["landmarks"] = detect_folder(cap, d["landmarks"], LandmarksParams(workers=1), executor=executor)
    if "fit" in stages:
        out["fit"] = fit_folder(cap, d["landmarks"], head, d["fit"], FitConfig(iterations=5), e["fit"],
                                data / "cost.csv", executor=executor)
    if "uv" in stages:
        out["uv"] = bake_fits(d["fit"], head, d["uv"], e["uv"], UVParams(resolution=32), executor=executor)
    if "correspondences" in stages:
        out["correspondences"] = correspondences_for_fits(d["fit"], d["uv"], cap, head, d["correspondences"],
                                                          e["correspondences"], CorrespondenceParams(),
                                                          TOKENS.app_tokens, TOKENS.geo_tokens, executor=executor)
    if "dataset" in stages:
        out["dataset"] = build_dataset(cap, d["fit"], d["uv"], d["correspondences"], head, d["dataset"],
                                       DatasetParams(), TOKENS, executor=executor)
    return out
