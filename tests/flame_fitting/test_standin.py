"""Stand-in head model: folder layout, determinism, mesh sanity, embeddings, bases, rig, smplx loading."""
import contextlib
import io
import json
import warnings
from collections import Counter

import numpy as np
import pytest
from scipy.spatial import cKDTree

from flame_fitting.core.fileio import MARKER
from flame_fitting.head.standin import build_standin
from flame_fitting.head.standin.bases import identity_peak
from flame_fitting.head.standin.embedding import IRIS, MP_TO_IBUG68
from flame_fitting.geometry.meshes import vertex_normals
from flame_fitting.head.standin.geometry import signed_volume
from flame_fitting.head.flame_pickle import load_object_npy, load_pickle

FILES = ["FLAME_NEUTRAL.npz", "flame_static_embedding.pkl", "flame_dynamic_embedding.npy",
         "mediapipe_landmark_embedding.npz", "ibug68_landmark_embedding.npz", "head_template.obj",
         "standin_extras.npz", "head_model.json"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("standin") / "head_model"
    summary = build_standin(out, seed=0)
    model = dict(np.load(out / "FLAME_NEUTRAL.npz"))
    extras = dict(np.load(out / "standin_extras.npz"))
    mp = dict(np.load(out / "mediapipe_landmark_embedding.npz"))
    return out, summary, model, extras, mp


def lmk(verts, faces, emb, idx=None):
    fi, b = emb["lmk_face_idx"], emb["lmk_b_coords"]
    if idx is not None:
        fi, b = fi[idx], b[idx]
    return np.einsum("pk,pkd->pd", b, verts[faces[fi]])


def rodrigues(r):
    a = np.linalg.norm(r)
    if a < 1e-12:
        return np.eye(3)
    k = r / a
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


def lbs(model, betas, expr, pose):
    """Reference FLAME LBS in numpy. betas (nb,), expr (ne,), pose (5,3) axis-angle -> (V,3)."""
    sd = model["shapedirs"].astype(np.float64)
    v = model["v_template"] + sd[:, :, :len(betas)] @ betas + sd[:, :, 300:300 + len(expr)] @ expr
    j = model["J_regressor"].astype(np.float64) @ v
    rot = np.stack([rodrigues(p) for p in pose])
    v = v + (model["posedirs"].reshape(-1, 36) @ (rot[1:] - np.eye(3)).ravel()).reshape(-1, 3)
    parents = model["kintree_table"][0]
    g = []
    for i in range(5):
        t = np.eye(4)
        t[:3, :3] = rot[i]
        t[:3, 3] = j[i] - (j[parents[i]] if i else 0)
        g.append(t if i == 0 else g[parents[i]] @ t)
    g = np.stack(g)
    g[:, :3, 3] -= np.einsum("kab,kb->ka", g[:, :3, :3], j)
    t = np.einsum("vk,kab->vab", model["weights"].astype(np.float64), g)
    return np.einsum("vab,vb->va", t[:, :3, :3], v) + t[:, :3, 3]


def test_folder_has_every_file_with_flame_shapes(built):
    out, summary, model, extras, mp = built
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES + [MARKER])  # + the mark of a folder geoface wrote
    V, F = model["v_template"].shape[0], model["f"].shape[0]
    assert 4500 <= V <= 5600 and summary["n_vertices"] == V and summary["n_faces"] == F
    assert model["f"].dtype == np.int64 and model["f"].shape == (F, 3) and model["f"].max() == V - 1
    assert model["shapedirs"].shape == (V, 3, 400) and model["posedirs"].shape == (V, 3, 36)
    assert model["J_regressor"].shape == (5, V) and model["weights"].shape == (V, 5)
    assert model["kintree_table"].tolist() == [[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]
    assert not model["posedirs"].any()
    assert mp["lmk_face_idx"].shape == (478,) and mp["lmk_b_coords"].shape == (478, 3)
    assert mp["landmark_indices"].tolist() == list(range(478))
    ib = np.load(out / "ibug68_landmark_embedding.npz")
    assert ib["lmk_face_idx"].tolist() == mp["lmk_face_idx"][MP_TO_IBUG68].tolist()
    static = load_pickle(out / "flame_static_embedding.pkl")
    assert static["lmk_face_idx"].dtype == np.int64 and static["lmk_face_idx"].shape == (51,)
    assert np.array_equal(static["lmk_b_coords"], ib["lmk_b_coords"][17:])
    dyn = load_object_npy(out / "flame_dynamic_embedding.npy")[()]
    assert dyn["lmk_face_idx"].shape == (79, 17) and dyn["lmk_b_coords"].shape == (79, 17, 3)
    assert (dyn["lmk_face_idx"] == ib["lmk_face_idx"][:17]).all()
    info = json.loads((out / "head_model.json").read_text())
    assert info["kind"] == "standin" and info["n_shape"] == 50 and info["n_expr"] == 30
    assert "NOT FLAME" in info["note"] and info["source_photo"] == "grace_hopper.jpg" == str(extras["photo_name"])
    assert extras["face_region"].shape == (V,) and extras["mp_points_neutral"].shape == (478, 3)
    assert extras["photo_landmarks_px"].shape == (478, 2) and extras["mp_triangles"].shape[1] == 3
    assert 0 < extras["photo_landmarks_px"][:, 0].min() and extras["photo_landmarks_px"][:, 0].max() < 512
    assert extras["face_region"].sum() >= 1500


def test_obj_matches_template_and_uv_layout_is_valid(built):
    out, summary, model, extras, _ = built
    v, vt, f, ft = [], [], [], []
    for line in (out / "head_template.obj").read_text().splitlines():
        p = line.split()
        if p and p[0] == "v":
            v.append([float(x) for x in p[1:]])
        elif p and p[0] == "vt":
            vt.append([float(x) for x in p[1:]])
        elif p and p[0] == "f":
            f.append([int(x.split("/")[0]) - 1 for x in p[1:]])
            ft.append([int(x.split("/")[1]) - 1 for x in p[1:]])
    v, vt, f, ft = np.array(v), np.array(vt), np.array(f), np.array(ft)
    assert np.abs(v - model["v_template"]).max() < 1e-6 and np.array_equal(f, model["f"])
    assert len(vt) > len(v) == summary["n_vertices"] and len(vt) == summary["n_uv"]
    assert vt.min() >= 0 and vt.max() <= 1
    # one uv vertex belongs to exactly one mesh vertex
    owner = {}
    for a, b in zip(f.ravel(), ft.ravel()):
        assert owner.setdefault(b, a) == a
    t = vt[ft]
    signed = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]) / 2
    assert (signed > 0).all(), "UV triangles must all keep one orientation"
    # no overlap: texel centres of a 200x200 grid are covered at most once
    res = 200
    cover = np.zeros((res, res), int)
    for tri in t:
        lo, hi = np.floor(tri.min(0) * res - 0.5).astype(int), np.ceil(tri.max(0) * res - 0.5).astype(int)
        cx, cy = np.meshgrid(np.arange(max(lo[0], 0), min(hi[0], res - 1) + 1),
                             np.arange(max(lo[1], 0), min(hi[1], res - 1) + 1), indexing="ij")
        p = np.stack([(cx + 0.5) / res, (cy + 0.5) / res], -1).reshape(-1, 2)
        d = lambda a, b: (b[0] - a[0]) * (p[:, 1] - a[1]) - (b[1] - a[1]) * (p[:, 0] - a[0])  # noqa: E731
        inside = (d(tri[0], tri[1]) > 0) & (d(tri[1], tri[2]) > 0) & (d(tri[2], tri[0]) > 0)
        np.add.at(cover, (cx.ravel()[inside], cy.ravel()[inside]), 1)
    assert cover.max() == 1 and (cover == 1).mean() > 0.97
    face = extras["face_region"][f].all(1)
    assert signed[face].sum() >= 0.35 and summary["uv_face_share"] >= 0.35


