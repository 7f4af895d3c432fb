"""Reading JSON the toolkit did not write (or may have received from someone else: a capture, a run folder, a model
folder), bounded before anything is allocated: a regular file (a FIFO would block, /dev/zero never ends), at most
`max_bytes`, parsed with every way the parser fails turned into one error naming the file: not UTF-8, not JSON,
nested beyond the parser's depth (100 000 '[' was a RecursionError traceback), integers of 4300+ digits.

    read_json(path, Error, max_bytes, what)          # any JSON value
    read_json_object(path, Error, max_bytes, what)   # ... that must be an object
    parse_json(raw, where, Error)                    # bytes or text already in memory (a header, a DVC revision)

Only the standard library: output_dirs.py (below fileio.py) reads its markers with it too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

MAX_JSON_BYTES = 1 << 28  # 256 MiB: a dataset's largest metadata file (transforms.json of 10^5 frames) is far below

_JSON_TYPES = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false",
               type(None): "null"}


def json_type(value) -> str:
    """How a message names the JSON type of `value` ("a list", "null", ...)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def parse_json(raw: bytes | str, where, error: type[Exception]):
    """The JSON value in `raw`; `error` `WHERE: not valid JSON (why)` when it is not UTF-8 or not JSON the parser
    takes (truncated, nested too deeply, an integer of 4300+ digits)."""
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw)
    except UnicodeDecodeError:
        raise error(f"{where}: not valid JSON (not UTF-8 text)") from None
    except ValueError as e:  # JSONDecodeError, and int() beyond 4300 digits
        raise error(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{where}: not valid JSON (nested too deeply)") from None


def read_bytes(path: Path | str, error: type[Exception], max_bytes: int, what: str,
               missing: str = "file is missing") -> bytes:
    """The bytes of the untrusted file `path`; `error` naming it when missing (`PATH: {missing}`), not a regular
    file, larger than `max_bytes` (what `what` holds at most) or unreadable."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: {missing}")
    if not path.is_file():
        raise error(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:  # never more than max_bytes + 1 read, even from a file that grows meanwhile
            size = os.fstat(f.fileno()).st_size
            raw = f.read(max_bytes + 1) if size <= max_bytes else b""
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    if size > max_bytes or len(raw) > max_bytes:
        raise error(f"{path}: {max(size, len(raw))} bytes, more than a {what} holds ({max_bytes})")
    return raw


def read_json(path: Path | str, error: type[Exception], max_bytes: int = MAX_JSON_BYTES, what: str = "metadata file",
              missing: str = "file is missing"):
    """Parsed JSON of the untrusted file `path` (read_bytes, then parse_json): one `error` naming it otherwise."""
    return parse_json(read_bytes(path, error, max_bytes, what, missing), path, error)


def read_json_object(path: Path | str, error: type[Exception], max_bytes: int = MAX_JSON_BYTES,
                     what: str = "metadata file", missing: str = "missing") -> dict:
    """The JSON object in `path` (read_json); another JSON type is `error` `PATH: expected a JSON object, got a
    list`."""
    data = read_json(path, error, max_bytes, what, missing)
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {json_type(data)}")
    return data
