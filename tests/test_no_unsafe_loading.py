"""Repository-wide: no module but the allow-list unpickler (flame_fitting/head/flame_pickle.py) deserialises pickles.

Checked on the syntax tree of every tracked .py file (code, stages, pipelines, benchmarks, tests):
`pickle.load/loads/Unpickler` (and `cPickle`, `_pickle`, `dill`, `joblib`), `from pickle import load...`,
`numpy.load` / `read_array` with `allow_pickle` other than a literal False, `torch.load` without a literal
`weights_only=True`, `pandas.read_pickle`, and accelerate's `register_for_checkpointing` (whose objects accelerate
reloads with `weights_only=False`). Writing pickles (`pickle.dump`, `np.save(..., allow_pickle=True)`) is fine.
"""
import ast
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {"flame_fitting/head/flame_pickle.py"}
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle"}


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def problems(source: str) -> list[str]:
    """(line: what) for each unsafe deserialisation call in `source`."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in PICKLE_MODULES:
            bad = [a.name for a in node.names if a.name in ("load", "loads", "Unpickler", "*")]
            if bad:
                out.append(f"{node.lineno}: from {node.module} import {', '.join(bad)}")
        if not isinstance(node, (ast.Call, ast.Attribute)):
            continue
        func = node.func if isinstance(node, ast.Call) else node
        if not isinstance(func, ast.Attribute):
            continue
        owner = func.value.id if isinstance(func.value, ast.Name) else (func.value.attr if isinstance(func.value, ast.Attribute) else "")
        if owner in PICKLE_MODULES and func.attr in ("load", "loads", "Unpickler"):
            out.append(f"{node.lineno}: {owner}.{func.attr}")
        if isinstance(node, ast.Call):
            if func.attr in ("load", "read_array") and owner in ("np", "numpy", "format"):
                ap = _kw(node, "allow_pickle")
                if ap is not None and not _is_const(ap, False):
                    out.append(f"{node.lineno}: {owner}.{func.attr}(allow_pickle={ast.unparse(ap)})")
            if func.attr == "load" and owner == "torch" and not _is_const(_kw(node, "weights_only"), True):
                out.append(f"{node.lineno}: torch.load without weights_only=True")
            if func.attr == "read_pickle" or func.attr == "register_for_checkpointing":
                out.append(f"{node.lineno}: {func.attr}")
    return sorted(set(out))


def test_the_checker_catches_each_form():
    src = ("import pickle, numpy as np, torch\nfrom pickle import loads\npickle.load(f)\npickle.Unpickler(f)\n"
           "np.load(p, allow_pickle=True)\nnp.load(p, allow_pickle=flag)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
           "acc.register_for_checkpointing(x)\npd.read_pickle(p)\n"
           "np.load(p)\nnp.load(p, allow_pickle=False)\ntorch.load(p, weights_only=True)\npickle.dump(x, f)\n"
           "np.save(p, x, allow_pickle=True)\n")
    assert [p.split(":")[0] for p in problems(src)] == ["10", "2", "3", "4", "5", "6", "7", "8", "9"]


def test_no_unsafe_deserialisation_outside_the_allow_list():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    files += subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "*.py"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    assert "flame_fitting/head/flame_pickle.py" in files
    found = {f: p for f in sorted(set(files)) if f not in ALLOWED and (REPO / f).is_file()
             and (p := problems((REPO / f).read_text()))}
    assert not found, f"unsafe deserialisation (use flame_fitting.head.flame_pickle / safetensors / weights_only=True): {found}"
