"""A hostile capture cannot make a stage read, write or delete outside its folders (found by an audit: a manifest
subject 'evil/../..' made `geoface landmarks` delete and replace a user's folder beside the output; a cameras.json
key '../../victim/figure' made `geoface export` overwrite a PNG anywhere; an absolute manifest path copied any file
into an export). Names are single path components, manifest paths relative paths inside the capture.
The names also reach the terminal: no control or format character (an ESC sequence, a line break, U+202E) in a name,
and every error line escapes them (a later audit: a camera named 'cam\\x1b]0;...\\x07' retitled the terminal)."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flame_fitting.core.errors import GeofaceError, error_line
from flame_fitting.core.executor import ExecutorConfig, open_executor
from flame_fitting.core.names import name_key, name_problem, relpath_problem, terminal_safe
from flame_fitting.core.unit_keys import Unit
from flame_fitting.core.units import run_units
from flame_fitting.formats.capture import CaptureError, CaptureWriter, capture_index, load_capture
from flame_fitting.formats.capture_checks import load_cameras

from test_capture import write_small


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "evil/../..", "/abs", "a\\b", "x\0y", ".hidden", 3,
                                  "cam\x1b[31m", "a\nERROR: x", "a\rb", "a\u202egnp.exe", "a\u200bb", "a\u2028b",
                                  "cam\udcff", "c" * 129, "\u00e9" * 65,
                                  '=HYPERLINK("x.example.com","y")', "+1", "-1+2", "-1", "@SUM(A1)"])
def test_unsafe_names(name):
    assert name_problem(name)


@pytest.mark.parametrize("name", ["cam0", "222200037", "subject 1", "a-b", "a.1", "E001_Neutral_Eyes_Open",
                                  "Jos\u00e9", "\u5f20\u4e09", "c" * 128,
                                  "EMO-1-shout+laugh", "cam_222200037", "s1_all", "a=b", "cam@2"])  # NeRSemble, RenderMe
def test_safe_names(name):
    assert name_problem(name) is None


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.png", "s/../../x.png", "s//x.png", "./s/x.png", "C:/x.png",
                                  "s\\x.png", ""])
def test_unsafe_paths(path):
    assert relpath_problem(path)


def test_a_control_character_in_a_relative_path_is_refused():
    assert relpath_problem("s1/seq/00000/cam\x1b[2J.png") and relpath_problem("s1/seq\n/x.png")


def test_terminal_safe_escapes_what_a_terminal_obeys_and_keeps_the_rest():
    assert terminal_safe("cam\x1b]0;owned\x07 a\nb\rc \u202eexe\x9b \udcff") == \
        "cam\\x1b]0;owned\\x07 a\\nb\\rc \\u202eexe\\x9b \\udcff"
    assert terminal_safe("Jos\u00e9 \u5f20 cam_0: ok") == "Jos\u00e9 \u5f20 cam_0: ok"


def test_an_error_line_is_one_line_without_escape_sequences():
    for e in (GeofaceError("s1/cam\x1b[2J\nverdict: all good: bad"), FileNotFoundError(2, "No such file", "x\r\x1b[1Ay")):
        line = error_line(e)
        assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\\x1b" in line, line


def test_names_that_one_file_system_stores_as_one_share_a_key():
    assert name_key("Jos\u00e9") == name_key("Jose\u0301") == name_key("JOS\u00c9")
    assert name_key("cam1") != name_key("cam2")


def test_an_image_whose_name_is_not_utf8_is_an_error_not_a_crash(tmp_path):
    # OpenCV 4.11's binding segfaults on a path holding a lone surrogate (bytes not UTF-8): run it in a child
    code = ("import os, sys, numpy as np; from pathlib import Path; from flame_fitting.core.fileio import write_png, "
            "OutputError; from flame_fitting.core.readers import read_image, read_mask\n"
            "d = Path(sys.argv[1]); write_png(d / 'a.png', np.zeros((4, 4, 3), np.uint8))\n"
            "p = d / os.fsdecode(b'cam\\xff.png'); os.rename(d / 'a.png', p)\n"
            "for read in (read_image, read_mask):\n"
            "    try:\n        read(p)\n    except OutputError as e:\n        print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.count("cam\\udcff.png: the file name holds bytes that are not UTF-8") == 2, r.stdout


def test_safe_path():
    assert relpath_problem("s1/seq/00000/cam0.png") is None and relpath_problem("s1/seq/00000/masks/cam0.png") is None


def _edit_manifest(root: Path, **changes) -> None:
    m = pd.read_parquet(root / "manifest.parquet")
    for col, value in changes.items():
        m.loc[0, col] = value
    m.to_parquet(root / "manifest.parquet", index=False)


@pytest.mark.parametrize("col, value, words", [
    ("subject", "evil/../..", "subject 'evil/../..' holds a path separator"),
    ("sequence", "..", "sequence '..' starts with '.'"),
    ("camera", "../../victim", "camera '../../victim' holds a path separator"),
    ("path", "/home/user/.aws/credentials", "path '/home/user/.aws/credentials' an absolute path"),
    ("path", "s1/../../secret.png", "leaves its folder"),
    ("mask_path", "/dev/zero", "mask_path '/dev/zero' an absolute path"),
    ("subject", "s1\x1b]0;owned\x07", "subject 's1\\x1b]0;owned\\x07' holds a control"),
    ("camera", "=SUM(1,2)", "camera '=SUM(1,2)' starts with '=' (a spreadsheet"),
    ("subject", "-1+2", "subject '-1+2' starts with '-' (a spreadsheet"),
])
def test_a_hostile_manifest_is_refused_by_name(tmp_path, col, value, words):
    root = tmp_path / "cap"
    write_small(root)
    _edit_manifest(root, **{col: value})
    for read in (load_capture, capture_index):  # the stages' reader and diff-captures'
        with pytest.raises(CaptureError) as e:
            read(root)
        assert "manifest.parquet" in str(e.value) and words in str(e.value), str(e.value)


def test_a_hostile_camera_name_in_cameras_json_is_refused(tmp_path):
    root = tmp_path / "cap"
    write_small(root)
    path = root / "s1" / "seq" / "cameras.json"
    data = json.loads(path.read_text())
    data["cameras"]["../../../victim/figure"] = data["cameras"].pop("cam0")
    path.write_text(json.dumps(data))
    with pytest.raises(CaptureError, match=r"cameras.json: camera name '../../../victim/figure' holds a path"):
        load_cameras(path)


def test_a_reader_cannot_write_a_capture_with_a_path_for_a_name(tmp_path):
    from test_capture import cams

    with pytest.raises(CaptureError, match="camera 'a/b'"):
        with CaptureWriter(tmp_path / "cap", source="test") as w:
            w.set_cameras("s1", "seq", {"a/b": cams()["cam0"]})
    assert not (tmp_path / "cap").exists() and not (tmp_path / "a").exists()


def _unit_fn(unit, tmp, extras):
    (tmp / "out.txt").write_text(unit.rel)
    return {}, []


def test_the_unit_runner_never_touches_a_folder_outside_its_output(tmp_path):
    """Second line of defence: a unit whose name is a path is refused before anything is written or removed."""
    victim = tmp_path / "victim_project"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    out = tmp_path / "work" / "out"
    with open_executor(ExecutorConfig(workers=1)) as ex:
        with pytest.raises(GeofaceError, match="a name holds a path separator"):
            run_units(ex, _unit_fn, [Unit("evil/../..", "victim_project", "k")], out, "landmarks")
        with pytest.raises(GeofaceError, match="starts with '.'"):
            run_units(ex, _unit_fn, [Unit("x", "..", "k")], out, "landmarks")
    assert (victim / "precious.txt").read_text() == "keep" and not out.exists()


def _unit_fn_lost_elsewhere(unit, tmp, extras):
    """Writes its output, and beside it what a first attempt on another node left when that node was lost."""
    stale = tmp.parent / f".{unit.sequence}.geoface-tmp-otherhost1234abcd-17-0123abcd"
    stale.mkdir()
    (stale / "half.npz").write_bytes(b"x")
    return _unit_fn(unit, tmp, extras)


def test_temporaries_of_any_host_are_gone_when_the_units_have_returned(tmp_path):
    """A unit whose worker was lost on one node and retried on another leaves the first attempt's temporary
    (`clean_stale` removes only this host's): run_units removes every temporary once all units returned, so the
    folder DVC hashes is the units' outputs only."""
    out = tmp_path / "out"
    with open_executor(ExecutorConfig(workers=1)) as ex:
        run = run_units(ex, _unit_fn_lost_elsewhere, [Unit("s1", "seq", "k1"), Unit("s2", "seq", "k2")], out,
                        "landmarks")
    assert run.ran == ["s1/seq", "s2/seq"] and not run.failures
    for s in ("s1", "s2"):
        assert sorted(p.name for p in (out / s).iterdir()) == ["seq"]
        assert (out / s / "seq" / "out.txt").read_text() == f"{s}/seq"
