"""`dvc exp` plumbing of the ablation runs (geoface_model/ablations.py): this environment's `dvc`, the experiments'
states in `dvc exp show --json`, waiting for queued experiments."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def _env(base: dict | None = None) -> dict:
    """The environment of the DVC calls: this interpreter's bin folder first on PATH, so `dvc` and the stages'
    `python` (dvc.yaml's cmd lines) are this environment's even when it is not activated
    (`.venv/bin/python -m geoface_model.ablations …`)."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _dvc_cmd(*args: str) -> list[str]:
    """`$DVC` (if set) or this environment's `dvc`; one line naming what is missing when there is none."""
    exe = os.environ.get("DVC") or shutil.which("dvc", path=_env()["PATH"])
    if not exe:
        raise SystemExit(f"ablations: no `dvc` next to {sys.executable} nor on PATH: install the project "
                         "(`make install`) or set DVC=/path/to/dvc")
    return [exe, *args]


def _dvc(*args: str, env: dict | None = None, check: bool = True, quiet: bool = False) -> None:
    cmd = _dvc_cmd(*args)
    if not quiet:
        print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=check, env=_env(env), capture_output=quiet)


def exp_states(show: list, names: list[str]) -> dict[str, str]:
    """{name: executor state} of the experiments `names` in `dvc exp show --json` output (queued, running,
    success, failed; an experiment without an executor record is a finished one)."""
    states = {}
    for rev in show:
        for exp in rev.get("experiments") or []:
            if exp.get("name") in names:
                states[exp["name"]] = (exp.get("executor") or {}).get("state") or "success"
    return states


def wait(commit: str, names: list[str], poll_s: float = 30.0) -> dict[str, str]:
    """Wait until none of the experiments `names` is queued or running; their final states."""
    last = None
    while True:
        try:
            states = exp_states(exp_show_json(commit), names)
        except subprocess.CalledProcessError:  # DVC busy (a task starting or saving): ask again
            states = None
        if states is not None:
            if states != last:
                print(time.strftime("%H:%M:%S"), ", ".join(f"{n}: {states.get(n, '?')}" for n in names),
                      "(follow one with `dvc queue logs -f NAME`)", flush=True)
                last = states
            if not any(states.get(n, "queued") in ("queued", "running") for n in names):
                return states
        time.sleep(poll_s)


def exp_show_json(commit: str) -> list:
    """`dvc exp show --json` of the experiments derived from `commit`."""
    return json.loads(subprocess.run(_dvc_cmd("exp", "show", "--json", "--rev", commit), capture_output=True,
                                     text=True, check=True, env=_env()).stdout)
