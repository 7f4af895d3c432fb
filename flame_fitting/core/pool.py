"""The local executor's process pool (`map_pool`, used by flame_fitting/core/executor.py; docs/scaling.md,
"Executor"): `workers - 1` processes forked from a clean server process (multiprocessing's forkserver) that imported
the unit function's module (`workers.home_module`) once, plus the caller's own process. `start_pool_early` starts
that server before the caller's own imports. A dispatcher thread hands a pool process its next unit the moment it is
free, while the caller's process runs units itself. With a time limit per unit (`executor.unit_timeout_s`) the
caller's process runs none (it could not be stopped): the pool has `workers` processes, and one running a unit past
the limit is stopped with its pool.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from flame_fitting.core.workers import (PACKAGE_ROOT, UnitResult, call_unit, home_module, restore_threads, set_threads,
                                        timeout_result)

FREEZE_MODULE = "flame_fitting.core.gc_freeze"  # imported by the fork server after the unit's module: a fast exit


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


def start_pool_early(cfg, module: str) -> None:
    """Start the server that local pool processes are forked from now, preloading `module` (the stage's unit
    function's): it imports in parallel with the caller's own imports, so a pool is ready when the first units are
    handed out instead of seconds later. `cfg`: an executor.ExecutorConfig; nothing for ray, nor for `workers: 1`
    without a unit time limit (the stage's process runs every unit)."""
    if cfg.kind != "local" or (cfg.workers < 2 and cfg.unit_timeout_s is None):
        return
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload([module, FREEZE_MODULE])
    forkserver.ensure_running()


def _spawn_init(path: list[str], fn: Callable | None = None, threads: int = 0) -> None:
    """A pool process's start: this checkout's path first; unpickling `fn` imports its module before the ping; its
    share of the cores for torch and numba (the rasteriser's parallel kernels), so processes do not oversubscribe."""
    sys.path[:0] = [p for p in path if p not in sys.path]
    set_threads(threads)


def _stop(pool: ProcessPoolExecutor, grace: float = 5.0) -> None:
    """Shut the pool down at once, its processes terminated, killed after `grace` s when SIGTERM did not end them (a
    unit stuck in native code with the signal handled) (units still running are lost, re-queued or timed out). Only
    for a broken, interrupted or timed-out pool: a terminated process skips its exit handlers, which unlink the named
    semaphores the libraries made in it (numba's thread-launch lock, tqdm's lock), and the stage's exit then warns
    "resource_tracker: There appear to be 1 leaked semaphore objects"; a pool whose units are done is shut down
    normally."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
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

    def requeue(self, i: int) -> None:
        """Unit `i` was stopped through no fault of its own (another unit of its pool timed out): back to the queue,
        not counted as lost."""
        with self.cond:
            self.running -= 1
            self.pending.append(i)
            self.cond.notify_all()

    def has_pending(self) -> bool:
        with self.cond:
            return bool(self.pending) and not self.closed

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def map_pool(fn: Callable, items: list, bar, workers: int, retries: int,
             timeout: float | None = None) -> list[UnitResult]:
    """`call_unit(fn, item)` for every item on `workers - 1` pool processes plus this one, results in input order.
    A dispatcher thread feeds the pool: a pool process gets a unit once it is ready (it answered a ping, i.e. it
    has imported `fn`'s module) and its next one the moment it returns a result, while this process runs units
    itself; so the pool's start-up never holds a unit back and no process waits for another. Every process gets
    its share of the cores for torch and numba (`cpu_count // workers` threads). A pool process that dies breaks
    the pool: its units go back to the queue (`retries` times at most per unit) and a new pool starts.
    `timeout` (s, executor.unit_timeout_s): this process runs no unit, the pool has `workers` processes, and a unit
    running longer is recorded as UnitTimeout, never retried (`_stop_late`)."""
    threads = max(1, (os.cpu_count() or 1) // workers)  # each process's share of the cores
    queue = _UnitQueue(items, bar)
    old_threads = set_threads(threads)
    own = timeout is None  # this process runs units too (one could not be stopped here)
    n_pool = workers - 1 if own else workers
    dispatcher = threading.Thread(target=_dispatch, args=(fn, queue, n_pool, retries, threads, timeout), daemon=True,
                                  name="geoface-pool-dispatcher")
    dispatcher.start()
    try:
        while own and (i := queue.take(wait=True)) is not None:  # waits while only the pool has units left
            queue.finish(i, call_unit(fn, items[i]))
        if not own:
            dispatcher.join()  # returns once every unit has a result
    finally:
        queue.close()  # the dispatcher stops submitting (all done, or this process was interrupted)
        dispatcher.join()
        restore_threads(old_threads)
    return [queue.results[i] for i in range(len(items))]


def _dispatch(fn: Callable, queue: _UnitQueue, n_pool: int, retries: int, threads: int,
              timeout: float | None) -> None:
    """The dispatcher thread of `map_pool`: pools of `n_pool` processes, each process fed the next unit as soon as
    it is free (so a unit's time limit runs from its submission: it starts at once)."""
    while queue.has_pending():
        pool = ProcessPoolExecutor(n_pool, mp_context=_pool_context(fn), initializer=_spawn_init,
                                   initargs=([str(PACKAGE_ROOT)] + sys.path, fn, threads))
        in_flight: dict[Future, int | None] = {pool.submit(os.getpid): None for _ in range(n_pool)}  # None: a ping
        started: dict[Future, float] = {}  # a unit's future: when it was handed to a free pool process
        try:
            while in_flight:
                done, _ = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    value = fut.result()  # BrokenProcessPool when a worker died
                    if (i := in_flight.pop(fut)) is not None:
                        queue.finish(i, value)
                    if (j := queue.take(wait=False)) is not None:
                        unit = pool.submit(call_unit, fn, queue.items[j])
                        in_flight[unit], started[unit] = j, time.monotonic()
                if timeout is not None and _stop_late(queue, in_flight, started, timeout):
                    break  # the pool is stopped below (its processes still run units)
                if queue.closed or (not queue.has_pending() and all(i is None for i in in_flight.values())):
                    break  # nothing left for the pool; processes still starting are not waited for
        except BrokenProcessPool:  # a worker process died
            for i in (i for i in in_flight.values() if i is not None):
                queue.lost(i, retries)
        finally:
            if any(i is not None for i in in_flight.values()):  # broken, timed out, or this process was interrupted
                _stop(pool)
            else:  # every unit is done: the processes exit normally, so their exit handlers run (_stop)
                _close(pool)


def _stop_late(queue: _UnitQueue, in_flight: dict, started: dict, timeout: float) -> bool:
    """True when a unit of the pool has run past `timeout` s: each such unit is recorded as UnitTimeout (never
    retried: it would hang again), and the pool must be stopped (`_stop`; which of its processes runs which unit is
    not known, and one that dies breaks the pool anyway): its other units keep a result that came back meanwhile or
    go back to the queue, not counted as lost (`retries` is for lost workers)."""
    now = time.monotonic()
    late = {f for f, i in in_flight.items() if i is not None and not f.done() and now - started[f] > timeout}
    if not late:
        return False
    for fut, i in in_flight.items():
        if i is None:
            continue
        if fut in late:
            queue.finish(i, timeout_result(queue.items[i], timeout, now - started[fut]))
        elif fut.done() and fut.exception() is None:
            queue.finish(i, fut.result())
        else:
            queue.requeue(i)
    return True
