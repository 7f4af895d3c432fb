"""DVC stage `check_params`: every section of params.yaml valid (by each stage script's own `load_params`) before
any other stage runs: a typo, wrong type or out-of-range value stops `dvc repro` here with one line naming the key,
before DVC removes any output (geoface/steps/params_check.py). Writes the sections checked (not the values).
Run: `dvc repro check_params`."""
from __future__ import annotations

from pathlib import Path

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import paths, run

from flame_fitting.core.fileio import write_json
from geoface.steps.params_check import check_params


def main() -> None:
    a = paths(__doc__, "--out")
    write_json(a.out, {"valid": True, "sections": (sections := check_params("params.yaml", Path(__file__).parent))})
    print(f"check_params: {len(sections)} sections of params.yaml are valid")


if __name__ == "__main__":
    run(main)
