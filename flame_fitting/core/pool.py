"""The local executor's process pool (`map_pool`, used by flame_fitting/core/executor.py; docs/scaling.md,
"Executor"): `workers - 1` processes forked from a clean server process (multiprocessing's forkserver) that imported
the unit function's module (`workers.home_module`) once, plus the caller's own process (the server:
core/fork_server.py, whose `start_pool_early` starts it before the caller's own imports). A dispatcher thread hands a
pool process its next unit the moment it is free, while the caller's process runs units itself. Each pool process is
managed on its own (a pipe it takes units on and answers through): one that dies, or runs a unit past the time limit
(`executor.unit_timeout_s`, then the caller's process runs none: it could not be stopped, and the pool has `workers`
processes), is replaced alone, and the units the other processes are running go on. Processes that die before they
are ready (`retries + 1` in a row: a unit module that fails to import in a fresh process, processes killed as they
start) end the map with ExecutorError once the units already running are done, instead of being replaced for ever;
with a time limit, so do processes not ready within it (an import that blocks, in the fork server's preload or in
the new process: each is stopped and counted alike; `_start`, `_dispatch`).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler
from typing import Callable

from flame_fitting.core.errors import ExecutorError
from flame_fitting.core.fork_server import pool_context, watch_start
from flame_fitting.core.unit_queue import UnitQueue
from flame_fitting.core.workers import (PACKAGE_ROOT, UnitResult, call_unit, home_module, restore_threads, set_threads,
                                        timeout_result)

# with executor.unit_timeout_s: a pool process not ready this long after its start began (at least; the unit limit when
# longer) is stopped. Its imports take that long: flame_fitting.fit.run's took 6.5 s in a fresh process here (2 busy
# cores, warm disk); a cold network disk can take ten times that. A pool process that is slower is broken.
START_LIMIT_MIN_S = 120.0
# a finished pool's process that has not exited this long after it was told to stop (stuck in its start) is terminated
CLOSE_LIMIT_S = 10.0


def _serve(conn, path: list[str], fn: Callable, threads: int) -> None:
    """A pool process: this checkout's path first (`fn` was unpickled, i.e. its module imported, before this runs);
    its share of the cores for torch and numba (the rasteriser's parallel kernels), so processes do not
    oversubscribe; then it says it is ready (None) and answers each item it is sent with `call_unit(fn, item)`, until
    it is sent None (or the pipe closes) and returns: a normal exit, its exit handlers run (`_stop`). A result goes
    back without its item (the caller puts its own back, `_dispatch`): a unit's payload travels one way."""
    sys.path[:0] = [p for p in path if p not in sys.path]
    set_threads(threads)
    conn.send(None)
    try:
        while (item := conn.recv()) is not None:
            result = call_unit(fn, item)
            result.item = None
            try:
                conn.send(result)
            except Exception as e:  # noqa: BLE001 - a value that cannot be pickled: the unit failed, the process goes on
                conn.send(UnitResult(None, False, None, f"{type(e).__name__}: the unit's result cannot be sent back "
                                     f"from its pool process: {e}", "", result.seconds))
    except EOFError:  # the caller's end closed
        pass


class _Worker:
    """One pool process, the caller's end of its pipe, and the unit it runs (None: idle, or not ready yet)."""

    def __init__(self, ctx, fn: Callable, threads: int):
        self.conn, child = ctx.Pipe()
        self.started = time.monotonic()  # until it is ready: when its start began (`_dispatch`'s start limit)
        self.proc = ctx.Process(target=_serve, args=(child, [str(PACKAGE_ROOT)] + sys.path, fn, threads),
                                name="geoface-pool")
        try:
            self.proc.start()
        except BaseException:  # not started (`_start`): no pipe left open
            self.conn.close()
            raise
        finally:
            child.close()
        self.ready, self.unit = False, None

    def answer(self, items: list) -> tuple[bool, UnitResult | None]:
        """(alive, what it sent): (True, None) when it has sent nothing (or its ready message); (False, None) when
        its process died (a result it sent before is still read first). A result that cannot be unpickled here (its
        bytes are read whole, so the pipe stays in step) is a failed result of the unit it runs (`items[self.unit]`)."""
        try:
            if not self.conn.poll():  # no message, no end of file: dead only if the process is gone
                return self.proc.is_alive(), None
            data = self.conn.recv_bytes()
        except (EOFError, OSError):
            return False, None
        self.ready = True
        try:
            return True, ForkingPickler.loads(data)
        except Exception as e:  # noqa: BLE001 - one unit's unreadable result fails that unit, not the stage
            item = items[self.unit] if self.unit is not None else None
            return True, UnitResult(item, False, None, f"{type(e).__name__}: the unit's result cannot be read back "
                                    f"from its pool process: {e}")

    def start_failure(self) -> str:
        """How its process ended (before it was ready): its exit code, or the signal that killed it."""
        code = self.proc.exitcode
        if code is None or code >= 0:
            return f"exit code {code}"
        return f"killed by {next((s.name for s in signal.Signals if s.value == -code), f'signal {-code}')}"


def _start(ctx, fn: Callable, threads: int, queue: UnitQueue, limit: float | None) -> tuple[_Worker | None, str]:
    """A new pool process, or (None, why) when the fork server could not start one (the server died, or the new
    process was killed before it read its start data: EOFError, BrokenPipeError), or did not within `limit` s (None: no
    limit) or before the map ended (`queue.closed`): the server is stuck, killed (`fork_server.watch_start`), and the
    next start begins a new one."""
    with watch_start(queue.cond, lambda: queue.closed, limit) as watch:
        try:
            return _Worker(ctx, fn, threads), ""
        except (OSError, EOFError) as e:
            if watch["killed"] is None:
                return None, f"the fork server could not start it: {type(e).__name__}: {e}"
    if queue.closed:
        return None, "its fork server had not started it when the map ended"
    return None, f"not ready after {limit:g} s: its fork server did not start it and was stopped"


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


def _close(procs: list, timeout: float | None = None) -> None:
    """Wait for processes told to stop (sent None) to exit normally (their exit handlers run, see `_stop`); one that
    has not exited after `timeout` s (default CLOSE_LIMIT_S; stuck in its start) is terminated, so a stage never
    hangs here."""
    deadline = time.monotonic() + (CLOSE_LIMIT_S if timeout is None else timeout)
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5.0)


