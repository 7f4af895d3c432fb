"""`geoface audit [MODEL_DIR]`: the lineage of a trained model (its model card, geoface_model/lineage.py) and whether
the workspace still holds the data it was trained on (docs/lineage.md).

The answer is DVC's own: `Repo.status(targets=[the stage that writes MODEL_DIR], with_deps=True)` compares every
stage up to the model with dvc.lock. Its entries are sorted into
  data    an output of one of those stages differs from dvc.lock (modified, deleted, not in cache), or a dependency
          that git does not track (a DVC-tracked or external data file) changed;
  code    a git-tracked dependency (a script, a library folder) or a stage command changed;
  params  a params.yaml key of one of those stages changed.
The workspace matches when there is no `data` entry (code and params drift are reported: they mean `dvc repro` would
re-run stages, not that the data on disk differ). The captures version recorded in the card is also compared with
the workspace's capture folder(s) upstream of the model; a card that records none (null or missing) matches nothing:
the audit says the version is unknown and exits 1 (docs/lineage.md). The workspace captures are the folders holding a
capture.json among the outputs AND the dependencies of the stages up to the model (a stage's output, a `dvc add`-tracked
folder, a folder imported outside DVC or outside the repository that a stage lists in `deps`), or nested inside one
(searched down to CAPTURE_SEARCH_DEPTH levels, at most CAPTURE_SEARCH_FOLDERS folders each, symlinked and hidden
folders not entered); the card's version must be among them. Every other one is reported with its version; a change
to any capture counts as data in DVC's status, even when git tracks it. A pipeline with no such folder (a capture a
stage reads without declaring it) cannot be compared: the audit says so and exits 1. A model folder outside any DVC
repository: its card is reported, and that the workspace check needs the repository (`workspace_error`). The text of a
report: audit_report.py.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from dvc.exceptions import DvcException, NotDvcRepoError, OutputNotFoundError
from dvc.repo import Repo

from flame_fitting.core.errors import GeofaceError
from flame_fitting.formats.capture import CaptureError, capture_version
from flame_fitting.formats.lineage import LineageError
from geoface_model.lineage import read_model_card

DEFAULT_MODEL = "models/geoface"  # the train stage's model output in dvc.yaml
CAPTURE_SEARCH_DEPTH = 4  # folder levels below an output or dependency searched for a capture.json
CAPTURE_SEARCH_FOLDERS = 10_000  # folders listed below one output or dependency, at most


class AuditError(GeofaceError, ValueError):
    """An audit that cannot be made (no DVC repository, one whose .dvc/config, dvc.yaml or dvc.lock DVC cannot read, a
    folder no stage writes): the message says what and where."""


class NoRepositoryError(AuditError):
    """No DVC repository around the folder: a model folder's card can still be read (`audit`), the workspace not."""


