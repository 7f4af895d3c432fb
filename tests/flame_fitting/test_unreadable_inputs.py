"""Damaged .npz and JSON inputs are refused with one error that names the file and says what is wrong (never a
zipfile / json / AttributeError traceback, never pickle): `load_npz` and its callers (FLAME_NEUTRAL.npz, the MediaPipe
embedding, fit.npz, a synthetic capture's gt.npz in the landmarks stage) and capture.json / cameras.json of the wrong
JSON type or not UTF-8."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from flame_fitting.core.arrays import load_npz
from flame_fitting.core.errors import GeofaceError
from flame_fitting.formats.capture import CaptureError, capture_index, capture_version, load_capture, read_gt_landmarks
from flame_fitting.formats.fits import FitFileError, load_sequence_fit
from flame_fitting.head.flame_io import validate_flame_folder
from flame_fitting.head.flame_spec import HeadModelError
from flame_fitting.landmarks.capture import LandmarksParams, detect_folder
from flame_folder_factory import write_flame_folder
from robust_capture import copy_capture, small_capture  # noqa: F401  (session fixture)
from test_capture import write_small


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def with_object_array(path: Path) -> Path:
    """Rewrite the npz `path` with one of its arrays as an object array (what np.load refuses without pickle)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    first = sorted(arrays)[0]
    arrays[first] = np.array(list(arrays[first].ravel()) or [None], dtype=object)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


