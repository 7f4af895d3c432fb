"""Lineage carried from the capture to the trained model (docs/lineage.md).

Every metrics file after the captures stage holds `captures_version`: the version id of the capture its data came
from (capture_version.py). A stage whose later readers no longer see the capture (`fit`: uv reads only the fits;
`dataset`: train reads only the shards) writes it, with the hash of the head model it used, to `lineage.json` in
its output folder; the next stage reads it there (`captures_version_of`). Folder hashes are
`core.unit_keys.tree_digest`, the same content hash the stages' work-unit keys use.
"""
from __future__ import annotations

from pathlib import Path

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.fileio import write_json
from flame_fitting.core.json_files import read_json

from .capture import capture_version

LINEAGE = "lineage.json"
MAX_LINEAGE_BYTES = 1 << 24  # 16 MiB: versions, hashes and a params section are a few KiB


class LineageError(GeofaceError, ValueError):
    """A lineage file that cannot be read: the message names it."""


def write_lineage(folder: Path | str, **fields) -> Path:
    """Write `fields` (captures_version, head_model_sha256, ...) to FOLDER/lineage.json."""
    return write_json(Path(folder) / LINEAGE, fields)


def read_lineage(folder: Path | str) -> dict:
    """FOLDER/lineage.json as a dict; {} when the folder has none (written before geoface recorded lineage);
    LineageError naming it when it is not a regular file, huge, not a JSON object, or its version / hash is not text."""
    path = Path(folder) / LINEAGE
    if not path.exists():
        return {}
    data = read_json(path, LineageError, MAX_LINEAGE_BYTES, "lineage file")  # a FIFO, huge or too deep: refused
    if not isinstance(data, dict):
        raise LineageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in ("captures_version", "head_model_sha256"):
        if not isinstance(data.get(key), (str, type(None))):
            raise LineageError(f"{path}: {key} must be text or null, got {type(data[key]).__name__}")
    return data


def captures_version_of(folder: Path | str) -> str | None:
    """The captures version of a capture folder (capture.json) or of a stage output carrying lineage.json; None when
    neither says."""
    folder = Path(folder)
    if (folder / "capture.json").is_file():
        return capture_version(folder)
    return read_lineage(folder).get("captures_version")


def check_same_capture(captures: Path | str, derived: Path | str, what: str) -> None:
    """LineageError when the stage output folder `derived` (its lineage.json) was made from another capture than the
    capture folder `captures` — images of one capture would be paired with the landmarks or geometry of another;
    nothing when `derived` records no version (written before geoface recorded lineage)."""
    theirs = captures_version_of(derived)
    if theirs is None:
        return
    ours = capture_version(captures)
    if theirs != ours:
        raise LineageError(f"{derived}: {what} of capture version {theirs}, but {captures} is capture version {ours}; "
                           f"give the capture they were made from")
