"""Several processes writing one output folder at once (two `geoface generate --out X`, a retried work unit whose
first attempt still runs), as real processes through `output_dir` / `replace_dir` and a stage's `UnitWork`. Before,
the slower writer failed with the system's "[Errno 39] Directory not empty" or "[Errno 2] No such file or directory"
(or a false "not written by geoface", "exists and is not a folder") and left the output it had moved aside behind:
about 1 write in 50 of two processes writing one folder in a loop, 1 unit in 40 of two attempts of one unit.
A reader polling a folder while it is replaced never finds it absent (replace_dir swaps the new folder with the old one
in one step where the system can; before, it renamed the old one away and then the new one in)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flame_fitting.core import output_dirs
from flame_fitting.core.fileio import MARKER, TMP_TAG, output_dir, write_text
from flame_fitting.core.unit_keys import Unit
from flame_fitting.core.units import UnitWork

REPO = Path(__file__).resolve().parents[2]
WRITER = """
import json, os, sys
from flame_fitting.core import output_dirs
from flame_fitting.core.fileio import output_dir, write_text
dst, n, overwrite = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
output_dirs.EXCHANGE = sys.argv[4] == "1"  # off: the two renames of a system without exchange
errors = []
for i in range(n):
    try:
        with output_dir(dst, overwrite=overwrite, kind="test") as tmp:
            for k in range(4):
                write_text(tmp / f"f{k}.txt", f"{os.getpid()} {i}")
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
print(json.dumps(errors))
"""
UNIT_WRITER = """
import json, os, sys
from pathlib import Path
from flame_fitting.core.fileio import write_text
from flame_fitting.core.unit_keys import Unit
from flame_fitting.core.units import UnitWork


def fn(unit, tmp, extras):
    for k in range(3):
        write_text(tmp / f"f{k}.txt", str(os.getpid()))
    return {"pid": os.getpid()}, []


work, errors = UnitWork(fn, Path(sys.argv[1])), []
for i in range(int(sys.argv[2])):
    try:
        work(Unit("s01", "seq", "k"))
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
print(json.dumps(errors))
"""


def run_writers(tmp_path: Path, n_proc: int, n: int, overwrite: bool = True, code: str = WRITER,
                exchange: str = "111") -> list[list[str]]:
    script = tmp_path / "writer.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(n), "1" if overwrite else "0",
                               exchange[i]], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(n_proc)]
    outs = [p.communicate(timeout=280) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out) for out, _ in outs]


def assert_one_whole_output(out: Path) -> None:
    names = sorted(os.listdir(out))
    assert names == sorted([MARKER, "f0.txt", "f1.txt", "f2.txt", "f3.txt"])
    assert len({(out / f"f{k}.txt").read_text() for k in range(4)}) == 1  # every file from the same write
    assert not [p.name for p in out.parent.iterdir() if TMP_TAG in p.name]  # nothing moved aside is left behind


@pytest.mark.parametrize("exchange", ["111", "100"])  # "100": two of the writers rename without exchange
def test_writers_replacing_one_folder_at_once_all_succeed_and_leave_one_whole_output(tmp_path, exchange):
    errors = run_writers(tmp_path, n_proc=3, n=150, overwrite=True, exchange=exchange)
    assert errors == [[], [], []]
    assert_one_whole_output(tmp_path / "out")



def test_two_attempts_of_one_unit_at_once_both_succeed_and_leave_one_whole_unit(tmp_path):
    errors = run_writers(tmp_path, n_proc=2, n=200, code=UNIT_WRITER)
    assert errors == [[], []]
    unit = tmp_path / "out" / "s01" / "seq"
    key = json.loads((unit / ".geoface-unit.json").read_text())
    pid = str(key["record"]["pid"])
    assert sorted(key["files"]) == ["f0.txt", "f1.txt", "f2.txt"]
    assert all((unit / f).read_text() == pid for f in key["files"])  # the files of the attempt its key file names
    assert not [p.name for p in unit.parent.iterdir() if TMP_TAG in p.name]


READER = """
import json, os, sys
dst, stop = sys.argv[1], sys.argv[2]
polls, seen, wrong = 0, set(), []
print("ready", flush=True)
while not os.path.exists(stop):
    polls += 1
    try:
        if not os.path.isdir(dst):
            raise FileNotFoundError("not a folder")
        with open(os.path.join(dst, "f1.txt")) as f:
            text = f.read()
        with open(os.path.join(dst, ".geoface-output.json")) as f:
            json.loads(f.read())
        seen.add(text)
    except (OSError, ValueError) as e:
        wrong.append(f"{type(e).__name__}: {e}")