DAMAGE = {
    "truncated": (truncate, "truncated or corrupt"),
    "object array": (with_object_array, "object arrays"),
    "empty": (lambda p: (p.write_bytes(b""), p)[1], "truncated or corrupt"),
    "text": (lambda p: (p.write_text("not an archive"), p)[1], "neither a zip archive nor numpy data"),
    "npy": (lambda p: (p.unlink(), np.save(open(p, "wb"), np.arange(3)), p)[2], "an .npy array file"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_load_npz_names_the_file_and_the_problem(tmp_path, kind):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.arange(1000), b=np.ones((3, 3)))
    damage, words = DAMAGE[kind]
    damage(path)
    with pytest.raises(HeadModelError) as e:
        load_npz(path, HeadModelError)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and words in msg and "\n" not in msg


def test_load_npz_missing_file_folder_and_keys(tmp_path):
    with pytest.raises(ValueError, match=f"^{tmp_path / 'none.npz'}: missing$"):
        load_npz(tmp_path / "none.npz")
    with pytest.raises(ValueError, match=f"^{tmp_path}: cannot read"):
        load_npz(tmp_path)
    np.savez(tmp_path / "a.npz", a=np.arange(3), b=np.ones(2))
    assert list(load_npz(tmp_path / "a.npz", keys=("b",))) == ["b"]
    with pytest.raises(CaptureError, match=r"a.npz: missing arrays \['c'\] \(it has \['a', 'b'\]\)"):
        load_npz(tmp_path / "a.npz", CaptureError, keys=("a", "c"))


@pytest.mark.parametrize("name", ["FLAME_NEUTRAL.npz", "mediapipe_landmark_embedding.npz"])
@pytest.mark.parametrize("kind", ["truncated", "object array"])
def test_damaged_head_model_npz_is_a_head_model_error_naming_it(tmp_path, name, kind):
    spec = write_flame_folder(tmp_path / "head", n_lat=6, n_lon=12, n_shape=5, n_expr=5)
    DAMAGE[kind][0](spec.path / name)
    with pytest.raises(HeadModelError) as e:
        validate_flame_folder(spec.path)
    assert str(e.value).startswith(f"{spec.path / name}: ") and DAMAGE[kind][1] in str(e.value)


@pytest.mark.parametrize("kind", ["truncated", "object array", "empty"])
def test_damaged_fit_npz_is_a_fit_file_error_naming_it(tmp_path, kind):
    seq = tmp_path / "fits" / "s1" / "seq"
    seq.mkdir(parents=True)
    np.savez_compressed(seq / "fit.npz", frame=np.arange(2), shape=np.zeros((2, 5)), vertices=np.zeros((2, 10, 3)))
    assert set(load_sequence_fit(seq)) == {"frame", "shape", "vertices"}
    DAMAGE[kind][0](seq / "fit.npz")
    with pytest.raises(FitFileError) as e:
        load_sequence_fit(seq)
    assert str(e.value).startswith(f"{seq / 'fit.npz'}: ") and DAMAGE[kind][1] in str(e.value)


def test_gt_npz_without_the_landmarks_names_the_file(tmp_path):
    np.savez(tmp_path / "gt.npz", cameras=np.array(["c0"]), lmk_mp_2d=np.zeros((1, 478, 2)))
    with pytest.raises(CaptureError, match=r"gt.npz: missing arrays \['lmk_mp_visible'\]"):
        read_gt_landmarks(tmp_path / "gt.npz")


@pytest.mark.parametrize("kind", ["truncated", "object array"])
def test_landmarks_unit_error_names_the_damaged_gt_npz(small_capture, tmp_path, kind):  # noqa: F811
    cap = copy_capture(small_capture.capture, tmp_path / "cap")
    gt = sorted(cap.rglob("gt.npz"))[0]
    DAMAGE[kind][0](gt)
    try:
        detect_folder(cap, tmp_path / "lm", LandmarksParams(workers=1))
    except GeofaceError as e:  # every unit failed: the stage may say so, quoting the first unit's error
        assert str(gt) in str(e)
    failures = json.loads((tmp_path / "lm" / "failures.json").read_text())
    assert failures and failures[0]["error"].startswith(f"CaptureError: {gt}: ")
    assert DAMAGE[kind][1] in failures[0]["error"]


@pytest.mark.parametrize("content, words", [(b"[]", "expected a JSON object, got a list"),
                                            (b'"str"', "expected a JSON object, got a string"),
                                            (b"3", "expected a JSON object, got a number"),
                                            (b"\xff\xfe\x00\x81garbage", "not valid JSON (not UTF-8 text)")])
def test_capture_json_of_the_wrong_type_names_the_file(tmp_path, content, words):
    root = tmp_path / "cap"
    write_small(root)
    (root / "capture.json").write_bytes(content)
    with pytest.raises(CaptureError, match="^" + re.escape(f"{root / 'capture.json'}: {words}")):
        load_capture(root)
    with pytest.raises(CaptureError) as e:  # the version falls back to the content index, which says why
        capture_version(root)
    assert str(e.value).startswith(f"{root}: not a geoface capture (capture.json")


@pytest.mark.parametrize("content, words", [(b"[1, 2]", "expected a JSON object, got a list"),
                                            (b"null", "expected a JSON object, got null"),
                                            (b"\xff\xfe\x00\x81", "not valid JSON (not UTF-8 text)")])
def test_cameras_json_of_the_wrong_type_names_the_file(tmp_path, content, words):
    root = tmp_path / "cap"
    write_small(root)
    cams = root / "s1" / "seq" / "cameras.json"
    cams.write_bytes(content)
    with pytest.raises(CaptureError, match="^" + re.escape(f"{cams}: {words}")):
        load_capture(root)
    if content.startswith(b"["):
        with pytest.raises(CaptureError, match=f"^{root}/s1/seq/cameras.json: not a cameras file .*got a list"):
            capture_index(root)


@pytest.mark.parametrize("reader", ["posmap", "correspondences", "uv_layout"])
def test_damaged_stage_files_read_by_later_stages_name_the_file(tmp_path, reader):
    """A half-restored `data/uv/…/00000.npz`, correspondences file or a pipeline folder's `head/uv_layout.npz`: one
    error naming the file (was zipfile.BadZipFile, or 'missing' keys listed without the file's own)."""
    from flame_fitting.uv.correspondence_files import load_correspondences
    from flame_fitting.uv.correspondences import CorrespondenceError
    from flame_fitting.uv.files import UVError, load_posmap
    from geoface_model.pipeline import PipelineError, load_layout

    load, error = {"posmap": (load_posmap, UVError), "correspondences": (load_correspondences, CorrespondenceError),
                   "uv_layout": (load_layout, PipelineError)}[reader]
    path = tmp_path / f"{reader}.npz"
    np.savez_compressed(path, uv=np.zeros((100, 2), np.float32), other=np.arange(1000))
    with pytest.raises(error, match=re.escape(str(path)) + ": missing arrays"):
        load(path)
    truncate(path)
    with pytest.raises(error, match=re.escape(str(path)) + ": not a readable .npz: truncated or corrupt"):
        load(path)
    assert issubclass(error, GeofaceError)


def test_an_npz_declaring_terabytes_is_one_line_before_any_allocation(tmp_path):
    """A 200-byte .npz whose .npy header declares (1e7, 1e7) float64 made `geoface head-model validate` die with
    numpy's "Unable to allocate 728. TiB" traceback (found by an audit); smaller lies would really be allocated.
    load_npz reads the headers first and refuses, naming the file and the array."""
    import io
    import zipfile

    from flame_fitting.core.arrays import load_npz

    path = tmp_path / "FLAME_NEUTRAL.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**7, 10**7)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("shapedirs.npy", header.getvalue())  # the header (magic included), no data
        z.writestr("f.npy", _npy_bytes(np.zeros((3, 3), np.int32)))
    assert path.stat().st_size < 1000
    with pytest.raises(ValueError, match=r"FLAME_NEUTRAL.npz: array 'shapedirs' declares \(10000000, 10000000\) of "
                                         r"float64 \(745058\.1 GiB\), more than a file the toolkit reads holds"):
        load_npz(path)
    assert load_npz(path, keys=("f",))["f"].shape == (3, 3)  # only the arrays asked for are checked and read



def _add_zeros(npz: Path, key: str, n_bytes: int) -> None:
    """Append array `key` of `n_bytes` zero bytes to the .npz, deflated (~1 KB of file per MB declared)."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "|u1", "fortran_order": False, "shape": (n_bytes,)})
    with zipfile.ZipFile(npz, "a", zipfile.ZIP_DEFLATED) as z, z.open(f"{key}.npy", "w", force_zip64=True) as m:
        m.write(header.getvalue())
        for _ in range(n_bytes >> 24):
            m.write(bytes(1 << 24))


def test_an_npz_of_compressed_zeros_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    """Each array was checked against 8 GiB, the file as a whole against nothing: a head model folder whose
    FLAME_NEUTRAL.npz held one more array, 2 GiB of deflated zeros in a 3.6 MB file, passed `geoface head-model
    validate` after reading it all (peak RSS 2.2 GB, 23 s), and several such arrays take any machine's memory. The
    arrays read from one .npz may now declare together at most NPZ_FREE_BYTES (1 GiB), or more only for a file of at
    least 1/MAX_INFLATION (1/256) of their size (the pipeline's own .npz files: at most 7.7 times, 28 MiB). The
    floor is lowered here so that the test inflates 256 MiB, not gigabytes."""
    from flame_fitting.core import arrays
    from flame_fitting.head import flame_io

    spec = write_flame_folder(tmp_path / "head", n_lat=6, n_lon=12, n_shape=5, n_expr=5, ext="npz")
    monkeypatch.setattr(arrays, "NPZ_FREE_BYTES", 64 << 20, raising=False)
    real = load_npz(spec.model_file, HeadModelError)  # the real arrays: far below either bound
    _add_zeros(spec.model_file, "junk", 256 << 20)
    assert spec.model_file.stat().st_size < 1 << 20  # 256 MiB declared by less than 1 MB
    with pytest.raises(HeadModelError, match=rf"^{re.escape(str(spec.model_file))}: its arrays declare 0\.3 GiB, \d+ "
                                             r"times the file's \d+ bytes \(at most 0 GiB, or 256 times the file"):
        load_npz(spec.model_file, HeadModelError)
    assert load_npz(spec.model_file, HeadModelError, keys=tuple(real))  # the arrays asked for only: read
    assert flame_io.main(["validate", str(spec.path)]) == 1


def test_an_npz_declaring_gigabytes_it_does_not_hold_is_refused(tmp_path):
    """Under the 8 GiB bound of one array a 300-byte .npz could declare 2 GiB (numpy reserved them, then met the end
    of the data): refused from the headers, with the real bounds."""
    import io
    import zipfile

    path = tmp_path / "fit.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2 ** 28,)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("verts.npy", header.getvalue())
    with pytest.raises(FitFileError, match=r"fit.npz: its arrays declare 2\.0 GiB, \d+ times the file's \d+ bytes "
                                           r"\(at most 1 GiB, or 256 times the file"):
        load_npz(path, FitFileError)


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()
