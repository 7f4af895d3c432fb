"""What the `check_params` stage runs (stages/check_params.py): every section of params.yaml validated by each stage
script's own `load_params`, and the checks that span sections, before any other stage runs."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from flame_fitting.core.params import ParamsError, read_params
from geoface.steps.captures import check_view_size

STAGES = ("head_model", "captures", "landmarks", "fit", "uv", "correspondences", "dataset", "train", "evaluate")
SECTIONS = STAGES[:6] + ("executor", "tokens", "dataset", "model", "loss", "train", "eval")
STAGES_DIR = Path(__file__).resolve().parents[2] / "stages"  # this checkout's stage scripts


def check_params(path: Path | str = "params.yaml", stages_dir: Path | str = STAGES_DIR) -> list[str]:
    """Validate every section of `path` with the stage scripts' own loaders (in `stages_dir`) and the view size
    against the token grid (`check_view_size`); ParamsError on the first problem. Returns the sections checked."""
    params = read_params(path)
    if unknown := sorted(set(params) - set(SECTIONS)):
        raise ParamsError(f"{path}: unknown sections {unknown}; known: {list(SECTIONS)}")
    loaded = {}
    for name in STAGES:
        spec = importlib.util.spec_from_file_location(f"geoface_stage_{name}", Path(stages_dir) / f"{name}.py")
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)  # dataclasses look it up there
        spec.loader.exec_module(module)
        loaded[name] = module.load_params(params)
    check_view_size(*loaded["captures"], loaded["correspondences"][1], path)
    return sorted(params)
