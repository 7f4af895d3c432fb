"""The keys of the data stages' per-sequence work units and the key files that record them (core/units.py runs them).

A stage's output folder holds one folder per unit, `<out>/<subject>/<sequence>/`, and in it the key file
`.geoface-unit.json`: the unit's key (a hash of everything its result depends on: the content hashes of the input
files it reads — not of the other files of an input unit folder, such as a fit's status.json — the head model, the
stage's params section and the library's version and source), the sha256 of every file of the unit folder, the
files it wrote elsewhere (`extras`: previews, overlays, relative to the stage's extras folder, with their sha256)
and a small `record` (what the stage's metrics are aggregated from). A unit's outputs, key file included, are a
function of its inputs: the same inputs give the same bytes in every run, so DVC gives the folder the same hash and a
dataset version means the same data. Run times are not part of a result (core/units.py
`TIMING`). A unit is current when its key file names its key and lists exactly the files on disk with those hashes
(`current_key_file`). docs/scaling.md explains the choice.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from flame_fitting.core.fileio import MARKER, TMP_TAG
from flame_fitting.core.hash_cache import file_sha256, folder_sha256
from flame_fitting.core.json_files import read_json_object

KEY_FILE = ".geoface-unit.json"
UNIT_FORMAT = 1


@dataclass(frozen=True)
class Unit:
    subject: str
    sequence: str
    key: str = ""  # hex digest of the unit's inputs (unit_key)
    # what the stage hands the unit's worker with it (core/units.py `run_units`' `payload`: a data stage's share of
    # the capture it validated and keyed, formats/units.py `unit_payload`), so that no worker reads and validates the
    # whole manifest again; not part of the unit's identity nor of its key, and not sent back with its result
    payload: Any = field(default=None, compare=False, repr=False)

    @property
    def rel(self) -> str:
        return f"{self.subject}/{self.sequence}"


def digest(obj) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tree_hashes(folder: Path | str, skip: set[str] | frozenset = frozenset(),
                only: tuple[str, ...] | None = None) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` except the key file, the output marker, temporaries and
    the relative paths in `skip` ({} when the folder does not exist); `only`: of the files whose relative path
    matches one of these `fnmatch` patterns alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        # no stat for a skipped file: the capture's images, whose sha256 the manifest holds (1.6 M at NeRSemble)
        if (rel not in skip and p.name not in (KEY_FILE, MARKER) and TMP_TAG not in rel
                and (only is None or any(fnmatch.fnmatchcase(rel, pat) for pat in only)) and p.is_file()):
            files[rel] = p
    return dict(zip(files, folder_sha256(folder, list(files.values()))))


def tree_digest(folder: Path | str, only: tuple[str, ...] | None = None) -> str:
    """One hash of the content of a folder (tree_hashes); `only`: of the files matching these patterns alone, the
    ones a unit reads of an input unit folder (a file it does not read, such as a fit's status.json, then re-runs
    nothing when it changes)."""
    return digest(tree_hashes(folder, only=only))


# the installed libraries whose versions a result may depend on (distribution names; absent ones are None)
LIBRARIES = ("numpy", "scipy", "pandas", "pyarrow", "numba", "torch", "smplx", "mediapipe", "opencv-contrib-python",
             "opencv-python", "opencv-python-headless", "pillow", "diffusers", "accelerate", "safetensors")


@functools.lru_cache(maxsize=1)
def library_versions() -> tuple[tuple[str, str | None], ...]:
    """(name, version) of LIBRARIES as installed here."""
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    return tuple((n, version(n)) for n in LIBRARIES)


def code_digest(*folders: Path | str) -> str:
    """The library version, the installed versions of the libraries it computes with (`LIBRARIES`: another MediaPipe
    or torch gives other landmarks and fits) and the hash of every .py file under `folders`: a unit's result depends
    on the code."""
    try:
        version = metadata.version("geoface")
    except metadata.PackageNotFoundError:
        version = "unknown"
    files = {}
    for folder in folders:
        folder = Path(folder)
        for p in sorted(folder.rglob("*.py")) if folder.is_dir() else [folder]:
            files[p.relative_to(folder.parent).as_posix()] = file_sha256(p)
    return digest({"version": version, "libraries": dict(library_versions()), "files": files})


def unit_key(stage: str, **parts) -> str:
    """The key of one unit of `stage`: a hash of `parts` (its input hashes, params, head model, code)."""
    return digest({"stage": stage, "format": UNIT_FORMAT, **parts})


def read_key_file(folder: Path | str) -> dict | None:
    """The key file of a unit folder, None when missing or unreadable."""
    try:
        return read_json_object(Path(folder) / KEY_FILE, ValueError)  # not JSON, nested too deeply, too large...
    except ValueError:
        return None


def current_key_file(folder: Path, key: str, extras: Path | None) -> dict | None:
    """The parsed key file of `folder` when it holds the complete, unchanged output of a unit with key `key` (the
    unit is current: module docstring), else None."""
    rec = read_key_file(folder)
    if rec is None or rec.get("key") != key or rec.get("files") != tree_hashes(folder):
        return None
    for name, h in (rec.get("extras") or {}).items():
        p = None if extras is None else extras / name
        if p is None or not p.is_file() or file_sha256(p) != h:
            return None
    return rec
