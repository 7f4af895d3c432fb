"""One training at a time in a run folder (STATE/<run id>/): an exclusive lock its main process holds from the start
of the run to the publication of the model.

Two trainings of the same config on the same data share the run folder (the run id is a hash of both): a `dvc repro`
started in a second terminal, a resume started while the first run still trains. Without the lock both wrote their
checkpoints into the one temporary folder every process of a run agrees on (`.step_XXXXXX.geoface-tmp-shared`),
each removing the other's half-written checkpoint, and one of them died mid-run with "cannot be written (... No such
file or directory ...; a full disk?)". Now the second one refuses to start, naming the folder and the process that
holds it. `prune_runs` leaves a locked run alone: another config's training no longer deletes a run that trains.

The lock is `flock(2)` on the file `.geoface-train.lock` in the run folder: the system releases it when its process
ends, however it ends, so a killed run leaves no stale lock. It holds across the processes of one machine and, on
Linux, on NFS (which maps it onto the server's byte-range locks); it is the folder's lock, not a lock of the data.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.json_files import read_json
from flame_fitting.core.names import terminal_safe

LOCK_FILE = ".geoface-train.lock"


class RunBusyError(GeofaceError, RuntimeError):
    """The run folder is in use by another training."""


def try_lock(run_dir: Path | str) -> int | None:
    """An open descriptor holding the exclusive lock of `run_dir` (created if missing), or None when another process
    holds it. Close the descriptor to release the lock."""
    path = Path(run_dir) / LOCK_FILE
    while True:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the folder was deleted (pruned) between the open and the lock: that lock guards nothing, take anew
            st, now = os.fstat(fd), os.stat(path)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _holder(run_dir: Path) -> str:
    """Who holds the lock, from the run's `run.json` (written by the holder when it started), or ''."""
    try:
        info = read_json(run_dir / "run.json", ValueError, 1 << 20)  # written by us, but the folder may not be
        return f" (process {int(info['pid'])} on {terminal_safe(info['host'])})"
    except (ValueError, KeyError, TypeError):
        return ""


@contextmanager
def run_lock(run_dir: Path | str) -> Iterator[None]:
    """Hold the lock of `run_dir` for the block; `RunBusyError` when another training holds it."""
    run_dir = Path(run_dir)
    fd = try_lock(run_dir)
    if fd is None:
        raise RunBusyError(f"{run_dir}: another training of this run is in progress{_holder(run_dir)}; wait for it "
                           "to finish or stop it, then run again (it resumes from the last checkpoint)")
    try:
        yield
    finally:
        os.close(fd)
