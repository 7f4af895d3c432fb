"""The fast exit (flame_fitting/core/gc_freeze.py): `freeze()` moves the objects alive into the collector's permanent
generation, so the collections of the interpreter's shutdown skip them (benchmarks/process_exit.py measures the
time saved), and objects are still freed by reference counting. A stage's process (stages/common.py `run`) and the
`geoface` command call it at their end, also after an error; a call of `geoface.cli.main(argv)` from Python (these
tests, a notebook) freezes nothing."""
import gc
import subprocess
import sys
from pathlib import Path

from geoface.cli import main

REPO = Path(__file__).resolve().parents[2]
AT_EXIT = "import atexit, gc; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"


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
