"""HeadModel on a small factory folder: blend shapes, LBS against a numpy reference, landmarks, autograd."""
import numpy as np
import pytest
import torch
from flame_folder_factory import write_flame_folder

from flame_fitting.head.flame_spec import HeadModelError
from flame_fitting.head.head_model import HeadModel
from flame_fitting.head.landmarks_embed import interpolate_landmarks, select_detections

PARENTS = [-1, 0, 1, 1, 1]


def rodrigues(r):
    """Axis-angle (3,) -> rotation (3, 3)."""
    th = np.linalg.norm(r)
    if th < 1e-15:
        return np.eye(3)
    k = r / th
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K


def lbs_reference(spec, shape, expr, pose, transl):
    """Plain numpy FLAME: pose (5, 3) axis-angle per joint -> vertices (V, 3), joints (5, 3)."""
    coeffs = np.zeros(400)
    coeffs[:len(shape)], coeffs[300:300 + len(expr)] = shape, expr
    v_shaped = spec.v_template + spec.shapedirs.astype(np.float64) @ coeffs
    J = spec.J_regressor @ v_shaped
    R = [rodrigues(p) for p in pose]
    v_posed = v_shaped + spec.posedirs @ np.concatenate([(R[i] - np.eye(3)).ravel() for i in range(1, 5)])
    G = []
    for i, p in enumerate(PARENTS):
        local = np.eye(4)
        local[:3, :3], local[:3, 3] = R[i], J[i] - (J[p] if p >= 0 else 0)
        G.append(local if p < 0 else G[p] @ local)
    A = np.stack(G).copy()
    A[:, :3, 3] -= np.einsum("kab,kb->ka", A[:, :3, :3], J)
    T = np.einsum("vk,kab->vab", spec.weights.astype(np.float64), A)
    verts = np.einsum("vab,vb->va", T[:, :3, :3], v_posed) + T[:, :3, 3]
    return verts + transl, np.stack([g[:3, 3] for g in G]) + transl


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return write_flame_folder(tmp_path_factory.mktemp("head"), n_shape=50, n_expr=30)


@pytest.fixture(scope="module")
def model(spec):
    return HeadModel.from_folder(spec.path, n_shape=50, n_expr=30, dtype=torch.float64)


def t64(a):
    return torch.as_tensor(np.asarray(a, np.float64))[None]


def test_zero_params_give_template_and_attributes(spec):
    m = HeadModel.from_folder(spec.path, n_shape=20, n_expr=10)
    out = m()
    assert out.vertices.shape == (1, len(spec.v_template), 3) and out.vertices.dtype == torch.float32
    np.testing.assert_allclose(out.vertices[0].numpy(), spec.v_template, atol=1e-6)
    np.testing.assert_allclose(out.joints[0].numpy(), spec.J_regressor @ spec.v_template, atol=1e-6)
    assert (m.kind, m.n_shape, m.n_expr, m.n_vertices) == ("standin", 20, 10, len(spec.v_template))
    np.testing.assert_array_equal(m.faces.numpy(), spec.f)
    np.testing.assert_array_equal(m.uv_faces.numpy(), spec.uv_faces)
    np.testing.assert_allclose(m.uv_coords.numpy(), spec.uv, atol=1e-7)
    np.testing.assert_array_equal(m.mp_face_idx.numpy(), spec.mp_face_idx)
    np.testing.assert_array_equal(m.mp_landmark_indices.numpy(), np.arange(478))
    np.testing.assert_allclose(m.mp_bary.numpy(), spec.mp_bary, atol=1e-7)
    assert m.lmk68_face_idx.shape == (68,) and out.landmarks_68.shape == (1, 68, 3)
    assert list(m.parameters()) == []


@pytest.mark.parametrize("k", [0, 7, 49])
def test_shape_coefficient_adds_its_column(model, spec, k):
    shape = torch.zeros(1, 50, dtype=torch.float64)
    shape[0, k] = 0.7
    v = model(shape=shape).vertices[0].numpy()
    # atol: the stored float32 skinning weights sum to 1 only within ~1e-7
    np.testing.assert_allclose(v - spec.v_template, 0.7 * spec.shapedirs[:, :, k], atol=2e-8)


@pytest.mark.parametrize("j", [0, 29])
def test_expression_coefficient_adds_column_300_plus_j(model, spec, j):
    expr = torch.zeros(1, 30, dtype=torch.float64)
    expr[0, j] = -1.3
    v = model(expr=expr).vertices[0].numpy()
    np.testing.assert_allclose(v - spec.v_template, -1.3 * spec.shapedirs[:, :, 300 + j], atol=2e-8)


def test_global_orient_and_transl_are_rigid(model, spec):
    rng = np.random.default_rng(1)
    shape, expr, jaw = rng.normal(size=50), rng.normal(size=30), np.array([0.2, 0.0, 0.01])
    r, t = np.array([0.3, -0.5, 0.2]), np.array([0.01, -0.02, 0.5])
    canon = model.canonical(t64(shape), t64(expr), t64(jaw))[0].numpy()
    posed = model(shape=t64(shape), expr=t64(expr), jaw_pose=t64(jaw), global_orient=t64(r), transl=t64(t))
    root = model(shape=t64(shape), expr=t64(expr), jaw_pose=t64(jaw)).joints[0, 0].numpy()
    expected = (canon - root) @ rodrigues(r).T + root + t
    np.testing.assert_allclose(posed.vertices[0].numpy(), expected, atol=1e-9)


