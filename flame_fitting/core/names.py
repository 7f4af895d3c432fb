"""Names and relative paths read from files that become file paths (a capture's subjects, sequences and cameras,
its manifest's `path` columns, the camera names of a cameras.json): a hostile file must not make the toolkit read,
write or delete outside the folder it names. A name is one path component; a relative path stays inside its root
by its text (symlinks are followed as the file system does: DVC may check data out as symlinks into its cache);
`outside_target` says where a symbolic link really leads when that leaves the folder."""
from __future__ import annotations

import os
from pathlib import Path

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


def outside_target(path, root) -> Path | None:
    """Where `path` really is (symbolic links resolved) when that is outside the folder `root`, else None. A file
    in the DVC cache (`.dvc/cache`) of a repository holding `root` (`root` or a folder above it has the `.dvc`) counts
    as inside: it is how DVC's symlink checkouts materialise data. The cache of an unrelated repository does not.
    The readers of untrusted folders (importers, exports) refuse such a file unless the user opts in
    (`captures.follow_symlinks`, `export fits --follow-symlinks`)."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))  # a link loop: where it was found
    if real == top or top in real.parents:
        return None
    given = Path(os.path.abspath(root))
    holders = {Path(os.path.realpath(p)) for p in (given, *given.parents)} | {top, *top.parents}
    if any(p.name == "cache" and p.parent.name == ".dvc" and p.parent.parent in holders for p in real.parents):
        return None
    return real
