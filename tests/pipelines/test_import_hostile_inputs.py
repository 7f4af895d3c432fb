"""Hostile and odd inputs to the importers (the tenth session's security audit, 2026-12-07): files that symbolic links
pull from outside the source, a mask_path that leaves it, names from file names that would write outside the output,
masks and embedded images declaring billions of pixels, a .npy declaring terabytes, JSON nested or numbered to break
the parser, a FIFO as metadata, one badly named frame, non-ASCII digits as frame folders, an output inside the input
and --metrics / --sheets pointing at input files. Each was a traceback, a hang, a file copied or replaced, or a whole
import lost before."""
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "geoface"))
from cliutil import cli  # noqa: E402
from writers import (Scene, make_cameras, write_folder, write_nersemble, write_png, write_renderme360,  # noqa: E402
                     write_transforms, W, H)
from flame_fitting.core.readers import MAX_IMAGE_PIXELS  # noqa: E402
from flame_fitting.core.names import name_key  # noqa: E402

from flame_fitting.formats.capture import CaptureError  # noqa: E402
from pipelines.import_config import ImportConfig  # noqa: E402
from pipelines.registry import import_capture  # noqa: E402


def png_bomb(path: Path, side: int, channels: int = 1) -> None:
    """A valid side×side 8-bit PNG of zeros, a few hundred KB."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    co, row = zlib.compressobj(9), b"\0" * (1 + side * channels)
    idat = b"".join(co.compress(row) for _ in range(side)) + co.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, {1: 0, 3: 2}[channels], 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def skipped(cap: Path) -> list[dict]:
    return json.loads((cap / "capture.json").read_text())["skipped"]


@pytest.fixture
def scene():
    return Scene(make_cameras(2))


def test_an_image_symlinked_from_outside_the_source_is_not_copied(tmp_path, scene):
    src = write_folder(tmp_path / "raw", scene, nested=False)
    private = tmp_path / "private.png"
    write_png(private, np.full((H, W, 3), 99, np.uint8))
    (src / "cam0.png").unlink()
    os.symlink(private, src / "cam0.png")
    import_capture("folder", src, tmp_path / "cap", ImportConfig())
    m = pd.read_parquet(tmp_path / "cap/manifest.parquet")
    assert m.camera.tolist() == ["cam1"]
    assert any("symbolic link" in s["reason"] and "follow_symlinks" in s["reason"] for s in skipped(tmp_path / "cap"))
    # links of your own: captures.follow_symlinks reads them
    import_capture("folder", src, tmp_path / "cap2", ImportConfig(follow_symlinks=True))
    assert pd.read_parquet(tmp_path / "cap2/manifest.parquet").camera.tolist() == ["cam0", "cam1"]


def test_only_the_dvc_cache_of_the_repository_holding_the_source_is_read(tmp_path, scene):
    """DVC's symlink checkout links into `.dvc/cache` of the repository holding the data: read. A link into another
    repository's cache (anything under some `.dvc/cache` was read before) is a file from elsewhere: refused."""
    src = write_folder(tmp_path / "repo" / "raw", scene, nested=False)
    for cam, repo in (("cam0", tmp_path / "repo"), ("cam1", tmp_path / "other")):
        cached = repo / ".dvc/cache/files/md5/ab" / cam
        cached.parent.mkdir(parents=True, exist_ok=True)
        (src / f"{cam}.png").rename(cached)
        os.symlink(cached, src / f"{cam}.png")
    import_capture("folder", src, tmp_path / "cap", ImportConfig())
    assert pd.read_parquet(tmp_path / "cap/manifest.parquet").camera.tolist() == ["cam0"]
    (s,) = skipped(tmp_path / "cap")
    assert "cam1.png" in s["item"] and s["reason"].startswith(f"a symbolic link to {tmp_path / 'other'}/.dvc/cache/")


def test_transforms_mask_path_cannot_leave_the_source(tmp_path, scene):
    src = write_transforms(tmp_path / "a" / "scene", scene)
    write_png(tmp_path / "secret.png", np.full((H, W, 3), 77, np.uint8))
    meta = json.loads((src / "transforms.json").read_text())
    meta["frames"][0]["mask_path"] = "../../secret.png"
    meta["frames"][1]["mask_path"] = str(tmp_path / "secret.png")
    (src / "transforms.json").write_text(json.dumps(meta))
    import_capture("transforms_json", src, tmp_path / "cap", ImportConfig())
    m = pd.read_parquet(tmp_path / "cap/manifest.parquet")
    assert len(m) == 2 and ("mask_path" not in m or m.mask_path.isna().all())
    assert sum("mask_path" in s["item"] for s in skipped(tmp_path / "cap")) == 2


