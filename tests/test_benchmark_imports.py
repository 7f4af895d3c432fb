"""Benchmarks that reuse the tests' helpers (a capture builder, a reference loop) reach them through the paths they
put on `sys.path` themselves: a helper that starts importing another helper from elsewhere in tests/ broke
`benchmarks/incremental.py` (`ModuleNotFoundError: standin_cache`, found only by running it). Each such benchmark's
top level is run (not its `main`), then every tests/ module it imports anywhere — function-local imports included —
is imported in that process, with the helper's own folder on the path as the benchmark puts it there."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"


def helper_modules(path: Path) -> dict[str, str]:
    """Module name -> its folder, for every module `path` imports that is a file under tests/."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    found = {}
    for name in sorted(names):
        files = [p for p in TESTS.rglob(f"{name}.py") if "__pycache__" not in p.parts]
        if files:
            found[name] = str(files[0].parent)
    return found


BENCHMARKS = [p for p in sorted((REPO / "benchmarks").glob("*.py")) if helper_modules(p)]

CHILD = """
import importlib, json, os, runpy, sys
path, helpers = sys.argv[1], json.loads(sys.argv[2])
sys.path[0] = os.path.dirname(path)  # as `python benchmarks/X.py` starts
runpy.run_path(path, run_name="benchmark_imports")  # its top level: the sys.path it sets up
for name, folder in helpers.items():
    if folder not in sys.path:
        sys.path.insert(0, folder)  # a benchmark may add a helper's folder in the function that imports it
    importlib.import_module(name)
print("ok")
"""


def test_some_benchmarks_use_test_helpers():
    assert {p.name for p in BENCHMARKS} >= {"incremental.py", "landmark_metrics.py"}


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_a_benchmark_reaches_the_test_helpers_it_imports(path):
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(helper_modules(path))], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
