"""Head model folder validation, OBJ reading and the chumpy-free converter (with a fake chumpy)."""
import json
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from flame_folder_factory import write_flame_folder, write_obj

from flame_fitting.head.flame_assets import read_obj
from flame_fitting.head.flame_io import validate_flame_folder
from flame_fitting.head.flame_pickle import convert_flame_pickle, load_object_npy, load_pickle
from flame_fitting.head.flame_spec import HeadModelError, infer_kind
from flame_fitting.head.head_model import HeadModel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spec(tmp_path):
    return write_flame_folder(tmp_path / "head", n_lat=6, n_lon=10, n_shape=8, n_expr=5)


def rewrite_model(spec, **changes):
    """Re-save FLAME_NEUTRAL.npz with keys replaced (value None: key removed)."""
    d = {**spec.model_dict(), **changes}
    np.savez(spec.model_file, **{k: v for k, v in d.items() if v is not None})


def test_validate_describes_the_folder(spec):
    d = validate_flame_folder(spec.path)
    V, F, T = len(spec.v_template), len(spec.f), len(spec.uv)
    assert d["n_vertices"] == V == 62 and d["n_faces"] == F == 120 and d["n_uv"] == T > V
    assert (d["kind"], d["n_shape"], d["n_expr"], d["shapedirs_columns"]) == ("standin", 8, 5, 400)
    assert d["model_file"] == "FLAME_NEUTRAL.npz" and d["n_mediapipe_landmarks"] == 478 and d["n_static_landmarks"] == 51
    assert d["has_dynamic_embedding"] and d["has_ibug68"] and d["head_model_json"]
    json.dumps(d)


@pytest.mark.parametrize("name", ["FLAME_NEUTRAL.npz", "head_template.obj", "mediapipe_landmark_embedding.npz",
                                  "flame_static_embedding.pkl"])
def test_missing_file_is_named(spec, name):
    (spec.path / name).unlink()
    with pytest.raises(HeadModelError, match=name.replace(".", r"\.")) as e:
        HeadModel.from_folder(spec.path, n_shape=8, n_expr=5)
    assert "head_template.obj" in str(e.value)  # the layout help is part of the message


@pytest.mark.parametrize("key,bad,expected", [
    ("v_template", np.zeros((62, 4), np.float32), "(V, 3)"),
    ("shapedirs", np.zeros((62, 3, 100), np.float32), "(62, 3, >= 400)"),
    ("posedirs", np.zeros((62, 3, 35), np.float32), "(62, 3, 36) or (186, 36)"),
    ("J_regressor", np.zeros((4, 62), np.float32), "(5, 62)"),
    ("kintree_table", np.zeros((2, 4), np.int64), "(2, 5)"),
    ("weights", np.full((62, 4), 0.25, np.float32), "(62, 5)"),
    ("f", np.zeros((120, 4), np.int64), "(F, 3)")])
def test_wrong_shape_names_file_key_and_shapes(spec, key, bad, expected):
    rewrite_model(spec, **{key: bad})
    with pytest.raises(HeadModelError) as e:
        validate_flame_folder(spec.path)
    msg = str(e.value)
    assert "FLAME_NEUTRAL.npz" in msg and f"'{key}'" in msg and expected in msg and str(bad.shape) in msg


@pytest.mark.parametrize("change,needle", [
    ({"weights": None}, "missing key 'weights'"),
    ({"f": np.full((120, 3), 62)}, "key 'f' must hold integer vertex indices in [0, 62)"),
    ({"weights": np.full((62, 5), 0.3, np.float32)}, "key 'weights' rows must sum to 1"),
    ({"kintree_table": np.array([[-1, 0, 0, 1, 1], [0, 1, 2, 3, 4]])}, "key 'kintree_table' must be")])
def test_bad_model_content(spec, change, needle):
    rewrite_model(spec, **change)
    with pytest.raises(HeadModelError, match="FLAME_NEUTRAL.npz") as e:
        validate_flame_folder(spec.path)
    assert needle in str(e.value)


def obj_lines(spec):
    return (spec.path / "head_template.obj").read_text().splitlines()


@pytest.mark.parametrize("edit,needle", [
    (lambda L: ["v 0 0 0"] + L, "has 63 vertices, expected 62"),
    (lambda L: L[:-1], "has 119 faces, expected 120"),
    (lambda L: L + ["f 1/1 2/2 3/3 4/4"], "only triangles"),
    (lambda L: L + ["f 1 2 3"], "without a texture index"),
    (lambda L: [x if not x.startswith("vt ") else "vt 1.5 0.5" for x in L], "vt coordinates must lie in [0, 1]"),
    (lambda L: [x for x in L if not x.startswith("f ")] + [x for x in L if x.startswith("f ")][::-1],
     "face vertex indices differ from key 'f'")])
