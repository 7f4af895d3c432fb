"""The trained model's card: where its data came from (docs/lineage.md). The train stage writes, beside the weights,

    MODEL/model_card.json   captures version, shards hash, head model hash, params used, run id, git commit, date
    MODEL/MODEL_CARD.md     the same for people

`geoface audit MODEL` prints it and asks DVC whether the workspace still holds those data.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from pathlib import Path

from flame_fitting.core.fileio import write_json, write_text
from flame_fitting.core.names import terminal_safe
from flame_fitting.core.json_files import read_json
from flame_fitting.core.unit_keys import digest, tree_hashes
from flame_fitting.formats.lineage import LineageError, read_lineage

CARD_JSON, CARD_MD = "model_card.json", "MODEL_CARD.md"
MAX_CARD_BYTES = 1 << 24  # 16 MiB: a card (hashes, params, scalar metrics) is a few KiB
_TEXT_KEYS = ("captures_version", "shards_sha256", "head_model_sha256", "run_id", "date")  # what `audit` prints


def git_state(cwd: Path | str = ".") -> dict:
    """{"commit": HEAD's sha or None (not a git checkout), "dirty": tracked files other than dvc.lock (which `dvc repro`
    itself rewrites) differ from HEAD, "changed_files": the first 50 of them}."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=30)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None, "changed_files": None}
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock"], cwd=cwd,
                            capture_output=True, text=True, timeout=60)
        files = [line[3:] for line in st.stdout.splitlines()] if st.returncode == 0 else None
        return {"commit": sha.stdout.strip(), "dirty": None if files is None else bool(files),
                "changed_files": None if files is None else files[:50]}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None, "changed_files": None}


def scalar_entries(metrics: dict | None) -> dict:
    """The entries of a training run's metrics that metrics/train.json and the model card hold: numbers, strings,
    booleans, and None for what was not measured (docs/model.md: null, never 0)."""
    return {k: v for k, v in (metrics or {}).items() if v is None or isinstance(v, (int, float, str, bool))}


def model_card(data: Path | str, params: dict, run_id: str, metrics: dict | None = None) -> dict:
    """The card of a model trained on the shards under `data` with `params` (the config's sections)."""
    data = Path(data)
    up = read_lineage(data)
    return {"captures_version": up.get("captures_version"),
            "shards_sha256": digest({k: h for k, h in tree_hashes(data).items() if k.endswith(".safetensors")}),
            "head_model_sha256": up.get("head_model_sha256"),
            "dataset": str(data), "dataset_params": up.get("params"), "params": params, "run_id": run_id,
            "git": git_state(), "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "metrics": scalar_entries(metrics)}


def code_cell(value) -> str:
    """`value` as a Markdown table cell holding one code span that reads back as `str(value)`: control characters
    (a newline would end the row) written as escapes (core/names.py `terminal_safe`), a fence of one backtick more
    than the longest run in the text (padded with a space when the text starts or ends with a backtick or space),
    and every '|' escaped (GitHub's tables split cells at '|' even inside a code span); empty text, an empty cell."""
    text = terminal_safe(value)
    if not text:
        return ""
    fence = "`" * (max((len(r) for r in re.findall("`+", text)), default=0) + 1)
    pad = " " if (text[0] in "` " or text[-1] in "` ") and text.strip(" ") else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def card_markdown(card: dict) -> str:
    git = card.get("git") or {}
    commit = (git.get("commit") or "unknown") + (" (with uncommitted changes)" if git.get("dirty") else "")
    rows = [("captures version", card.get("captures_version")), ("shards sha256", card.get("shards_sha256")),
            ("head model sha256", card.get("head_model_sha256")), ("dataset", card.get("dataset")),
            ("training run id", card.get("run_id")), ("git commit", commit), ("date (UTC)", card.get("date"))]
    lines = ["# Model card", "", "| | |", "|---|---|"] + [f"| {k} | {code_cell(v)} |" for k, v in rows]
    lines += ["", "## Parameters used", "", "```json", json.dumps(card.get("params"), indent=2, sort_keys=True), "```"]
    if card.get("dataset_params"):
        lines += ["", "## Dataset parameters", "", "```json",
                  json.dumps(card["dataset_params"], indent=2, sort_keys=True), "```"]
    lines += ["", "Check that the workspace still holds these data: `geoface audit` (docs/lineage.md).", ""]
    return "\n".join(lines)


def write_model_card(model_dir: Path | str, data: Path | str, params: dict, run_id: str,
                     metrics: dict | None = None) -> dict:
    """Write MODEL_DIR/model_card.json and MODEL_CARD.md; returns the card."""
    card = model_card(data, params, run_id, metrics)
    write_json(Path(model_dir) / CARD_JSON, card)
    write_text(Path(model_dir) / CARD_MD, card_markdown(card))
    return card


def read_model_card(model_dir: Path | str) -> dict:
    """MODEL_DIR/model_card.json; LineageError naming the file when it is missing, not a regular file, larger than
    MAX_CARD_BYTES, not valid JSON (nested too deeply included), not an object, or holds an entry `audit` reads of
    another type than the train stage writes (text or null; `git` an object of a text commit and a boolean dirty)."""
    path = Path(model_dir) / CARD_JSON
    if not path.exists():
        raise LineageError(f"{path}: missing (a model trained before geoface wrote model cards? re-run the train "
                           "stage)")
    card = read_json(path, LineageError, MAX_CARD_BYTES, "model card")
    if not isinstance(card, dict):
        raise LineageError(f"{path}: expected a JSON object")
    for key in _TEXT_KEYS:
        if not isinstance(card.get(key), (str, type(None))):
            raise LineageError(f"{path}: {key} must be text or null, got {type(card[key]).__name__}")
    git = card.get("git")
    if not (git is None or (isinstance(git, dict) and isinstance(git.get("commit"), (str, type(None)))
                            and isinstance(git.get("dirty"), (bool, type(None))))):
        raise LineageError(f"{path}: git must be an object with a text commit and a boolean dirty, got {git!r:.80}")
    return card
