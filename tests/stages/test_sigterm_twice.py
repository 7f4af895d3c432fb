"""A second SIGTERM (Ctrl-C then `kill`, a scheduler that sends SIGTERM again) while a stage unwinds from the first
(stages/common.py `run`, flame_fitting/core/interrupt.py): a real stage-like process whose unit leaves temporaries
behind is sent SIGTERM, then SIGTERM again once it is removing them (core/units.py `run_units`: before, the second
interrupt stopped that sweep and the temporaries stayed in the output folder DVC hashes), or SIGTERMs until it exits
once it printed its `interrupted` line (before, one landing in its exit made it die of SIGTERM, -15, or end with a
KeyboardInterrupt traceback). It exits 130 with that line last, and no temporary is left."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flame_fitting.core.fileio import TMP_TAG
from flame_fitting.core.interrupt import INTERRUPTED

REPO = Path(__file__).resolve().parents[2]
N_TMP = 5_000  # temporaries the unit leaves: their sweep lasts long enough for the second SIGTERM to land in it

STAGE = '''
import os, sys, time
from pathlib import Path
sys.path[:0] = [{stages!r}]
from common import run
from flame_fitting.core.executor import ExecutorConfig, open_executor
from flame_fitting.core.fileio import TMP_TAG
from flame_fitting.core.unit_keys import Unit
from flame_fitting.core.units import run_units


def leave_temporaries(unit, tmp, extras):
    """A unit that writes many temporaries beside its folder (as killed pool processes leave them), then hangs."""
    for i in range({n_tmp}):
        open(Path(tmp).parent / f".x{{i}}{{TMP_TAG}}h-1-{{i:08x}}", "wb").close()
    print("ready", file=sys.stderr, flush=True)
    time.sleep(600)


def main():
    with open_executor(ExecutorConfig(kind="local", workers=1)) as ex:
        run_units(ex, leave_temporaries, [Unit("s0", "seq", "k0")], Path(sys.argv[1]), "twice", progress=False)


if __name__ == "__main__":
    run(main)
'''


def _temporaries(folder: Path) -> int:
    try:
        return sum(TMP_TAG in e.name for e in os.scandir(folder))
    except FileNotFoundError:
        return 0


def _wait_for(what, proc: subprocess.Popen, err_file: Path, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not what():
        assert proc.poll() is None and time.monotonic() < deadline, err_file.read_text()
        time.sleep(0.002)


def _start(tmp_path: Path, n_tmp: int) -> tuple[subprocess.Popen, Path, Path]:
    """The stage started, its unit's `n_tmp` temporaries written; SIGTERM sent to it once."""
    (tmp_path / "stage.py").write_text(STAGE.format(stages=str(REPO / "stages"), n_tmp=n_tmp))
    out, err_file = tmp_path / "out", tmp_path / "stderr"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with err_file.open("w") as err_fh:
        proc = subprocess.Popen([sys.executable, str(tmp_path / "stage.py"), str(out)], cwd=tmp_path, env=env,
                                stderr=err_fh)
    _wait_for(lambda: "ready" in err_file.read_text(), proc, err_file)
    proc.send_signal(signal.SIGTERM)
    return proc, out, err_file


def _end(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_again_during_the_sweep_of_temporaries_lets_it_end(tmp_path):
    """Before: the second SIGTERM raised inside `run_units`' sweep and thousands of temporaries stayed."""
    proc, out, err_file = _start(tmp_path, N_TMP)
    try:
        _wait_for(lambda: _temporaries(out / "s0") < N_TMP, proc, err_file)  # the sweep has begun
        proc.send_signal(signal.SIGTERM)  # lands in the sweep (it lasts a while: N_TMP files)
    finally:
        _end(proc)
    err = err_file.read_text()
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob(f"*{TMP_TAG}*")][:3] == [], err
    assert proc.returncode == INTERRUPTED, err
    assert err.strip().splitlines()[-1].startswith("stage: interrupted"), err


def test_sigterms_while_the_interrupted_stage_exits_leave_status_130(tmp_path):
    """Before: one of them raised in its exit or, after the teardown set SIGTERM's default action back, killed it."""
    proc, out, err_file = _start(tmp_path, 10)
    try:
        _wait_for(lambda: "interrupted" in err_file.read_text() or proc.poll() is not None, proc, err_file)
        while proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.001)
    finally:
        _end(proc)
    err = err_file.read_text()
    assert proc.returncode == INTERRUPTED, err
    assert err.strip().splitlines()[-1].startswith("stage: interrupted"), err
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob(f"*{TMP_TAG}*")][:3] == [], err
