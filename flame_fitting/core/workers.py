"""How a unit runs wherever the data stages' executor puts it (flame_fitting/core/executor.py; docs/scaling.md,
"Executor"): `call_unit` and `UnitResult` (every executor), `ray_unit` (a Ray task) with its `StartClock`, and what
both executors share (`home_module`, the thread counts). The local process pool is flame_fitting/core/pool.py.
"""
from __future__ import annotations

import functools
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding flame_fitting/ (workers import from it)


@dataclass
class UnitResult:
    item: Any
    ok: bool
    value: Any = None
    error: str = ""  # "Type: message" when not ok
    traceback: str = ""
    seconds: float = 0.0


def call_unit(fn: Callable, item) -> UnitResult:
    """`fn(item)` as a UnitResult: an exception is recorded, never raised (runs inside the workers)."""
    t0 = time.perf_counter()
    try:
        value = fn(item)
    except Exception as e:  # noqa: BLE001 - one bad unit is recorded, the others go on
        return UnitResult(item, False, None, f"{type(e).__name__}: {e}", traceback.format_exc(limit=4),
                          time.perf_counter() - t0)
    return UnitResult(item, True, value, "", "", time.perf_counter() - t0)


def timeout_result(item, limit: float, seconds: float) -> UnitResult:
    """What a unit stopped for running past `executor.unit_timeout_s` = `limit` is recorded as (never retried: the
    same input would hang again)."""
    return UnitResult(item, False, None, f"UnitTimeout: ran past unit_timeout_s={limit:g} s", "", seconds)


CODE_PACKAGES = ("flame_fitting", "geoface_model", "pipelines", "geoface")  # what a unit's result can depend on


@functools.lru_cache(maxsize=1)
def package_digest() -> str:
    """unit_keys.code_digest of this checkout's packages (CODE_PACKAGES under PACKAGE_ROOT), once per process: what a
    Ray worker compares with the stage's, so a node running other geoface code is caught."""
    from flame_fitting.core.unit_keys import code_digest  # here: this module stays free of the toolkit's imports

    return code_digest(*(PACKAGE_ROOT / pkg for pkg in CODE_PACKAGES))


class StartClock:
    """A Ray actor (executor.py, with `executor.unit_timeout_s`): each task tells it that it started (`ray_unit`'s
    `clock`), fire and forget; the stage takes the indices started since its last call once a second, so a unit's
    time limit runs from when it started on a worker, not from when it was queued."""

    def __init__(self):
        self.started: list[int] = []

    def start(self, index: int) -> None:
        self.started.append(index)

    def take(self) -> list[int]:
        out, self.started = self.started, []
        return out


def ray_unit(fn: Callable, item, cwd: str, code: str, clock=None, index: int = -1) -> UnitResult:
    """`call_unit(fn, item)` in a Ray task (executor.py): in the stage's working folder `cwd` (its relative paths
    mean the same folders on every node: a shared file system at the same path), with one thread per library
    (the task holds one CPU), and only when this node's geoface code is the stage's (`code`, package_digest).
    `clock`: a StartClock actor told first thing that unit `index` started (its time limit runs from now). The result
    comes back without its item (the stage puts its own back: a unit's payload travels one way)."""
    if clock is not None:
        clock.start.remote(index)
    host = socket.gethostname()
    if not os.path.isdir(cwd):
        return UnitResult(item, False, None, f"ExecutorError: node {host}: the stage's folder {cwd} does not exist "
                          "here (executor ray needs every node to see the stage's folders at the same path, on a "
                          "shared file system)")
    if package_digest() != code:
        return UnitResult(item, False, None, f"ExecutorError: node {host} runs other geoface code or library versions "
                          f"than the stage ({PACKAGE_ROOT}): every node needs the same checkout at the same path, "
                          "installed from requirements.lock")
    os.chdir(cwd)
    old = set_threads(1)
    try:
        result = call_unit(fn, item)
    finally:
        restore_threads(old)
    result.item = None
    return result


def home_module(fn: Callable) -> str | None:
    """The module of the function at the heart of `fn`, through partials (`.func`) and wrappers (`__wrapped__`, e.g.
    core.units.UnitWork): the module a pool process must import to run it."""
    for _ in range(16):
        inner = getattr(fn, "__wrapped__", None) or getattr(fn, "func", None)
        if inner is None:
            break
        fn = inner
    return getattr(fn, "__module__", None)


def set_threads(n: int) -> tuple[int, int]:
    """Set torch's intra-op and numba's thread counts to `n` in this process, for the libraries already imported
    (none is imported for it); returns the previous counts (0: library not loaded)."""
    torch, numba = sys.modules.get("torch"), sys.modules.get("numba")
    old = (torch.get_num_threads() if torch else 0, numba.get_num_threads() if numba else 0)
    if torch and n > 0:
        torch.set_num_threads(n)
    if numba and n > 0:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return old


def restore_threads(old: tuple[int, int]) -> None:
    """Undo `set_threads` (its return value)."""
    torch, numba = sys.modules.get("torch"), sys.modules.get("numba")
    if torch and old[0] > 0:
        torch.set_num_threads(old[0])
    if numba and old[1] > 0:
        numba.set_num_threads(old[1])
