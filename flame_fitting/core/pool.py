"""The local executor's process pool (`map_pool`, used by flame_fitting/core/executor.py; docs/scaling.md,
"Executor"): `workers - 1` processes forked from a clean server process (multiprocessing's forkserver) that imported
the unit function's module (`workers.home_module`) once, plus the caller's own process. `start_pool_early` starts
that server before the caller's own imports. A dispatcher thread hands a pool process its next unit the moment it is
free, while the caller's process runs units itself. Each pool process is managed on its own (a pipe it takes units
on and answers through): one that dies, or runs a unit past the time limit (`executor.unit_timeout_s`, then the
caller's process runs none: it could not be stopped, and the pool has `workers` processes), is replaced alone, and
the units the other processes are running go on.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections import Counter, deque
from multiprocessing.connection import wait
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


def _serve(conn, path: list[str], fn: Callable, threads: int) -> None:
    """A pool process: this checkout's path first (`fn` was unpickled, i.e. its module imported, before this runs);
    its share of the cores for torch and numba (the rasteriser's parallel kernels), so processes do not
    oversubscribe; then it says it is ready (None) and answers each item it is sent with `call_unit(fn, item)`, until
    it is sent None (or the pipe closes) and returns: a normal exit, its exit handlers run (`_stop`)."""
    sys.path[:0] = [p for p in path if p not in sys.path]
    set_threads(threads)
    conn.send(None)
    try:
        while (item := conn.recv()) is not None:
            result = call_unit(fn, item)
            try:
                conn.send(result)
            except Exception as e:  # noqa: BLE001 - a value that cannot be pickled: the unit failed, the process goes on
                conn.send(UnitResult(item, False, None, f"{type(e).__name__}: the unit's result cannot be sent back "
                                     f"from its pool process: {e}", "", result.seconds))
    except EOFError:  # the caller's end closed
        pass


class _Worker:
    """One pool process, the caller's end of its pipe, and the unit it runs (None: idle, or not ready yet)."""

    def __init__(self, ctx, fn: Callable, threads: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, [str(PACKAGE_ROOT)] + sys.path, fn, threads),
                                name="geoface-pool")
        self.proc.start()
        child.close()
        self.ready, self.unit, self.started = False, None, 0.0

    def answer(self) -> tuple[bool, UnitResult | None]:
        """(alive, what it sent): (True, None) when it has sent nothing (or its ready message); (False, None) when
        its process died (a result it sent before is still read first)."""
        try:
            if not self.conn.poll():  # no message, no end of file: dead only if the process is gone
                return self.proc.is_alive(), None
            message = self.conn.recv()
        except (EOFError, OSError):
            return False, None
        self.ready = True
        return True, message


def _stop(procs: list, grace: float = 5.0) -> None:
    """Stop processes at once: terminated, killed after `grace` s when SIGTERM did not end them (a unit stuck in
    native code with the signal handled). Only for a process whose unit timed out, or when the caller was
    interrupted: a terminated process skips its exit handlers, which unlink the named semaphores the libraries made in
    it (numba's thread-launch lock, tqdm's lock), and the stage's exit then warns "resource_tracker: There appear to
    be 1 leaked semaphore objects"; a process whose units are done is closed normally (`_close`)."""
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _close(procs: list, timeout: float = 10.0) -> None:
    """Wait for processes told to stop (sent None) to exit normally (their exit handlers run, see `_stop`); one that
    has not exited after `timeout` s (stuck in its start) is terminated, so a stage never hangs here."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5.0)
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
        """Unit `i` never started (its pool process died before it could be sent): back to the queue, not counted as
        lost."""
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
    its share of the cores for torch and numba (`cpu_count // workers` threads). A pool process that dies is
    replaced: its unit goes back to the queue (`retries` times at most per unit), the other processes' units go on.
    `timeout` (s, executor.unit_timeout_s): this process runs no unit, the pool has `workers` processes, and a unit
    running longer has its process stopped (that one only) and is recorded as UnitTimeout, never retried."""
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
    """The dispatcher thread of `map_pool`: `n_pool` pool processes, each fed the next unit as soon as it is free
    (so a unit's time limit runs from when it is sent: it starts at once). A process that dies has its unit go back
    to the queue (`queue.lost`); one whose unit runs past `timeout` s is stopped and the unit recorded as
    UnitTimeout, never retried; either is replaced by a new process while units are left, and the other processes'
    units go on."""
    ctx = _pool_context(fn)
    pool = [_Worker(ctx, fn, threads) for _ in range(n_pool)]
    try:
        while not queue.closed and (queue.has_pending() or any(w.unit is not None for w in pool)):
            wait([w.conn for w in pool] + [w.proc.sentinel for w in pool], timeout=0.2)
            for k, w in enumerate(pool):
                alive, result = w.answer()
                unit = w.unit
                if result is not None and unit is not None:
                    queue.finish(unit, result)
                    w.unit = unit = None
                if alive and unit is not None and timeout is not None and time.monotonic() - w.started > timeout:
                    ran = time.monotonic() - w.started
                    _stop([w.proc])  # only this process: the others' units go on
                    queue.finish(unit, timeout_result(queue.items[unit], timeout, ran))
                    w.unit, alive = None, False
                elif not alive and unit is not None:
                    queue.lost(unit, retries)
                    w.unit = None
                if not alive:
                    w.proc.join()
                    w.conn.close()
                    if not queue.has_pending():
                        pool[k] = None
                        continue
                    pool[k] = w = _Worker(ctx, fn, threads)  # not ready yet: it gets a unit once it says so
                if w.ready and w.unit is None and (j := queue.take(wait=False)) is not None:
                    try:
                        w.conn.send(queue.items[j])
                    except OSError:  # it died since: the unit never started; its next pass replaces the process
                        queue.requeue(j)
                        continue
                    w.unit, w.started = j, time.monotonic()
            pool = [w for w in pool if w is not None]
    finally:
        pool = [w for w in pool if w is not None]
        busy = [w for w in pool if w.unit is not None]  # this process was interrupted
        _stop([w.proc for w in busy])
        for w in pool:
            if w.unit is None:
                try:
                    w.conn.send(None)  # done: it exits normally, its exit handlers run (_stop)
                except OSError:
                    pass
        _close([w.proc for w in pool if w.unit is None])
        for w in pool:
            w.conn.close()
