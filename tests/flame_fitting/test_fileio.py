"""fileio: atomic writes with one temporary-name scheme, folders replaced only when geoface wrote them,
outputs that would swallow an input refused, stale temporaries of killed runs removed by the next run."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from flame_fitting.core.fileio import (MARKER, TMP_TAG, OutputError, atomic_write, check_output_dir, clean_stale,
                                  output_dir, replace_dir, temp_path, write_csv, write_json, write_npz)

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dst = tmp_path / "a.json"
    write_json(dst, {"x": np.float32(1.5), "y": np.arange(2)})
    assert dst.read_text().startswith("{") and '"x": 1.5' in dst.read_text()

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(dst, boom)
    assert '"x": 1.5' in dst.read_text()  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    write_npz(tmp_path / "b.npz", a=np.arange(3))  # np.savez on a file object: no '.npz' appended elsewhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npz"]
    np.testing.assert_array_equal(np.load(tmp_path / "b.npz")["a"], np.arange(3))


def test_foreign_folder_is_never_replaced(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not written by geoface"):
        with output_dir(user) as tmp:
            (tmp / "x").write_text("x")
    with pytest.raises(OutputError, match="not written by geoface"):
        check_output_dir(user, overwrite=True)
    assert (user / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left
    (tmp_path / "empty").mkdir()  # an empty folder holds nothing to lose
    with output_dir(tmp_path / "empty") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "empty" / MARKER).is_file()


def test_own_folder_replaced_only_when_asked(tmp_path):
    out = tmp_path / "out"
    with output_dir(out) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(OutputError, match=r"pass overwrite=True to replace it$"):  # the parameter of the call
        with output_dir(out, overwrite=False):
            pass
    with output_dir(out, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "v2"]


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_output_containing_an_input_is_refused(tmp_path, where):
    """Also an output inside an input: it would change the input (a file more in a capture), and the `--force` run
    of what wrote that input sweeps everything it did not write there (an export in `geoface fit`'s fits/)."""
    src = tmp_path / "data" / "source"
    src.mkdir(parents=True)
    (src / "img.png").write_bytes(b"png")
    out = {"same": src, "parent": tmp_path / "data", "inside": src / "export"}[where]
    out.mkdir(exist_ok=True)
    (out / MARKER).write_text("{}")  # even a folder geoface once wrote
    with pytest.raises(OutputError, match="input"):
        check_output_dir(out, [src], overwrite=True)
    tmp = temp_path(tmp_path / "x")
    tmp.mkdir()
    with pytest.raises(OutputError, match="input"):
        replace_dir(tmp, out, overwrite=True, inputs=[src])
    assert (src / "img.png").read_bytes() == b"png"


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path):
    dst = tmp_path / "captures"
    host = temp_path(dst).name.split(TMP_TAG)[1].split("-")[0]
    dead = tmp_path / f".captures{TMP_TAG}{host}-{_dead_pid()}-0123abcd"
    live = tmp_path / f".captures{TMP_TAG}{host}-{os.getpid()}-89abcdef"
    other_host = tmp_path / f".captures{TMP_TAG}elsewhere-{_dead_pid()}-0123abcd"
    legacy = tmp_path / ".captures.tmp-0123abcd"
    unrelated = tmp_path / ".captures.tmp-notmine"
    for p in (dead, live, other_host, legacy, unrelated):
        p.mkdir()
        (p / "f").write_text("x")
    removed = clean_stale(dst)
    assert removed == [dead]  # `.captures.tmp-0123abcd` may be the user's own: only our own scheme is removed
    assert live.is_dir() and other_host.is_dir() and unrelated.is_dir() and (legacy / "f").is_file()


