"""`geoface export fits --format vhap|nerfstudio CAPTURE FITS --out DIR` beside the older `geoface export SAMPLE`:
the same library calls as flame_fitting.formats.export_*, every option in --help, one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flame_fitting"))
from export_testdata import SEQUENCE, SUBJECT, make_export_data  # noqa: E402

from cliutil import cli  # noqa: E402
from geoface.cli.exports import route  # noqa: E402




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_export_data(tmp_path_factory.mktemp("export_cli"))


def test_help_documents_every_option(capsys):
    rc, out, _ = cli(capsys, "export", "fits", "--help")
    assert rc == 0 and "geoface export fits" in out
    for opt in ("CAPTURE", "FITS", "--format", "{vhap,nerfstudio}", "--out", "--cameras", "--n-shape", "--n-expr",
                "--train-ratio", "--val-camera", "--follow-symlinks", "--force"):
        assert opt in out, opt
    rc, out, _ = cli(capsys, "export", "--help")
    assert rc == 0 and "geoface export fits --format vhap|nerfstudio CAPTURE FITS --out DIR" in " ".join(out.split())
    assert "export-fits" not in cli(capsys, "--help")[1]  # the hidden name is not listed


def test_route_keeps_the_sample_form():
    assert route(["export", "fits", "--out", "gs"]) == ["export", "fits", "--out", "gs"]  # a sample folder 'fits'
    assert route(["export", "sample", "--out", "fits"]) == ["export", "sample", "--out", "fits"]
    assert route(["export", "fits", "a", "b", "--out", "o"]) == ["export-fits", "a", "b", "--out", "o"]
    assert route(["export", "fits", "--format", "vhap", "a"])[0] == "export-fits"
    assert route(["fit", "fits", "--out", "x"]) == ["fit", "fits", "--out", "x"]


@pytest.mark.parametrize("fmt", ["vhap", "nerfstudio"])
def test_export_fits_writes_the_library_result(capsys, data, tmp_path, fmt):
    rc, out, err = cli(capsys, "export", "fits", "--format", fmt, data.capture, data.fits, "--out", tmp_path / fmt)
    assert rc == 0, err
    summary = json.loads(out)
    assert summary == json.loads((tmp_path / fmt / "export.json").read_text()) and summary["format"] == fmt
    seq = tmp_path / fmt / SUBJECT / SEQUENCE
    assert (seq / "transforms_train.json").is_file() if fmt == "vhap" else (seq / "00000" / "transforms.json").is_file()
    rc, _, err = cli(capsys, "export", "fits", "--format", fmt, data.capture, data.fits, "--out", tmp_path / fmt)
    assert rc == 2 and "--force" in err
    rc, _, err = cli(capsys, "export", "fits", "--format", fmt, data.capture, data.fits, "--out", tmp_path / fmt,
                     "--force")
    assert rc == 0, err


@pytest.mark.parametrize("args,message", [
    (["{capture}", "{root}/nowhere"], "geoface export fits: FITS {root}/nowhere does not exist"),
    (["{root}/nowhere", "{fits}"], "geoface export fits: CAPTURE {root}/nowhere does not exist"),
    (["{fits}", "{fits}"], "geoface export fits: {fits}/capture.json: missing (is {fits} a geoface capture? a dataset "
                           "in another layout is imported first"),
    (["{capture}", "{capture}"], "geoface export fits: {capture}: no <subject>/<sequence>/fit.npz"),
])
def test_bad_input_is_one_line(capsys, data, tmp_path, args, message):
    fill = lambda s: s.format(root=data.root, capture=data.capture, fits=data.fits)  # noqa: E731
    rc, out, err = cli(capsys, "export", "fits", "--format", "vhap", *map(fill, args), "--out", tmp_path / "o")
    assert rc == 2 and out == "" and err.startswith(fill(message)) and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_vhap_options_are_refused_for_nerfstudio(capsys, data, tmp_path):
    rc, _, err = cli(capsys, "export", "fits", "--format", "nerfstudio", data.capture, data.fits,
                     "--out", tmp_path / "o", "--n-shape", "300")
    assert rc == 2 and "--n-shape: only for --format vhap" in err


@pytest.mark.parametrize("fmt", ["vhap", "nerfstudio"])
def test_a_frame_linked_from_outside_the_capture_is_skipped_with_one_warning(capsys, data, tmp_path, fmt):
    """Regression (security): an image that is a symbolic link out of the capture was copied into the export."""
    cap = tmp_path / "capture"
    shutil.copytree(data.capture, cap)
    (tmp_path / "private.txt").write_text("private\n")
    link = cap / SUBJECT / SEQUENCE / "00000" / "c0.png"
    link.unlink()
    os.symlink(tmp_path / "private.txt", link)
    rc, out, err = cli(capsys, "export", "fits", "--format", fmt, cap, data.fits, "--out", tmp_path / "o")
    assert rc == 0 and err.count("\n") == 1 and err.startswith(f"warning: {link}: a symbolic link to "), err
    assert "--follow-symlinks" in err and json.loads(out)["sequences"][0]["skipped"][0]["frame"] == 0
    assert not any(p.read_bytes() == b"private\n" for p in (tmp_path / "o").rglob("*") if p.is_file())
    rc, out, err = cli(capsys, "export", "fits", "--format", fmt, cap, data.fits, "--out", tmp_path / "o2",
                       "--follow-symlinks")
    assert rc == 0 and err == "" and json.loads(out)["follow_symlinks"] is True
    assert any(p.read_bytes() == b"private\n" for p in (tmp_path / "o2").rglob("*") if p.is_file())


def test_a_mask_that_is_a_symlink_loop_is_one_line(capsys, data, tmp_path):
    """The link check must not turn a link loop into a traceback (Path.resolve raises RuntimeError on Python 3.11)."""
    cap = tmp_path / "capture"
    shutil.copytree(data.capture, cap)
    masks = cap / SUBJECT / SEQUENCE / "00000" / "masks"
    (masks / "c1.png").unlink()
    os.symlink("x", masks / "c1.png")
    os.symlink("c1.png", masks / "x")
    rc, _, err = cli(capsys, "export", "fits", "--format", "nerfstudio", cap, data.fits, "--out", tmp_path / "o")
    assert rc == 2 and err.count("\n") == 1 and f"{masks / 'c1.png'}: Too many levels of symbolic links" in err, err
