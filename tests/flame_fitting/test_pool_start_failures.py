"""A local pool whose processes die before they are ready (flame_fitting/core/pool.py): the unit function's module
fails to import in a fresh process, or every process is killed as it starts (as the OOM killer would). Each used to
be replaced for as long as units were pending: with a unit time limit the stage never ended (hundreds of processes
started and died a second), without one it started processes until its own had run every unit. Now `retries + 1`
such processes in a row end the map with one ExecutorError line naming the module and how the last one ended.

Each run is a fresh Python process (its own fork server, preloading the broken module) under a generous timeout, so
that a regression fails the test instead of hanging it."""
import json
import os
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
    import time
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
        os.kill(os.getpid(), signal.SIGKILL)


os.register_at_fork(after_in_child=_kill)


def unit(x):
    import time
    time.sleep(0.3)
    return 2 * x
'''
DRIVER = '''import json, os, sys
sys.path.insert(0, sys.argv[1])
from flame_fitting.core.executor import ExecutorConfig, ExecutorError, open_executor
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
    (tmp_path / f"{name}.py").write_text(text)
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
