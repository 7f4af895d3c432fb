"""How workers run the data stages' units (`call_unit`, `UnitResult`: every executor, local or Ray) and the local
executor's process pool (`map_pool`), used by flame_fitting/core/executor.py (docs/scaling.md, "Executor").

The pool: `workers - 1` processes forked from a clean server process (multiprocessing's forkserver) that imported the
unit function's module (`home_module`) once, plus the caller's own process. `start_pool_early` starts that server
before the caller's own imports. A dispatcher thread hands a pool process its next unit the moment it is free, while
the caller's process runs units itself.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import socket
import sys
import threading
import time
import traceback
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding flame_fitting/ (workers import from it)
FREEZE_MODULE = "flame_fitting.core.gc_freeze"  # imported by the fork server after the unit's module: a fast exit


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


CODE_PACKAGES = ("flame_fitting", "geoface_model", "pipelines", "geoface")  # what a unit's result can depend on


@functools.lru_cache(maxsize=1)
def package_digest() -> str:
    """units.code_digest of this checkout's packages (CODE_PACKAGES under PACKAGE_ROOT), once per process: what a
    Ray worker compares with the stage's, so a node running other geoface code is caught."""
    from flame_fitting.core.units import code_digest  # here: this module stays free of the toolkit's imports

    return code_digest(*(PACKAGE_ROOT / pkg for pkg in CODE_PACKAGES))


def ray_unit(fn: Callable, item, cwd: str, code: str) -> UnitResult:
    """`call_unit(fn, item)` in a Ray task (executor.py): in the stage's working folder `cwd` (its relative paths
    mean the same folders on every node: a shared file system at the same path), with one thread per library
    (the task holds one CPU), and only when this node's geoface code is the stage's (`code`, package_digest)."""
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
    old = _set_threads(1)
    try:
        return call_unit(fn, item)
    finally:
        _restore_threads(old)


def _pool_context(fn: Callable):
    """A forkserver context whose server imports `fn`'s module once: workers are forked from that clean server
    (never from the stage's process, which may hold torch / numba / MediaPipe threads), so each starts with the
    imports done instead of paying them again as spawned processes would. The server then imports FREEZE_MODULE
    (core/gc_freeze.py), so neither it nor the workers scan those imports' objects again when they exit."""
    ctx = multiprocessing.get_context("forkserver")
    module = home_module(fn)
    if module and module != "__main__":
        ctx.set_forkserver_preload([module, FREEZE_MODULE])
    return ctx


def home_module(fn: Callable) -> str | None:
    """The module of the function at the heart of `fn`, through partials (`.func`) and wrappers (`__wrapped__`, e.g.
    core.units.UnitWork): the module a pool process must import to run it."""
    for _ in range(16):
        inner = getattr(fn, "__wrapped__", None) or getattr(fn, "func", None)
        if inner is None:
            break
        fn = inner
    return getattr(fn, "__module__", None)


def start_pool_early(cfg, module: str) -> None:
    """Start the server that local pool processes are forked from now, preloading `module` (the stage's unit
    function's): it imports in parallel with the caller's own imports, so a pool is ready when the first units are
    handed out instead of seconds later. `cfg`: an executor.ExecutorConfig; nothing for ray or `workers: 1`."""
    if cfg.kind != "local" or cfg.workers < 2:
        return
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload([module, FREEZE_MODULE])
    forkserver.ensure_running()


def _set_threads(n: int) -> tuple[int, int]:
    """Set torch's intra-op and numba's thread counts to `n` in this process, for the libraries already imported
    (none is imported for it); returns the previous counts (0: library not loaded)."""
    torch, numba = sys.modules.get("torch"), sys.modules.get("numba")
    old = (torch.get_num_threads() if torch else 0, numba.get_num_threads() if numba else 0)
    if torch and n > 0:
        torch.set_num_threads(n)
    if numba and n > 0:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return old


def _restore_threads(old: tuple[int, int]) -> None:
    torch, numba = sys.modules.get("torch"), sys.modules.get("numba")
    if torch and old[0] > 0:
        torch.set_num_threads(old[0])
    if numba and old[1] > 0:
        numba.set_num_threads(old[1])


