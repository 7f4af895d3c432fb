"""Benchmark of the fit stage's throughput with 1 and 2 local workers (issue 16 item 2), in one run.

A synthetic capture (stand-in head model; --subjects × --frames frames, --cameras views at --resolution²), its
landmarks detected once; then the fit stage's library call (`fit_folder`, this checkout's params.yaml `fit` section,
one torch thread per fit) with executor {kind: local, workers: 1} and {kind: local, workers: 2}, each in a fresh
Python process into its own empty output folder, so the process start, imports, the workers' spawn and the exit
(after `gc_freeze.freeze()`, as a stage's process does) count:
  fps_1, fps_2  fitted frames per second of wall time;  speedup = fps_2 / fps_1 (target >= 1.7 on 2 idle cores)
  identical     the two runs' fit.npz arrays are equal (the executor does not change results)
  independent_speedup  the baseline no executor can beat on this machine: the capture's subjects split in two
                halves (alternately), each fitted by its own stage process at the same time (the 1-worker phase,
                one torch thread like a pool process, its own start, imports and exit; landmarks detected before),
                fitted frames over the later one's wall time, over fps_1. It shows what two cores give this
                workload — fits side by side share caches and memory bandwidth — against what the pool gives
                (`independent_identical`: the halves' fits equal the 1-worker run's). With --rounds R the 2-worker
                run and the halves alternate R times and the medians are reported (each round's time beside)
  cpu_reference_speedup  the trivial baseline: the speedup of two processes over one on a pure-Python busy loop,
                measured just before (on a machine shared with other work it is well below 2, and no executor can
                beat it); the load average before and after is printed beside.

Run: `nice python benchmarks/scale.py` (~5 min on 2 cores). The last line is the JSON. On a Ray cluster the same
stage runs with `executor: {kind: ray}` (docs/scaling.md).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _capture_args import add_capture_args, make_capture

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path[1:1] = [str(REPO / "tests"), str(REPO / "tests" / "stages")]  # unit_capture (and the standin_cache it imports)


def _busy(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def cpu_reference_speedup(n: int = 20_000_000) -> float:
    """Wall time of two busy loops in one process over the same two in two processes (fork)."""
    import multiprocessing

    t0 = time.perf_counter()
    _busy(n), _busy(n)
    serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_busy, [n, n])
    return serial / (time.perf_counter() - t0)


def fit_phase(cap: Path, landmarks: Path, head: Path, out: Path, workers: int) -> dict:
    """The fit stage's call with `workers` local workers; workers = 0: one worker, with one torch thread as a pool
    process has (the independent halves)."""
    from flame_fitting.core.executor import ExecutorConfig, start_pool_early

    start_pool_early(ExecutorConfig(kind="local", workers=max(workers, 1)), "flame_fitting.fit.run")  # as stages/fit.py
    from flame_fitting.core.params import build_config, read_params
    from flame_fitting.fit import FitConfig
    from flame_fitting.fit.run import fit_folder

    cfg = build_config(FitConfig, read_params(REPO / "params.yaml").get("fit"), "fit")
    if workers == 0:
        from flame_fitting.core.workers import set_threads

        set_threads(1)
    m = fit_folder(cap, landmarks, head, out, cfg, executor=ExecutorConfig(kind="local", workers=max(workers, 1)))
    return {"frames_ok": m["frames_ok"], "units_failed": m["units_failed"]}


def _phase_command(cap, landmarks, head, out, workers) -> list[str]:
    return [sys.executable, __file__, "--phase", str(cap), str(landmarks), str(head), str(out), str(workers)]


def timed_phase(cap, landmarks, head, out, workers) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = subprocess.run(_phase_command(cap, landmarks, head, out, workers), capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, json.loads(res.stdout.strip().splitlines()[-1])


def timed_independent(halves: list[tuple[Path, Path, Path]], head: Path) -> tuple[float, dict]:
    """Each (capture, landmarks, out) of `halves` fitted by its own 1-worker phase process, all started at once;
    the wall time until the last one ends, and the frames fitted and units failed summed over them."""
    logs = [out.with_name(out.name + ".stderr") for _, _, out in halves]  # files: neither pipe can fill and block
    files = [log.open("w") for log in logs]
    try:
        t0 = time.perf_counter()
        procs = [subprocess.Popen(_phase_command(c, lmk, head, out, 0), stdout=subprocess.PIPE, stderr=f, text=True)
                 for (c, lmk, out), f in zip(halves, files)]
        outs = [p.communicate()[0] for p in procs]
        s = time.perf_counter() - t0
    finally:
        for f in files:
            f.close()
    for p, log in zip(procs, logs):
        if p.returncode:
            raise SystemExit(f"an independent half's fit phase failed (exit {p.returncode}):\n"
                             + log.read_text()[-2000:])
    res = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    return s, {k: sum(r[k] for r in res) for k in ("frames_ok", "units_failed")}


def same_fits(a: Path, b: Path, among: bool = False) -> bool:
    """The fit.npz files under `a` and `b` are the same set (`among`: those of `b` are among `a`'s), not empty, with
    equal arrays."""
    fa, fb = (sorted(p.relative_to(d) for p in d.glob("*/*/fit.npz")) for d in (a, b))
    if not fb or not (set(fb) <= set(fa) if among else fa == fb):
        return False
    for rel in fb:
        with np.load(a / rel) as x, np.load(b / rel) as y:
            if sorted(x.files) != sorted(y.files) or not all(np.array_equal(x[k], y[k]) for k in x.files):
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_capture_args(ap, 12)
    ap.add_argument("--rounds", type=int, default=1,
                    help="times the 2-worker run and the independent halves are run, alternately (each into new "
                         "folders); fps_2 and the independent fps are then of the median time")
    ap.add_argument("--phase", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        cap, lmk, head, out, workers = a.phase
        print(json.dumps(fit_phase(Path(cap), Path(lmk), Path(head), Path(out), int(workers))))
        from flame_fitting.core.gc_freeze import freeze

        freeze()  # as a stage's process does at its end (stages/common.py `run`)
        return
    if a.subjects < 2:
        ap.error("--subjects must be at least 2: the independent baseline splits the subjects in two halves")
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    from flame_fitting.core.executor import ExecutorConfig
    from flame_fitting.landmarks.capture import LandmarksParams, detect_folder
    from unit_capture import subjects_of, subset

    def detect(cap: Path, out: Path) -> None:
        detect_folder(cap, out, LandmarksParams(workers=2), executor=ExecutorConfig(workers=1))

    with tempfile.TemporaryDirectory(prefix="geoface-scale-") as tmp:
        root = Path(tmp)
        make_capture(root, a)
        detect(root / "cap", root / "lmk")
        names = subjects_of(root / "cap")
        halves = [(subset(root / "cap", root / f"cap_{i}", names[i::2]), root / f"lmk_{i}") for i in range(2)]
        for cap, lmk in halves:
            detect(cap, lmk)
        load_before = os.getloadavg()
        reference = cpu_reference_speedup()
        s1, r1 = timed_phase(root / "cap", root / "lmk", root / "head", root / "fits1", 1)
        t2, ti, identical, independent_identical = [], [], True, True
        for k in range(a.rounds):  # alternately: the machine's drift falls on both alike
            s2, r2 = timed_phase(root / "cap", root / "lmk", root / "head", root / f"fits2_{k}", 2)
            outs = [root / f"fits_half{i}_{k}" for i in range(2)]
            si, ri = timed_independent([(c, lmk, out) for (c, lmk), out in zip(halves, outs)], root / "head")
            t2, ti = t2 + [s2], ti + [si]
            identical &= same_fits(root / "fits1", root / f"fits2_{k}")
            independent_identical &= all(same_fits(root / "fits1", out, among=True) for out in outs)
    s2, si = float(np.median(t2)), float(np.median(ti))
    fps1, fps2, fpsi = r1["frames_ok"] / s1, r2["frames_ok"] / s2, ri["frames_ok"] / si
    print(json.dumps({"workers_1": {"s": round(s1, 2), **r1},
                      "workers_2": {"s": round(s2, 2), **r2, "s_each_round": [round(x, 2) for x in t2]},
                      "independent_2": {"s": round(si, 2), **ri, "fps": round(fpsi, 4),
                                        "s_each_round": [round(x, 2) for x in ti]},
                      "identical": identical, "independent_identical": independent_identical,
                      "cpu_count": os.cpu_count(), "cpu_reference_speedup": round(reference, 3),
                      "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
                      "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]}))
    print(json.dumps({"fps_1": round(fps1, 4), "fps_2": round(fps2, 4), "speedup": round(fps2 / fps1, 3),
                      "independent_speedup": round(fpsi / fps1, 3)}))


if __name__ == "__main__":
    main()
