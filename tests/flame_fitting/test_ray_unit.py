"""What a Ray task does around a unit (workers.ray_unit), called here as the task calls it: on a cluster of several
machines a worker's working folder is wherever `ray start` ran, so the stage's relative paths (dvc.yaml's
`data/fits`) must be read in the stage's folder; a node that does not have that folder, or runs other geoface code,
fails the unit with a line saying so instead of writing elsewhere or mixing code versions."""
import os
from pathlib import Path

import pytest

from flame_fitting.core.workers import package_digest, ray_unit


def _read_relative(item):
    return Path(item).read_text(), os.getcwd()


def _threads(item):
    import numba
    import torch

    return torch.get_num_threads(), numba.get_num_threads()


@pytest.fixture
def restore_cwd():
    here = os.getcwd()
    yield
    os.chdir(here)


def test_a_unit_reads_relative_paths_in_the_stages_folder(tmp_path, restore_cwd):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("the stage's file")
    os.chdir("/")  # the worker's own working folder
    r = ray_unit(_read_relative, "data/x.txt", str(tmp_path), package_digest())
    assert r.ok and r.value == ("the stage's file", str(tmp_path)), r.error


def test_a_node_without_the_stages_folder_fails_the_unit_with_one_line(tmp_path, restore_cwd):
    r = ray_unit(_read_relative, "data/x.txt", str(tmp_path / "not-on-this-node"), package_digest())
    assert not r.ok and r.error.startswith("ExecutorError: node ")
    assert "not-on-this-node does not exist here" in r.error and "shared file system" in r.error


def test_a_node_running_other_code_fails_the_unit(tmp_path, restore_cwd):
    r = ray_unit(_read_relative, "x", str(tmp_path), "0" * 64)
    assert not r.ok and "runs other geoface code or library versions than the stage" in r.error


def test_a_task_runs_its_unit_on_one_thread_and_gives_them_back(tmp_path, restore_cwd):
    import numba
    import torch

    before = (torch.get_num_threads(), numba.get_num_threads())
    r = ray_unit(_threads, None, str(tmp_path), package_digest())
    assert r.ok and r.value == (1, 1)
    assert (torch.get_num_threads(), numba.get_num_threads()) == before


def test_the_code_digest_covers_every_package_of_the_checkout():
    from flame_fitting.core.workers import CODE_PACKAGES, PACKAGE_ROOT

    assert all((PACKAGE_ROOT / p / "__init__.py").is_file() for p in CODE_PACKAGES)
    assert len(package_digest()) == 64 and package_digest() == package_digest()
