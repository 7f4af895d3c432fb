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


def test_the_refusal_to_replace_an_output_says_the_callers_option(tmp_path, geoface):
    """An existing capture is replaced only when asked: from Python the refusal says `overwrite=True` (the
    parameter of geoface.import_capture), from the command line `--force`. Before, both said "pass --force", an
    option a caller of the Python API does not have."""
    import geoface as api
    from flame_fitting.core.fileio import OutputError
    from pipelines.import_config import ImportConfig

    src = write_folder(tmp_path / "raw", Scene(make_cameras(2)), frames=(0,))
    cap = tmp_path / "cap"
    api.import_capture("folder", src, cap, ImportConfig())
    with pytest.raises(OutputError) as e:
        api.import_capture("folder", src, cap, ImportConfig())
    assert str(e.value) == f"{cap}: exists (written by geoface); pass overwrite=True to replace it"
    r = geoface("import", "folder", src, "--out", cap)
    assert r.returncode == 2 and r.stderr.strip() == (f"geoface import: {cap}: exists (written by geoface); pass "
                                                      "--force to replace it"), r.stderr
    assert api.import_capture("folder", src, cap, ImportConfig(), overwrite=True).n_images == 2