def test_bad_obj(spec, edit, needle):
    (spec.path / "head_template.obj").write_text("\n".join(edit(obj_lines(spec))) + "\n")
    with pytest.raises(HeadModelError, match="head_template.obj") as e:
        validate_flame_folder(spec.path)
    assert needle in str(e.value)


def test_read_obj_formats(tmp_path):
    p = tmp_path / "m.obj"
    p.write_text("# c\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nvn 0 0 1\nf 1/1/1 2/2/1 3/3/1\nf -3/-3 -2/-2 -1/-1\n")
    m = read_obj(p)
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(m.uv_faces, [[0, 1, 2], [0, 1, 2]])
    v, f = np.random.default_rng(0).random((5, 3)), np.array([[0, 1, 2], [2, 3, 4]])
    write_obj(p, v, v[:, :2], f, f)
    m = read_obj(p)
    np.testing.assert_allclose(m.verts, v, atol=1e-7)
    np.testing.assert_array_equal(m.faces, f)


@pytest.mark.parametrize("text,fast", [
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\nf 3/1 2/3 1/2\n", True),     # fast form
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nvn 0 0 1\nf 1/1/1 2/2/1 3/3/1\n", True),  # fast, with normals
    ("v 0 0 0 1 1 1\nv 1 0 0 1 1 1\nv 0 1 0 1 1 1\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n", False),  # vertex colours
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0 0\nvt 1 0 0\nvt 0 1 0\nf 1/1 2/2 3/3\n", False),          # vt with w
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2/1 -1/-1\n", False),             # mixed, relative
    ("v\t0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf  1/1   2/2 3/3 \n", False),             # tabs, spaces
])
def test_fast_obj_parser_matches_the_reference(tmp_path, text, fast):
    """read_obj's numpy path gives exactly the line-by-line reference parser's mesh, or hands the file to it."""
    from flame_fitting.head.flame_assets import _read_obj_fast, _read_obj_lines

    p = tmp_path / "m.obj"
    p.write_text(text)
    assert (_read_obj_fast(text.splitlines()) is not None) == fast
    ref, got = _read_obj_lines(p, text.splitlines()), read_obj(p)
    for name in ("verts", "uv", "faces", "uv_faces"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
        assert getattr(got, name).dtype == getattr(ref, name).dtype


def test_fast_obj_parser_on_a_large_mesh(tmp_path):
    from flame_fitting.head.flame_assets import _read_obj_fast, _read_obj_lines

    rng = np.random.default_rng(1)
    v, uv, f = rng.normal(size=(3000, 3)), rng.random((3100, 2)), rng.integers(0, 3000, (6000, 3))
    p = tmp_path / "m.obj"
    write_obj(p, v, uv, f, f % 3100)
    lines = p.read_text().splitlines()
    fast, ref = _read_obj_fast(lines), _read_obj_lines(p, lines)
    assert fast is not None
    for name in ("verts", "uv", "faces", "uv_faces"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(ref, name), err_msg=name)


@pytest.mark.parametrize("file,data,needle", [
    ("mediapipe_landmark_embedding.npz", dict(lmk_b_coords=np.full((478, 3), 0.4)), "'lmk_b_coords' rows must sum to 1"),
    ("mediapipe_landmark_embedding.npz", dict(lmk_face_idx=np.full(478, 120)), "'lmk_face_idx' has face index 120"),
    ("mediapipe_landmark_embedding.npz", dict(landmark_indices=np.arange(1, 479)), "'landmark_indices' must be"),
    ("mediapipe_landmark_embedding.npz", dict(lmk_b_coords=np.full((478, 2), 0.5)), "'lmk_b_coords' has shape (478, 2)"),
    ("ibug68_landmark_embedding.npz", dict(lmk_b_coords=-np.ones((68, 3))), "'lmk_b_coords' rows must sum to 1"),
    ("flame_static_embedding.pkl", dict(lmk_face_idx=np.full(51, -1)), "'lmk_face_idx' has face index -1"),
    ("flame_dynamic_embedding.npy", dict(lmk_b_coords=np.ones((79, 17, 3)) / 2), "'lmk_b_coords' rows must sum to 1")])
def test_bad_embeddings(spec, file, data, needle):
    path = spec.path / file
    if path.suffix == ".npz":
        with np.load(path) as z:
            np.savez(path, **{**dict(z), **data})
    elif path.suffix == ".pkl":
        path.write_bytes(pickle.dumps({**load_pickle(path), **data}))
    else:
        np.save(path, {**load_object_npy(path)[()], **data}, allow_pickle=True)
    with pytest.raises(HeadModelError, match=file.replace(".", r"\.")) as e:
        validate_flame_folder(spec.path)
    assert needle in str(e.value)


@pytest.mark.parametrize("meta,needle", [({"kind": "flame2099", "n_shape": 8, "n_expr": 5}, "'kind'"),
                                         ({"kind": "standin", "n_shape": 301, "n_expr": 5}, "'n_shape'"),
                                         ({"kind": "standin", "n_shape": 8, "n_expr": "5"}, "'n_expr'")])
def test_bad_head_model_json(spec, meta, needle):
    (spec.path / "head_model.json").write_text(json.dumps(meta))
    with pytest.raises(HeadModelError, match="head_model.json") as e:
        validate_flame_folder(spec.path)
    assert needle in str(e.value)


def test_kind_inference_without_head_model_json(spec):
    (spec.path / "head_model.json").unlink()
    with pytest.raises(HeadModelError, match="head_model.json: missing.*62 vertices.*5023"):
        validate_flame_folder(spec.path)
    assert infer_kind(Path("x/generic_model.pkl"), "", 5023) == "flame2020"
    assert infer_kind(Path("x/flame2023.pkl"), "", 5023) == "flame2023"
    assert infer_kind(Path("x/FLAME_NEUTRAL.npz"), "flame2023.pkl", 5023) == "flame2023"
    assert infer_kind(Path("x/FLAME_NEUTRAL.npz"), "", 5023) == "flame2020"


def test_foreign_code_in_pickle_is_refused(tmp_path):
    class Evil:  # eval, not print: a Ray test earlier in the same process replaces builtins.print (tqdm_ray)
        def __reduce__(self):
            return (eval, ("1",))
    p = tmp_path / "FLAME_NEUTRAL.pkl"
    p.write_bytes(pickle.dumps({"v_template": Evil()}))
    with pytest.raises(HeadModelError, match="refusing to unpickle builtins.eval"):
        load_pickle(p)


# ---------------------------------------------------------------- chumpy
def _fake_chumpy_pickle(model: dict, path: Path, protocol: int, unsupported: str | None = None) -> None:
    """Pickle `model` with its float arrays wrapped in fake chumpy objects, then forget chumpy."""
    mods = {n: types.ModuleType(n) for n in ("chumpy", "chumpy.ch", "chumpy.reordering", "chumpy.ch_ops")}
    classes = {}
    for mod, name in (("chumpy.ch", "Ch"), ("chumpy.reordering", "Select"), ("chumpy.ch_ops", "add")):
        cls = type(name, (), {"__module__": mod})
        setattr(mods[mod], name, cls)
        classes[name] = cls

    def make(name, **state):
        o = classes[name].__new__(classes[name])
        o.__dict__.update(state, _dirty_vars=set(), _itr=None, _depends_on_deps={})  # like chumpy's __getstate__
        return o

    sys.modules.update(mods)
    try:
        sd = model["shapedirs"].astype(np.float64)
        perm = np.random.default_rng(0).permutation(sd.size)  # shapedirs as a Select of a shuffled Ch
        flat = np.empty(sd.size)
        flat[perm] = sd.ravel()
        data = {**model, "v_template": make("Ch", x=model["v_template"].astype(np.float64)),
                "weights": make("Ch", x=model["weights"].astype(np.float64)),
                "shapedirs": make("Select", a=make("Ch", x=flat), idxs=perm, preferred_shape=sd.shape),
                "J_regressor": sp.csc_matrix(model["J_regressor"].astype(np.float64)),
                "f": model["f"].astype(np.uint32), "bs_style": "lbs"}
        if unsupported:  # a chumpy expression the converter cannot evaluate, under this key
            data[unsupported] = make("add", a=make("Ch", x=np.zeros(3)), b=make("Ch", x=np.ones(3)))
        path.write_bytes(pickle.dumps(data, protocol=protocol))
    finally:
        for n in mods:
            del sys.modules[n]


@pytest.mark.parametrize("protocol", [0, 2])
def test_chumpy_pickle_is_refused_then_converted(spec, protocol):
    model = spec.model_dict()
    raw = spec.path / "generic_model.pkl"
    spec.model_file.unlink()
    _fake_chumpy_pickle(model, raw, protocol)
    with pytest.raises(HeadModelError) as e:
        HeadModel.from_folder(spec.path, n_shape=8, n_expr=5)
    msg = str(e.value)
    assert "generic_model.pkl" in msg and "chumpy.ch.Ch" in msg
    assert f"geoface head-model convert {raw} {spec.path / 'FLAME_NEUTRAL.npz'}" in msg

    info = convert_flame_pickle(raw, spec.path / "FLAME_NEUTRAL.npz")
    assert "chumpy" not in sys.modules
    assert info["skipped"] == {"bs_style": "not a numeric array (str)"} and (info["n_vertices"], info["n_faces"]) == (62, 120)
    assert [p.name for p in spec.path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
    with np.load(spec.path / "FLAME_NEUTRAL.npz") as z:
        for k, v in model.items():
            np.testing.assert_array_equal(z[k], v, err_msg=k)
        assert z["f"].dtype == np.int64 and z["J_regressor"].dtype == np.float32 and str(z["source_file"]) == raw.name
    m = HeadModel.from_folder(spec.path, n_shape=8, n_expr=5)
    out = m(jaw_pose=torch.tensor([[0.3, 0.0, 0.0]]), shape=torch.ones(1, 8))
    spec.model_file.unlink()
    raw.unlink()
    rewrite_model(spec)
    ref = HeadModel.from_folder(spec.path, n_shape=8, n_expr=5)(jaw_pose=torch.tensor([[0.3, 0.0, 0.0]]), shape=torch.ones(1, 8))
    torch.testing.assert_close(out.vertices, ref.vertices, atol=0, rtol=0)


def test_unsupported_chumpy_object(tmp_path, spec):
    raw, dst = tmp_path / "generic_model.pkl", tmp_path / "out" / "FLAME_NEUTRAL.npz"
    _fake_chumpy_pickle(spec.model_dict(), raw, 2, unsupported="J")  # optional key: skipped with the reason
    info = convert_flame_pickle(raw, dst)
    assert "chumpy object of class chumpy.ch_ops.add" in info["skipped"]["J"] and "J" not in info["keys"]
    dst.unlink()
    _fake_chumpy_pickle(spec.model_dict(), raw, 2, unsupported="weights")  # required key: refused
    with pytest.raises(HeadModelError, match=r"generic_model.pkl: key 'weights': chumpy object of class chumpy\.ch_ops\.add"):
        convert_flame_pickle(raw, dst)
    assert not dst.exists()
    with pytest.raises(HeadModelError, match="must be a .npz"):
        convert_flame_pickle(raw, tmp_path / "out")


def test_convert_never_overwrites_a_file_without_overwrite(tmp_path, spec):
    """`geoface head-model convert MODEL.pkl mine.npz` replaced an existing file (exit 0, no --force option)."""
    raw = tmp_path / "generic_model.pkl"
    _fake_chumpy_pickle(spec.model_dict(), raw, 2)
    mine = tmp_path / "mine.npz"
    mine.write_bytes(b"my own bytes")
    with pytest.raises(HeadModelError, match=f"{mine}: exists; pass overwrite=True to replace it"):
        convert_flame_pickle(raw, mine)
    assert mine.read_bytes() == b"my own bytes"
    (tmp_path / "adir.npz").mkdir()
    with pytest.raises(HeadModelError, match="is a folder"):
        convert_flame_pickle(raw, tmp_path / "adir.npz")
    assert convert_flame_pickle(raw, mine, overwrite=True)["n_vertices"] > 0 and mine.read_bytes()[:2] == b"PK"
    # an .npz given as the pickle: said so (it was "cannot unpickle (UnpicklingError: persistent IDs ...)")
    with pytest.raises(HeadModelError, match=f"{mine}: an .npz archive already, not a FLAME pickle: nothing to "
                                             "convert"):
        convert_flame_pickle(mine, tmp_path / "again.npz")


def test_cli_convert_and_validate(tmp_path, spec):
    raw = tmp_path / "flame2023.pkl"
    _fake_chumpy_pickle(spec.model_dict(), raw, 2)
    run = lambda *a: subprocess.run([sys.executable, "-m", "flame_fitting.head.flame_io", *map(str, a)], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True)
    r = run("convert", raw, spec.path / "FLAME_NEUTRAL.npz")
    assert r.returncode == 1 and "exists; pass --force to replace it" in r.stderr  # never overwritten unasked
    # the same refusal from `geoface head-model convert` says its option too (the library's: overwrite=True)
    g = subprocess.run([sys.executable, "-m", "geoface", "head-model", "convert", str(raw),
                        str(spec.path / "FLAME_NEUTRAL.npz")], cwd=ROOT, capture_output=True, text=True)
    assert g.returncode == 2 and g.stderr.strip() == (f"geoface head-model convert: {spec.path / 'FLAME_NEUTRAL.npz'}: "
                                                      "exists; pass --force to replace it"), g.stderr
    r = run("convert", raw, spec.path / "FLAME_NEUTRAL.npz", "--force")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dst"] == str(spec.path / "FLAME_NEUTRAL.npz")
    r = run("validate", spec.path)
    assert r.returncode == 0 and json.loads(r.stdout)["n_vertices"] == 62
    (spec.path / "head_template.obj").unlink()
    r = run("validate", spec.path)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "head_template.obj: missing" in r.stderr
