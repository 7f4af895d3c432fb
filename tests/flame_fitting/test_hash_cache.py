"""The remembered sha256 of files (flame_fitting/core/hash_cache.py): the same answer as hashing, from the cache
only while a file is unchanged, never remembered for a file changed just now, and a stage run with it re-runs a unit
whose output was edited after its hash was remembered."""
from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path

import pytest

from flame_fitting.core import hash_cache
from flame_fitting.core.executor import ExecutorConfig, open_executor
from flame_fitting.core.hash_cache import file_sha256
from flame_fitting.core.unit_keys import Unit, tree_hashes
from flame_fitting.core.units import run_units


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as c:
        return dict(c.execute("SELECT path, digest FROM sha256").fetchall())


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    db = tmp_path / "cache" / "sha256.sqlite"
    monkeypatch.setenv(hash_cache.ENV, str(db))
    return db


def age(path: Path, seconds: float = 60.0) -> None:
    """Make `path` look old enough to be remembered: its mtime back, and the racy window shorter than its ctime's
    age (a ctime cannot be set)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_the_hash_is_sha256_and_a_just_written_file_is_not_remembered(cache, tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 1000)
    assert file_sha256(f) == sha(b"x" * 1000)
    assert rows(cache) == {}  # its ctime is now: within RACY_S, hashed but not remembered


def test_an_unchanged_file_is_answered_from_the_cache_and_a_changed_one_is_hashed_again(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(hash_cache, "RACY_S", 0.0)
    f = tmp_path / "a.bin"
    f.write_bytes(b"one!")
    age(f)
    time.sleep(0.05)
    assert file_sha256(f) == sha(b"one!")
    assert rows(cache) == {str(f.resolve()): sha(b"one!")}
    with sqlite3.connect(cache) as c:  # what the cache says is what is answered while the file's stat is the same
        c.execute("UPDATE sha256 SET digest = 'remembered'")
    assert file_sha256(f) == "remembered"
    time.sleep(0.05)
    f.write_bytes(b"two!")  # same size, same inode, written in place: mtime and ctime change
    assert file_sha256(f) == sha(b"two!")
    t = f.stat().st_mtime
    time.sleep(0.05)
    f.write_bytes(b"3ree")
    os.utime(f, (t, t))  # its old mtime put back (touch -r): the ctime still differs
    assert file_sha256(f) == sha(b"3ree")
    g = tmp_path / "b.bin"
    g.write_bytes(b"four")
    os.replace(g, f)  # renamed over it (an atomic write, a DVC checkout): another inode
    assert file_sha256(f) == sha(b"four")


def test_off_and_an_unusable_location_hash_without_a_cache(tmp_path, monkeypatch):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    monkeypatch.setenv(hash_cache.ENV, "off")
    assert hash_cache.cache_path() is None and file_sha256(f) == sha(b"abc")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache's folder would be")
    monkeypatch.setenv(hash_cache.ENV, str(blocker / "sha256.sqlite"))
    assert file_sha256(f) == sha(b"abc")
    assert blocker.read_text() == "a file where the cache's folder would be"


def write_unit(unit: Unit, tmp: Path, extras):
    (tmp / "out.txt").write_text(f"result of {unit.rel}\n")
    return {"n": 1}, []


def test_a_unit_whose_output_was_edited_after_its_hash_was_remembered_is_rerun(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(hash_cache, "RACY_S", 0.0)
    out = tmp_path / "out"
    units = [Unit("s1", "seq", key="k1"), Unit("s2", "seq", key="k2")]
    with open_executor(ExecutorConfig(kind="local", workers=1)) as ex:
        first = run_units(ex, write_unit, units, out, "test", progress=False)
        assert sorted(first.ran) == ["s1/seq", "s2/seq"]
        time.sleep(0.05)
        again = run_units(ex, write_unit, units, out, "test", progress=False)  # hashes remembered now
        assert sorted(again.kept) == ["s1/seq", "s2/seq"]
        assert any(p.endswith("s1/seq/out.txt") for p in rows(cache))
        edited = out / "s1" / "seq" / "out.txt"
        time.sleep(0.05)
        edited.write_text("result of s9/seq\n")  # same size, in place
        third = run_units(ex, write_unit, units, out, "test", progress=False)
    assert third.ran == ["s1/seq"] and third.kept == ["s2/seq"]
    assert edited.read_text() == "result of s1/seq\n"


def test_a_folders_files_are_answered_with_one_cache_query(cache, tmp_path, monkeypatch):
    """`tree_hashes` (every unit's currency check and most of its key) looks a folder's files up with one query, not
    one per file (issue 16 item 1: per file, that query was most of a cached hash's cost), with the same answers:
    from the cache while a file is unchanged, hashed again once it changed."""
    monkeypatch.setattr(hash_cache, "RACY_S", 0.0)
    unit, sibling = tmp_path / "s1" / "seq", tmp_path / "s1" / "seq0"  # a name after "seq/" in the cache's order
    data = {f"{i:05d}.npz": bytes([i]) * (100 + i) for i in range(10)}
    data |= {"masks/cam0.png": b"m0", "masks/cam1.png": b"m1"}
    for folder in (unit, sibling):
        for rel, b in data.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(b)
            age(folder / rel)
    time.sleep(0.05)
    want = {rel: sha(b) for rel, b in sorted(data.items())}
    assert tree_hashes(unit) == tree_hashes(sibling) == want  # hashed, remembered
    assert len(rows(cache)) == 2 * len(data)
    with sqlite3.connect(cache) as c:  # what the cache says is what is answered while a file's stat is the same
        c.execute("UPDATE sha256 SET digest = 'remembered:' || substr(path, -9)")
    queries = []
    hash_cache._db().set_trace_callback(queries.append)
    try:
        got = tree_hashes(unit)
    finally:
        hash_cache._db().set_trace_callback(None)
    assert got == {rel: f"remembered:{(unit / rel).as_posix()[-9:]}" for rel in want}
    assert len([q for q in queries if q.lstrip().upper().startswith("SELECT")]) == 1
    time.sleep(0.05)
    (unit / "00003.npz").write_bytes(b"\xff" * 103)  # same size, in place
    again = tree_hashes(unit)
    assert again["00003.npz"] == sha(b"\xff" * 103)
    assert {k: v for k, v in again.items() if k != "00003.npz"} == {k: v for k, v in got.items() if k != "00003.npz"}
