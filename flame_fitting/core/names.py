"""Names and relative paths read from files that become file paths (a capture's subjects, sequences and cameras,
its manifest's `path` columns, the camera names of a cameras.json): a hostile file must not make the toolkit read,
write or delete outside the folder it names. A name is one path component; a relative path stays inside its root
by its text (symlinks are followed as the file system does: DVC may check data out as symlinks into its cache)."""
from __future__ import annotations

_FORBIDDEN = ("/", "\\", "\0")


def name_problem(value) -> str | None:
    """Why `value` is not a safe single name (None when it is): text, not empty, no path separator or NUL, not
    '.'/'..', not starting with '.' (the toolkit's temporaries and markers are hidden names)."""
    if not isinstance(value, str):
        return f"not text ({type(value).__name__})"
    if not value:
        return "empty"
    if any(c in value for c in _FORBIDDEN):
        return "holds a path separator or NUL (a name is one path component)"
    if value.startswith("."):
        return "starts with '.' ('.', '..' and hidden names are refused)"
    return None


def relpath_problem(value) -> str | None:
    """Why `value` is not a safe relative path inside its root (None when it is): text, relative, '/'-separated
    names without '.', '..' or empty parts."""
    if not isinstance(value, str):
        return f"not text ({type(value).__name__})"
    if not value or "\\" in value or "\0" in value:
        return "empty, or holds a backslash or NUL"
    if value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        return "an absolute path (paths are relative to the capture)"
    parts = value.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "leaves its folder or has empty parts ('..', '.', '//')"
    return None
