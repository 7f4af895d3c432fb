"""Thin stages, one hop (issue 13 item 4): every stage script is at most 40 lines, names no data path of its own
(inputs and outputs are on its `cmd` line in dvc.yaml, not constants in two places), and every output and data
input of its stage appears on that line (itself, its folder or a file in it)."""
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
DATA_ROOTS = ("data/", "models/", "metrics/", "plots/")


def script(stage: dict) -> Path:
    return REPO / next(w for w in stage["cmd"].split() if w.startswith("stages/"))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_script_is_thin(name):
    text = script(STAGES[name]).read_text()
    assert len(text.splitlines()) <= 40, f"{script(STAGES[name]).name}: {len(text.splitlines())} lines"
    code = re.sub(r'^""".*?"""', "", text, flags=re.S)  # the module docstring may name the paths
    assert not re.search(r"""["'](data|models|metrics|plots)/""", code), f"{name}: a data path in the script"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_paths_are_on_the_cmd_line(name):
    stage = STAGES[name]
    words = stage["cmd"].split()
    outs = [o if isinstance(o, str) else next(iter(o)) for o in stage["outs"]]
    data_deps = [d for d in stage["deps"] if d.startswith(DATA_ROOTS) and d != "data/params_check.json"]
    def on_line(p):  # the path itself, a folder holding it (--plots plots/eval) or a file in it (--preview)
        return any(w == p or p.startswith(w.rstrip("/") + "/") or w.startswith(p.rstrip("/") + "/") for w in words)

    missing = [p for p in outs + data_deps if not on_line(p)]
    assert not missing, f"stage {name}: {missing} not on its cmd line"


def test_every_stage_script_is_a_stage():
    scripts = {script(s).name for s in STAGES.values()}
    assert scripts == {p.name for p in (REPO / "stages").glob("*.py")} - {"__init__.py", "common.py"}
