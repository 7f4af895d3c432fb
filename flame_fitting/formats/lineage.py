"""Lineage carried from the capture to the trained model (docs/lineage.md).

Every metrics file after the captures stage holds `captures_version`: the version id of the capture its data came
from (capture_version.py). A stage whose later readers no longer see the capture (`fit`: uv reads only the fits;
`dataset`: train reads only the shards) writes it, with the hash of the head model it used, to `lineage.json` in
its output folder; the next stage reads it there (`captures_version_of`). Light: json and hashlib only.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.fileio import sha256_file, write_json

from .capture import capture_version

LINEAGE = "lineage.json"


class LineageError(GeofaceError, ValueError):
    """A lineage file that cannot be read: the message names it."""


def write_lineage(folder: Path | str, **fields) -> Path:
    """Write `fields` (captures_version, head_model_sha256, ...) to FOLDER/lineage.json."""
    return write_json(Path(folder) / LINEAGE, fields)


def read_lineage(folder: Path | str) -> dict:
    """FOLDER/lineage.json as a dict; {} when the folder has none (written before geoface recorded lineage)."""
    path = Path(folder) / LINEAGE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LineageError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise LineageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def captures_version_of(folder: Path | str) -> str | None:
    """The captures version of a capture folder (capture.json) or of a stage output carrying lineage.json; None when
    neither says."""
    folder = Path(folder)
    if (folder / "capture.json").is_file():
        return capture_version(folder)
    return read_lineage(folder).get("captures_version")


def tree_hash(folder: Path | str, pattern: str = "**/*") -> str:
    """SHA-256 (hex) of the files of `folder` matching `pattern`: their relative paths and contents, in sorted order.
    Hidden files (the output marker, temporaries) and lineage.json are left out."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.glob(pattern)):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or p.name == LINEAGE or any(part.startswith(".") for part in rel.split("/")):
            continue
        h.update(f"{rel}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()
