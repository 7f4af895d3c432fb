"""sha256 of files, remembered across runs while a file is unchanged — what DVC's state database does for its own
hashes.

Every data stage decides which work units are current by hashing files (core/units.py): the outputs of every unit
it keeps, and the inputs of every unit (the previous stage's outputs, the capture's masks and cameras). Without a
memory that is a re-read of the whole dataset on every run of every stage — seconds here, hours at NeRSemble
scale, where adding one subject should cost one subject. `file_sha256` answers from a small SQLite table instead
when the file's identity and stat are the ones recorded with its hash:

    (absolute path) -> (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, sha256)

Any write to a file changes its mtime and ctime; a rename or copy over it (a DVC checkout, an atomic output write)
gives it another inode; `touch -r` can restore an mtime but not a ctime. A hash is recorded only when the file's
mtime and ctime are more than `RACY_S` seconds old and its stat is the same after hashing as before (git's "racily
clean" rule: a file written twice within one timestamp tick keeps its stat), so an entry never outlives the content
it was computed from.

Where: `$GEOFACE_HASH_CACHE` (a file path, or `off` to hash every file every time), else
`$XDG_CACHE_HOME/geoface/sha256.sqlite` (`~/.cache/…`). Deleting the file is always safe (the next run hashes
again). A cache that cannot be opened or written (read-only home, a locked database, a network file system SQLite
cannot lock) is left alone: files are then hashed as without one. Each process (pool worker, Ray worker) opens its
own connection; machines of a cluster each keep their own file.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from flame_fitting.core.fileio import sha256_file

ENV = "GEOFACE_HASH_CACHE"
RACY_S = 2.0  # a file changed this recently is hashed but not remembered (module docstring)
_SCHEMA = "CREATE TABLE IF NOT EXISTS sha256 (path TEXT PRIMARY KEY, stat TEXT NOT NULL, digest TEXT NOT NULL)"

_conn: sqlite3.Connection | None = None
_conn_pid: int | None = None  # the process that opened _conn (a forked pool worker opens its own)
_conn_path: str | None = None


def cache_path() -> Path | None:
    """Where the cache lives (module docstring); None when `$GEOFACE_HASH_CACHE` is `off`."""
    env = os.environ.get(ENV, "").strip()
    if env.lower() in ("off", "0", "none", "false"):
        return None
    if env:
        return Path(env).expanduser()
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no home directory: no cache
        return None
    return Path(base) / "geoface" / "sha256.sqlite"


def _db() -> sqlite3.Connection | None:
    global _conn, _conn_pid, _conn_path
    path = cache_path()
    key = None if path is None else str(path)
    if _conn_pid == os.getpid() and _conn_path == key:
        return _conn
    _conn, _conn_pid, _conn_path = None, os.getpid(), key
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)  # autocommit: one row, one transaction
        conn.execute("PRAGMA synchronous=OFF")  # a lost row costs one re-hash, never a wrong answer
        conn.execute(_SCHEMA)
        _conn = conn
    except (OSError, sqlite3.Error):
        _conn = None
    return _conn


def _stat_key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def file_sha256(path: Path | str) -> str:
    """The sha256 (hex) of the file at `path`, from the cache when the file is unchanged since it was recorded."""
    p = os.path.abspath(path)
    st = os.stat(p)
    key, db = _stat_key(st), _db()
    if db is not None:
        try:
            row = db.execute("SELECT digest FROM sha256 WHERE path = ? AND stat = ?", (p, key)).fetchone()
        except sqlite3.Error:
            row = None
        if row is not None:
            return row[0]
    return _hash(p, st, key, db)


def folder_sha256(folder: Path | str, paths: list[Path | str]) -> list[str]:
    """`file_sha256` of each of `paths`, files inside `folder`, with one cache query for all of them (the rows
    recorded under `folder`) instead of one per file, which was half of what a remembered file cost
    (docs/scaling.md)."""
    base, db = os.path.abspath(folder), _db()
    known = {}
    if db is not None:
        try:  # every path that starts with base + "/", as an index range ("0" follows "/")
            known = dict(((p, s), d) for p, s, d in db.execute(
                "SELECT path, stat, digest FROM sha256 WHERE path >= ? AND path < ?", (base + "/", base + "0")))
        except sqlite3.Error:
            known = {}
    out = []
    for path in paths:
        p = os.path.abspath(path)
        st = os.stat(p)
        key = _stat_key(st)
        hit = known.get((p, key))
        out.append(hit if hit is not None else _hash(p, st, key, db))
    return out


def _hash(p: str, st: os.stat_result, key: str, db: sqlite3.Connection | None) -> str:
    """The sha256 of the file at absolute path `p` (stat `st`, `_stat_key` `key`), read now and remembered when
    its stat is old enough and unchanged by the read (module docstring)."""
    digest = sha256_file(p)
    if db is not None and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_S * 1e9:
        try:
            if _stat_key(os.stat(p)) == key:  # not changed while it was read
                db.execute("INSERT OR REPLACE INTO sha256 (path, stat, digest) VALUES (?, ?, ?)", (p, key, digest))
        except (OSError, sqlite3.Error):
            pass
    return digest