def test_a_renderme360_file_linked_from_outside_is_not_opened(tmp_path, scene):
    """Its images were refused one by one, but its FLAME and keypoint side files were still copied."""
    raw, anno = write_renderme360(tmp_path / "rm", scene, frames=range(1), keypoints=np.zeros((106, 3)))
    elsewhere = tmp_path / "elsewhere" / anno.name
    elsewhere.parent.mkdir()
    anno.rename(elsewhere)
    os.symlink(elsewhere, anno)
    with pytest.raises(CaptureError, match="nothing"):
        import_capture("renderme360", tmp_path / "rm", tmp_path / "cap", ImportConfig())
    assert not (tmp_path / "cap").exists()
    import_capture("renderme360", tmp_path / "rm", tmp_path / "cap2", ImportConfig(follow_symlinks=True))
    assert sorted(p.parent.name for p in (tmp_path / "cap2").glob("*/*/renderme360_*/*.npz")) == [
        "renderme360_flame", "renderme360_keypoints2d"]


def test_renderme360_names_from_file_names_never_write_outside_the_output(tmp_path, scene):
    raw, anno = write_renderme360(tmp_path / "rm", scene, frames=range(1))
    raw.rename(raw.parent / ".._.._raw.smc")
    anno.rename(anno.parent / ".._.._anno.smc")
    with h5py.File(anno.parent / ".._.._anno.smc", "a") as f:
        for c in list(f["Calibration"]):
            del f["Calibration"][c]
    out = tmp_path / "o1" / "o2" / "cap"
    out.parent.mkdir(parents=True)
    with pytest.raises(CaptureError):
        import_capture("renderme360", tmp_path / "rm", out, ImportConfig())
    assert not (tmp_path / "o1" / "renderme360_flame").exists()


def test_a_mask_declaring_too_many_pixels_is_skipped_before_decoding(tmp_path, scene):
    src = write_folder(tmp_path / "raw", scene)
    png_bomb(src / "s1/seq/00000/masks/cam0.png", 12000)
    import_capture("folder", src, tmp_path / "cap", ImportConfig())
    assert any("declares 12000×12000" in s["reason"] for s in skipped(tmp_path / "cap"))


def test_an_encoded_image_in_an_smc_declaring_too_many_pixels_is_skipped(tmp_path, scene):
    raw, _ = write_renderme360(tmp_path / "rm", scene, frames=range(1))
    png_bomb(tmp_path / "bomb.png", 12000, 3)
    with h5py.File(raw, "a") as f:
        del f["Camera/cam0/color/0"]
        f["Camera/cam0/color/0"] = np.frombuffer((tmp_path / "bomb.png").read_bytes(), np.uint8)
    import_capture("renderme360", tmp_path / "rm", tmp_path / "cap", ImportConfig())
    assert pd.read_parquet(tmp_path / "cap/manifest.parquet").camera.tolist() == ["cam1"]
    assert any("declares 12000×12000" in s["reason"] for s in skipped(tmp_path / "cap"))


def test_a_colour_correction_npy_declaring_terabytes_skips_its_camera(tmp_path, scene):
    src = tmp_path / "ns"
    write_nersemble(src, scene, version=1, frames=range(1), affine={s: np.eye(4) for s in scene.cameras})
    npy = src / "017/annotations/EMO-1/color_correction/cam0.npy"
    with open(npy, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (1 << 40,)})
        f.write(b"\0" * 128)
    import_capture("nersemble", src, tmp_path / "cap", ImportConfig())
    assert any(s["item"].endswith("cam0.npy") for s in skipped(tmp_path / "cap"))


@pytest.mark.parametrize("text, words", [("[" * 100000 + "]" * 100000, "nested too deeply"),
                                         ('{"frames": [' + "9" * 5000 + "]}", "4300 digits")])
def test_hostile_json_is_one_error_naming_the_file(tmp_path, scene, text, words):
    src = write_transforms(tmp_path / "t", scene)
    (src / "transforms.json").write_text(text)
    with pytest.raises(CaptureError, match=words) as e:
        import_capture("transforms_json", src, tmp_path / "cap", ImportConfig())
    assert str(src / "transforms.json") in str(e.value)


