"""Every library module a stage script imports is a dependency of its DVC stage (listed itself, or its folder),
so that `dvc repro` re-runs a stage whenever code it runs changes. Empty package `__init__.py` files are exempt."""
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
import json, runpy, sys
sys.path[:0] = [{repo!r}, {repo!r} + '/stages']
runpy.run_path({script!r}, run_name='stage_under_test')
print(json.dumps(sorted(k for k, v in sys.modules.items() if k.startswith({packages!r})
                        and getattr(v, '__file__', None))))
"""


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_lists_every_module_it_imports(name):
    stage = STAGES[name]
    script = next(w for w in stage["cmd"].split() if w.startswith("stages/"))
    out = subprocess.run([sys.executable, "-c", PROBE.format(repo=str(REPO), script=str(REPO / script),
                                                           packages=PACKAGES)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    modules = json.loads(out.stdout.strip().splitlines()[-1])
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
