"""Benchmark of encoding a checkpoint's train_state.json (geoface_model/checkpoint.py `encode_state`), which every
checkpoint of a run writes with every loss row logged so far (train.log_every 1, the default: one row a step).

What runs: a TrainState of --rows loss rows (the seven columns a training logs, float values of full precision),
encoded as `save_extra_state` does now (`encode_state`: compact, json's C encoder) and as it did before
(`json.dumps(..., indent=1)`: json's pure-Python encoder), each --runs times; the median CPU seconds
(time.process_time, so a loaded machine does not inflate it) of each, the file sizes, and whether both texts decode
to the same state:
  indent1_cpu_s, compact_cpu_s   CPU seconds to encode, before / now
  indent1_mb, compact_mb         the file's size in MB, before / now
  speedup                        indent1_cpu_s / compact_cpu_s
  same_state                     json.loads of both texts equal (the resume reads the same state)

Run: `python benchmarks/train_state_write.py` (~20 s at 300 000 rows). The last line is the JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def state_info(rows: int) -> dict:
    """train_state.json's content for a run of `rows` logged steps (EMA scalars as diffusers' EMAModel has them)."""
    rows_ = [{"step": i + 1, "loss": 0.12345678901234567 + i * 1e-9, "diffusion_loss": 0.11345678901234567,
              "align_loss": 0.013456789012345678, "lr": 9.876543210987654e-05,
              "grad_norm_diffusion": 1.2345678901234567 + i * 1e-9, "grad_norm_align": 0.5234567890123456}
             for i in range(rows)]
    ema = {"decay": 0.9999, "min_decay": 0.0, "optimization_step": rows, "update_after_step": 0,
           "use_ema_warmup": False, "inv_gamma": 1.0, "power": 0.6666666666666666}
    return {"step": rows, "rows": rows_, "measured": [], "ema": ema}


def cpu_seconds(fn, runs: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(runs):
        t0 = time.process_time()
        out = fn()
        times.append(time.process_time() - t0)
    return statistics.median(times), out


def main() -> None:
    from geoface_model.checkpoint import encode_state

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=300_000, help="loss rows in the state")
    ap.add_argument("--runs", type=int, default=3, help="encodings per layout (median)")
    a = ap.parse_args()
    info = state_info(a.rows)
    before, old = cpu_seconds(lambda: json.dumps(info, indent=1), a.runs)
    now, new = cpu_seconds(lambda: encode_state(info), a.runs)
    print(json.dumps({"rows": a.rows, "runs": a.runs, "indent1_cpu_s": round(before, 3), "compact_cpu_s": round(now, 3),
                      "indent1_mb": round(len(old) / 1e6, 1), "compact_mb": round(len(new) / 1e6, 1),
                      "speedup": round(before / now, 2), "same_state": json.loads(old) == json.loads(new) == info}))


if __name__ == "__main__":
    main()
