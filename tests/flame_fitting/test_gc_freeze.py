"""The fast exit (flame_fitting/core/gc_freeze.py): `freeze()` moves the objects alive into the collector's permanent
generation, so the collections of the interpreter's shutdown skip them (benchmarks/process_exit.py measures the
time saved), and objects are still freed by reference counting. A stage's process (stages/common.py `run`) and the
`geoface` command call it at their end, also after an error; a call of `geoface.cli.main(argv)` from Python (these
tests, a notebook) freezes nothing. The local pool's fork server, which imports it as its last preload, exits
without the interpreter's teardown."""
import atexit
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

from geoface.cli import main

REPO = Path(__file__).resolve().parents[2]
AT_EXIT = "import atexit, gc; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
EXIT_LOG = "GEOFACE_TEST_EXIT_LOG"  # set: a process that imports this module logs its pid there, and again at its exit


def _log(path: str, what: str) -> None:
    with open(path, "a") as f:
        f.write(f"{what} {os.getpid()}\n")


if os.environ.get(EXIT_LOG):
    _log(os.environ[EXIT_LOG], "import")
    atexit.register(_log, os.environ[EXIT_LOG], "exit")


def own_pid(item: tuple[int, str]) -> int:
    """A unit for the pool below: 0.2 s, logged to `log` in a pool process; in the stage's own process (`parent`) it
    first waits until a pool process ran one (at most 60 s: a deadline, not a timing under test), so both processes
    get some however slowly the pool starts (under load the stage's process ran all six first). Returns the pid of
    the process that ran it."""
    parent, log = item
    deadline = time.monotonic() + 60
    while os.getpid() == parent and not os.path.exists(log) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    if os.getpid() != parent:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
    return os.getpid()


def child(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh Python process, this checkout first on its path, run from the checkout's root."""
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{str(REPO)!r}]\n" + code],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_freeze_keeps_reference_counting():
    out = child("import gc, weakref\n"
                "class Box: pass\n"
                "box = Box(); ref = weakref.ref(box)\n"
                "from flame_fitting.core.gc_freeze import freeze\n"
                "freeze(); print(gc.get_freeze_count() > 0)\n"
                "del box; print(ref() is None)\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]  # frozen, and a frozen object still goes with its last reference


def test_the_geoface_command_freezes_at_its_end_and_a_call_from_python_does_not(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    before = gc.get_freeze_count()
    assert main(["diff-captures", a, b]) == 2  # neither is a capture
    assert gc.get_freeze_count() == before  # in-process: this test process's objects stay collectable
    out = child(AT_EXIT + f"sys.argv = ['geoface', 'diff-captures', {a!r}, {b!r}]\n"
                "from geoface.cli import main\nsys.exit(main())\n")
    assert out.returncode == 2 and "neither a capture folder" in out.stderr, out.stderr
    assert out.stdout.split() == ["frozen", "True"]


def test_a_stage_freezes_at_its_end_also_after_an_error():
    for body, rc in [("pass", 0), ("raise GeofaceError('bad.json: not JSON')", 1)]:
        out = child(AT_EXIT + "sys.path.insert(0, 'stages'); sys.argv = ['stages/x.py']\n"
                    "from common import run\nfrom flame_fitting.core.errors import GeofaceError\n"
                    f"def main():\n    {body}\n"
                    "run(main)\n")
        assert out.returncode == rc, out.stderr
        assert out.stdout.split() == ["frozen", "True"]
        assert (out.stderr.strip() == "x: error: bad.json: not JSON") == (rc == 1), out.stderr


def test_the_pool_fork_server_exits_without_the_interpreter_teardown(tmp_path):
    """The fork server imports the unit's module (this one: its import logs the pid and registers an exit handler
    that logs it again), then gc_freeze, which makes the server's exit skip the interpreter's teardown, exit
    handlers included: that teardown ran after the stage's process had ended (~0.2 s in a server that imported
    torch) with the stage's output still held open. A fresh process runs units on a pool of 2 and exits;
    `subprocess.run` returns once every holder of its output, the server too, is gone: only the stage's own
    process ran its exit handlers (fails before: the server's ran too)."""
    log = tmp_path / "exits.log"
    code = ("import os, sys; sys.path[:0] = {path!r}\n"
            "from {module} import own_pid\n"
            "from flame_fitting.core.executor import ExecutorConfig, open_executor\n"
            "if __name__ == '__main__':\n"
            "    with open_executor(ExecutorConfig(kind='local', workers=2)) as ex:\n"
            "        res = ex.map(own_pid, [(os.getpid(), {pool_log!r})] * 6, progress=False)\n"
            "    print(os.getpid(), len({{r.value for r in res}}))\n").format(path=sys.path, module=__name__,
                                                                         pool_log=str(tmp_path / "pool.log"))
    path = os.pathsep.join([str(Path(__file__).parent), str(REPO)])  # the server imports this module from there
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, EXIT_LOG: str(log), "PYTHONPATH": path})
    assert out.returncode == 0, out.stderr
    pid, n_processes = out.stdout.split()
    assert n_processes == "2"  # the units ran in the stage's process and in a pool process
    lines = log.read_text().splitlines()
    imported = [line.split()[1] for line in lines if line.startswith("import ")]
    assert len(imported) == 2 and imported[0] == pid  # the stage's process, then the fork server (its preload)
    assert [line for line in lines if line.startswith("exit ")] == [f"exit {pid}"]  # not the server's: no teardown
    assert "leaked" not in out.stderr, out.stderr
