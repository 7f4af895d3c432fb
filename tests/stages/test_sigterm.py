"""SIGTERM (`kill PID`, a scheduler's job cancel, a CI timeout) stops a data stage as Ctrl-C does
(flame_fitting/core/interrupt.py, called by stages/common.py `run`): a real stage-like process, its units run by the
local pool (`workers` 2 or 3, core/pool.py) through `run_units`, is sent SIGTERM while every unit hangs; it exits 130
with one line, no pool process outlives it and no temporary is left in its output folder. The pool's processes keep
SIGTERM's default action (the handler is the stage's main thread's only), which is how the pool stops them. With
`executor: ray` (a local Ray the stage starts, whose `ray.init` sets a SIGTERM handler of its own) the same: 130, the
Ray shut down, its workers gone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flame_fitting.core.fileio import TMP_TAG
from flame_fitting.core.interrupt import INTERRUPTED, unwind_on_sigterm
from flame_fitting.core.unit_keys import KEY_FILE

REPO = Path(__file__).resolve().parents[2]

UNIT = '''
import os, signal, time
from pathlib import Path
from flame_fitting.core.fileio import temp_path

def hang(unit, tmp, extras):
    """Writes part of its unit and of a preview, logs its pid and whether SIGTERM has its default action here, then
    hangs; in the stage's own process, it returns once every pool process has taken a unit (so the stage then
    waits for the pool's processes; on a loaded machine the pool may be ready only after the stage's own process
    could have run every unit)."""
    (Path(tmp) / "part.bin").write_bytes(b"x")
    temp_path(Path(extras) / f"{unit.subject}.png").write_bytes(b"x")  # a preview half-written (fileio.atomic_write)
    default = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    log, me = Path(os.environ["UNIT_LOG"]), str(os.getpid())
    with open(log, "a") as f:
        f.write(f"{me} {default}\\n")
    if me != os.environ["STAGE_PID"]:
        time.sleep(600)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len({line.split()[0] for line in log.read_text().splitlines()
                                               if line.split()[0] != me}) < int(os.environ["N_POOL"]):
        time.sleep(0.05)
    return {}, []
'''

STAGE = '''
import os, sys
from pathlib import Path
sys.path[:0] = [{stages!r}, {here!r}]
from common import run
from flame_fitting.core.executor import ExecutorConfig, open_executor
from flame_fitting.core.unit_keys import Unit
from flame_fitting.core.units import run_units
from units_that_hang import hang


def main():
    os.environ["STAGE_PID"] = str(os.getpid())
    units = [Unit(f"s{{i}}", "seq", f"k{{i}}") for i in range(6)]
    with open_executor(ExecutorConfig(kind={kind!r}, workers={workers}, unit_timeout_s={limit})) as ex:
        run_units(ex, hang, units, Path(sys.argv[1]), "hang", extras=Path(sys.argv[2]), progress=False)


if __name__ == "__main__":
    run(main)
'''


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (/proc, Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _log(path: Path) -> list[tuple[int, bool]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(p), d == "True") for p, d in (line.split() for line in lines)]


@pytest.mark.parametrize("kind,workers,limit", [("local", 3, None),  # the stage's process runs units too
                                                ("local", 2, 100.0),  # it only waits for the pool (a time limit)
                                                ("ray", 2, None)])  # a local Ray the stage started
def test_sigterm_stops_the_pool_removes_temporaries_and_exits_130(tmp_path, kind, workers, limit):
    (tmp_path / "units_that_hang.py").write_text(UNIT)
    (tmp_path / "stage.py").write_text(STAGE.format(stages=str(REPO / "stages"), here=str(tmp_path), kind=kind,
                                                    workers=workers, limit=limit))
    log, out, err_file = tmp_path / "log", tmp_path / "out", tmp_path / "stderr"
    n_pool = workers - 1 if kind == "local" and limit is None else workers
    env = {**os.environ, "UNIT_LOG": str(log), "N_POOL": str(n_pool),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    with err_file.open("w") as err_fh:  # a file, not a pipe: a pool process that outlives the stage holds it open
        proc = subprocess.Popen([sys.executable, str(tmp_path / "stage.py"), str(out), str(tmp_path / "previews")],
                                cwd=tmp_path, env=env, stderr=err_fh)
    try:
        deadline = time.monotonic() + 120
        while len({p for p, _ in _log(log) if p != proc.pid}) < n_pool:  # every pool process runs a unit
            assert proc.poll() is None and time.monotonic() < deadline, err_file.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        survivors = [p for p, _ in _log(log) if p != proc.pid and _alive(p)]
        deadline = time.monotonic() + 30
        while kind == "ray" and survivors and time.monotonic() < deadline:  # Ray's workers end after its raylet
            time.sleep(0.2)
            survivors = [p for p in survivors if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p, _ in _log(log):  # never leave a hung unit running, whatever failed above
            if p != proc.pid and _alive(p):
                os.kill(p, signal.SIGKILL)
    err = err_file.read_text()
    runs = _log(log)
    pool = {p for p, _ in runs if p != proc.pid}
    assert len(pool) == n_pool, runs
    assert proc.returncode == INTERRUPTED, err  # before: -15, killed at once
    assert err.strip().splitlines()[-1].startswith("stage: interrupted"), err
    assert survivors == []  # stopped and joined before the stage exits (before: they ran on, hung units for ever)
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob(f"*{TMP_TAG}*")] == []  # the pool's units' too
    # the pool's processes keep SIGTERM's default action; the stage's own process has the handler
    assert kind == "ray" or all(default for p, default in runs if p in pool), runs
    assert not any(default for p, default in runs if p == proc.pid), runs
    # the units the stage's own process completed are whole (key file included); the pool's are absent
    assert all((p.parent / KEY_FILE).is_file() for p in out.rglob("part.bin"))
    assert len(list(out.rglob("part.bin"))) <= len(runs) - len(pool)


def test_only_the_main_thread_installs_the_handler():
    """In another thread nothing is installed (Python runs signal handlers in the main thread only, and
    signal.signal raises there); a handler already set is left as it is."""
    got = []
    t = threading.Thread(target=lambda: got.append(unwind_on_sigterm()))
    t.start()
    t.join()
    assert got == [False]
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        assert unwind_on_sigterm() is False
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)