def test_same_seed_gives_identical_folder(built, tmp_path):
    out, *_ = built
    build_standin(tmp_path / "again", seed=0)
    for name in ["FLAME_NEUTRAL.npz", "mediapipe_landmark_embedding.npz", "standin_extras.npz"]:
        a, b = np.load(out / name), np.load(tmp_path / "again" / name)
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            if a[k].dtype.kind == "f":  # bit-level noise (~1e-18) can come from the process's FP state
                np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-12, err_msg=f"{name}:{k}")
            else:
                assert np.array_equal(a[k], b[k]), (name, k)
    assert (out / "head_template.obj").read_text() == (tmp_path / "again" / "head_template.obj").read_text()


def test_mesh_is_closed_except_neck_and_mouth_and_faces_outward(built):
    _, _, model, extras, _ = built
    v, f = model["v_template"].astype(np.float64), model["f"]
    directed = Counter(map(tuple, np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])))
    assert max(directed.values()) == 1, "consistent orientation: every directed edge used once"
    border = [e for e in directed if e[::-1] not in directed]
    nxt = dict(border)
    loops, seen = [], set()
    for s in nxt:
        if s not in seen:
            loop, x = [], s
            while x not in seen:
                seen.add(x)
                loop.append(x)
                x = nxt[x]
            loops.append(np.array(loop))
    assert len(loops) == 2
    neck, mouth = sorted(loops, key=lambda lp: v[lp, 1].mean())
    assert np.ptp(v[neck, 1]) < 5e-4 and v[neck, 1].max() < v[:, 1].min() + 5e-4  # flat open neck
    assert (extras["lip_side"][mouth] != 0).sum() >= len(mouth) - 2  # the cut along the lips
    assert signed_volume(v, f, ref=np.zeros(3)) > 0.003  # outward normals, a head-sized volume (m^3)
    n = vertex_normals(v, f)
    face = extras["face_region"]
    assert (n[face, 2] > 0).mean() > 0.97 and n[face, 2].mean() > 0.5


