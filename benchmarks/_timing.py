"""Timing helper shared by the benchmark scripts."""
from __future__ import annotations

import time

import numpy as np


def timed(fn, runs: int) -> float:
    """Median wall time of fn() in ms."""
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))