def test_a_metadata_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path, scene):
    src = write_transforms(tmp_path / "t", scene)
    (src / "transforms.json").unlink()
    os.mkfifo(src / "transforms.json")
    code = ("import sys; from pipelines.registry import import_capture; from pipelines.import_config import ImportConfig\n"
            f"import_capture('transforms_json', {str(src)!r}, {str(tmp_path / 'cap')!r}, ImportConfig())")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the import waits forever on a FIFO")
    assert "not a regular file" in r.stderr


def test_one_frame_with_a_hidden_name_is_skipped_not_fatal(tmp_path, scene):
    src = write_transforms(tmp_path / "t", scene)
    shutil.copy(src / "images/cam0.png", src / "images/.hidden.png")
    meta = json.loads((src / "transforms.json").read_text())
    meta["frames"].append({**meta["frames"][0], "file_path": "images/.hidden.png"})
    (src / "transforms.json").write_text(json.dumps(meta))
    import_capture("transforms_json", src, tmp_path / "cap", ImportConfig())
    assert len(pd.read_parquet(tmp_path / "cap/manifest.parquet")) == 2


def test_frame_folders_with_non_ascii_digits_are_not_frames(tmp_path, scene):
    src = write_folder(tmp_path / "raw", scene, frames=(1,))
    shutil.copytree(src / "s1/seq/00001", src / "s1/seq/\u00b2")
    shutil.copytree(src / "s1/seq/00001", src / "s1/seq/\u0661")
    import_capture("folder", src, tmp_path / "cap", ImportConfig())
    m = pd.read_parquet(tmp_path / "cap/manifest.parquet")
    assert sorted(m.source_path) == ["s1/seq/00001/cam0.png", "s1/seq/00001/cam1.png"]


def test_an_output_inside_the_input_is_refused(tmp_path, scene):
    src = write_folder(tmp_path / "raw", scene)
    with pytest.raises(CaptureError, match="inside the input"):
        import_capture("folder", src, src / "cap", ImportConfig())
    assert not (src / "cap").exists()


def test_import_metrics_and_sheets_never_replace_input_files(tmp_path, scene):
    from geoface.cli import main
    src = write_folder(tmp_path / "raw", scene, nested=False)
    before = (src / "cameras.json").read_bytes()
    assert main(["import", "folder", str(src), "--out", str(tmp_path / "cap"), "--metrics", str(src / "cameras.json")]) == 2
    assert main(["import", "folder", str(src), "--out", str(tmp_path / "cap"), "--sheets", str(src), "--set", "subject=cam0"]) == 2
    assert (src / "cameras.json").read_bytes() == before


def test_a_manifest_declaring_millions_of_rows_in_a_few_kb_is_refused(tmp_path, scene, capsys):
    """A parquet file of a few KB can declare 50 million rows of repeated values: `diff-captures` took 2.7 GB and
    aborted (rc 134) before any check. A capture whose manifest declares more rows than its bytes can hold is
    refused by `load_capture` and `read_index` (what diff-captures uses), naming the file."""
    from flame_fitting.core.arrays import MAX_PLAIN_ROWS
    from flame_fitting.formats.capture import load_capture

    src = write_folder(tmp_path / "raw", scene)
    import_capture("folder", src, tmp_path / "cap", ImportConfig())
    import_capture("folder", src, tmp_path / "cap0", ImportConfig())
    m = pd.read_parquet(tmp_path / "cap/manifest.parquet")
    n = MAX_PLAIN_ROWS + 1
    big = m.iloc[np.zeros(n, int)].reset_index(drop=True)
    big.to_parquet(tmp_path / "cap/manifest.parquet", index=False)
    assert (tmp_path / "cap/manifest.parquet").stat().st_size < n
    with pytest.raises(CaptureError, match=r"manifest.parquet: declares 1000001 rows in \d+ bytes"):
        load_capture(tmp_path / "cap")
    from geoface.cli import main
    capsys.readouterr()
    assert main(["diff-captures", str(tmp_path / "cap0"), str(tmp_path / "cap")]) == 2
    err = capsys.readouterr().err
    assert "manifest.parquet: declares 1000001 rows" in err and len(err.strip().splitlines()) == 1, err



