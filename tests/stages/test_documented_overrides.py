"""Every `dvc exp run -S key=value` that README.md and docs/ give a user names a key params.yaml has (DVC refuses
to set a missing key unless it is written `+key`; the learn preset's line once failed that way on a fresh clone), and
with the values of one command applied, params.yaml still passes the `check_params` stage (a placeholder folder such
as /abs/path/FLAME_DIR stands for one that exists)."""
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "stages"))


def documented_runs() -> list[tuple[str, list[str]]]:
    """(where, ['key=value', ...]) for every `dvc exp run` command line with -S in README.md and docs/*.md."""
    runs = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text().replace("\\\n", " ")
        for n, line in enumerate(text.splitlines(), 1):
            for cmd in re.findall(r"dvc exp run[^`\n#]*", line):
                words = shlex.split(cmd)
                sets = [v for w, v in zip(words, words[1:]) if w in ("-S", "--set-param") and "=" in v]
                if sets:
                    runs.append((f"{path.name}:{n}", sets))
    return runs


RUNS = documented_runs()


def test_the_documents_have_overrides_to_check():
    assert any("captures.synthetic.subjects=40" in s for _, sets in RUNS for s in sets), RUNS


@pytest.mark.parametrize("where,sets", RUNS, ids=[w for w, _ in RUNS])
def test_documented_overrides_name_existing_keys_and_valid_values(tmp_path, where, sets):
    from check_params import check_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for s in sets:
        key, value = s.split("=", 1)
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            assert isinstance(node, dict) and part in node, f"{where}: -S {s}: params.yaml has no '{part}' in {key}"
            node = node[part]
        assert leaf in node, f"{where}: -S {s}: params.yaml has no key {key} (dvc exp run refuses it)"
        value = yaml.safe_load(value)
        if isinstance(value, str) and value.startswith("/") and not Path(value).exists():
            value = str(tmp_path)  # a placeholder for the user's own folder (/abs/path/FLAME_DIR, /data/...)
        node[leaf] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    check_params(tmp_path / "params.yaml")
