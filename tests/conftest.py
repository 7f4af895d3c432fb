"""Test-suite wide: the slowest files are collected first, so `make test`'s processes (pytest-xdist, one file at a
time each) start on them rather than finishing on them — the order of the tests within a file is unchanged."""
from __future__ import annotations

# the DVC pipeline (a whole `dvc repro` in its fixture, ~1 min) and the rest of tests/stages take the longest
FIRST = ("stages/test_pipeline_dvc.py", "stages/")


def _rank(item) -> int:
    path = item.path.as_posix()
    return next((i for i, part in enumerate(FIRST) if f"/tests/{part}" in path), len(FIRST))


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_rank)  # stable: collection order within a rank


def pytest_configure(config):
    """The tests' file-hash cache (flame_fitting/core/hash_cache.py) is one temporary file per test process (and
    the stages those tests start), not the user's ~/.cache."""
    import os
    import tempfile

    if "GEOFACE_HASH_CACHE" not in os.environ:
        config._geoface_hash_cache = tempfile.mkdtemp(prefix="geoface-test-hash-cache-")
        os.environ["GEOFACE_HASH_CACHE"] = os.path.join(config._geoface_hash_cache, "sha256.sqlite")


def pytest_unconfigure(config):
    import shutil

    folder = getattr(config, "_geoface_hash_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
