"""Benchmark of incremental re-runs (issue 16 item 1): the cost of adding one subject to an N-subject capture.

What runs: the five data stages (landmarks, fit, uv, correspondences, dataset) by their library functions — the
calls the stage scripts make — with this checkout's params.yaml sections (fit, uv, correspondences, tokens,
dataset, landmarks; executor.workers from --workers), on a synthetic capture (stand-in head model, --subjects N
subjects, --frames, --cameras, --resolution; default the pipeline's default capture size). Each phase runs in a
fresh Python process, so imports, model loading, MediaPipe start-up and the exit (after `gc_freeze.freeze()`, as a
stage's process does) count in both:
  full_s     the five stages on the N-subject capture, into empty output folders
  add_one_s  the same capture with subject N+1 added (the old subjects' files byte for byte the same), the five
             stages again on the same output folders: only the new sequence's units run
  ratio      add_one_s / full_s (target: <= 1.2 / N); old_outputs_identical: every file of the N old units unchanged
  alone_ratio  the floor any incremental scheme has in this process model: the five stages on a capture of the new
             subject only, into empty folders, in a fresh process (`alone_s`: its start-up, imports, one unit per
             stage and exit, no other unit to hash or keep), over full_s. add_one_s close to alone_s means keeping
             the N old units costs little; what then separates ratio from 1.2 / N is the fixed cost of a run
             (alone_identical: the new subject's files there are those of the add-one run, byte for byte)
and, on the first JSON line, the same stages once more with nothing changed (every unit kept: what is left is the
fixed cost of a run and the hashing of the N + 1 units' files), with the file-hash cache the phases share
(flame_fitting/core/hash_cache.py; a new one in the temporary folder, as on a machine's first run) and without it
(`unchanged_s`, `unchanged_no_hash_cache_s`).
Not `dvc repro`: DVC's own hashing of the output folders is left out (seconds here), so is the capture stage
(the synthetic generator renders every subject again; an importer re-imports every subject).

Run: `nice python benchmarks/incremental.py` (~5 min on 2 cores). The last line is the JSON.
Measured: see docs/scaling.md ("Measured").
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _capture_args import add_capture_args, make_capture

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # standin_cache, which unit_capture imports
sys.path.insert(0, str(REPO / "tests" / "stages"))


def phase(cap: Path, head: Path, data: Path, workers: int) -> dict:
    """The five data stages with the repo's params (in this process); per-stage seconds."""
    from flame_fitting.core.executor import ExecutorConfig
    from flame_fitting.core.params import build_config, read_params
    from flame_fitting.fit import FitConfig
    from flame_fitting.fit.run import fit_folder
    from flame_fitting.landmarks.capture import LandmarksParams, detect_folder
    from flame_fitting.uv.batch import CorrespondenceParams, UVParams, bake_fits, correspondences_for_fits
    from geoface_model.config import TokensConfig
    from geoface_model.dataset_build import DatasetParams, build_dataset

    p = read_params(REPO / "params.yaml")
    cfg = {name: build_config(cls, p.get(name), name) for name, cls in [
        ("landmarks", LandmarksParams), ("fit", FitConfig), ("uv", UVParams),
        ("correspondences", CorrespondenceParams), ("tokens", TokensConfig), ("dataset", DatasetParams)]}
    ex, tok, t = ExecutorConfig(kind="local", workers=workers), cfg["tokens"], {}
    steps = [
        ("landmarks", lambda: detect_folder(cap, data / "landmarks", cfg["landmarks"], executor=ex)),
        ("fit", lambda: fit_folder(cap, data / "landmarks", head, data / "fits", cfg["fit"], data / "overlays",
                                   data / "cost.csv", executor=ex)),
        ("uv", lambda: bake_fits(data / "fits", head, data / "uv", data / "uv_previews", cfg["uv"], executor=ex)),
        ("correspondences", lambda: correspondences_for_fits(
            data / "fits", data / "uv", cap, head, data / "correspondences", data / "corr_previews",
            cfg["correspondences"], tok.app_tokens, tok.geo_tokens, executor=ex)),
        ("dataset", lambda: build_dataset(cap, data / "fits", data / "uv", data / "correspondences", head,
                                          data / "dataset", cfg["dataset"], tok, executor=ex))]
    units = {}
    for name, fn in steps:
        t0 = time.perf_counter()
        m = fn()
        t[name] = round(time.perf_counter() - t0, 2)
        units[name] = [m["units_run"], m["units_kept"], m["units_failed"]]
    return {"stage_s": t, "units_run_kept_failed": units}


def run_phase(cap: Path, head: Path, data: Path, workers: int, hash_cache: Path | str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--phase", str(cap), str(head), str(data), str(workers)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "GEOFACE_HASH_CACHE": str(hash_cache)})
    return time.perf_counter() - t0, json.loads(out.stdout.strip().splitlines()[-1])


def file_hashes(data: Path, subjects: list[str]) -> dict[str, str]:
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(data.rglob("*"))
            if p.is_file() and any(part == s or part.startswith(f"{s}_") for s in subjects
                                   for part in p.relative_to(data).parts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_capture_args(ap, 6, subjects_help="N, subjects of the first capture (>= 6 for the issue)")
    ap.add_argument("--workers", type=int, default=1, help="executor.workers of both phases (local)")
    ap.add_argument("--phase", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        cap, head, data, workers = a.phase
        print(json.dumps(phase(Path(cap), Path(head), Path(data), int(workers))))
        from flame_fitting.core.gc_freeze import freeze

        freeze()  # as a stage's process does at its end (stages/common.py `run`)
        return
    from unit_capture import subjects_of, subset

    with tempfile.TemporaryDirectory(prefix="geoface-incremental-") as tmp:
        root = Path(tmp)
        head, every = make_capture(root, a, subjects=a.subjects + 1)
        names = subjects_of(every)
        cap, data = root / "captures", root / "data"
        hc = root / "sha256.sqlite"
        full_s, full = run_phase(subset(every, cap, names[:-1]), head, data, a.workers, hc)
        before = file_hashes(data, names[:-1])
        add_s, add = run_phase(subset(every, cap, names), head, data, a.workers, hc)
        identical = file_hashes(data, names[:-1]) == before
        new = names[-1:]
        alone_s, alone = run_phase(subset(every, root / "alone", new), head, root / "data_alone", a.workers, hc)
        alone_identical = file_hashes(root / "data_alone", new) == file_hashes(data, new)
        same_s, same = run_phase(cap, head, data, a.workers, hc)
        same_off_s, same_off = run_phase(cap, head, data, a.workers, "off")
    load = os.getloadavg()
    print(json.dumps({"full": full, "add_one": add, "alone": alone, "unchanged": same,
                      "unchanged_no_hash_cache": same_off, "alone_s": round(alone_s, 2),
                      "alone_identical": alone_identical,
                      "unchanged_s": round(same_s, 2), "unchanged_no_hash_cache_s": round(same_off_s, 2),
                      "workers": a.workers, "frames": a.frames, "cameras": a.cameras,
                      "resolution": a.resolution, "old_outputs_identical": identical, "old_files": len(before),
                      "loadavg_1_5_15": [round(x, 2) for x in load]}))
    print(json.dumps({"full_s": round(full_s, 2), "add_one_s": round(add_s, 2), "ratio": round(add_s / full_s, 4),
                      "n_subjects": a.subjects, "alone_ratio": round(alone_s / full_s, 4)}))


if __name__ == "__main__":
    main()