def _dvc_problem(where: Path, e: DvcException) -> AuditError:
    """AuditError of an exception DVC raised: its first line (a traceback ended with exit 1, the status of "the data
    do not match")."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return AuditError(f"{where}: DVC cannot read the repository: {first}")


@dataclass
class AuditReport:
    model: str
    stage: str | None  # the stage writing the model (None: no DVC repository around it)
    card: dict | None
    card_error: str | None
    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, stage, what)
    captures: list[tuple[str, str | None]] = field(default_factory=list)  # (capture folder, its version)
    search_cut: list[str] = field(default_factory=list)  # outputs / dependencies not searched to the end
    # why the workspace could not be checked (MODEL_DIR outside a DVC repository): the card alone is reported
    workspace_error: str | None = None

    @property
    def version_unknown(self) -> bool:
        """A card that records no captures version (null or missing: a dataset without lineage.json): the workspace
        capture cannot be compared with what the model was trained on."""
        return self.card is not None and self.card.get("captures_version") is None

    @property
    def capture_unfound(self) -> bool:
        """No output or dependency of the stages up to the model is a capture folder (a capture.json: say the
        dataset stage reads a capture it does not list in `deps`, or a dataset built elsewhere): the card's captures
        version cannot be compared with anything."""
        return self.card is not None and not self.captures

    @property
    def matches(self) -> bool:
        # nothing says what the model was trained on, or nothing to compare it with: no match to claim
        if self.card is None or self.version_unknown or self.capture_unfound or self.workspace_error:
            return False
        version = self.card["captures_version"]
        return (not any(kind == "data" for kind, _, _ in self.entries)
                and any(v == version for _, v in self.captures))


def _repo(start: Path) -> Repo:
    probe = start.resolve()
    while not probe.exists():
        probe = probe.parent
    try:
        return Repo(Repo.find_root(str(probe)))
    except NotDvcRepoError:
        raise NoRepositoryError(f"{start}: not inside a DVC repository (no .dvc folder above it)") from None
    except DvcException as e:  # e.g. ConfigError: a .dvc/config line DVC cannot read
        raise _dvc_problem(probe, e) from None


def _git_tracked(root: Path) -> set[str]:
    r = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True)
    return set(r.stdout.split("\0")) - {""} if r.returncode == 0 else set()


def _is_tracked(path: str, tracked: set[str]) -> bool:
    p = path.rstrip("/")
    return p in tracked or any(t.startswith(p + "/") for t in tracked)


def _holds_capture(path: str, captures) -> bool:
    """Whether `path` (as DVC's status names it) is a capture folder of `captures`, inside one or holds one."""
    p = path.rstrip("/")
    return any(p == c or c.startswith(p + "/") or p.startswith(c + "/") for c in captures)


def classify(status: dict, tracked: set[str], captures=()) -> list[tuple[str, str, str]]:
    """DVC status entries ({stage: [entry, ...]}) -> sorted (kind, stage, what) (module docstring); a changed
    dependency that is, is inside or holds one of the capture folders `captures` is data even when git tracks it."""
    out = []
    for stage, entries in status.items():
        for e in entries:
            if isinstance(e, str):  # "changed command", "always changed"
                out.append(("code", stage, e))
                continue
            for key, changes in e.items():
                for path, state in (changes.items() if isinstance(changes, dict) else [(str(changes), "")]):
                    what = f"{key.replace('changed ', '').rstrip('s')} {path}" + (f" {state}" if state else "")
                    if key == "changed outs":
                        out.append(("data", stage, what))
                    elif key == "changed deps" and isinstance(state, dict):  # {params file: {key: state}}
                        out += [("params", stage, f"param {k} {v} ({path})") for k, v in sorted(state.items())]
                    elif key == "changed deps":
                        code = _is_tracked(path, tracked) and not _holds_capture(path, captures)
                        out.append(("code" if code else "data", stage, what))
                    elif key == "changed params":
                        out.append(("params", stage, what))
                    else:
                        out.append(("code", stage, what))
    return sorted(out)


def audit(model_dir: Path | str | None = None) -> AuditReport:
    """Audit MODEL_DIR (default: DEFAULT_MODEL of the repository around the working folder). A MODEL_DIR folder
    outside a DVC repository: its card alone, with `workspace_error` saying the workspace check needs one."""
    if model_dir is not None and Path(model_dir).is_file():
        raise AuditError(f"{model_dir}: a file, not a model folder; MODEL_DIR is the folder a dvc.yaml stage writes "
                         f"the model to (the train stage writes {DEFAULT_MODEL})")
    try:
        repo = _repo(Path(model_dir) if model_dir is not None else Path.cwd())
    except NoRepositoryError as e:
        if model_dir is None or not Path(model_dir).is_dir():
            raise
        return AuditReport(str(model_dir), None, *_card(Path(model_dir)), workspace_error=(
            f"{e}: the lineage above is the model card's alone; checking that the workspace still holds the data the "
            "model was trained on needs the DVC repository the model was trained in"))
    try:
        with repo:
            return _audit(repo, model_dir)
    except DvcException as e:  # dvc.yaml or dvc.lock DVC cannot parse or validate, ...
        raise _dvc_problem(Path(repo.root_dir), e) from None


def _audit(repo: Repo, model_dir: Path | str | None) -> AuditReport:
    root = Path(repo.root_dir)
    model = Path(model_dir) if model_dir is not None else root / DEFAULT_MODEL
    try:
        outs = repo.find_outs_by_path(str(model.resolve()))
    except OutputNotFoundError:
        outs = []
    if not outs:
        raise AuditError(f"{model}: no stage of {root / 'dvc.yaml'} writes this folder, so DVC cannot say what it "
                         f"was trained on (the train stage writes {DEFAULT_MODEL})")
    stage = outs[0].stage
    if not model.exists():
        card, card_error = None, f"{model}: not in the workspace (a fresh clone: `dvc pull`; else `dvc repro`)"
    else:
        card, card_error = _card(model)
    stages = repo.stage.collect(stage.addressing, with_deps=True)
    status = repo.status(targets=[stage.addressing], with_deps=True)
    uncached = {(s.addressing, o.def_path) for s in stages for o in s.outs if not o.use_cache}
    status = {s: [e for e in entries if not _only_uncached(s, e, uncached)] for s, entries in status.items()}
    captures, cut = _captures(stages, root)
    entries = classify(status, _git_tracked(root), [p for p, _ in captures])
    return AuditReport(str(model), stage.addressing, card, card_error, entries, captures, cut)


def _card(model: Path) -> tuple[dict | None, str | None]:
    """(the model card, None), or (None, why it cannot be read)."""
    try:
        return read_model_card(model), None
    except LineageError as e:
        return None, str(e)


def _capture_folders(top: Path) -> tuple[list[Path], bool]:
    """The capture folders (holding capture.json) at or below `top`, and whether the search stopped at
    CAPTURE_SEARCH_FOLDERS. A capture is not searched inside; a symlinked folder is not entered (os.walk's default:
    nothing outside the folder a stage declares), nor a hidden one (.git, .dvc); a `capture.json` file is its folder."""
    if top.name == "capture.json" and top.is_file():
        return [top.parent], False
    found, listed = [], 0
    for d, dirs, files in os.walk(top):
        if "capture.json" in files:
            found.append(Path(d))
            dirs.clear()
            continue
        listed += 1
        if listed > CAPTURE_SEARCH_FOLDERS:
            return sorted(found), True
        deep = len(Path(d).relative_to(top).parts) >= CAPTURE_SEARCH_DEPTH
        dirs[:] = [] if deep else sorted(x for x in dirs if not x.startswith("."))
    return sorted(found), False


def _captures(stages, root: Path) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(folder, its version or None when unreadable) of every capture folder (a folder holding capture.json) that a
    stage up to the model writes or reads: the stages' outputs (a `dvc add`-tracked folder is the output of its .dvc
    file's stage) and their dependencies (a folder imported outside DVC, a path outside the repository), and the
    captures nested in them (_capture_folders), each once, in DVC's stage order; and the outputs and dependencies
    whose search stopped at its bound. A path inside the repository is shown relative to it, one outside as it is."""
    found: dict[Path, str | None] = {}
    cut: list[Path] = []
    root = root.resolve()
    for s in stages:
        for o in [*s.outs, *s.deps]:
            if getattr(o.fs, "protocol", None) != "local":
                continue  # a `dvc import` or remote-URL dependency: not a folder on this machine
            top = Path(o.fs_path).resolve()
            folders, stopped = _capture_folders(top)
            if stopped and top not in cut:
                cut.append(top)
            for path in folders:
                if path in found:
                    continue
                try:
                    found[path] = capture_version(path)
                except CaptureError:
                    found[path] = None

    def show(p: Path) -> str:
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
    return [(show(p), v) for p, v in found.items()], [show(p) for p in cut]


def _only_uncached(stage: str, entry, uncached: set) -> bool:
    """True for a `changed outs` entry that names only outputs DVC does not cache (e.g. models/train_state: the
    resumable training states, not data a model was trained on)."""
    if not isinstance(entry, dict) or set(entry) != {"changed outs"}:
        return False
    entry["changed outs"] = {p: v for p, v in entry["changed outs"].items() if (stage, p) not in uncached}
    return not entry["changed outs"]