def test_full_pose_matches_numpy_lbs(model, spec):
    rng = np.random.default_rng(2)
    shape, expr = rng.normal(size=50), rng.normal(size=30)
    pose, transl = rng.normal(scale=0.3, size=(5, 3)), rng.normal(scale=0.1, size=3)
    out = model(shape=t64(shape), expr=t64(expr), global_orient=t64(pose[0]), neck_pose=t64(pose[1]),
                jaw_pose=t64(pose[2]), eye_pose=t64(pose[3:].ravel()), transl=t64(transl))
    v_ref, j_ref = lbs_reference(spec, shape, expr, pose, transl)
    np.testing.assert_allclose(out.vertices[0].numpy(), v_ref, atol=1e-9)
    np.testing.assert_allclose(out.joints[0].numpy(), j_ref, atol=1e-9)


def test_jaw_rotation_moves_jaw_weighted_vertices(model, spec):
    jaw = np.array([0.4, 0.0, 0.0])
    v = model(jaw_pose=t64(jaw)).vertices[0].numpy()
    v_ref, _ = lbs_reference(spec, np.zeros(50), np.zeros(30), np.stack([np.zeros(3), np.zeros(3), jaw,
                                                                          np.zeros(3), np.zeros(3)]), np.zeros(3))
    np.testing.assert_allclose(v, v_ref, atol=1e-9)
    # only the jaw turns, so each vertex moves by its jaw weight times the rotation about the jaw joint
    R = rodrigues(jaw)
    v_posed = spec.v_template + spec.posedirs @ np.concatenate([np.zeros(9), (R - np.eye(3)).ravel(), np.zeros(18)])
    J_jaw = (spec.J_regressor @ spec.v_template)[2]
    expected = v_posed + spec.weights[:, 2:3] * ((v_posed - J_jaw) @ (R - np.eye(3)).T)
    np.testing.assert_allclose(v, expected, atol=1e-8)
    assert np.linalg.norm(v - v_posed, axis=1).max() > 0.01


def test_landmarks_are_barycentric_interpolation(model, spec):
    rng = np.random.default_rng(3)
    out = model(shape=t64(rng.normal(size=50)), jaw_pose=t64([0.2, 0, 0]), global_orient=t64([0, 0.4, 0]))
    v = out.vertices[0].numpy()
    for lmk, fi, b in ((out.landmarks_mp, spec.mp_face_idx, spec.mp_bary),
                       (out.landmarks_68, spec.lmk68_face_idx, spec.lmk68_bary)):
        ref = np.einsum("lkc,lk->lc", v[spec.f[fi]], b)
        np.testing.assert_allclose(lmk[0].numpy(), ref, atol=1e-12)


def test_interpolate_landmarks_and_select_detections():
    verts = torch.randn(2, 4, 3)
    faces = torch.tensor([[0, 1, 2], [1, 2, 3]])
    out = interpolate_landmarks(verts, faces, torch.tensor([1, 0]), torch.tensor([[1.0, 0, 0], [0.2, 0.3, 0.5]]))
    torch.testing.assert_close(out[:, 0], verts[:, 1])
    torch.testing.assert_close(out[:, 1], 0.2 * verts[:, 0] + 0.3 * verts[:, 1] + 0.5 * verts[:, 2])
    det = torch.arange(478 * 2.0).reshape(478, 2)
    torch.testing.assert_close(select_detections(det, torch.tensor([5, 1])), det[[5, 1]])
    with pytest.raises(ValueError, match="478"):
        select_detections(det[:100], torch.tensor([1]))


