"""Benchmark of reading the head model folder, which every data stage does at least once (docs/scaling.md: part of
the fixed cost of a stage run).

On a stand-in head model built by the script (seed 0, 50 shape / 30 expression components, the real folder layout):
  load_head_model_ms      `load_head_model` (validate the folder once, build the smplx FLAME module), median
  read_obj_ms             `read_obj` of the UV template OBJ (the numpy path for the common OBJ form)
  read_obj_reference_ms   the line-by-line reference parser on the same lines (what read_obj did before 14c1cc1;
                          the trivial baseline the fast path must beat); obj_speedup = reference / read_obj
  identical               both parsers give the same arrays

Run: `python benchmarks/head_model_load.py [--runs 5]`. The last line is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _timing import timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="timed repetitions (the median is printed)")
    a = ap.parse_args()
    from flame_fitting.head.flame_assets import _read_obj_lines, read_obj
    from flame_fitting.head.head_model import load_head_model
    from flame_fitting.head.standin import build_standin

    with tempfile.TemporaryDirectory(prefix="geoface-head-load-") as tmp:
        head = Path(tmp) / "head"
        build_standin(head, seed=0)
        obj = head / "head_template.obj"
        lines = obj.read_text().splitlines()
        load_head_model(head)  # first call: imports and caches out of the timing
        load_ms = timed(lambda: load_head_model(head), a.runs)
        fast_ms = timed(lambda: read_obj(obj), a.runs)
        ref_ms = timed(lambda: _read_obj_lines(obj, lines), a.runs)
        fast, ref = read_obj(obj), _read_obj_lines(obj, lines)
        same = all(np.array_equal(getattr(fast, k), getattr(ref, k)) for k in ("verts", "uv", "faces", "uv_faces"))
    print(json.dumps({"load_head_model_ms": round(load_ms, 1), "read_obj_ms": round(fast_ms, 1),
                      "read_obj_reference_ms": round(ref_ms, 1), "obj_speedup": round(ref_ms / fast_ms, 2),
                      "identical": same, "obj_lines": len(lines), "runs": a.runs}))


if __name__ == "__main__":
    main()
