"""Several processes writing one output folder at once (two `geoface generate --out X`, a retried work unit whose
first attempt still runs), as real processes through `output_dir` / `replace_dir` and a stage's `UnitWork`. Before,
the slower writer failed with the system's "[Errno 39] Directory not empty" or "[Errno 2] No such file or directory"
(or a false "not written by geoface", "exists and is not a folder") and left the output it had moved aside behind:
about 1 write in 50 of two processes writing one folder in a loop, 1 unit in 40 of two attempts of one unit."""
import json
import os
import subprocess
import sys
from pathlib import Path

from flame_fitting.core.fileio import MARKER, TMP_TAG

REPO = Path(__file__).resolve().parents[2]
WRITER = """
import json, os, sys
from flame_fitting.core.fileio import output_dir, write_text
dst, n, overwrite = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
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


def run_writers(tmp_path: Path, n_proc: int, n: int, overwrite: bool = True, code: str = WRITER) -> list[list[str]]:
    script = tmp_path / "writer.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(n), "1" if overwrite else "0"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n_proc)]
    outs = [p.communicate(timeout=280) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out) for out, _ in outs]


def assert_one_whole_output(out: Path) -> None:
    names = sorted(os.listdir(out))
    assert names == sorted([MARKER, "f0.txt", "f1.txt", "f2.txt", "f3.txt"])
    assert len({(out / f"f{k}.txt").read_text() for k in range(4)}) == 1  # every file from the same write
    assert not [p.name for p in out.parent.iterdir() if TMP_TAG in p.name]  # nothing moved aside is left behind


def test_writers_replacing_one_folder_at_once_all_succeed_and_leave_one_whole_output(tmp_path):
    errors = run_writers(tmp_path, n_proc=3, n=150, overwrite=True)
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