def map_pool(fn: Callable, items: list, bar, workers: int, retries: int,
             timeout: float | None = None) -> list[UnitResult]:
    """`call_unit(fn, item)` for every item on `workers - 1` pool processes plus this one, results in input order.
    A dispatcher thread feeds the pool: a pool process gets a unit once it is ready (it answered a ping, i.e. it
    has imported `fn`'s module) and its next one the moment it returns a result, while this process runs units
    itself; so the pool's start-up never holds a unit back and no process waits for another. Every process gets
    its share of the cores for torch and numba (`cpu_count // workers` threads). A pool process that dies is
    replaced: its unit goes back to the queue (`retries` times at most per unit), the other processes' units go on.
    `timeout` (s, executor.unit_timeout_s): this process runs no unit, the pool has `workers` processes, and a unit
    running longer has its process stopped (that one only) and is recorded as UnitTimeout, never retried. With
    `timeout`, a pool process not ready within `max(timeout, START_LIMIT_MIN_S)` s counts as one that died before it
    was ready (`_dispatch`).
    ExecutorError when `retries + 1` pool processes in a row die before they are ready (or cannot be started): the
    units not yet taken are not run, the running ones finish first (their outputs are written), and the error names
    `fn`'s module and how the last process ended."""
    threads = max(1, (os.cpu_count() or 1) // workers)  # each process's share of the cores
    queue = UnitQueue(items, bar)
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
    if queue.error is not None:  # the dispatcher thread failed (e.g. `fn` cannot be pickled): never a hang
        raise queue.error
    if queue.broken:
        raise ExecutorError(queue.broken)
    return [queue.results[i] for i in range(len(items))]


def _dispatch(fn: Callable, queue: UnitQueue, n_pool: int, retries: int, threads: int,
              timeout: float | None) -> None:
    """The dispatcher thread of `map_pool`: `n_pool` pool processes, each fed the next unit as soon as it is free
    (so a unit's time limit runs from when it is sent: it starts at once). A process that dies has its unit go back
    to the queue (`queue.lost`); one whose unit runs past `timeout` s is stopped and the unit recorded as
    UnitTimeout, never retried; either is replaced by a new process while units are left, and the other processes'
    units go on. Processes that die before they are ready (or cannot be started) are counted: after `retries + 1` in
    a row (none ready in between) no unit more is handed out and none is replaced (`queue.fail`). With `timeout`, a
    process not ready `max(timeout, START_LIMIT_MIN_S)` s after its start began (its imports, or a start the fork
    server does not answer: `_start`) is stopped and counted alike: this process runs no unit, so it would wait for
    ever. Without `timeout` no start has a limit (nothing says how slow an import may be): this process runs every
    unit the pool does not, and when they are done a start still waiting is ended and a process not ready is stopped
    (`_close`), so the map never waits for one."""
    ctx = pool_context(fn)
    start_limit = None if timeout is None else max(timeout, START_LIMIT_MIN_S)
    failed = 0  # processes in a row that died before they were ready

    def start_failed(why: str) -> None:
        nonlocal failed
        failed += 1
        if failed > retries and not queue.broken:
            module = home_module(fn)
            queue.fail(f"the local pool's processes for units of {module} died before they were "
                       f"ready {failed} times in a row (executor.retries={retries}; the last: {why}), so "
                       f"units not yet started were not run; each is forked from a server that preloads {module}: a "
                       f"module that fails to import in a fresh process (its traceback is on stderr above) or whose "
                       f"import blocks, or processes killed as they start (out of memory?)")

    pool: list[_Worker] = []
    try:
        while not queue.closed and (queue.has_pending() or any(w.unit is not None for w in pool)):
            while len(pool) < n_pool and queue.has_pending():  # (re)start: it gets a unit once it says it is ready
                w, why = _start(ctx, fn, threads, queue, start_limit)
                if w is None:
                    if not queue.closed:  # else: every unit is done (or this process was interrupted)
                        start_failed(why)
                else:
                    pool.append(w)
            wait([w.conn for w in pool] + [w.proc.sentinel for w in pool], timeout=0.2)
            for w in list(pool):
                was_ready, stuck = w.ready, ""
                alive, result = w.answer(queue.items)
                if w.ready and not was_ready:
                    failed = 0
                unit = w.unit
                if result is not None and unit is not None:
                    result.item = queue.items[unit]  # sent back without it (`_serve`)
                    queue.finish(unit, result)
                    w.unit = unit = None
                if alive and not w.ready and start_limit is not None and time.monotonic() - w.started > start_limit:
                    _stop([w.proc])  # hung in its start: stopped and counted like one that died (below)
                    alive, stuck = False, f"not ready after {start_limit:g} s: stopped"
                elif alive and unit is not None and timeout is not None and time.monotonic() - w.started > timeout:
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
                    pool.remove(w)  # replaced at the next pass while units are left
                    if not w.ready:
                        start_failed(stuck or w.start_failure())
                    continue
                if w.ready and w.unit is None and (j := queue.take(wait=False)) is not None:
                    try:
                        w.conn.send(queue.items[j])
                    except OSError:  # it died since: the unit never started; its next pass replaces the process
                        queue.requeue(j)
                        continue
                    w.unit, w.started = j, time.monotonic()
    except BaseException as e:  # noqa: BLE001 - handed to map_pool, which raises it: the caller never waits forever
        queue.close(e)
    finally:
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
