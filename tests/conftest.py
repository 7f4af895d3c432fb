"""Test-suite wide: the slowest files are collected first, so `make test`'s processes (pytest-xdist, one file at a
time each) start on them rather than finishing on them — the order of the tests within a file is unchanged."""
from __future__ import annotations

# slowest first, from `pytest -n 2 --dist loadfile --durations=80` (a file's setup + call + teardown seconds on the
# shared 2-core machine, after the cuts of the warm Python, the copied DVC repository and stand-in folders): the DVC
# pipeline (a whole `dvc repro` in its fixture, ~230 s), the lineage audits under git + DVC (~170 s), the local Ray
# executor (~100 s), ..., then the rest of tests/stages; the other files in collection order
FIRST = ("stages/test_pipeline_dvc.py", "geoface/test_lineage_dvc.py", "stages/test_executor_ray.py",
         "flame_fitting/fit/test_features.py", "geoface_model/test_alignment_effect.py",
         "geoface_model/test_multi_process_training.py", "geoface_model/test_concurrent_training.py",
         "stages/test_train_states.py", "geoface/test_cli_train_notes.py", "geoface/test_cli.py", "stages/")


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
