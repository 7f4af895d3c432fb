"""DVC stage `captures`: the canonical multi-view capture every later stage reads
(geoface/steps/captures.py, `make_captures`; docs/synthetic.md, docs/sources.md).

`captures.source: synthetic` renders captures from the head model with ground truth; any other source imports a
real dataset from `captures.root`. Writes the capture folder, the metrics JSON and contact sheets per subject.
Run: `dvc repro captures` (the paths are on its cmd line in dvc.yaml).
"""
from __future__ import annotations

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import paths, run

from geoface.steps.captures import load_capture_params, make_captures
from flame_fitting.core.params import read_params


def load_params(params: dict):
    """(CaptureSource, SyntheticConfig | ImportConfig) from the `captures` section, validated."""
    return load_capture_params(params.get("captures"), "params.yaml:captures", params.get("head_model") or {})


def main() -> None:
    a = paths(__doc__, "head_model", "--out", "--sheets", "--metrics")
    src, cfg = load_params(read_params())
    m = make_captures(a.head_model, a.out, a.sheets, src, cfg, metrics_path=a.metrics)
    print(f"captures: {m['n_images']} images of {m['n_subjects']} subjects from {src.source}")


if __name__ == "__main__":
    run(main)
