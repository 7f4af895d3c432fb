"""Test utility: the stand-in head model (flame_fitting.head.standin) built once per test process for each set of
arguments, then copied for each test that asks (~1.7 s of CPU a build, MediaPipe included; ~20 builds of three
argument sets in a run of the suite, most of them identical).

Usage (tests/ is on sys.path: tests/conftest.py is there):

    from standin_cache import standin_copy
    standin_copy(tmp_path / "head", seed=0, n_shape=10, n_expr=10)   # what build_standin(...) would write there

A copy holds the arrays and text a build into `out_dir` writes (the build is deterministic in its values; its output
marker names the folder, so a build is kept for each folder name asked for); a test may change its copy.
test_standin.py and test_reproducible_build.py build their own, as they test the build itself.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_built: dict[tuple, Path] = {}
_folder: list[str] = []


def standin_copy(out_dir, seed: int = 0, n_shape: int = 50, n_expr: int = 30) -> Path:
    """Copy the stand-in of these arguments (built on first use in this process) to `out_dir`, which must not exist or
    be an empty folder (as tmp_path_factory.mktemp makes)."""
    from flame_fitting.head.standin import build_standin

    key = (int(seed), int(n_shape), int(n_expr), Path(out_dir).name)
    if key not in _built:
        if not _folder:
            _folder.append(tempfile.mkdtemp(prefix="geoface-test-standins-"))
            atexit.register(shutil.rmtree, _folder[0], True)
        built = Path(_folder[0]) / "standin-{}-{}-{}".format(*key[:3]) / key[3]
        build_standin(built, seed=seed, n_shape=n_shape, n_expr=n_expr)
        _built[key] = built
    if Path(out_dir).is_dir() and not any(Path(out_dir).iterdir()):
        Path(out_dir).rmdir()
    shutil.copytree(_built[key], out_dir)
    return Path(out_dir)
