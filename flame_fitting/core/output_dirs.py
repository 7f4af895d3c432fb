"""Where the toolkit's writes land: its output folders. Used through flame_fitting/core/fileio.py, the one io
module every write goes through (it re-exports these names).

- Every temporary is named `.<name>.geoface-tmp-<host>-<pid>-<random>` beside its destination, its stale
  predecessors removed first (core/temp_names.py: `temp_path`, `make_temp_dir`, `clean_stale`).
- `output_dir(dst, ...)`: a context manager yielding a temporary folder that replaces `dst` when the block ends
  without error (and is removed when it raises), swapped with it in one step where the system can, so that `dst` is
  never absent (`replace_dir`). The new folder carries a marker file (`.geoface-output.json`); an existing non-empty
  `dst` without that marker was not written by the toolkit and is never replaced, one with it only when `overwrite`
  (a stage's own output; the refusal says `pass overwrite=True`, the parameter of every Python function that writes
  one, and a command line says its own option instead: `cli_words`). An output that equals or contains one of the command's inputs is refused
  (`check_output_dir`; `replace_dir` moves a finished folder into place). Files a library wrote private
  (safetensors: 0600) get the mode of any new file here (`share_like_umask`).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.json_files import read_json_object
from flame_fitting.core.temp_names import make_temp_dir, temp_path

MARKER = ".geoface-output.json"
# how a refusal tells a caller of the Python API to replace an existing output: every function writing one takes
# `overwrite`; a command line puts its own option in its place (`cli_words`)
OVERWRITE = "overwrite=True"


def cli_words(message: str, option: str = "--force") -> str:
    """`message` in the words of a command line whose `option` replaces an existing output (the library's
    `pass overwrite=True` becomes `pass --force`); anything else is left as it is."""
    return message.replace(f"pass {OVERWRITE}", f"pass {option}")


EXCHANGE = True  # False: replace_dir never swaps (exchange_dirs), as on a system that cannot (the fallback's tests)
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
except (OSError, AttributeError):  # not Linux, or an older C library
    _renameat2 = None


class OutputError(GeofaceError, ValueError):
    """An output the toolkit refuses to write: it would replace data it did not write, or an input."""


def is_toolkit_output(folder: Path | str) -> bool:
    return (Path(folder) / MARKER).is_file()


def output_kind(folder: Path | str) -> str | None:
    """What wrote the geoface folder `folder` (its marker's `kind`: "capture", "uv", "uv previews", …); None when
    the marker names none (written before kinds, or by a writer that gives none) or there is no marker."""
    try:
        kind = read_json_object(Path(folder) / MARKER, ValueError, 1 << 16, "folder marker").get("kind")
    except ValueError:  # missing, not a file, too large, not JSON (nested too deeply too), not an object
        return None
    return kind if isinstance(kind, str) else None


def _marker(name: str, kind: str | None) -> str:
    return json.dumps({"written_by": "geoface", "folder": name, **({"kind": kind} if kind else {})}) + "\n"


def _inside(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def nested(a: Path | str, b: Path | str) -> bool:
    """Whether the folders `a` and `b` are the same or one is inside the other (symbolic links resolved)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return _inside(a, b) or _inside(b, a)


def file_ancestor(path: Path | str) -> Path | None:
    """The nearest existing ancestor of `path` when it is a file (so `path` cannot be written), else None."""
    parent = next((q for q in Path(path).parents if q.exists()), None)
    return parent if parent is not None and not parent.is_dir() else None


def check_output_dir(dst: Path | str, inputs: Iterable[Path | str] = (), overwrite: bool = False,
                     option: str = OVERWRITE, kind: str | None = None) -> Path:
    """Refuse `dst` as an output folder if replacing it could lose data the toolkit did not write.

    Refused: `dst` equal to, containing or inside an input (inside, it would change the input, and the next
    `--force` run of what wrote that input would sweep it away); `dst` an existing file; a non-empty `dst` without
    the toolkit's marker; a toolkit-written `dst` when not `overwrite` (`option` names the switch: the Python
    parameter, or a command line's option); a `dst` whose
    marker names a kind of output other than `kind` (say a capture given as the uv stage's previews folder, or to
    `geoface export --force`), even with `overwrite`. A folder whose marker names no kind (written before kinds)
    may be replaced by any writer, as before."""
    dst = Path(dst)
    real = dst.resolve()
    for inp in inputs:
        if inp is None:
            continue
        if _inside(Path(inp).resolve(), real):
            raise OutputError(f"{dst}: the output folder {'is' if Path(inp).resolve() == real else 'contains'} the "
                              f"input {inp}; choose an output folder outside the inputs")
        if _inside(real, Path(inp).resolve()):
            raise OutputError(f"{dst}: the output folder is inside the input {inp}; choose an output folder outside "
                              "the inputs")
    if dst.is_symlink():
        raise OutputError(f"{dst}: is a symbolic link; refusing to write through it: give a real folder")
    try:
        is_file = not stat.S_ISDIR(os.stat(dst).st_mode)  # one stat: a folder being replaced is not "a file"
    except (FileNotFoundError, NotADirectoryError):
        is_file = False
    if is_file:
        raise OutputError(f"{dst}: exists and is not a folder; refusing to replace it")
    names = _names(dst)  # one listing: a folder another writer is replacing now is read as it was, or as absent
    if names:
        if MARKER not in names:
            raise OutputError(f"{dst}: exists, is not empty and was not written by geoface (no {MARKER}); "
                              "refusing to replace it: choose another output folder or move it away")
        had = output_kind(dst)
        if had and had != kind:
            raise OutputError(f"{dst}: holds geoface's {had} output, not {kind or 'what this command writes'}; "
                              "refusing to replace it: choose another folder")
        if not overwrite:
            raise OutputError(f"{dst}: exists (written by geoface); pass {option} to replace it")
    return dst


def _names(folder: Path) -> list[str]:
    """The names in `folder`; [] when it is not a folder (or is gone by now)."""
    try:
        return os.listdir(folder) if folder.is_dir() else []
    except (FileNotFoundError, NotADirectoryError):
        return []


def mark_output(folder: Path | str, kind: str | None = None) -> Path:
    """Mark `folder` as written by geoface (the marker `check_output_dir` looks for), as output `kind`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(_marker(folder.name, kind))
    return folder


def replace_dir(src: Path | str, dst: Path | str, overwrite: bool = True, inputs: Iterable[Path | str] = (),
                kind: str | None = None) -> Path:
    """Move the finished folder `src` to `dst`, marking it as the toolkit's output `kind`; an existing `dst` is
    replaced only as `check_output_dir` allows, and removed only after the move succeeded.

    An existing `dst` is swapped with `src` in one step (`exchange_dirs`): a reader (another stage, `dvc status`, a
    process asking whether a unit is done) always finds the whole old folder or the whole new one; the old one, now
    at `src`'s name, is then removed. Where the system cannot swap (not Linux, a filesystem without exchange, e.g.
    some network filesystems), `dst` is renamed away and `src` renamed in, and is absent in between.

    Another process may replace `dst` at the same time (two commands given one output folder, a retried work unit
    whose first attempt still runs): the last to finish wins, and `dst` is always one writer's whole folder. A `dst`
    that another writer filled meanwhile is checked again as the first one was (without `overwrite`: "pass
    overwrite=True"). (Before, the slower writer failed with the system's "Directory not empty" or "No such file or
    directory", leaving the output it had moved aside behind.)"""
    src, dst = Path(src), Path(dst)
    check_output_dir(dst, inputs, overwrite, kind=kind)
    (src / MARKER).write_text(_marker(dst.name, kind))  # dst's name
    share_like_umask(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    olds: list[Path] = []  # earlier outputs this call moved aside
    try:
        for _ in range(100):
            if dst.exists():
                try:
                    if exchange_dirs(src, dst):  # dst is the new folder now, the earlier output at src's name
                        shutil.rmtree(src, ignore_errors=True)
                        return dst
                    old = temp_path(dst)
                    os.rename(dst, old)
                    olds.append(old)
                except FileNotFoundError:  # another writer moved it aside first
                    pass
            try:
                os.rename(src, dst)
                return dst
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            check_output_dir(dst, inputs, overwrite, kind=kind)  # another writer's output is there now
        raise OutputError(f"{dst}: other processes kept replacing it while this one wrote it; run again")
    finally:
        if olds and not dst.exists():  # nothing took the place of the output moved aside: put it back
            try:
                os.rename(olds.pop(), dst)
            except OSError:
                pass
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)


def exchange_dirs(a: Path, b: Path) -> bool:
    """Swap the existing paths `a` and `b` in one step, so that neither is ever absent (renameat2 with
    RENAME_EXCHANGE: Linux >= 3.15, glibc >= 2.28). False, having changed nothing, where the system cannot
    (`EXCHANGE` off, not Linux, a C library without renameat2, a filesystem without exchange: EINVAL, ENOSYS,
    EOPNOTSUPP); other failures raise OSError (FileNotFoundError when either is gone)."""
    if not EXCHANGE or _renameat2 is None:
        return False
    if _renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def share_like_umask(folder: Path | str) -> None:
    """Give the files under `folder` that a library wrote private (safetensors' `save_file`, hence every
    `save_pretrained`, writes mode 0600) the mode any other file gets here (0666 less the umask): weights in a
    lab's shared models folder were unreadable to the rest of the group. Files with a group or other bit are left
    as they are."""
    folder = Path(folder)
    probe = temp_path(folder / "mode-probe")
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask applies, as to any new file
    try:
        mode = os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        os.unlink(probe)
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and not st.st_mode & 0o077 and st.st_mode & 0o777 != mode:
                os.chmod(p, mode)


@contextmanager
def output_dir(dst: Path | str, inputs: Iterable[Path | str] = (), overwrite: bool = True,
               option: str = OVERWRITE, kind: str | None = None) -> Iterator[Path]:
    """`with output_dir(dst) as tmp:` write into `tmp`; on success it replaces `dst` (`replace_dir`, marked `kind`).

    The checks of `check_output_dir` run before anything is written, so a refused output costs nothing."""
    dst = Path(dst)
    inputs = [i for i in inputs if i is not None]
    check_output_dir(dst, inputs, overwrite, option, kind=kind)
    tmp = make_temp_dir(dst)
    try:
        yield tmp
        replace_dir(tmp, dst, overwrite, inputs, kind=kind)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
