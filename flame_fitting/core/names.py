"""Names and relative paths read from files that become file paths (a capture's subjects, sequences and cameras,
its manifest's `path` columns, the camera names of a cameras.json): a hostile file must not make the toolkit read,
write or delete outside the folder it names. A name is one path component; a relative path stays inside its root
by its text (symlinks are followed as the file system does: DVC may check data out as symlinks into its cache);
`outside_target` says where a symbolic link really leads when that leaves the folder.

Such names and the files' other strings also reach the terminal (one-line errors, warnings, `geoface audit`):
`terminal_safe` writes their control and format characters as escapes, so a name cannot colour or retitle the
terminal, move its cursor, forge a log line or reverse the text around it (U+202E).

They also reach the CSV files the stages write (`plots/fit/cost.csv`, `plots/eval/views.csv`), which people open in
a spreadsheet: a cell starting with '=', '+', '-' or '@' is run as a formula there (OWASP's "CSV injection"). A name
may not start with one (no dataset layout geoface reads names its subjects, sequences or cameras so), and
`spreadsheet_safe` neutralises the other text cells at the CSV writer (`core.fileio.write_csv`)."""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path

_FORBIDDEN = ("/", "\\", "\0")
# control (C0, DEL, C1: ESC, CR, LF …), format (bidi overrides, zero-width), surrogate (undecodable file-name bytes),
# line and paragraph separator characters
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# a spreadsheet (Excel, LibreOffice, Google Sheets) runs a cell starting with one of these as a formula; tab and CR
# are control characters (refused in names above), listed for `spreadsheet_safe`
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NAME_MAX_BYTES = 128  # in UTF-8: a file system's limit is 255 bytes per name, temporaries and suffixes add to a name


def terminal_safe(text) -> str:
    """`str(text)` with every control, format, surrogate or line separator character written as its Python escape
    (ESC -> `\\x1b`, a newline -> `\\n`, U+202E -> `\\u202e`): what one line on a terminal may show of a string read
    from a file."""
    s = str(text)
    if s.isascii() and s.isprintable():  # the common case
        return s
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in UNSAFE_CATEGORIES else c for c in s)


def spreadsheet_safe(value):
    """`value` as a CSV cell a spreadsheet shows as text: a text starting with a FORMULA_START character gets a
    leading "'" (OWASP's mitigation of CSV injection: Excel and LibreOffice show the rest as text); anything else, a
    number included, is returned unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def name_key(name: str) -> str:
    """What two names share when a case-insensitive or normalising file system (macOS, Windows) stores them as one
    file: the canonical caseless form (NFC of the case-folded NFD), so 'Cam' ~ 'cam' and 'Jos\\u00e9' ~ 'Jose\\u0301'."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())


def name_problem(value) -> str | None:
    """Why `value` is not a safe single name (None when it is): text, not empty, no path separator or NUL, not
    '.'/'..', not starting with '.' (the toolkit's temporaries and markers are hidden names), not starting with a
    character a spreadsheet reads as a formula ('=', '+', '-', '@': names are written to CSV files), no control,
    format or surrogate character (UNSAFE_CATEGORIES: a name is printed and becomes a file name), at most
    NAME_MAX_BYTES bytes in UTF-8."""
    if not isinstance(value, str):
        return f"not text ({type(value).__name__})"
    if not value:
        return "empty"
    if any(c in value for c in _FORBIDDEN):
        return "holds a path separator or NUL (a name is one path component)"
    if value.startswith("."):
        return "starts with '.' ('.', '..' and hidden names are refused)"
    if value.startswith(FORMULA_START[:4]):
        return (f"starts with {value[0]!r} (a spreadsheet opening the CSV files the toolkit writes would run it as a "
                "formula)")
    if any(unicodedata.category(c) in UNSAFE_CATEGORIES for c in value):
        return ("holds a control, format or undecodable character (escape sequences, line breaks, bidi overrides, "
                "bytes that are not UTF-8)")
    if len(value.encode("utf-8")) > NAME_MAX_BYTES:
        return f"longer than {NAME_MAX_BYTES} bytes in UTF-8 ({len(value.encode('utf-8'))})"
    return None


def relpath_problem(value) -> str | None:
    """Why `value` is not a safe relative path inside its root (None when it is): text, relative, '/'-separated
    names without '.', '..' or empty parts, and no control, format or surrogate character (as `name_problem`)."""
    if not isinstance(value, str):
        return f"not text ({type(value).__name__})"
    if not value or "\\" in value or "\0" in value:
        return "empty, or holds a backslash or NUL"
    if any(unicodedata.category(c) in UNSAFE_CATEGORIES for c in value):
        return "holds a control, format or undecodable character (escape sequences, line breaks, bytes not UTF-8)"
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