def test_template_is_mirror_symmetric(built):
    v = built[2]["v_template"]
    dist, _ = cKDTree(v).query(v * [-1, 1, 1])
    assert dist.max() < 1e-3


def test_embedding_reconstructs_symmetric_mediapipe_points(built):
    _, _, model, extras, mp = built
    pts = lmk(model["v_template"].astype(np.float64), model["f"], mp)
    target = extras["mp_points_neutral"]
    err = np.linalg.norm(pts - target, axis=1)
    assert np.median(err[:468]) < 1e-4 and err[:468].mean() < 3e-4 and err[:468].max() < 1.5e-3
    assert err[IRIS].max() < 1e-4  # iris points are projected on the eye surface
    assert abs(np.linalg.norm(target[33] - target[263]) - 0.090) < 1e-3
    assert 0.055 < np.linalg.norm(target[468] - target[473]) < 0.07  # interpupillary distance
    assert target[263, 0] > 0 and target[4, 2] > target[33, 2]  # subject's left at +x, nose forward


def test_identity_bases_orthogonal_symmetric_and_scaled(built):
    model = built[2]
    sd = model["shapedirs"].astype(np.float64)
    ident = sd[:, :, :50].reshape(-1, 50)
    gram = ident.T @ ident
    cos = gram / np.sqrt(np.outer(np.diag(gram), np.diag(gram)))
    assert np.abs(cos - np.eye(50)).max() < 1e-4
    peaks = np.linalg.norm(sd[:, :, :50], axis=1).max(0)
    assert np.allclose(peaks, [identity_peak(k) for k in range(50)], rtol=1e-4)
    assert 0.002 <= peaks[0] <= 0.006 and peaks[-1] < peaks[0]
    assert not sd[:, :, 50:300].any() and not sd[:, :, 330:].any()
    v = model["v_template"]
    _, twin = cKDTree(v).query(v * [-1, 1, 1])
    d = sd[:, :, 0]  # head width: symmetric
    assert np.abs(d[twin] * [-1, 1, 1] - d).max() < 1e-6


def test_expressions_are_jaw_free_and_sized(built):
    _, _, model, extras, mp = built
    v, f = model["v_template"].astype(np.float64), model["f"]
    expr = model["shapedirs"][:, :, 300:330].astype(np.float64)
    chin = lmk(v, f, mp, [152, 175])
    near_chin = np.linalg.norm(v[:, None] - chin[None], axis=-1).min(1) < 0.008
    assert np.linalg.norm(expr[near_chin], axis=1).max() < 5e-4
    peaks = np.linalg.norm(expr, axis=1).max(0)
    assert (peaks[:7] >= 0.004).all() and (peaks <= 0.0101).all()
    jaw_open = lbs(model, np.zeros(0), np.zeros(0), np.array([[0, 0, 0], [0, 0, 0], [0.3, 0, 0], [0, 0, 0], [0, 0, 0]])) - v
    a, y = expr.reshape(-1, 30), jaw_open.ravel()
    resid = y - a @ np.linalg.lstsq(a, y, rcond=None)[0]
    assert np.linalg.norm(resid) > 0.8 * np.linalg.norm(y)


def test_eyelid_close_brings_upper_lid_onto_lower_lid(built):
    out, _, model, _, mp = built
    names = json.loads((out / "head_model.json").read_text())["expr_names"]
    k = names.index("eye_close_left")
    e = np.zeros(30)
    e[k] = 1.0
    v0 = model["v_template"].astype(np.float64)
    v1 = lbs(model, np.zeros(0), e, np.zeros((5, 3)))
    up0, lo0 = lmk(v0, model["f"], mp, [386, 374])
    up1, lo1 = lmk(v1, model["f"], mp, [386, 374])
    assert up0[1] - lo0[1] > 0.005 and abs(up1[1] - lo1[1]) < 0.3 * (up0[1] - lo0[1])
    right = lmk(v1, model["f"], mp, [159])[0] - lmk(v0, model["f"], mp, [159])[0]
    assert np.linalg.norm(right) < 1e-4  # the other eye stays open


