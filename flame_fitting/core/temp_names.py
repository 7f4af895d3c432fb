"""The toolkit's one temporary-name scheme (used through flame_fitting/core/fileio.py, which re-exports it; the
output folders the temporaries become are output_dirs.py's): every temporary is named
`.<name>.geoface-tmp-<host>-<pid>-<random>` beside its destination (`temp_path`, `make_temp_dir`); each write first
removes the stale ones of the same destination (their process is gone, `clean_stale`), so a killed run leaves
nothing that piles up. `process_tag` / `tag_gone`: the same `<host>-<pid>` tag for other leftovers (the Ray
session's folders, core/ray_session.py).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

TMP_TAG = ".geoface-tmp-"
# this host in temporary names: its name's letters and digits (readable) and a hash of the whole name (distinct for
# hosts whose names differ only in other characters or after 16 characters, e.g. the pods of one Kubernetes set)
_HOST = ((re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host")
         + hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8])


def temp_path(dst: Path | str, shared: bool = False) -> Path:
    """A fresh temporary sibling of `dst` in the toolkit's one naming scheme (the stale temporaries of
    `dst` are removed first; its parent folder is created). `shared`: the one name every process of a
    distributed run computes alike (`.<name>.geoface-tmp-shared`), for a folder they write together; it is
    removed by whoever writes `dst` next, never by `clean_stale`."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if shared:
        return dst.parent / f".{dst.name}{TMP_TAG}shared"
    clean_stale(dst)
    return dst.parent / f".{dst.name}{TMP_TAG}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tag() -> str:
    """`<host>-<pid>` of this process, as this module's temporaries carry it in their names (`tag_gone` reads it)."""
    return f"{_HOST}-{os.getpid()}"


def tag_gone(tag: str) -> bool:
    """Whether the process of a `process_tag()` is known to be gone: it ran on this host and no process has its pid
    now. A process of another host, or a tag in another form, is not known to be gone (False)."""
    host, _, pid = tag.partition("-")
    return host == _HOST and pid.isdigit() and not _pid_alive(int(pid))


def clean_stale(dst: Path | str) -> list[Path]:
    """Remove the temporaries of `dst` left by runs of this host whose process is gone. Returns them. Only names
    in this module's scheme (`.<name>.geoface-tmp-<host>-<pid>-…`) are touched: geoface < 0.2's `.<name>.old-<hex>`
    names are left alone, since a user's own folder may look like that."""
    dst = Path(dst)
    removed = []
    if not dst.parent.is_dir():
        return removed
    prefix = f".{dst.name}"
    for p in dst.parent.iterdir():
        rest = p.name[len(prefix):] if p.name.startswith(prefix) else None
        if rest is None:
            continue
        if not rest.startswith(TMP_TAG):
            continue
        host, _, tail = rest[len(TMP_TAG):].partition("-")
        pid = tail.split("-", 1)[0]
        if host != _HOST or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def make_temp_dir(dst: Path | str) -> Path:
    """A new empty temporary folder beside `dst` (its stale predecessors removed first)."""
    tmp = temp_path(dst)
    tmp.mkdir()
    return tmp