def test_batch_rows_are_independent(model):
    rng = np.random.default_rng(4)
    params = {"shape": rng.normal(size=(3, 50)), "expr": rng.normal(size=(3, 30)), "jaw_pose": rng.normal(size=(3, 3)) * 0.2,
              "eye_pose": rng.normal(size=(3, 6)) * 0.2, "transl": rng.normal(size=(3, 3))}
    out = model(**{k: torch.as_tensor(v) for k, v in params.items()})
    assert out.vertices.shape[0] == 3 and out.landmarks_mp.shape[:2] == (3, 478)
    for b in range(3):
        one = model(**{k: torch.as_tensor(v[b:b + 1]) for k, v in params.items()})
        torch.testing.assert_close(out.vertices[b], one.vertices[0])
    with pytest.raises(ValueError, match="batch size"):
        model(shape=torch.zeros(2, 50, dtype=torch.float64), expr=torch.zeros(3, 30, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expr must be \(1, 30\)"):
        model(expr=torch.zeros(1, 31, dtype=torch.float64))


def test_gradients_flow_and_jacobians(model, spec):
    params = {"shape": torch.zeros(2, 50), "expr": torch.zeros(2, 30), "global_orient": torch.full((2, 3), 0.1),
              "neck_pose": torch.full((2, 3), 0.1), "jaw_pose": torch.full((2, 3), 0.1), "eye_pose": torch.full((2, 6), 0.1),
              "transl": torch.zeros(2, 3)}
    params = {k: v.double().requires_grad_() for k, v in params.items()}
    out = model(**params)
    (out.landmarks_mp.square().sum() + out.vertices.square().sum() + out.landmarks_68.sum()).backward()
    for k, v in params.items():
        assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0, k
    f = lambda e, j: model(expr=e, jaw_pose=j).landmarks_mp[:, :20]  # noqa: E731
    assert torch.autograd.gradcheck(f, (torch.randn(1, 30, dtype=torch.float64, requires_grad=True),
                                        torch.randn(1, 3, dtype=torch.float64, requires_grad=True) * 0.2))
    J = torch.func.jacrev(lambda s: model(shape=s[None]).vertices[0])(torch.zeros(50, dtype=torch.float64))
    np.testing.assert_allclose(J.numpy(), spec.shapedirs[:, :, :50], atol=1e-12)


def test_more_components_than_available_are_refused(spec):
    with pytest.raises(HeadModelError, match=r"n_shape=51 .*provides 50"):
        HeadModel.from_folder(spec.path, n_shape=51, n_expr=30)
    with pytest.raises(HeadModelError, match=r"n_expr=31 .*provides 30"):
        HeadModel.from_folder(spec.path, n_shape=5, n_expr=31)
    m = HeadModel.from_folder(spec.path, n_shape=0, n_expr=0)
    assert torch.allclose(m().vertices[0], torch.as_tensor(spec.v_template), atol=1e-6)


@pytest.mark.parametrize("ext,name", [("pkl", None), ("pkl", "generic_model.pkl"), ("pkl", "flame2023.pkl")])
def test_plain_pickles_give_the_same_model(tmp_path, model, ext, name):
    spec = write_flame_folder(tmp_path / "h", ext=ext, model_name=name, n_shape=50, n_expr=30)  # same seed: same arrays
    m = HeadModel.from_folder(spec.path, n_shape=50, n_expr=30, dtype=torch.float64)
    rng = np.random.default_rng(5)
    p = {"shape": t64(rng.normal(size=50)), "expr": t64(rng.normal(size=30)), "jaw_pose": t64([0.3, 0.1, 0]),
         "global_orient": t64([0.1, 0.2, 0.3])}
    torch.testing.assert_close(m(**p).vertices, model(**p).vertices, atol=1e-12, rtol=0)


def test_to_dtype_moves_buffers(spec):
    m = HeadModel.from_folder(spec.path, n_shape=10, n_expr=10, device="cpu").to(torch.float64)
    assert m.mp_bary.dtype == torch.float64 and m.flame.shapedirs.dtype == torch.float64
    assert m.faces.dtype == torch.long and m().vertices.dtype == torch.float64


def test_parameters_of_the_wrong_kind_are_refused_in_one_line(model):
    """numpy arrays, lists and tensors on another device were refused from deep inside torch (AttributeError,
    RuntimeError); wrong shapes raised a bare ValueError. Each is now a HeadModelError (a GeofaceError) naming the
    parameter; a tensor of another dtype is converted (the same vertices)."""
    from flame_fitting.core.errors import GeofaceError

    shape = np.random.default_rng(5).normal(size=(1, 50))
    with pytest.raises(HeadModelError, match=r"shape must be a torch.Tensor \(B, 50\), got ndarray"):
        model(shape=shape)
    with pytest.raises(HeadModelError, match=r"jaw_pose must be a torch.Tensor \(B, 3\), got list"):
        model.canonical(torch.as_tensor(shape), torch.zeros(1, 30), [[0.1, 0.0, 0.0]])
    with pytest.raises(HeadModelError, match="expr is on meta, the model on cpu"):
        model(expr=torch.zeros(1, 30, device="meta"))
    with pytest.raises(GeofaceError, match=r"shape must be \(1, 50\), got \(50,\)"):
        model(shape=torch.zeros(50, dtype=torch.float64))
    a = model(shape=torch.as_tensor(shape, dtype=torch.float32)).vertices
    b = model(shape=torch.as_tensor(shape)).vertices
    assert a.dtype == b.dtype == torch.float64 and torch.allclose(a, b, atol=1e-6)


def test_a_device_this_machine_lacks_is_one_line_before_reading(spec):
    from flame_fitting.head.head_model import load_head_model

    with pytest.raises(HeadModelError, match="device 'gpu': not a torch device"):
        load_head_model(spec.path, device="gpu")
    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(HeadModelError, match=rf"device '{missing}': PyTorch sees \d+ CUDA GPU"):
        load_head_model(spec.path, device=missing)
    with pytest.raises(HeadModelError, match=rf"device '{missing}'"):
        HeadModel.from_folder(spec.path / "not-even-there", device=missing)  # the device first, the folder after
    assert load_head_model(spec.path, device="cpu").faces.device.type == "cpu"