def test_killed_writer_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    """The captures stage killed mid-write (kill -9) leaves its temporary; the next write of the same
    output removes it."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from flame_fitting.formats.capture import CaptureWriter
        from flame_fitting.geometry.camera import Camera
        w = CaptureWriter({str(tmp_path / 'captures')!r}, source="test")
        K = np.array([[100, 0, 32], [0, 100, 32], [0, 0, 1]], np.float32)
        w.set_cameras("s", "q", {{"c": Camera(K=K, world_to_cam=np.eye(4, dtype=np.float32), width=64, height=64)}})
        w.add_image("s", "q", 0, "c", np.zeros((64, 64, 3), np.uint8))
        print("written", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "written"
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        p.kill()
    left = [q for q in tmp_path.iterdir() if TMP_TAG in q.name]
    assert len(left) == 1 and any(left[0].rglob("*.png"))
    time.sleep(0.05)
    with output_dir(tmp_path / "captures") as tmp:
        (tmp / "x").write_text("x")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["captures"]


def test_an_output_of_another_kind_is_never_replaced(tmp_path):
    """A folder's marker names what wrote it; a writer of another kind refuses it even with overwrite (the uv
    stage's `--previews` given a capture used to sweep the capture's files away, exit 0)."""
    from flame_fitting.core.fileio import mark_output, output_kind, replace_dir

    cap = mark_output(tmp_path / "cap", "capture")
    (cap / "capture.json").write_text("{}")
    assert output_kind(cap) == "capture"
    with pytest.raises(OutputError, match="holds geoface's capture output, not uv previews"):
        check_output_dir(cap, overwrite=True, kind="uv previews")
    tmp = tmp_path / "new"
    tmp.mkdir()
    with pytest.raises(OutputError, match="capture output"):
        replace_dir(tmp, cap, overwrite=True, kind="export")
    with pytest.raises(OutputError, match="capture output, not what this command writes"):  # a writer that names no kind: refused too
        check_output_dir(cap, overwrite=True)
    assert (cap / "capture.json").read_text() == "{}"
    replace_dir(tmp, cap, overwrite=True, kind="capture")  # its own kind: replaced as before
    assert output_kind(cap) == "capture" and not (cap / "capture.json").exists()
    old = mark_output(tmp_path / "old")  # a marker without a kind (written before kinds): every writer may replace
    (old / "x").write_text("x")
    assert check_output_dir(old, overwrite=True, kind="uv") == old


def _png_header_only(w: int, h: int, depth: int = 16, colour: int = 6) -> bytes:
    """A PNG file of a few dozen bytes declaring w × h pixels (IHDR, an empty IDAT, IEND)."""
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("w, h, words", [(32767, 32767, "over 178 million"), (16000, 9000, "16000×9000")])
def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, w, h, words):
    """A 2 MB 16384² 16-bit PNG cost ~5 GB to read (decoded, then converted to float32; found by an audit): the
    header's size is checked first."""
    from flame_fitting.core.readers import read_image

    path = tmp_path / "cam0.png"
    path.write_bytes(_png_header_only(w, h))
    with pytest.raises(OutputError, match=rf"cam0.png: the image declares {words} pixels, more than a capture's"):
        read_image(path)


def test_preview_size_keeps_small_pictures_and_shrinks_large_ones():
    import numpy as np

    from flame_fitting.core.fileio import preview_size

    small = np.zeros((512, 384, 3), np.uint8)
    assert preview_size(small) is small
    big = np.full((3208, 2200, 3), 200, np.uint8)
    out = preview_size(big)
    assert out.shape == (1024, 702, 3) and out.dtype == np.uint8 and (out == 200).all()
    assert preview_size(np.zeros((100, 2000), np.uint8), 512).shape == (26, 512)


def test_output_files_get_the_umask_mode_not_a_librarys_0600(tmp_path):
    """safetensors' save_file (every save_pretrained) writes 0600: a lab's shared model folder was unreadable to the
    group. A folder the toolkit puts in place gives such files the mode of any new file (0666 less the umask)."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o002)  # a group-shared project
    try:
        with output_dir(tmp_path / "model", kind="model") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
            (tmp / "sub").mkdir()
            save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "ema.safetensors"))
            write_json(tmp / "config.json", {"a": 1})
            (tmp / "kept.txt").write_text("x")
            os.chmod(tmp / "kept.txt", 0o640)  # a file with a group bit keeps its mode
            assert os.stat(tmp / "model.safetensors").st_mode & 0o777 == 0o600  # the library's mode
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path / "model").as_posix(): p.stat().st_mode & 0o777
             for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert modes["model.safetensors"] == modes["sub/ema.safetensors"] == modes["config.json"] == 0o664
    assert modes["kept.txt"] == 0o640 and not [n for n in os.listdir(tmp_path) if "mode-probe" in n]


def test_csv_cells_a_spreadsheet_would_run_are_written_as_text(tmp_path):
    """A name or message from another's file starting with '=', '+', '-', '@', tab or CR: a spreadsheet opening the
    CSV ran it as a formula (OWASP "CSV injection"; before, the cell was written as it is). Now it gets a leading "'";
    numbers, negative ones included, and other text are written unchanged."""
    import csv

    import pandas as pd

    bad = ['=HYPERLINK("http://x","y")', "+1", "-1+2", "@SUM(A1)", "\t=1", "\r=1"]
    df = pd.DataFrame({"camera": bad + ["cam-0", None], "yaw_deg": [-1.5, 2.0, -3.25, 0.0, 1.0, -0.0, 7.0, -8.5],
                       "n": list(range(-4, 4)), "note": pd.Series(["a=b"] * 7 + ["-x"], dtype="string")})
    write_csv(tmp_path / "v.csv", df)
    with open(tmp_path / "v.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["camera", "yaw_deg", "n", "note"]
    assert [r[0] for r in rows[1:]] == ["'" + b for b in bad] + ["cam-0", ""]
    assert [r[3] for r in rows[1:]] == ["a=b"] * 7 + ["'-x"]
    back = pd.read_csv(tmp_path / "v.csv")
    np.testing.assert_allclose(back.yaw_deg, df.yaw_deg, rtol=0, atol=0)
    assert back.n.tolist() == list(range(-4, 4))
    assert df.camera.tolist()[:2] == bad[:2]  # the caller's frame is not changed
