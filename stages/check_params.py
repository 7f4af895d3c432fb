"""DVC stage `check_params`: every section of params.yaml valid (by each stage script's own `load_params`) before
any other stage runs: a typo, wrong type or out-of-range value stops `dvc repro` here with one line naming the key,
before DVC removes any output. Writes the sections checked (not the values). Run: `dvc repro check_params`."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import paths, run

from flame_fitting.core.fileio import write_json
from flame_fitting.core.params import ParamsError, read_params

STAGES = ("head_model", "captures", "landmarks", "fit", "uv", "correspondences", "dataset", "train", "evaluate")
SECTIONS = STAGES[:6] + ("executor", "tokens", "dataset", "model", "loss", "train", "eval")


def check_params(path: Path | str = "params.yaml") -> list[str]:
    """Validate every section of `path` with the stages' own loaders; ParamsError on the first problem."""
    params = read_params(path)
    if unknown := sorted(set(params) - set(SECTIONS)):
        raise ParamsError(f"{path}: unknown sections {unknown}; known: {list(SECTIONS)}")
    loaded = {}
    for name in STAGES:
        spec = importlib.util.spec_from_file_location(f"geoface_stage_{name}", Path(__file__).parent / f"{name}.py")
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)  # dataclasses look it up there
        spec.loader.exec_module(module)
        loaded[name] = module.load_params(params)
    check_view_size(loaded["captures"], loaded["correspondences"][1], path)
    return sorted(params)


def check_view_size(captures, tokens, path) -> None:
    """ParamsError when the capture's views, as params.yaml sizes them (captures.synthetic.resolution, or an import's
    captures.resize), do not divide into the app token grid (tokens.resolution / tokens.patch_size tokens per side):
    the correspondences stage would refuse every frame, after the landmarks and the fit had run (an imported capture
    sized by its source is checked there)."""
    src, cfg = captures
    t = tokens.app_tokens
    if src.source == "synthetic":
        key, size = "captures.synthetic.resolution", [cfg.resolution, cfg.resolution]
    elif getattr(cfg, "resize", None):
        key, size = "captures.resize", list(cfg.resize)
    else:
        return
    if size[0] % t or size[1] % t:
        raise ParamsError(f"{path}: {key} {size[0] if size[0] == size[1] else size} is not divisible by the "
                          f"{t} app tokens per side (tokens.resolution / tokens.patch_size): the correspondences "
                          f"stage would refuse every frame; use a multiple of {t}, e.g. {size[0] // t * t}")


def main() -> None:
    a = paths(__doc__, "--out")
    write_json(a.out, {"valid": True, "sections": (sections := check_params())})
    print(f"check_params: {len(sections)} sections of params.yaml are valid")


if __name__ == "__main__":
    run(main)
