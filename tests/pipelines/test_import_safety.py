"""`geoface import` never deletes data it did not write: --out equal to the source or a parent of it is
refused, an existing folder is replaced only when geoface wrote it and --force is given. The command runs in the
test's process (tests/geoface/cliutil.py): what is shown is what it deletes, not how a process ends."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from writers import Scene, make_cameras, write_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "geoface"))
from cliutil import cli  # noqa: E402

from flame_fitting.formats.capture import load_capture  # noqa: E402
from flame_fitting.core.fileio import MARKER  # noqa: E402


@pytest.fixture
def geoface(capsys):
    """`geoface ARGS` in this process: an object with returncode, stdout and stderr, as subprocess.run's."""
    def run(*args):
        rc, out, err = cli(capsys, *args)
        return SimpleNamespace(returncode=rc, stdout=out, stderr=err)
    return run


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_import_refuses_outputs_that_would_delete_user_data(tmp_path, geoface):
    src = tmp_path / "project" / "raw"
    write_folder(src, Scene(make_cameras(2)), frames=(0,))
    (tmp_path / "project" / "notes.txt").write_text("unrelated user file")
    before = snapshot(tmp_path)
    for out in (src, tmp_path / "project"):
        r = geoface("import", "folder", src, "--out", out, "--force")
        assert r.returncode == 2 and "input" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert snapshot(tmp_path) == before
    user = tmp_path / "results"
    user.mkdir()
    (user / "paper.pdf").write_bytes(b"%PDF")
    r = geoface("import", "folder", src, "--out", user, "--force")
    assert r.returncode == 2 and "not written by geoface" in r.stderr
    assert (user / "paper.pdf").read_bytes() == b"%PDF"

    cap = tmp_path / "cap"
    assert geoface("import", "folder", src, "--out", cap).returncode == 0
    assert (cap / MARKER).is_file() and len(load_capture(cap).manifest) == 2
    r = geoface("import", "folder", src, "--out", cap)
    assert r.returncode == 2 and "--force" in r.stderr
    assert geoface("import", "folder", src, "--out", cap, "--force").returncode == 0
    assert snapshot(src) == {k[len("project/raw/"):]: v for k, v in before.items() if k.startswith("project/raw/")}
