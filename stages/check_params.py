"""DVC stage `check_params`: validates every section of params.yaml before any other stage runs.

Every stage depends on its output, so a typo (`uv.resolutin`), a wrong type (`train.steps: abc`) or an
out-of-range value stops `dvc repro` here, with one line naming the file, the key and the problem, and
before DVC has removed any stage's outputs. Each stage script's own `load_params` does the checking, the
same code the stage runs with. Writes data/params_check.json (the sections checked; its content does not
change with the values, so a valid edit re-runs only the stages whose keys changed). Run: `dvc repro check_params`.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import run, write_json

from flame_fitting.core.params import ParamsError, read_params

STAGES = ("head_model", "captures", "landmarks", "fit", "uv", "correspondences", "dataset", "train", "evaluate")
SECTIONS = ("head_model", "captures", "landmarks", "fit", "uv", "correspondences", "tokens", "dataset", "model",
            "loss", "train", "eval")
OUT = Path("data/params_check.json")


def check_params(path: Path | str = "params.yaml") -> list[str]:
    """Validate every section of `path` with the stages' own loaders; ParamsError on the first problem."""
    params = read_params(path)
    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{path}: unknown sections {unknown}; known: {list(SECTIONS)}")
    for name in STAGES:
        spec = importlib.util.spec_from_file_location(f"geoface_stage_{name}", Path(__file__).parent / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        module.load_params(params)
    return sorted(params)


def main() -> None:
    sections = check_params()
    write_json(OUT, {"valid": True, "sections": sections})
    print(f"check_params: {len(sections)} sections of params.yaml are valid")


if __name__ == "__main__":
    run(main)
