"""A head model folder never runs code: every malicious pickle / object .npy (tests/flame_fitting/malicious_files.py)
placed as the FLAME model pickle, flame_static_embedding.pkl or flame_dynamic_embedding.npy is refused, naming the
file and the class, through `python -m flame_fitting.head.flame_io validate` and `geoface fit --head-model`, and the
payload's marker file never appears. Real-format files (every pickle protocol, numpy 1 and 2 names, npy format
versions) still load."""
import io
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flame_folder_factory import write_flame_folder
from malicious_files import PAYLOADS, REFUSED_NAME, write_evil_module, write_payload

from flame_fitting.head import flame_io, flame_pickle, flame_spec
from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.formats.capture import CaptureWriter

ROOT = Path(__file__).resolve().parents[2]
PLACES = {"model": "FLAME_NEUTRAL.pkl", "static": "flame_static_embedding.pkl", "dynamic": "flame_dynamic_embedding.npy"}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A valid head model folder whose FLAME model is a pickle (sparse J_regressor), as real FLAME ships it."""
    return write_flame_folder(tmp_path_factory.mktemp("t") / "head", ext="pkl").path


def _folder_with(template: Path, tmp_path: Path, place: str, payload: str) -> tuple[Path, Path]:
    head, marker = tmp_path / "head", tmp_path / "MARKER"
    shutil.copytree(template, head)
    write_evil_module(tmp_path, marker)
    write_payload(head / PLACES[place], payload, marker)
    return head, marker


def _assert_no_marker(marker: Path, payload: str) -> None:
    if "Popen" in payload:  # a started process would create it asynchronously: give it a moment
        time.sleep(0.3)
    made = sorted(p.name for p in marker.parent.glob(marker.name + "*"))  # numpy.save / savemat add a suffix
    assert not made, f"payload {payload!r} ran (it wrote {made})"


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("payload", PAYLOADS)
def test_validate_refuses_without_running(template, tmp_path, monkeypatch, capsys, place, payload):
    head, marker = _folder_with(template, tmp_path, place, payload)
    monkeypatch.syspath_prepend(str(tmp_path))  # so that importlib.import_module would find the payload module
    assert flame_io.main(["validate", str(head)]) == 1
    err = capsys.readouterr().err.strip()
    _assert_no_marker(marker, payload)
    assert "\n" not in err and err.startswith(f"error: {head / PLACES[place]}: ")
    assert f"refusing to unpickle {REFUSED_NAME.get(payload, payload)} " in err


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}


@pytest.mark.parametrize("place,payload", [("model", "numpy.testing._private.utils.runstring"),
                                           ("static", "os.system"), ("dynamic", "subprocess.run"),
                                           ("dynamic", "importlib.import_module")])
def test_cli_validate_refuses_without_running(template, tmp_path, place, payload):
    head, marker = _folder_with(template, tmp_path, place, payload)
    r = subprocess.run([sys.executable, "-m", "flame_fitting.head.flame_io", "validate", str(head)], cwd=ROOT,
                       capture_output=True, text=True, env=_env(tmp_path))
    _assert_no_marker(marker, payload)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == r.stderr.strip().splitlines()[0]  # one line, no traceback
    assert f"{head / PLACES[place]}: refusing to unpickle {payload} " in r.stderr


def _tiny_capture(root: Path) -> Path:
    cam = Camera(K=intrinsics(60, 60, 32, 24), world_to_cam=look_at([0, 0, 0.6], [0, 0, 0]), width=64, height=48, name="c0")
    with CaptureWriter(root, source="test") as w:
        w.set_cameras("s1", "seq", {"c0": cam})
        w.add_image("s1", "seq", 0, "c0", np.full((48, 64, 3), 128, np.uint8))
    return root


@pytest.mark.parametrize("place,payload", [("model", "numpy.testing._private.utils.runstring"),
                                           ("static", "builtins.exec"), ("dynamic", "os.system")])
def test_geoface_fit_refuses_without_running(template, tmp_path, place, payload):
    head, marker = _folder_with(template, tmp_path, place, payload)
    cap = _tiny_capture(tmp_path / "cap")
    r = subprocess.run([sys.executable, "-m", "geoface.cli", "fit", str(cap), "--out", str(tmp_path / "out"),
                        "--head-model", str(head), "--workers", "1"], cwd=ROOT, capture_output=True, text=True,
                       env=_env(tmp_path))
    _assert_no_marker(marker, payload)
    assert r.returncode != 0 and f"{head / PLACES[place]}: refusing to unpickle {payload} " in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out" / "fits").exists()


# ---------------------------------------------------------------- real files still load
def _as_numpy2_names(raw: bytes) -> bytes:
    """A protocol-2 pickle as numpy >= 2 writes it (module numpy._core instead of numpy.core)."""
    return raw.replace(b"cnumpy.core.multiarray\n", b"cnumpy._core.multiarray\n")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5, "numpy2"])
def test_real_format_files_load(tmp_path, protocol):
    spec = write_flame_folder(tmp_path / "head", ext="pkl")  # J_regressor scipy csc, as in FLAME 2020
    model = spec.model_dict(sparse_j_regressor=True)
    static = {"lmk_face_idx": spec.static_face_idx, "lmk_b_coords": spec.static_bary}
    proto = 2 if protocol == "numpy2" else protocol
    for name, data in ((spec.model_file.name, model), ("flame_static_embedding.pkl", static)):
        raw = pickle.dumps(data, protocol=proto)
        (spec.path / name).write_bytes(_as_numpy2_names(raw) if protocol == "numpy2" else raw)
    arrays = flame_pickle.load_model_arrays(spec.model_file)
    for k in ("v_template", "shapedirs", "posedirs", "weights", "J_regressor"):
        np.testing.assert_allclose(arrays[k], getattr(spec, k), rtol=1e-6, atol=1e-7, err_msg=k)
    np.testing.assert_array_equal(arrays["f"], spec.f)
    info = flame_io.load_flame_folder(spec.path)
    np.testing.assert_array_equal(info.static.face_idx, spec.static_face_idx)
    assert info.dynamic is not None and info.dynamic.face_idx.shape == (79, 17)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_object_npy_versions_load_and_plain_npy_too(tmp_path, version):
    d = {"lmk_face_idx": np.arange(6).reshape(2, 3), "lmk_b_coords": np.full((2, 3, 3), 1 / 3)}
    path = tmp_path / "d.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array(fh, np.array(d, dtype=object), version=version, allow_pickle=True)
    got = flame_pickle.load_object_npy(path)[()]
    assert sorted(got) == sorted(d) and all(np.array_equal(got[k], d[k]) for k in d)
    np.save(path, np.arange(5.0))
    np.testing.assert_array_equal(flame_pickle.load_object_npy(path), np.arange(5.0))


def test_object_npy_whose_payload_is_not_its_array_is_refused(tmp_path):
    path, buf = tmp_path / "d.npy", io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (2,)})
    path.write_bytes(buf.getvalue() + pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(flame_spec.HeadModelError, match=r"d\.npy: the pickled payload is not the \(2,\) array"):
        flame_pickle.load_object_npy(path)