def _spawn_init(path: list[str], fn: Callable | None = None, threads: int = 0) -> None:
    """A pool process's start: this checkout's path first; unpickling `fn` imports its module before the ping; its
    share of the cores for torch and numba (the rasteriser's parallel kernels), so processes do not oversubscribe."""
    sys.path[:0] = [p for p in path if p not in sys.path]
    _set_threads(threads)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down at once, its processes terminated (units still running are lost or re-queued). Only for a
    broken or interrupted pool: a terminated process skips its exit handlers, which unlink the named semaphores the
    libraries made in it (numba's thread-launch lock, tqdm's lock), and the stage's exit then warns "resource_tracker:
    There appear to be 1 leaked semaphore objects"; a pool whose units are done is shut down normally."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        p.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _close(pool: ProcessPoolExecutor, timeout: float = 10.0) -> None:
    """Shut down a pool whose units are done: its processes exit normally (their exit handlers run, see `_stop`); one
    that has not exited after `timeout` s (stuck in its start) is terminated, so a stage never hangs here."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False)
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5.0)
    pool.shutdown(wait=True)


class _UnitQueue:
    """The units of one `Executor.map` on a local pool, shared by this process's thread and the dispatcher thread:
    indices not yet taken, results, how often each unit's worker was lost, and the progress bar."""

    def __init__(self, items: list, bar):
        self.items, self.bar = items, bar
        self.pending, self.results, self.n_lost = deque(range(len(items))), {}, Counter()
        self.running, self.closed = 0, False
        self.cond = threading.Condition()

    def take(self, wait: bool) -> int | None:
        """The next unit to run, or None: none left (wait=False), or none left and none running elsewhere that could
        come back to the queue (wait=True; it waits for either)."""
        with self.cond:
            while wait and not self.pending and self.running and not self.closed:
                self.cond.wait()
            if not self.pending or self.closed:
                return None
            self.running += 1
            return self.pending.popleft()

    def finish(self, i: int, result: UnitResult) -> None:
        with self.cond:
            self.results[i], self.running = result, self.running - 1
            self.bar.update()
            self.cond.notify_all()

    def lost(self, i: int, retries: int) -> None:
        """Unit `i`'s worker process died: back to the queue, or recorded as lost after `retries` re-runs."""
        with self.cond:
            self.n_lost[i] += 1
            self.running -= 1
            if self.n_lost[i] > retries:
                self.results[i] = UnitResult(self.items[i], False, None, f"WorkerLost: the worker process died "
                                             f"{self.n_lost[i]} times while this unit was running")
                self.bar.update()
            else:
                self.pending.append(i)
            self.cond.notify_all()

    def has_pending(self) -> bool:
        with self.cond:
            return bool(self.pending) and not self.closed

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def map_pool(fn: Callable, items: list, bar, workers: int, retries: int) -> list[UnitResult]:
    """`call_unit(fn, item)` for every item on `workers - 1` pool processes plus this one, results in input order.
    A dispatcher thread feeds the pool: a pool process gets a unit once it is ready (it answered a ping, i.e. it
    has imported `fn`'s module) and its next one the moment it returns a result, while this process runs units
    itself; so the pool's start-up never holds a unit back and no process waits for another. Every process gets
    its share of the cores for torch and numba (`cpu_count // workers` threads). A pool process that dies breaks
    the pool: its units go back to the queue (`retries` times at most per unit) and a new pool starts."""
    threads = max(1, (os.cpu_count() or 1) // workers)  # each process's share of the cores
    queue = _UnitQueue(items, bar)
    old_threads = _set_threads(threads)
    dispatcher = threading.Thread(target=_dispatch, args=(fn, queue, workers - 1, retries, threads), daemon=True,
                                  name="geoface-pool-dispatcher")
    dispatcher.start()
    try:
        while (i := queue.take(wait=True)) is not None:  # waits while only the pool has units left
            queue.finish(i, call_unit(fn, items[i]))
    finally:
        queue.close()  # the dispatcher stops submitting (all done, or this process was interrupted)
        dispatcher.join()
        _restore_threads(old_threads)
    return [queue.results[i] for i in range(len(items))]


def _dispatch(fn: Callable, queue: _UnitQueue, n_pool: int, retries: int, threads: int) -> None:
    """The dispatcher thread of `map_pool`: pools of `n_pool` processes, each process fed the next unit as soon as
    it is free."""
    while queue.has_pending():
        pool = ProcessPoolExecutor(n_pool, mp_context=_pool_context(fn), initializer=_spawn_init,
                                   initargs=([str(PACKAGE_ROOT)] + sys.path, fn, threads))
        in_flight: dict = {pool.submit(os.getpid): None for _ in range(n_pool)}  # None: a ping
        try:
            while in_flight:
                done, _ = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    value = fut.result()  # BrokenProcessPool when a worker died
                    if (i := in_flight.pop(fut)) is not None:
                        queue.finish(i, value)
                    if (j := queue.take(wait=False)) is not None:
                        in_flight[pool.submit(call_unit, fn, queue.items[j])] = j
                if queue.closed or (not queue.has_pending() and all(i is None for i in in_flight.values())):
                    break  # nothing left for the pool; processes still starting are not waited for
        except BrokenProcessPool:  # a worker process died
            for i in (i for i in in_flight.values() if i is not None):
                queue.lost(i, retries)
        finally:
            if any(i is not None for i in in_flight.values()):  # broken, or this process was interrupted
                _stop(pool)
            else:  # every unit is done: the processes exit normally, so their exit handlers run (_stop)
                _close(pool)
