"""The text `geoface audit` prints of an audit (audit.py's AuditReport): the model card's lineage, the workspace's
captures, DVC's status sorted into data / code / params, and the verdict; only the card's lineage when the model folder
is outside a DVC repository (the command then says, on stderr, that the workspace check needs one)."""
from __future__ import annotations

import json
from pathlib import Path

from flame_fitting.core.names import terminal_safe
from geoface.steps.audit import CAPTURE_SEARCH_DEPTH, CAPTURE_SEARCH_FOLDERS, AuditReport
from geoface_model.lineage import CARD_JSON


def format_report(r: AuditReport) -> str:
    c = r.card or {}
    git = c.get("git") or {}
    lines = [f"model:              {r.model}" + (f" (written by stage {r.stage!r})" if r.stage else "")]
    if r.card is None:
        lines.append(f"model card:         unavailable: {r.card_error}")
    else:
        commit = (git.get("commit") or "unknown") + (" (with uncommitted changes)" if git.get("dirty") else "")
        lines += [f"captures version:   {c.get('captures_version')}" if not r.version_unknown else
                  "captures version:   unknown (the model card records none), so the workspace capture cannot be "
                  "checked against it",
                  f"shards sha256:      {c.get('shards_sha256')}",
                  f"head model sha256:  {c.get('head_model_sha256')}",
                  f"params:             {json.dumps(c.get('params'), sort_keys=True)}",
                  f"training run:       {c.get('run_id')}",
                  f"git commit:         {commit}",
                  f"trained (UTC):      {c.get('date')}"]
    if r.workspace_error:  # no DVC repository: nothing to compare the card with (the command says so)
        if r.card is None:
            lines.append(f"note: no lineage without {Path(r.model) / CARD_JSON}")
        return "\n".join(map(terminal_safe, lines))
    version = c.get("captures_version")
    found = r.card is not None and not r.version_unknown and any(v == version for _, v in r.captures)
    for path, v in r.captures:
        same = "" if r.card is None else " (not compared: the model's is unknown)" if r.version_unknown else (
            " (same as the model's)" if v == version else
            f" (differs from the model's {version}: another capture upstream of the model, which the card does not "
            "record; DVC's status below covers it)" if found else f" (DIFFERS from the model's {version})")
        lines.append(f"workspace captures: {path} version {v}{same}")
    lines += [f"workspace captures: the search below {path} stopped after {CAPTURE_SEARCH_FOLDERS} folders (at most "
              f"{CAPTURE_SEARCH_DEPTH} levels deep are searched); a capture further down is not listed"
              for path in r.search_cut]
    if r.capture_unfound:
        lines.append("workspace captures: none found (no output or dependency of the stages up to the model holds a "
                     "capture.json), so the model's captures version cannot be compared with the workspace's")
    if r.entries:
        lines.append(f"DVC status of the stages up to the model (`dvc status {r.stage} --with-deps`):")
        grouped: dict[tuple[str, str], list[str]] = {}
        for kind, stage, what in r.entries:
            grouped.setdefault((kind, stage), []).append(what)
        lines += [f"  {kind:6s} {stage}: {', '.join(whats)}" for (kind, stage), whats in grouped.items()]
    else:
        lines.append("DVC status of the stages up to the model: up to date")
    if r.card is None:
        lines.append("verdict: no model card, so nothing says what the model was trained on")
    elif r.matches:
        others = sum(v != version for _, v in r.captures)
        lines.append("verdict: the workspace data match what the model was trained on" + (
            f" ({others} other capture{'s' if others > 1 else ''} upstream of the model, of another version, unchanged "
            "since dvc.lock)" if others else ""))
    elif (r.version_unknown or r.capture_unfound) and not any(kind == "data" for kind, _, _ in r.entries):
        why = ("the model card records no captures version" if r.version_unknown else
               "no capture folder is among the outputs or dependencies of the stages up to the model")
        lines.append(f"verdict: UNCONFIRMED: {why}, so the workspace capture cannot be checked against the one the "
                     "model was trained on (DVC's status alone is clean)")
    else:
        hint = " (a fresh clone: `dvc pull`)" if any("deleted" in w or "not in cache" in w for _, _, w in r.entries) \
            else ""
        lines.append(f"verdict: the workspace data DO NOT match what the model was trained on{hint}")
    if r.card is None:
        lines.append(f"note: no lineage without {Path(r.model) / CARD_JSON}")
    return "\n".join(map(terminal_safe, lines))  # the card is another's file: its strings must not forge a line