def test_rig_weights_joints_and_jaw_opening(built):
    _, _, model, extras, mp = built
    v, f, w = model["v_template"].astype(np.float64), model["f"], model["weights"]
    assert np.allclose(w.sum(1), 1, atol=1e-5) and w.min() >= 0
    jr = model["J_regressor"]
    assert np.allclose(jr.sum(1), 1, atol=1e-5) and jr.min() >= 0 and ((jr > 0).sum(1) >= 8).all()
    j = jr.astype(np.float64) @ v
    eye_l, eye_r = lmk(v, f, mp, [473, 468])
    assert j[3, 0] > 0.02 and j[4, 0] < -0.02 and np.allclose(j[3], j[4] * [-1, 1, 1], atol=1e-4)
    assert 0.008 < eye_l[2] - j[3, 2] < 0.014 and np.linalg.norm(eye_l - j[3]) < 0.015
    assert abs(j[2, 0]) < 1e-4 and j[0, 1] < j[1, 1] < eye_r[1]
    pose = np.zeros((5, 3))
    pose[2, 0] = 0.3
    moved = lbs(model, np.zeros(0), np.zeros(0), pose)
    d = lmk(moved, f, mp) - lmk(v, f, mp)
    assert d[152, 1] <= -0.01  # chin down by >= 1 cm
    assert np.linalg.norm(d[[10, 151, 9]], axis=1).max() < 5e-4  # forehead still
    assert np.linalg.norm(d[0]) < 1e-3  # upper lip stays
    gap0 = np.linalg.norm(lmk(v, f, mp, [13]) - lmk(v, f, mp, [14]))
    gap1 = np.linalg.norm(lmk(moved, f, mp, [13]) - lmk(moved, f, mp, [14]))
    assert gap1 - gap0 > 0.01  # the mouth opens
    edge = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    stretch = np.linalg.norm(moved[edge[:, 0]] - moved[edge[:, 1]], axis=1) / np.linalg.norm(v[edge[:, 0]] - v[edge[:, 1]], axis=1)
    assert stretch.max() < 4.0  # no tearing: the cut opens, nothing else rips
    eye = extras["eye_region"]
    assert (eye == 1).sum() == (eye == 2).sum() >= 6 and (w[eye == 1, 3] > 0.99).all()
    assert v[eye == 1, 0].min() > 0  # joint 3 = the subject's left eye, at +x
    gaze = np.zeros((5, 3))
    gaze[3, 1] = 0.3  # left eye looks to the side
    d = lmk(lbs(model, np.zeros(0), np.zeros(0), gaze), f, mp) - lmk(v, f, mp)
    assert np.linalg.norm(d[473]) > 0.002 and np.linalg.norm(d[468]) < 1e-9 and np.linalg.norm(d[263]) < 1e-9


def test_loads_in_smplx_flame_without_warnings(built):
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    out, summary, model, _, _ = built
    stdout = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(stdout):
        warnings.simplefilter("error")
        flame = smplx.FLAME(model_path=str(out), ext="npz", num_betas=summary["n_shape"],
                            num_expression_coeffs=summary["n_expr"])
    assert stdout.getvalue() == ""
    with torch.no_grad():
        zero = flame().vertices[0].numpy()
        assert np.abs(zero - model["v_template"]).max() < 1e-6
        rng = np.random.default_rng(1)
        betas, expr = rng.standard_normal(50), rng.standard_normal(30)
        pose = rng.normal(0, 0.15, (5, 3))
        got = flame(betas=torch.tensor(betas[None], dtype=torch.float32),
                    expression=torch.tensor(expr[None], dtype=torch.float32),
                    global_orient=torch.tensor(pose[None, 0], dtype=torch.float32),
                    neck_pose=torch.tensor(pose[None, 1], dtype=torch.float32),
                    jaw_pose=torch.tensor(pose[None, 2], dtype=torch.float32),
                    leye_pose=torch.tensor(pose[None, 3], dtype=torch.float32),
                    reye_pose=torch.tensor(pose[None, 4], dtype=torch.float32)).vertices[0].numpy()
    assert np.abs(got - lbs(model, betas, expr, pose)).max() < 2e-5


def test_preview_sheet_shows_the_head(built, tmp_path):
    import cv2

    from flame_fitting.head.head_model import HeadModel
    from flame_fitting.head.preview import TILE, head_model_preview

    png = head_model_preview(HeadModel.from_folder(built[0], n_shape=10, n_expr=10), tmp_path / "preview.png")
    img = cv2.imread(str(png))
    panel = img[28:28 + TILE, :TILE]  # neutral front
    head = (panel.max(-1) > 80).mean()  # shaded head pixels vs the dark background
    assert img.shape[0] >= 3 * TILE and img.shape[1] == 4 * TILE and 0.1 < head < 0.6


@pytest.mark.parametrize("kwargs", [dict(n_shape=0), dict(n_expr=101), dict(grid=(60, 81))])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError, match="n_shape|n_expr|grid"):
        build_standin(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()
