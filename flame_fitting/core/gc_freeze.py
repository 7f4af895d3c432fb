"""Faster process exit: `freeze()` moves every object alive now into the garbage collector's permanent generation
(`gc.freeze`), so the collections Python runs while it shuts down skip them. A process that imported torch otherwise
spends ~0.5 s of its exit scanning the libraries' objects (`python benchmarks/process_exit.py`), and every stage
is its own process. Nothing is lost: objects are still freed by reference counting as modules are torn down;
only cycles left at exit are not collected (the operating system reclaims them; the toolkit writes and closes
every file before that, flame_fitting/core/fileio.py).

Importing this module freezes too: the local pool's fork server imports it after the stage's unit module
(flame_fitting/core/pool.py), so neither the server nor the pool processes forked from it pay that scan when
they exit.
"""
from __future__ import annotations

import gc


def freeze() -> None:
    """gc.freeze(): call when a process's work is done (stages/common.py `run`, the `geoface` command)."""
    gc.freeze()


freeze()
