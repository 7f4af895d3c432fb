"""Every library module a stage script imports is a dependency of its DVC stage (listed itself, or its folder),
so that `dvc repro` re-runs a stage whenever code it runs changes. Empty package `__init__.py` files are exempt.

One interpreter imports the third-party modules the packages name (torch, diffusers, MediaPipe …: ~6 s, once), then
forks one child per stage script: each child starts with none of the project's modules loaded and imports the script
as the stage's own interpreter would, so the modules it ends with are the script's (one interpreter per stage spent
those 6 s ten times)."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PACKAGES = ("flame_fitting", "geoface_model", "pipelines", "geoface")
PROBE = """
import importlib, json, os, runpy, sys, traceback
repo, scripts, packages, warm = json.loads(sys.stdin.read())
sys.path[:0] = [repo, repo + '/stages']
def ours():
    return sorted(k for k, v in sys.modules.items() if k.startswith(tuple(packages)) and getattr(v, '__file__', None))
for name in warm:  # third-party modules only: shared by the children, not counted (filtered by `ours`)
    try:
        importlib.import_module(name)
    except BaseException:
        pass
if ours():
    raise SystemExit(f"warming up loaded project modules {ours()}: a child would not import them itself")
out = {}
for stage, script in scripts.items():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child: the script imported as its stage's interpreter would, then its modules reported
        os.close(r)
        try:
            runpy.run_path(script, run_name='stage_under_test')
            res = {'modules': ours()}
        except BaseException:
            res = {'error': traceback.format_exc()[-2000:]}
        with os.fdopen(w, 'w') as f:
            f.write(json.dumps(res))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    out[stage] = json.loads(text) if text else {'error': f'the child exited with wait status {status}'}
print(json.dumps(out))
"""


def third_party_imports() -> list[str]:
    """The modules outside this repository that the packages and stage scripts import by name (absolute imports)."""
    local = set(PACKAGES) | {p.stem for p in (REPO / "stages").glob("*.py")}
    names = set()
    for f in [f for p in (*PACKAGES, "stages") for f in sorted((REPO / p).rglob("*.py"))]:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return sorted(n for n in names if n.split(".")[0] not in local)


@pytest.fixture(scope="module")
def imported() -> dict:
    """{stage: {"modules": [the project's modules its script imports]} or {"error": traceback}}."""
    scripts = {name: str(REPO / next(w for w in st["cmd"].split() if w.startswith("stages/")))
               for name, st in sorted(STAGES.items())}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=600,
                         input=json.dumps([str(REPO), scripts, PACKAGES, third_party_imports()]))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_lists_every_module_it_imports(name, imported):
    stage = STAGES[name]
    assert "error" not in imported[name], imported[name]["error"]
    modules = imported[name]["modules"]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]
    missing = []
    for m in modules:
        rel = m.replace(".", "/")
        file = rel + ".py" if (REPO / (rel + ".py")).is_file() else rel + "/__init__.py"
        if file.endswith("__init__.py") and not (REPO / file).read_text().strip():
            continue
        if not any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps):
            missing.append(file)
    assert not missing, f"stage {name} imports {missing} but dvc.yaml does not list them"
