"""The server the local pool's processes are forked from (multiprocessing's forkserver; core/pool.py, docs/scaling.md
"Executor"): which modules it preloads (`pool_context`), starting it before the stage's own imports
(`start_pool_early`), and a start it does not answer (`watch_start`): the server is stuck in its preload (an import
that blocks), and every start from it would wait for ever, so it is killed and the next start begins a new one.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from contextlib import contextmanager
from multiprocessing import forkserver
from typing import Callable, Iterator

from flame_fitting.core.workers import home_module

FREEZE_MODULE = "flame_fitting.core.gc_freeze"  # imported by the fork server after the unit's module: a fast exit


def pool_context(fn: Callable):
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
    multiprocessing.get_context("forkserver").set_forkserver_preload([module, FREEZE_MODULE])
    forkserver.ensure_running()


@contextmanager
def watch_start(cond: threading.Condition, closed: Callable[[], bool], limit: float | None) -> Iterator[dict]:
    """For a block that starts one pool process (its start waits until the fork server has forked it): when the block
    has not returned after `limit` s (None: no limit) or once `closed()` (checked when `cond` is notified), the fork
    server is killed, again every 0.5 s until the block returns (a server started in the meantime); that ends the
    wait with EOFError. The dict yielded has "killed": the pid of the last server killed, else None; on leaving, that
    server is known to have exited (not reaped: `forkserver.ensure_running` does it, so a start right after begins a
    new server instead of connecting to the dead one's socket)."""
    state: dict = {"done": False, "killed": None}

    def watch() -> None:
        with cond:
            cond.wait_for(lambda: state["done"] or closed(), timeout=limit)
            while not state["done"]:
                state["killed"] = _kill_fork_server() or state["killed"]
                cond.wait_for(lambda: state["done"], timeout=0.5)

    watcher = threading.Thread(target=watch, daemon=True, name="geoface-pool-start-watch")
    watcher.start()
    try:
        yield state
    finally:
        with cond:
            state["done"] = True
            cond.notify_all()
        watcher.join()
        if state["killed"] is not None and hasattr(os, "waitid"):  # its pipes close before it has exited
            try:
                os.waitid(os.P_PID, state["killed"], os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass


def _kill_fork_server() -> int | None:
    """SIGKILL the fork server; its pid, None when there is none. It is this process's child, not reaped until the
    next `forkserver.ensure_running`, so its pid cannot have been reused. multiprocessing keeps the pid private."""
    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return pid
