"""Faster process exit: `freeze()` moves every object alive now into the garbage collector's permanent generation
(`gc.freeze`), so the collections Python runs while it shuts down skip them. A process that imported torch otherwise
spends ~0.5 s of its exit scanning the libraries' objects (`python benchmarks/process_exit.py`), and every stage
is its own process. Nothing is lost: objects are still freed by reference counting as modules are torn down;
only cycles left at exit are not collected (the operating system reclaims them; the toolkit writes and closes
every file before that, flame_fitting/core/fileio.py).

Importing this module freezes too: the local pool's fork server imports it after the stage's unit module
(flame_fitting/core/fork_server.py), so neither the server nor the pool processes forked from it pay that scan when
they exit. Imported there (multiprocessing's `forkserver.main` on the stack), it also makes the server's exit
skip the interpreter's teardown (`os._exit(0)` in its first exit handler, after flushing stdout and stderr): the
server only forks, so it has nothing to write or clean up, and that teardown (~0.2 s after the stage's process
ended, the frozen collector notwithstanding) held the stage's output open, so a caller reading it (the benchmarks)
waited for it after the stage was done.
"""
from __future__ import annotations

import atexit
import gc
import os
import sys


def freeze() -> None:
    """gc.freeze(): call when a process's work is done (stages/common.py `run`, the `geoface` command)."""
    gc.freeze()


def _in_fork_server() -> bool:
    """Whether this module is being imported by multiprocessing's fork server as its preload (`forkserver.main`
    is on the stack): never in a stage's process; a pool process, forked from the server, has it imported already
    (and ends by `os._exit` anyway)."""
    server = sys.modules.get("multiprocessing.forkserver")
    frame = sys._getframe(1)
    while server is not None and frame is not None:
        if frame.f_code is server.main.__code__:
            return True
        frame = frame.f_back
    return False


def _exit_now() -> None:
    """The fork server's first exit handler: what it printed is flushed, the rest of its exit skipped."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # None, or closed
            pass
    os._exit(0)


freeze()
if _in_fork_server():
    atexit.register(_exit_now)  # run first at its exit (the handlers registered before are skipped)
