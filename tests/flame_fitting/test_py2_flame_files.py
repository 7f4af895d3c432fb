"""The FLAME files as they really are: Python 2.7 pickles of chumpy objects and an old scipy's csc matrix
(generic_model.pkl), a Python 2 static embedding and a Python 2 `np.save` of the dynamic embedding's dict, with the
real files' dtypes (uint32 faces, the kintree root 4294967295). The loaders were tested on Python 3 pickles only; the
tenth session's head-model audit wrote these with tests/flame_fitting/py2_pickles.py (checked against the stock
unpickler) and found them read exactly: the chumpy model refused with the convert hint, then converted array for
array, the embeddings read as written, and the head model built from the result."""
import pickletools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import py2_pickles as P  # noqa: E402
from flame_folder_factory import write_flame_folder  # noqa: E402

from flame_fitting.head.flame_assets import load_dynamic_embedding, load_static_embedding  # noqa: E402
from flame_fitting.head.flame_io import load_flame_folder  # noqa: E402
from flame_fitting.head.flame_pickle import convert_flame_pickle, load_pickle  # noqa: E402
from flame_fitting.head.flame_spec import HeadModelError  # noqa: E402
from flame_fitting.head.head_model import HeadModel  # noqa: E402


def test_the_emitter_writes_python2_pickles(tmp_path):
    """Read back by the toolkit's allow-listed unpickler (the suite never calls pickle.loads): same arrays and dtypes,
    written with Python 2's byte-string opcodes."""
    a = {"f8": np.random.default_rng(0).random((4, 3)), "u4": np.arange(6, dtype=np.uint32).reshape(2, 3),
         "i8": np.array([[4294967295, 0, 1], [0, 1, 2]]), "s": "lbs"}
    raw = P.dumps(a)
    (tmp_path / "a.pkl").write_bytes(raw)
    b = load_pickle(tmp_path / "a.pkl")
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in ("f8", "u4", "i8")) and b["s"] == "lbs"
    ops = {op.name for op, _, _ in pickletools.genops(raw)}
    assert not ops & {"BINUNICODE", "SHORT_BINUNICODE"} and "SHORT_BINSTRING" in ops  # Python 2 byte strings


@pytest.mark.parametrize("style", ["newobj", "reconstructor"])
def test_python2_flame_files_are_read_exactly(tmp_path, style):
    spec = write_flame_folder(tmp_path / style, ext="pkl", model_name="generic_model.pkl")
    d = spec.model_dict()
    real = {"f": d["f"].astype(np.uint32), "v_template": P.ch(d["v_template"].astype(np.float64), style),
            "shapedirs": P.ch(d["shapedirs"].astype(np.float64), style),
            "posedirs": P.ch(d["posedirs"].astype(np.float64), style),
            "weights": P.ch(d["weights"].astype(np.float64), style),
            "J": P.ch((d["J_regressor"] @ d["v_template"]).astype(np.float64), style),
            "J_regressor": P.csc(d["J_regressor"].astype(np.float64)),
            "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
            "bs_style": "lbs", "bs_type": "lrotmin"}
    spec.model_file.write_bytes(P.dumps(real))
    (spec.path / "flame_static_embedding.pkl").write_bytes(P.dumps(
        {"lmk_face_idx": spec.static_face_idx.astype(np.uint32), "lmk_b_coords": spec.static_bary}))
    dyn = load_dynamic_embedding(spec.path / "flame_dynamic_embedding.npy", len(spec.f))  # the factory's file
    (spec.path / "flame_dynamic_embedding.npy").write_bytes(P.npy_object(
        {"lmk_face_idx": dyn.face_idx, "lmk_b_coords": dyn.bary}))
    with pytest.raises(HeadModelError, match="convert"):  # chumpy objects: the convert command is named
        load_flame_folder(spec.path)
    st = load_static_embedding(spec.path / "flame_static_embedding.pkl", len(spec.f))
    dy = load_dynamic_embedding(spec.path / "flame_dynamic_embedding.npy", len(spec.f))
    assert np.array_equal(st.face_idx, spec.static_face_idx) and np.array_equal(st.bary, spec.static_bary)
    assert np.array_equal(dy.face_idx, dyn.face_idx) and np.array_equal(dy.bary, dyn.bary)
    convert_flame_pickle(spec.model_file, spec.path / "FLAME_NEUTRAL.npz")
    with np.load(spec.path / "FLAME_NEUTRAL.npz") as z:
        for k in ("v_template", "shapedirs", "posedirs", "weights", "J_regressor"):
            assert np.array_equal(z[k], d[k].astype(np.float32)), k
        assert np.array_equal(z["f"], d["f"]) and z["kintree_table"][0, 0] == 4294967295
    m = HeadModel.from_folder(spec.path, n_shape=spec.n_shape, n_expr=spec.n_expr)
    ref = HeadModel.from_folder(write_flame_folder(tmp_path / "py3").path, n_shape=spec.n_shape,
                                n_expr=spec.n_expr)
    kw = dict(shape=torch.ones(1, spec.n_shape), expr=torch.ones(1, spec.n_expr), jaw_pose=torch.tensor([[0.3, 0, 0]]))
    torch.testing.assert_close(m(**kw).vertices, ref(**kw).vertices, rtol=0, atol=1e-6)


def test_the_real_mediapipe_embedding_dtypes_and_order(tmp_path):
    """metrical-tracker's mediapipe_landmark_embedding.npz has uint32 face ids and its landmark ids unsorted: read
    as given, each MediaPipe id keeps its point (the factory writes int64 and sorted ids)."""
    spec = write_flame_folder(tmp_path / "h", n_mp=105)
    kw = dict(shape=torch.ones(1, spec.n_shape), expr=torch.ones(1, spec.n_expr), jaw_pose=torch.tensor([[0.3, 0, 0]]))
    before = HeadModel.from_folder(spec.path, n_shape=spec.n_shape, n_expr=spec.n_expr)
    want = dict(zip(before.mp_landmark_indices.tolist(), before(**kw).landmarks_mp[0]))
    path = spec.path / "mediapipe_landmark_embedding.npz"
    with np.load(path) as z:
        d = dict(z)
    order = np.random.default_rng(0).permutation(len(d["landmark_indices"]))
    np.savez(path, lmk_face_idx=d["lmk_face_idx"][order].astype(np.uint32), lmk_b_coords=d["lmk_b_coords"][order],
             landmark_indices=d["landmark_indices"][order])
    m = HeadModel.from_folder(spec.path, n_shape=spec.n_shape, n_expr=spec.n_expr)
    ids = m.mp_landmark_indices.tolist()
    assert ids == d["landmark_indices"][order].tolist() and ids != sorted(ids)
    for i, p in zip(ids, m(**kw).landmarks_mp[0]):
        torch.testing.assert_close(p, want[i], rtol=0, atol=1e-6)