print(json.dumps({"polls": polls, "seen": sorted(seen), "wrong": wrong}))
"""


def write_version(dst: Path, i: int) -> None:
    with output_dir(dst, kind="test") as tmp:
        for k in range(3):
            write_text(tmp / f"f{k}.txt", f"version {i}")


def poll_while(tmp_path: Path, dst: Path, replace) -> dict:
    """What a second process polling `dst` in a loop (a folder, a file in it, its marker) saw while `replace` ran."""
    script, stop = tmp_path / "reader.py", tmp_path / "stop"
    script.write_text(READER)
    reader = subprocess.Popen([sys.executable, str(script), str(dst), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == "ready\n"
        replace()
    finally:
        stop.touch()
        out = reader.communicate(timeout=60)[0]
    return json.loads(out)


def write_unit_files(unit: Unit, tmp: Path, extras) -> tuple[dict, list]:
    for k in range(3):
        write_text(tmp / f"f{k}.txt", f"version {unit.key}")
    return {}, []


def can_exchange(folder: Path) -> bool:
    """Whether this system swaps two folders in `folder` in one step (Linux with renameat2, a filesystem with it)."""
    a, b = folder / "probe-a", folder / "probe-b"
    a.mkdir(), b.mkdir()
    try:
        return output_dirs.exchange_dirs(a, b)
    finally:
        a.rmdir(), b.rmdir()


@pytest.mark.parametrize("writer", ["output_dir", "unit"])
def test_a_folder_being_replaced_is_never_absent_to_a_reader(tmp_path, writer):
    """A second process polling the folder (is it there, read a file in it, read its marker) while it is replaced
    300 times finds it there every time, each file whole. Before (rename away, rename in): 15 of 16 runs of 300 or
    500 output_dir replacements failed, 1 to 1,513 failed polls of about 20,000 (when the writer was preempted
    between its two renames: the next test shows the gap deterministically); a unit (UnitWork moved the earlier unit
    aside and removed it first) was missing for most polls of every run."""
    if not can_exchange(tmp_path):
        pytest.skip("this system cannot swap two folders in one step: replace_dir renames twice, as before")
    n = 300
    if writer == "unit":
        work, dst = UnitWork(write_unit_files, tmp_path / "units"), tmp_path / "units" / "s01" / "seq"

        def write(i):
            return work(Unit("s01", "seq", str(i)))
    else:
        dst = tmp_path / "out"

        def write(i):
            return write_version(dst, i)
    write(-1)
    seen = poll_while(tmp_path, dst, lambda: [write(i) for i in range(n)])
    assert seen["wrong"] == []
    assert set(seen["seen"]) <= {f"version {i}" for i in range(-1, n)}  # each file read whole, from one write
    assert seen["polls"] > 0
    assert (dst / "f1.txt").read_text() == f"version {n - 1}"
    assert not [p.name for p in dst.parent.iterdir() if TMP_TAG in p.name]  # the earlier folders removed


STEPS = """
import json, sys
from pathlib import Path
from flame_fitting.core import output_dirs
from flame_fitting.core.fileio import TMP_TAG, output_dir, write_text
from flame_fitting.core.unit_keys import Unit
from flame_fitting.core.units import UnitWork


def fn(unit, tmp, extras):
    for k in range(3):
        write_text(tmp / f"f{k}.txt", f"version {unit.key}")
    return {}, []


def write(i):
    if writer == "unit":
        return work(Unit("s01", "seq", str(i)))
    with output_dir(dst, kind="test") as tmp:
        fn(Unit("s01", "seq", str(i)), tmp, None)


writer, root, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
output_dirs.EXCHANGE = sys.argv[4] == "1"
work = UnitWork(fn, root / "units")
dst = root / "units" / "s01" / "seq" if writer == "unit" else root / "out"
write(-1)
state = {"on": True, "busy": False, "steps": 0, "wrong": []}


def look(event, args):  # before each step of the writer (its renames, its ctypes call, rmtree, open, ...)
    if not state["on"] or state["busy"]:
        return
    state["busy"] = True
    try:
        state["steps"] += 1
        if not (dst / "f1.txt").read_text().startswith("version "):
            state["wrong"].append(f"{event}: f1.txt not whole")
    except OSError as e:
        state["wrong"].append(f"{event}: {type(e).__name__}: {e}")
    finally:
        state["busy"] = False


sys.addaudithook(look)
for i in range(n):
    write(i)
state["on"] = False
print(json.dumps({"steps": state["steps"], "wrong": state["wrong"], "last": (dst / "f1.txt").read_text(),
                  "left": [p.name for p in dst.parent.iterdir() if TMP_TAG in p.name]}))
"""


@pytest.mark.parametrize("writer, exchange", [("output_dir", True), ("unit", True), ("output_dir", False)])
def test_a_folder_being_replaced_is_there_and_whole_between_any_two_steps_of_the_writer(tmp_path, writer, exchange):
    """The same, deterministic: the writer's process itself reads the folder before each of its steps (Python's
    audit events: every rename, open, rmtree, the ctypes call, ...). Before: it was absent before the second rename
    of each of the 20 replacements, and before 360 of the 1,060 steps of the units' (UnitWork moved the earlier unit
    aside and removed it before replace_dir). Without exchange (`EXCHANGE` off: the fallback of a system without
    renameat2 or a filesystem without exchange) it is still replaced, and absent just before the second rename."""
    script = tmp_path / "steps.py"
    script.write_text(STEPS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script), writer, str(tmp_path), "20", "1" if exchange else "0"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout)
    if exchange and can_exchange(tmp_path):
        assert seen["wrong"] == []
    elif not exchange:  # the two renames: the folder is missing only between them, once per replacement
        assert len(seen["wrong"]) == 20 and all(w.startswith("os.rename: FileNotFoundError") for w in seen["wrong"])
    assert seen["steps"] > 20 * 10 and seen["last"] == "version 19" and seen["left"] == []


def test_exchange_swaps_two_folders_in_one_step_or_reports_that_it_cannot(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for p in (a, b):
        p.mkdir()
        (p / "name").write_text(p.name)
    if can_exchange(tmp_path):
        assert output_dirs.exchange_dirs(a, b) is True
        assert (a / "name").read_text() == "b" and (b / "name").read_text() == "a"
        with pytest.raises(FileNotFoundError):
            output_dirs.exchange_dirs(a, tmp_path / "missing")
    monkeypatch.setattr(output_dirs, "EXCHANGE", False)  # as on a system without exchange
    before = {p.name: (p / "name").read_text() for p in (a, b)}
    assert output_dirs.exchange_dirs(a, b) is False
    assert {p.name: (p / "name").read_text() for p in (a, b)} == before  # nothing changed