def test_a_manifest_repeating_one_long_text_in_every_row_is_refused_before_it_is_decoded(tmp_path, scene, capsys):
    """Under the row limit, one 500-character path stored once (a parquet dictionary) and named by each of 600 000
    rows (and the other columns): a 5 KB file of 397 MiB decoded (a 2 KB file of 10^6 rows: 680 MB peak; 64 KB texts
    would take 64 GB). `read_parquet_table` now sums the text of every row from the dictionary before decoding and
    refuses a table past TABLE_FREE_BYTES (256 MiB) and MAX_INFLATION (256) times its file, naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flame_fitting.formats.capture import load_capture

    src = write_folder(tmp_path / "raw", scene)
    import_capture("folder", src, tmp_path / "cap", ImportConfig())
    import_capture("folder", src, tmp_path / "cap0", ImportConfig())
    path = tmp_path / "cap/manifest.parquet"
    n, one = 600_000, pa.Table.from_pandas(pd.read_parquet(path).iloc[[0]], preserve_index=False)
    table = one.take(pa.array(np.zeros(n, np.int64)))
    long_text = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array(["raw/" + "a" * 496]))
    table = table.set_column(table.schema.get_field_index("path"), "path", long_text)
    pq.write_table(table, path, store_schema=False)  # read back as plain text: every row its own 500 characters
    assert path.stat().st_size < 100_000
    with pytest.raises(CaptureError, match=r"manifest.parquet: its 600000 rows take \d+ MiB decoded, \d+ times the "
                                           r"file's \d+ bytes \(at most 256 MiB, or 256 times the file"):
        load_capture(tmp_path / "cap")
    from geoface.cli import main
    capsys.readouterr()
    assert main(["diff-captures", str(tmp_path / "cap0"), str(tmp_path / "cap")]) == 2
    err = capsys.readouterr().err
    assert "manifest.parquet: its 600000 rows take" in err and len(err.strip().splitlines()) == 1, err



def test_a_renderme360_file_of_datasets_never_written_is_refused_before_they_are_read(tmp_path, scene):
    """HDF5 stores no data for a dataset never written (reading it gives its fill value): each dataset was checked
    against 1 GiB, the file as a whole not at all. Three such FLAME arrays in a 143 KB anno file took 3.9 GB to
    import and wrote a 3.1 GB capture; a hundred would take any machine's memory. The datasets of a file may now
    declare together at most 1 GiB, or MAX_INFLATION (256) times the file."""
    raw, anno = write_renderme360(tmp_path / "rm", scene, frames=range(1))
    with h5py.File(anno, "a") as f:
        for i in range(3):
            f.create_dataset(f"FLAME/0/junk{i}", shape=(50_000_000,), dtype="f8", chunks=(1 << 20,), compression="gzip")
    assert anno.stat().st_size < 1 << 20
    with pytest.raises(CaptureError, match=rf"{anno}: its datasets declare 1\.1 GiB, \d+ times the file's \d+ bytes "
                                           r"\(at most 1 GiB, or 256 times the file"):
        import_capture("renderme360", tmp_path / "rm", tmp_path / "cap", ImportConfig())
    assert not (tmp_path / "cap").exists()


# --- videos declaring huge frames (NeRSemble's images/ and alpha_maps/ cam_<serial>.mp4) ----------------------------
BIG = (13000, 10400)  # 135 MP > MAX_IMAGE_PIXELS, W:H as the test cameras' 200:160, so the reader would scale K to it


def riff(cid: bytes, data: bytes) -> bytes:
    return cid + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)


def mjpeg_avi(path: Path, sizes: list[tuple[int, int]]) -> None:
    """An MJPG AVI, one frame per (width, height) of `sizes`: a 16×16 JPEG whose header is patched to that size,
    padded with comment segments (FFmpeg refuses a JPEG far smaller than its size; ~0.5 MB here). The container
    declares the first size. Before the fix, the NeRSemble reader decoded such frames: 2.6–3.1 GB for 15000×12000
    from a 1.4 MB file, and stored a 180 MP image."""
    frames = []
    for w, h in sizes:
        jpg = bytearray(cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))[1].tobytes())
        struct.pack_into(">HH", jpg, jpg.index(b"\xff\xc0") + 5, h, w)
        pad = ((w + 7) // 8) * ((h + 7) // 8) // 4 + 1024
        com = (b"\xff\xfe" + struct.pack(">H", 65535) + bytes(65533)) * (pad // 65537 + 1)
        frames.append(bytes(jpg[:2]) + com + bytes(jpg[2:]))
    (w, h), n, big = sizes[0], len(frames), max(map(len, frames))
    avih = struct.pack("<14I", 100000, big, 0, 0x10, n, 0, 1, big, w, h, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", b"MJPG", 0, 0, 0, 0, 1, 10, 0, n, big, 0xFFFFFFFF, 0, 0, 0,
                       min(w, 32767), min(h, 32767))
    strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", 0, 0, 0, 0, 0)
    hdrl = riff(b"LIST", b"hdrl" + riff(b"avih", avih) + riff(b"LIST", b"strl" + riff(b"strh", strh) + riff(b"strf", strf)))
    movi, idx, off = b"", b"", 4
    for f in frames:
        idx += b"00dc" + struct.pack("<III", 0x10, off, len(f))
        movi += riff(b"00dc", f)
        off += len(riff(b"00dc", f))
    body = b"AVI " + hdrl + riff(b"LIST", b"movi" + movi) + riff(b"idx1", idx)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def nersemble_videos(root: Path):
    """The benchmark layout (images/ and alpha_maps/ cam_<serial>.mp4, size keys), two cameras, frames 0 and 1."""
    scene = Scene({f"2222000{i}": c for i, c in enumerate(make_cameras(2).values())})
    write_nersemble(root, scene, pid="388", seq="GLASSES", frames=[0, 1], per_serial_intrinsics=True, alpha=True)
    return root / "388/sequences/GLASSES"


@pytest.mark.parametrize("folder", ["images", "alpha_maps"])
def test_a_video_declaring_huge_frames_skips_its_camera_before_decoding(tmp_path, folder):
    seq = nersemble_videos(tmp_path / "nvs")
    video = seq / folder / "cam_22220000.mp4"
    mjpeg_avi(video, [BIG, BIG])
    assert video.stat().st_size < 2_000_000 and cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_WIDTH) == BIG[0]
    report = import_capture("nersemble", tmp_path / "nvs", tmp_path / "cap", ImportConfig())
    m = pd.read_parquet(tmp_path / "cap/manifest.parquet")
    assert sorted(set(m.camera)) == ["22220001"] and (m.width == W).all()
    (reason,) = [s["reason"] for s in report.skipped if "22220000" in s["item"]]
    assert reason == (f"{video}: the video declares {BIG[0]}×{BIG[1]} pixels per frame, more than a capture's image "
                      f"holds ({MAX_IMAGE_PIXELS} pixels); a damaged or hostile file")



def test_video_frames_refuses_a_video_declaring_huge_frames_before_decoding(tmp_path):
    from pipelines.nersemble_layouts import video_frames

    class Imp:
        def __init__(self):
            self.skipped = []

        def rel(self, p):
            return Path(p).name

        def skip(self, item, reason):
            self.skipped.append((item, reason))

    mjpeg_avi(tmp_path / "cam_0.mp4", [BIG])
    imp = Imp()
    assert list(video_frames(imp, tmp_path / "cam_0.mp4", [0])) == []
    assert imp.skipped == [("cam_0.mp4", f"the video declares {BIG[0]}×{BIG[1]} pixels per frame, more than a capture's "
                                         f"image holds ({MAX_IMAGE_PIXELS} pixels); a damaged or hostile file")]


# --- names on their way to the terminal and to file names (the s2 audit, 2026-12-07) ---------------------------
def named_scene(*names: str) -> Scene:
    return Scene({n: replace(c, name=n) for n, c in zip(names, make_cameras(len(names)).values())})


def test_names_that_drive_a_terminal_are_skipped_and_the_error_line_escapes_them(tmp_path, capsys):
    # before: all four were imported as cameras (file names with ESC/BEL/CR/LF/U+202E), and an error naming one
    # printed it raw: the terminal's title set, a line erased, a forged line, text reversed
    src = write_folder(tmp_path / "raw", named_scene("cam\x1b]0;owned\x07", "cam\nwarning: forged", "cam\r\x1b[2K",
                                                     "cam\u202egnp.exe"))
    rc, out, err = cli(capsys, "import", "folder", src, "--out", tmp_path / "cap")
    assert rc == 2 and not (tmp_path / "cap").exists(), (rc, out, err)
    assert err.endswith("\n") and err.count("\n") == 1 and "nothing imported" in err, err
    assert not any(c in err[:-1] for c in "\x1b\x07\r\n\u202e"), err
    assert "cam\\x1b]0;owned\\x07" in err and "cam\\u202egnp.exe" in err


def test_names_a_spreadsheet_runs_as_formulas_skip_their_camera_not_the_import(tmp_path):
    # before: all were imported; the names reach the CSV files the stages write (plots/fit/cost.csv, plots/eval/
    # views.csv), and a spreadsheet opening one ran '=HYPERLINK(...)' as a formula (OWASP "CSV injection")
    bad = ['=HYPERLINK("x.example.com","y")', "+1", "-1+2", "@SUM(1)"]
    src = write_folder(tmp_path / "raw", named_scene("cam0", "a-b=c@d+e", *bad))
    import_capture("folder", src, tmp_path / "cap", ImportConfig())
    assert sorted(pd.read_parquet(tmp_path / "cap/manifest.parquet").camera.unique()) == ["a-b=c@d+e", "cam0"]
    reasons = [s for s in skipped(tmp_path / "cap") if "run it as a formula" in s["reason"]]
    assert len(reasons) == len(bad), skipped(tmp_path / "cap")
    for name in bad:  # one line naming the file and the name
        assert any(s["item"].endswith(f"s1/seq/cameras.json [camera {name!r}]") and f"starts with {name[0]!r}"
                   in s["reason"] for s in reasons), (name, reasons)


def test_a_name_too_long_for_the_file_system_skips_its_camera_not_the_import(tmp_path):
    # before: the capture's temporary '.<name>.png.geoface-tmp-…' passed 255 bytes: "File name too long", nothing imported
    src = write_folder(tmp_path / "raw", named_scene("cam0", "c" * 240))
    import_capture("folder", src, tmp_path / "cap", ImportConfig())
    assert list(pd.read_parquet(tmp_path / "cap/manifest.parquet").camera) == ["cam0"]
    assert any("longer than 128 bytes" in s["reason"] for s in skipped(tmp_path / "cap"))


def test_names_that_macos_stores_as_one_file_are_not_both_imported(tmp_path):
    # before: 'cam0'/'CAM0' and NFC/NFD 'José' became four files, two of which are one on macOS and Windows
    src = write_folder(tmp_path / "raw", named_scene("cam0", "CAM0", "Jos\u00e9", "Jose\u0301"))
    import_capture("folder", src, tmp_path / "cap", ImportConfig())
    keys = [name_key(c) for c in pd.read_parquet(tmp_path / "cap/manifest.parquet").camera]
    assert len(keys) == len(set(keys)) == 2
    assert sum("only by case or Unicode normalisation" in s["reason"] for s in skipped(tmp_path / "cap")) == 2


def test_a_subject_whose_name_cannot_be_a_folder_skips_only_its_sequence(tmp_path, scene):
    # before: one subject folder named 'bad\name' (a backslash: a separator on Windows) failed the whole import
    for subject in ("good", "bad\\name", "GOOD"):
        write_folder(tmp_path / "raw", scene, subject=subject)
    import_capture("folder", tmp_path / "raw", tmp_path / "cap", ImportConfig())
    m = pd.read_parquet(tmp_path / "cap/manifest.parquet")
    assert set(m.subject) == {"GOOD"} and len(m) == 2  # 'good' is one folder with 'GOOD' on macOS: skipped too
    reasons = " ".join(s["reason"] for s in skipped(tmp_path / "cap"))
    assert "subject name 'bad\\\\name' holds a path separator" in reasons and "differs from 'GOOD' only by case" in reasons


def test_an_image_whose_file_name_is_not_utf8_is_skipped_not_a_crash(tmp_path, scene):
    # before: OpenCV's binding segfaulted on the path (a lone surrogate): the import died with no message
    src = write_folder(tmp_path / "raw", scene)
    bad = os.fsdecode(b"cam1\xff")
    os.rename(src / "s1/seq/00000/cam1.png", src / "s1/seq/00000" / f"{bad}.png")
    cams = json.loads((src / "s1/seq/cameras.json").read_text())
    cams["cameras"][bad] = cams["cameras"].pop("cam1")
    (src / "s1/seq/cameras.json").write_text(json.dumps(cams))
    code = ("import sys; from pipelines.registry import import_capture; from pipelines.import_config import ImportConfig;"
            "import_capture('folder', sys.argv[1], sys.argv[2], ImportConfig())")
    r = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "cap")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert list(pd.read_parquet(tmp_path / "cap/manifest.parquet").camera) == ["cam0"]
    assert any("not UTF-8" in s["reason"] for s in skipped(tmp_path / "cap"))
