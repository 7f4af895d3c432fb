"""Benchmark of a process's exit with and without `gc.freeze()` (flame_fitting/core/gc_freeze.py).

What runs: fresh Python processes that import a stage's libraries (--module; default the fit stage's unit module,
which imports torch, pandas, scipy, numba and OpenCV) and then exit, either plainly or after
`flame_fitting.core.gc_freeze.freeze()` (what every stage script and the `geoface` command do at their end). Each
process prints the time at which its work was done; the parent measures when the process has exited, with its
output pipes closed (as DVC or a benchmark's subprocess call sees it):
  exit_s         median seconds from "work done" to the process gone, plain exit
  exit_frozen_s  the same after freeze()
  saved_s        their difference, per process (a `dvc repro` of the data stages runs five such processes)

Run: `python benchmarks/process_exit.py` (~40 s). The last line is the JSON.
Measured: see docs/scaling.md ("Measured").
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
import {module}
if {frozen}:
    from flame_fitting.core.gc_freeze import freeze
    freeze()
print(time.time(), flush=True)
"""


def exit_seconds(module: str, frozen: bool) -> float:
    """Seconds between the child's last statement and the end of its output (the process gone)."""
    out = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO), module=module, frozen=frozen)],
                         capture_output=True, text=True, check=True)
    done = time.time()
    return done - float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--module", default="flame_fitting.fit.run", help="module the processes import")
    ap.add_argument("--runs", type=int, default=5, help="processes per setting (alternating)")
    a = ap.parse_args()
    plain, frozen = [], []
    for _ in range(a.runs):
        plain.append(exit_seconds(a.module, False))
        frozen.append(exit_seconds(a.module, True))
    p, f = statistics.median(plain), statistics.median(frozen)
    print(json.dumps({"module": a.module, "runs": a.runs, "exit_s_each": [round(x, 3) for x in plain],
                      "exit_frozen_s_each": [round(x, 3) for x in frozen]}))
    print(json.dumps({"exit_s": round(p, 3), "exit_frozen_s": round(f, 3), "saved_s": round(p - f, 3)}))


if __name__ == "__main__":
    main()
