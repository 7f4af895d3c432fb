"""A local pool whose processes die before they are ready (flame_fitting/core/pool.py): the unit function's module
fails to import in a fresh process, or every process is killed as it starts (as the OOM killer would). Each used to
be replaced for as long as units were pending: with a unit time limit the stage never ended (hundreds of processes
started and died a second), without one it started processes until its own had run every unit. Now `retries + 1`
such processes in a row end the map with one ExecutorError line naming the module and how the last one ended.

Each run is a fresh Python process (its own fork server, preloading the broken module) under a generous timeout, so
that a regression fails the test instead of hanging it."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RETRIES = 2

IMPORT_FAILS = '''"""Imports in the stage's process; in a process started after the stage set POOL_BROKEN (a library path changed
after the stage's own imports) the import fails. Each attempt is logged, one line."""
import os
from pathlib import Path

if os.environ.get("POOL_BROKEN"):
    with open(Path(__file__).with_name("imports.log"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    raise ImportError("libfoo.so.1: cannot open shared object file: No such file or directory")


def unit(x):
    """In the stage's process (no pool process gets this far): waits until the pool's processes failed (WAIT_FOR
    imports logged), at most until 60 s after this module's import (a deadline, not a timing under test); 0.3 s."""
    import time
    log = Path(__file__).with_name("imports.log")
    while time.monotonic() < DEADLINE and len(log.read_text().split() if log.exists() else []) < WAIT_FOR:
        time.sleep(0.02)
    time.sleep(0.3)
    return 2 * x
'''
KILLED_AT_START = '''"""Every process forked from one that imported this module is killed as it starts (the OOM killer's way), once
POOL_BROKEN is set; with POOL_ONCE only the first."""
import os
import signal
from pathlib import Path


def _kill():
    if os.environ.get("POOL_BROKEN"):
        marker = Path(__file__).with_name("killed_once")
        if os.environ.get("POOL_ONCE") and marker.exists():
            return
        marker.touch()
        with open(Path(__file__).with_name("killed.log"), "a") as f:
            f.write(f"{os.getpid()}\\n")
        os.kill(os.getpid(), signal.SIGKILL)


os.register_at_fork(after_in_child=_kill)


def unit(x):
    """0.3 s; in the stage's process, first waits until WAIT_FOR - 1 pool processes were killed (or one, with
    POOL_ONCE), at most until 60 s after this module's import (a deadline, not a timing under test)."""
    import time
    log = Path(__file__).with_name("killed.log")
    want = 1 if os.environ.get("POOL_ONCE") else WAIT_FOR - 1
    while time.monotonic() < DEADLINE and len(log.read_text().split() if log.exists() else []) < want:
        time.sleep(0.02)
    time.sleep(0.3)
    return 2 * x
'''
HANGS = '''"""Once POOL_BROKEN is set, a fresh import of this module (POOL_HANG=import: the fork server's preload), or every
process forked from a server that imported it (POOL_HANG=fork: a fork hook, as a lock inherited mid-use), blocks for
an hour, like an import from a dead network mount or a plugin's input(). Each hanging process logs its pid."""
import os
import time
from pathlib import Path


def _hang():
    if os.environ.get("POOL_BROKEN"):
        with open(Path(__file__).with_name("hung.log"), "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(3600)


if os.environ.get("POOL_HANG") == "import":
    _hang()
else:
    os.register_at_fork(after_in_child=_hang)


def unit(x):
    """0.3 s, once a hanging process logged its pid (at most until 60 s after this module's import: a deadline, not
    a timing under test): under load the stage's process ran all 8 units before the pool got as far as the hang."""
    log = Path(__file__).with_name("hung.log")
    while time.monotonic() < DEADLINE and not log.exists():
        time.sleep(0.02)
    time.sleep(0.3)
    return 2 * x
'''
DRIVER = '''import json, os, sys
sys.path.insert(0, sys.argv[1])
from flame_fitting.core import pool
from flame_fitting.core.executor import ExecutorConfig, ExecutorError, open_executor
if "START_LIMIT_MIN_S" in os.environ:  # a shorter one for the tests
    pool.START_LIMIT_MIN_S = float(os.environ["START_LIMIT_MIN_S"])
if "CLOSE_LIMIT_S" in os.environ:  # likewise: how long a finished pool's stuck process is waited for
    pool.CLOSE_LIMIT_S = float(os.environ["CLOSE_LIMIT_S"])
module = __import__(sys.argv[2])
os.environ["POOL_BROKEN"] = "1"  # the pool's fork server starts after this
cfg = ExecutorConfig(kind="local", workers=2, retries=int(sys.argv[3]), unit_timeout_s=json.loads(sys.argv[4]))
try:
    with open_executor(cfg) as ex:
        res = ex.map(module.unit, list(range(8)), progress=False)
    print(json.dumps({"values": [r.value for r in res], "errors": [r.error for r in res]}))
except ExecutorError as e:
    print(json.dumps({"error": str(e)}))
'''


def run_stage(tmp_path: Path, name: str, text: str, limit, env=None) -> dict:
    """Without a limit the stage's process runs units beside the pool: a unit module that waits there for the pool's
    failures reads WAIT_FOR (the fork server's import and RETRIES + 1 pool processes'), so that the stage's process
    cannot run every unit before the pool's processes fail, however slowly they start (under load, 8 units of 0.3 s
    were done first and the map ran to its end)."""
    head = f"import time as _t\nWAIT_FOR, DEADLINE = {RETRIES + 2}, _t.monotonic() + 60\n"
    (tmp_path / f"{name}.py").write_text(head + text)
    r = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path), name, str(RETRIES), json.dumps(limit)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("limit", [30.0, None])
def test_a_unit_module_that_fails_to_import_in_pool_processes_ends_the_map(tmp_path, limit):
    out = run_stage(tmp_path, "import_fails", IMPORT_FAILS, limit)
    assert "error" in out, f"the map ran to its end: {out}"
    assert out["error"].startswith(f"the local pool's processes for units of import_fails died before they were ready "
                                   f"{RETRIES + 1} times in a row (executor.retries={RETRIES}; the last: exit code 1)")
    assert "\n" not in out["error"] and "preloads import_fails" in out["error"]
    # the fork server's own preload, then one import per pool process started: bounded, not one per 5 ms
    attempts = (tmp_path / "imports.log").read_text().splitlines()
    assert RETRIES + 1 <= len(attempts) - 1 <= RETRIES + 2, attempts


@pytest.mark.parametrize("limit", [30.0, None])
def test_pool_processes_killed_as_they_start_end_the_map(tmp_path, limit):
    out = run_stage(tmp_path, "killed_at_start", KILLED_AT_START, limit)
    assert "error" in out, f"the map ran to its end: {out}"
    assert out["error"].startswith(f"the local pool's processes for units of killed_at_start died before they were ready "
                                   f"{RETRIES + 1} times in a row (executor.retries={RETRIES}; the last: ")
    last = out["error"].split("the last: ", 1)[1].split(")", 1)[0]
    assert last == "killed by SIGKILL" or last.startswith("the fork server could not start it: "), out["error"]


def test_a_process_killed_once_as_it_starts_is_replaced(tmp_path):
    """Start failures in a row, not in all: one process killed at its start, the next one ready, every unit runs."""
    out = run_stage(tmp_path, "killed_at_start", KILLED_AT_START, 30.0, env={"POOL_ONCE": "1"})
    assert out == {"values": [2 * x for x in range(8)], "errors": [""] * 8}, out
    assert (tmp_path / "killed_once").exists()


def running(pid: int) -> bool:
    """The process runs: not gone, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def hung(tmp_path):
    """The pids the hanging module logged (read after the run); whatever still runs at the end is killed, so that a
    regression (the stage killed by run_stage's timeout) leaves no process sleeping for an hour."""
    log = tmp_path / "hung.log"

    def read() -> list[int]:
        return [int(x) for x in log.read_text().split()] if log.exists() else []

    yield read
    for pid in read():
        if running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("where", ["import", "fork"])
def test_pool_processes_that_hang_before_they_are_ready_end_the_map_under_a_unit_time_limit(tmp_path, hung, where):
    """The time limit used to start only when a unit was sent: a fork server stuck in its preload (where=import: the
    stage waited in Process.start for a fork that never came) or pool processes stuck before their ready message
    (where=fork) held the stage for ever, its own process running no unit. Now a process not ready within
    max(unit_timeout_s, START_LIMIT_MIN_S) (here 0: 5 s) is stopped and counted like one that died, and nothing that
    hung is left running. (With 2 s, a loaded machine stopped fork servers before they reached the import: no pid
    logged.)"""
    out = run_stage(tmp_path, "hangs", HANGS, 5.0, env={"POOL_HANG": where, "START_LIMIT_MIN_S": "0"})
    assert "error" in out, f"the map ran to its end: {out}"
    assert out["error"].startswith(f"the local pool's processes for units of hangs died before they were ready "
                                   f"{RETRIES + 1} times in a row (executor.retries={RETRIES}; the last: not ready "
                                   "after 5 s: "), out["error"]
    assert "\n" not in out["error"] and "whose import blocks" in out["error"]
    pids = hung()
    # at most one per try (fork: both pool slots try at once); a try stopped before it reached the hang (a fork server
    # still starting Python after 5 s on a loaded machine: 2 of 3 logged) logs none, but some reached it
    assert 1 <= len(pids) <= RETRIES + 3, pids
    assert not [pid for pid in pids if running(pid)], "a hung pool process or fork server was left running"


@pytest.mark.parametrize("where", ["import", "fork"])
def test_without_a_time_limit_the_stages_process_runs_every_unit_when_the_pool_hangs(tmp_path, hung, where):
    """No unit time limit: no start limit either (a cold import may be slow, not broken); the stage's own process runs
    the units, and the map ends once they are done instead of waiting for the pool (where=import: it waited for ever
    for the stuck fork server to fork). The pool processes stuck in their start (where=fork) are terminated after
    CLOSE_LIMIT_S, here 1 s instead of 10 (what is shown is that they are, not how long they are waited for)."""
    out = run_stage(tmp_path, "hangs", HANGS, None, env={"POOL_HANG": where, "CLOSE_LIMIT_S": "1"})
    assert out == {"values": [2 * x for x in range(8)], "errors": [""] * 8}, out
    pids = hung()
    assert pids and not [pid for pid in pids if running(pid)], pids


def test_a_slow_import_is_not_a_hang_under_a_short_unit_time_limit(tmp_path):
    """A fork server whose preload takes 6 s (torch's import takes seconds) under unit_timeout_s=2.5: its pool processes
    are not stopped (the start limit is START_LIMIT_MIN_S, not the unit's) and every unit (0.3 s) runs. (With 1 s, a
    loaded machine stopped a unit of 0.3 s for its time limit.)"""
    text = HANGS.replace("time.sleep(3600)", "time.sleep(6)")
    out = run_stage(tmp_path, "slow", text, 2.5, env={"POOL_HANG": "import"})
    assert out == {"values": [2 * x for x in range(8)], "errors": [""] * 8}, out
    assert len((tmp_path / "hung.log").read_text().split()) == 1  # one fork server, never stopped
